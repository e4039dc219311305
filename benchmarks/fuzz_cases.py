"""Hostile cases of issue 25 for benchmarks/fuzz.py, so they stay fixed: recursive YAML aliases,
kwarg keys that are code (the mutant is also code-generated and the generated class instantiated,
which must not run anything), `re:` rename rules that backtrack, and checkpoints whose lists share
references (a DAG), hold themselves or nest 200,000 deep."""
from __future__ import annotations

import io
import random
import re
import zipfile
from pathlib import Path
from typing import Any

FORMAT = "specc-checkpoint/1"


def payload(canary: Path) -> str:
    """Python that creates the canary file when run."""
    return f"__import__('os').system('touch {canary}')"


# ----- spec mutations --------------------------------------------------------------------------------
def recursive_alias(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """An alias inside the list or mapping it names: expanding it never ends."""
    form = rng.randrange(4)
    if form == 0:
        return data + b"\nloop: &loop [1, *loop]\n", "recursive_alias(list)"
    if form == 1:
        return data + b"\nmerge: &merge {a: 1, <<: *merge}\n", "recursive_alias(merge)"
    if form == 2 and re.search(rb"(?m)^layers:[ \t]*$", data):
        data = re.sub(rb"(?m)^layers:[ \t]*$", b"layers: &L", data, count=1)
        return data.rstrip(b"\n") + b"\n  - sequential: *L\n", "recursive_alias(layers)"
    return data + b"\nvars_loop: &v {a: [*v]}\n", "recursive_alias(nested)"


def inject_kwarg_key(rng: random.Random, tree: Any, canary: Path) -> str:
    """A kwarg key that is Python: on a `**kwargs` layer, an `init:` function, a free tensor's init."""
    if not isinstance(tree, dict):
        return "inject(none)"
    code = payload(canary)
    form = rng.randrange(4)
    layers = tree.get("layers") if isinstance(tree.get("layers"), list) else None
    if form == 0 and layers is not None:
        layers.insert(rng.randrange(len(layers) + 1), {"Identity": {f"a={code},b": 1}})
        return "inject(Identity kwargs)"
    if form == 1:   # `weight` names a parameter of nearly every model, and normal_ takes any shape
        tree["init"] = {"weight": {"normal": {f"std={code} or 1,generator": None}}}
        return "inject(init kwargs)"
    inputs = list(tree["inputs"]) if isinstance(tree.get("inputs"), dict) and tree["inputs"] else []
    if form == 2 and layers and inputs:
        first = layers[0]   # reads the model's input, not the injected tensor, so the model still checks
        layers[0] = {first: None, "from": inputs[0]} if isinstance(first, str) else {**first, "from": inputs[0]} \
            if isinstance(first, dict) and "from" not in first else first
        layers.insert(0, {"parameter": {"shape": [1], "init": {"normal": {f"std={code} or 1,generator": None}}},
                          "name": "injected"})
        return "inject(free tensor init)"
    tree["name"] = 'm"""\nimport os; os.system("touch ' + str(canary) + '")\n"""'
    return "inject(name docstring)"


def bad_rename_rule(rng: random.Random, tree: Any) -> str:
    """A `re:` rule that backtracks exponentially, in `train.init_from.map`."""
    if not isinstance(tree, dict):
        return "bad_regex(none)"
    rule = rng.choice(["re:(a+)+$", "re:(a|aa)*b", "re:(.*)(.*)(.*)(.*)x", "re:(\\w)\\1*c"])
    train = tree.get("train") if isinstance(tree.get("train"), dict) else tree.setdefault("train", {})
    if not isinstance(train, dict):
        return "bad_regex(none)"
    train["init_from"] = {"path": "weights.safetensors", "map": {rule: "x"}}
    return f"bad_regex({rule})"


# ----- checkpoints -----------------------------------------------------------------------------------
def hostile_checkpoint(rng: random.Random, path: Path) -> str:
    """Write a checkpoint that is small on disk but explodes when walked; return what it is."""
    import torch

    form = rng.randrange(4)
    if form == 3:
        _deep_checkpoint(path, rng.choice([1_000, 200_000]))
        return "checkpoint(deep)"
    shared: list = [1]
    for _ in range(rng.choice([30, 40, 60])):
        shared = [shared, shared]
    # a checksum makes every reader walk the whole structure to verify it
    if form == 0:
        content = {"format": FORMAT, rng.choice(["history", "trackers", "model"]): shared}
        name = "checkpoint(dag)"
    elif form == 1:
        content = {"format": FORMAT, "spec": {"inputs": {"x": {"shape": [4]}}, "layers": ["ReLU"], "vars": {"a": shared}}}
        name = "checkpoint(spec dag)"
    else:
        loop: list = []
        loop.append(loop)
        content = {"format": FORMAT, "history": [loop]}
        name = "checkpoint(cycle)"
    torch.save({**content, "checksum": "sha256:0"}, path)
    return name


def _deep_checkpoint(path: Path, levels: int) -> None:
    """A torch zip whose pickle nests `levels` lists (torch.save cannot write one that deep)."""
    import torch

    small = io.BytesIO()
    torch.save({"format": FORMAT}, small)
    pickle = (b"\x80\x02}(X\x06\x00\x00\x00formatX" + len(FORMAT).to_bytes(4, "little") + FORMAT.encode()
              + b"X\x08\x00\x00\x00checksumX\x08\x00\x00\x00sha256:0"
              + b"X\x01\x00\x00\x00x" + b"]" * (levels + 1) + b"a" * levels + b"u.")
    with zipfile.ZipFile(io.BytesIO(small.getvalue())) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, pickle if info.filename.endswith("data.pkl") else source.read(info))
