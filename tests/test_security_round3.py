"""Security round 3 (issue 25): recursive YAML aliases, spec text from weights files and rules
files, checkpoint structure bombs, `re:` rename rules. Each hostile input must give a located error
(exit 2 from the CLI), never a hang, a traceback or a run command.

Inputs that hung or exhausted memory before the fix run in a child process with a 2 GB
address-space limit and a generous timeout, so a regression fails the test instead of hanging it.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ADDRESS_SPACE = 2 << 30
HEADER = "inputs: {x: {shape: [8]}}\n"

# Loads each spec text given as JSON on stdin with specc.load; prints [code, first message, line] each.
LOAD_DRIVER = """
import json, sys
import specc
from specc.lang.errors import SpecError
results = []
for text, overrides, safe in json.load(sys.stdin):
    try:
        specc.load(text, overrides, safe=safe)
        results.append(["ok", "", 0])
    except SpecError as error:
        first = error.first
        results.append([first.code, first.message, first.location.line if first.location else 0])
print(json.dumps(results))
"""


def in_child(code: str, stdin: str = "", timeout: float = 120) -> str:
    """Run `code` in a fresh Python limited to 2 GB of address space; return its last stdout line."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    finished = subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, preexec_fn=limit_memory)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout.splitlines()[-1]


RECURSIVE_ALIASES = {
    "list_holding_itself": (HEADER + "layers:\n  - &x [*x]\n", 3),
    "merge_of_itself": (HEADER + "vars: &d {a: 1, <<: *d}\nlayers: [ReLU]\n", 2),
    "layers_in_a_sequential": (HEADER + "layers: &L\n  - ReLU\n  - sequential: *L\n", 4),
    "two_anchors_in_a_ring": (HEADER + "vars:\n  a: &a [1, {b: &b [*a]}]\nlayers: [ReLU]\n", 3),
}


@pytest.fixture(scope="module")
def recursive_results() -> dict:
    cases = [[text, None, True] for text, _ in RECURSIVE_ALIASES.values()]
    results = json.loads(in_child(LOAD_DRIVER, json.dumps(cases)))
    return dict(zip(RECURSIVE_ALIASES, results))


@pytest.mark.parametrize("case_id", list(RECURSIVE_ALIASES))
def test_a_recursive_alias_is_refused_at_its_line(recursive_results, case_id):
    code, message, line = recursive_results[case_id]
    assert code == "LIMIT_EXCEEDED" and "recursive alias" in message, message
    assert line == RECURSIVE_ALIASES[case_id][1]


def test_a_recursive_alias_in_set_is_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(HEADER + "vars: {w: 1}\nlayers: [ReLU]\n")
    finished = subprocess.run([sys.executable, "-m", "specc", "--safe", "check", str(spec), "--set", "w=&x [*x]"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert finished.returncode == 2, finished.stderr
    assert "recursive alias" in finished.stdout + finished.stderr
    assert "Traceback" not in finished.stderr


def test_aliases_that_do_not_hold_themselves_still_load():
    import specc
    spec = specc.load(HEADER + "vars:\n  a: &a [1, 2]\n  b: [*a, *a]\n  c: {<<: &m {k: 1}, j: *m}\nlayers: [ReLU]\n")
    assert spec.raw["vars"]["b"] == [[1, 2], [1, 2]] and spec.raw["vars"]["c"] == {"k": 1, "j": {"k": 1}}


# ----- checkpoints: structure bombs are a CHECKPOINT_ERROR before anything walks them ----------------

FORMAT = "specc-checkpoint/1"


def _dag(levels: int) -> list:
    shared: list = [1]
    for _ in range(levels):
        shared = [shared, shared]          # a few bytes in the pickle, 2**levels values once expanded
    return shared


def _deep_checkpoint(path: Path, levels: int) -> None:
    """A torch zip whose pickle nests `levels` lists (torch.save itself cannot write one that deep)."""
    import io
    import zipfile

    import torch

    small = io.BytesIO()
    torch.save({"format": FORMAT}, small)
    pickle = (b"\x80\x02}(X\x06\x00\x00\x00formatX" + len(FORMAT).to_bytes(4, "little") + FORMAT.encode()
              + b"X\x01\x00\x00\x00x" + b"]" * (levels + 1) + b"a" * levels + b"u.")
    with zipfile.ZipFile(io.BytesIO(small.getvalue())) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, pickle if info.filename.endswith("data.pkl") else source.read(info))


@pytest.fixture(scope="module")
def bomb_checkpoints(tmp_path_factory) -> dict[str, Path]:
    import torch

    folder = tmp_path_factory.mktemp("checkpoints")
    cycle: list = []
    cycle.append(cycle)
    files = {"dag": {"format": FORMAT, "history": _dag(40), "model": {}},
             "spec_dag": {"format": FORMAT, "spec": {"vars": {"a": _dag(16)}}, "model": {}},
             "cycle": {"format": FORMAT, "history": cycle}}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pt"
        torch.save(content, paths[name])
    paths["deep"] = folder / "deep.pt"
    _deep_checkpoint(paths["deep"], 200_000)
    return paths


CHECKPOINT_DRIVER = """
import json, sys
import specc
from specc.weights.checkpoint import load_checkpoint
from specc.lang.errors import SpecError
results = {}
for name, path in json.load(sys.stdin).items():
    messages = []
    for read in (lambda: load_checkpoint(path),
                 lambda: specc.build("inputs: {x: {shape: [4]}}\\nlayers: [ReLU]\\n", weights=path)):
        try:
            read()
            messages.append(["ok", ""])
        except SpecError as error:
            messages.append([error.first.code, error.first.message])
    results[name] = messages
print(json.dumps(results))
"""

CHECKPOINT_WORDS = {"dag": "more than 2,000,000 values once its shared references are repeated",
                    "spec_dag": "stored spec holds more than 20,000 values",
                    "deep": "nests more than 200 levels deep", "cycle": "holds itself"}


def test_checkpoint_structure_bombs_are_refused(bomb_checkpoints):
    results = json.loads(in_child(CHECKPOINT_DRIVER, json.dumps({k: str(v) for k, v in bomb_checkpoints.items()})))
    for name, words in CHECKPOINT_WORDS.items():
        for code, message in results[name]:       # load_checkpoint and build(weights=) alike
            assert code == "CHECKPOINT_ERROR" and words in message, (name, message)


def test_checkpoint_bomb_through_the_cli_is_exit_2(bomb_checkpoints, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(HEADER + "layers: [ReLU]\n")
    finished = subprocess.run([sys.executable, "-m", "specc", "export", str(spec), "--checkpoint",
                               str(bomb_checkpoints["dag"]), "-o", str(tmp_path / "m.safetensors")],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert finished.returncode == 2, finished.stdout + finished.stderr
    assert "shared references" in finished.stdout + finished.stderr and "Traceback" not in finished.stderr


# ----- spec text stored in a .safetensors file: the one bounded loader, safe mode unless trusted -----

def _nested(levels: int) -> str:
    return "vars: {a: " + "[" * levels + "]" * levels + "}\n"


def _stored_bomb() -> str:
    lines = ["vars:", "  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return HEADER + "\n".join(lines) + "\nlayers: [ReLU]\n"


STORED = {   # name -> (metadata, words the error must hold)
    "alias_bomb": ({"specc.spec": _stored_bomb()}, "more than 20,000 values"),
    "huge_spec": ({"specc.spec": HEADER + "#" * 8_000_000 + "\nlayers: [ReLU]\n"}, "more than 1,000,000"),
    "deep_nesting": ({"specc.spec": HEADER + _nested(5000) + "layers: [ReLU]\n"}, "nest deeper than 100 levels"),
    "python_tag": ({"specc.spec": HEADER + "vars: !!python/object/apply:os.system ['touch CANARY']\nlayers: [ReLU]\n"},
                   "'!!python/object/apply:os.system' is not allowed"),
    "recursive_alias": ({"specc.spec": HEADER + "layers: &L\n  - ReLU\n  - sequential: *L\n"}, "recursive alias"),
    "list_spec": ({"specc.spec": "- ReLU\n- ReLU\n"}, "not a mapping of spec keys"),
    "bad_aliases_json": ({"specc.spec": HEADER + "layers: [ReLU]\n", "specc.aliases": "{not json"},
                         "specc.aliases is not JSON"),
    "alias_to_nothing": ({"specc.spec": HEADER + "layers: [ReLU]\n", "specc.aliases": '{"a": "missing"}'},
                         "specc.aliases is not a mapping"),
    "bad_input_shapes": ({"specc.spec": HEADER + "layers: [ReLU]\n", "specc.input_shapes": '{"x": "big"}'},
                         "specc.input_shapes is not a mapping"),
}

STORED_DRIVER = """
import json, sys
import specc
from specc.lang.errors import SpecError
results = {}
for name, path in json.load(sys.stdin).items():
    try:
        specc.build(path)
        results[name] = ["ok", ""]
    except SpecError as error:
        results[name] = [error.first.code, str(error.first)]
print(json.dumps(results))
"""


def _write_safetensors(path: Path, metadata: dict, tensors: dict | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)} if tensors is None else tensors, str(path), metadata=metadata)
    return path


def test_stored_spec_goes_through_the_bounded_loader(tmp_path):
    paths = {name: str(_write_safetensors(tmp_path / f"{name}.safetensors", metadata))
             for name, (metadata, _) in STORED.items()}
    results = json.loads(in_child(STORED_DRIVER, json.dumps(paths)))
    for name, (_, words) in STORED.items():
        code, message = results[name]
        assert code != "ok" and words in message, (name, message)
    assert "stored spec" in results["python_tag"][1]           # located in the file's stored spec
    assert not (ROOT / "CANARY").exists()


@pytest.fixture
def importing_file(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A .safetensors file whose stored spec imports a module that touches a canary when imported."""
    canary = tmp_path / "canary"
    (tmp_path / "canary_layers.py").write_text(f"import pathlib\npathlib.Path({str(canary)!r}).touch()\n"
                                               "from torch import nn\nclass Twice(nn.Module):\n"
                                               "    def forward(self, x):\n        return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SPECC_TRUST_CODE", raising=False)
    spec = HEADER + "imports: [canary_layers.Twice]\nlayers: [Twice]\n"
    return _write_safetensors(tmp_path / "model.safetensors", {"specc.spec": spec}, tensors={}), canary


def test_a_stored_spec_is_loaded_in_safe_mode(importing_file):
    import specc
    from specc.lang.errors import SpecError

    path, canary = importing_file
    with pytest.raises(SpecError) as error:
        specc.build(path)
    assert error.value.first.code == "SAFE_MODE" and "trust_code=True" in error.value.first.message
    assert not canary.exists()


def test_trust_code_lets_a_stored_spec_import(importing_file):
    import torch

    import specc

    path, canary = importing_file
    model = specc.build(path, trust_code=True)
    assert canary.exists()
    assert torch.equal(model(torch.ones(1, 8)), 2 * torch.ones(1, 8))


def test_a_checkpoints_spec_is_loaded_in_safe_mode(tmp_path, monkeypatch):
    import torch

    import specc
    from specc.lang.errors import SpecError

    monkeypatch.delenv("SPECC_TRUST_CODE", raising=False)
    spec = {"inputs": {"x": {"shape": [8]}}, "imports": ["canary_layers.Twice"], "layers": ["Twice"],
            "train": {"data": {"source": "data.csv", "target": "y"}}}
    checkpoint = tmp_path / "best.pt"
    normalizer = {"kind": "standard", "stats": [None]}
    torch.save({"format": FORMAT, "spec": spec, "model": {}, "normalizer": normalizer, "task": {}}, checkpoint)
    with pytest.raises(SpecError) as error:
        specc.evaluate(None, checkpoint)
    assert error.value.first.code == "SAFE_MODE" and "--trust-code" in error.value.first.message


# ----- rename rules: no rule may backtrack for long, whoever wrote the rule and the names -----------

RENAME_DRIVER = """
import json, sys
import torch
import specc
from safetensors.torch import save_file
from specc.lang.errors import SpecError
folder = sys.argv[1]
spec = "inputs: {x: {shape: [4]}}\\nlayers:\\n  - Linear: {out_features: 2}\\n    name: head\\n"
save_file({"a" * 35 + "b": torch.zeros(2, 4), "head.bias": torch.zeros(2)}, folder + "/w.safetensors")
results = {}
for name, rules in json.load(sys.stdin).items():
    try:
        model = specc.build(spec, weights=folder + "/w.safetensors", weights_map=rules)
        results[name] = ["ok", sorted(model.state_dict())]
    except SpecError as error:
        results[name] = [error.first.code, error.first.message]
print(json.dumps(results))
"""

RENAME_CASES = {
    "nested_repeat": ({"re:(a+)+$": "head.weight"}, "a repeat inside a repeat"),
    "repeated_alternatives": ({"re:(a|aa)*c": "head.weight"}, "a repeat of alternatives"),
    "backreference": ({"re:(a*)\\1c": "head.weight"}, "a backreference"),
    "many_stars": ({"*" * 40 + "c": "head.weight"}, None),          # a glob: linear, simply no match
    "glob_rename": ({"aaaaa*b": "head.weight"}, None),
}


def test_rename_rules_cannot_backtrack_for_long(tmp_path):
    import subprocess as sp

    finished = sp.run([sys.executable, "-c", RENAME_DRIVER, str(tmp_path)], capture_output=True, text=True,
                      timeout=120, cwd=ROOT, input=json.dumps({k: v[0] for k, v in RENAME_CASES.items()}))
    assert finished.returncode == 0, finished.stderr[-2000:]
    results = json.loads(finished.stdout.splitlines()[-1])
    for name, (_, words) in RENAME_CASES.items():
        code, detail = results[name]
        if words is None:
            assert code in ("ok", "CHECKPOINT_ERROR"), (name, detail)
        else:
            assert code == "TYPE_ERROR" and words in detail, (name, detail)
    assert results["glob_rename"] == ["ok", ["head.bias", "head.weight"]]


def test_a_long_tensor_name_is_refused_before_any_rule():
    import torch

    from specc.weights.mapping import _rename
    from specc.lang.errors import SpecError

    with pytest.raises(SpecError, match="more than rename rules are tried on"):
        _rename({"a" * 400: torch.zeros(1)}, {"re:(.*)x": "y"})


def test_glob_rules_capture_like_before():
    from specc.lang.rename_rules import compile_rules

    rule = compile_rules({"transformer.h.*.ln_1.*": "h.*.attention.norm.*"})[0]
    assert rule.rename("transformer.h.11.ln_1.weight") == "h.11.attention.norm.weight"
    assert rule.rename("transformer.h.11.ln_2.weight") is None
    lazy = compile_rules({"a.*.b.*": "*|*"})[0]
    assert lazy.rename("a.x.b.y.b.z") == "x|y.b.z"                   # the leftmost place, as `(.+?)` took
    assert compile_rules({"*": "p.*"})[0].rename("") is None         # a star takes one character or more


def test_init_from_map_is_checked_with_the_spec():
    import specc
    from specc.lang.errors import SpecError

    text = (HEADER + "layers:\n  - Linear: [2]\ntrain:\n  data: {source: 'synthetic:classification'}\n"
            "  loss: CrossEntropyLoss\n  init_from:\n    path: w.safetensors\n    map: {'re:(a+)+$': x}\n")
    with pytest.raises(SpecError, match="a repeat inside a repeat"):
        specc.load(text, safe=True)


def test_map_rules_file_goes_through_the_spec_loader(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("a: &x [*x]\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(HEADER + "layers: [ReLU]\n")
    finished = subprocess.run([sys.executable, "-m", "specc", "port", str(spec), "--weights", str(tmp_path / "w.pt"),
                               "-o", str(tmp_path / "o.safetensors"), "--map", str(rules)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert finished.returncode == 2 and "recursive alias" in finished.stdout + finished.stderr, finished.stderr
