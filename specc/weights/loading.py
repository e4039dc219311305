"""Weights in and out of a compiled spec: safetensors files that carry their spec, and checkpoints.

`specc export spec.yaml -o model.safetensors` stores the weights with the resolved spec in the
file's metadata (litgpt-style: the config travels with the weights), so the file alone rebuilds
the model: `build_from_safetensors("model.safetensors")`. Tied weights are stored once, since
safetensors refuses tensors that share memory, and restored on load.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from specc.lang.errors import Problem, SpecError
from specc.lang.spec import IDENTIFIER

if TYPE_CHECKING:
    from specc.build.compiled import Compiled
    from specc.weights.report import WeightsReport

SPEC_KEY = "specc.spec"                  # the resolved spec, as YAML
ALIASES_KEY = "specc.aliases"            # tied weights, stored once: {"head.weight": "wte.weight"}
INPUT_SHAPES_KEY = "specc.input_shapes"  # input shapes the model was compiled with, when overridden


def save_weights(compiled: "Compiled", path: str | Path, input_shapes: dict | None = None) -> None:
    """Write the model's state_dict as safetensors, the resolved spec in the metadata."""
    import yaml
    from safetensors.torch import save_file

    tensors, aliases, seen = {}, {}, {}
    for name, tensor in compiled.module.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    raw = dict(compiled.spec.raw)
    if IDENTIFIER.match(compiled.spec.display_name):      # a spec without `name:` was named after its file
        raw.setdefault("name", compiled.spec.display_name)
    metadata = {SPEC_KEY: yaml.safe_dump(raw, sort_keys=False), ALIASES_KEY: json.dumps(aliases)}
    if input_shapes:
        metadata[INPUT_SHAPES_KEY] = json.dumps(input_shapes)
    save_file(tensors, str(path), metadata=metadata)
    _usual_mode(path)


def _usual_mode(path: str | Path) -> None:
    """safetensors creates its files 0600; give the usual 0666 less the umask, like every other file."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def load_weights(path: str | Path) -> tuple[dict, dict]:
    """Read a `.safetensors` file written by `specc export`.

    Returns:
        `(spec, state_dict)`: the resolved spec as a plain dict (with an `input_shapes`
        override, if the model was compiled with one, under "specc.input_shapes") and the full
        state_dict, tied weights included.

    Raises:
        SpecError: CHECKPOINT_ERROR when the file is missing, unreadable or carries no spec; the
            stored spec is read by the spec loader, with its bounds and its located errors.
    """
    from specc.lang.source import load_yaml

    stored, input_shapes, state = read_stored_spec(path)
    spec, _ = load_yaml(stored.text, stored.file)
    if input_shapes is not None:
        spec[INPUT_SHAPES_KEY] = input_shapes
    return spec, state


def read_stored_spec(path: str | Path) -> tuple[Any, dict | None, dict]:
    """The spec text in a `.safetensors` file's metadata (a `SpecText` named `<file> (stored spec)`,
    for the spec loader to read like any spec), its input-shape override, and the state_dict.

    Raises:
        SpecError: CHECKPOINT_ERROR for a missing or unreadable file, no spec, a spec that is no
            mapping, or malformed `specc.*` metadata.
    """
    from specc.lang.source import SpecText, load_yaml

    metadata, state = _read_safetensors(path)
    text = metadata.get(SPEC_KEY)
    if not isinstance(text, str):
        raise SpecError(Problem(f"{path}: no spec in the metadata (not written by `specc export`); "
                                f"build the spec and load the file with weights=...", None, "CHECKPOINT_ERROR"))
    stored = SpecText(text, f"{path} (stored spec)")
    if not isinstance(load_yaml(text, stored.file)[0], dict):   # bounded: size, nesting, aliases, tags
        raise SpecError(Problem(f"{path}: the stored spec is not a mapping of spec keys", None, "CHECKPOINT_ERROR"))
    shapes = _json_metadata(metadata, INPUT_SHAPES_KEY, path, None)
    if shapes is not None and not (isinstance(shapes, dict) and all(
            isinstance(name, str) and isinstance(shape, list) and all(isinstance(size, int) and not isinstance(size, bool)
                                                                      for size in shape)
            for name, shape in shapes.items())):
        raise _bad_metadata(path, INPUT_SHAPES_KEY, "a mapping of input names to lists of ints")
    return stored, shapes, state


def _json_metadata(metadata: dict, key: str, path: str | Path, default: Any) -> Any:
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):
        raise _bad_metadata(path, key, "JSON") from None


def _bad_metadata(path: str | Path, key: str, wanted: str) -> SpecError:
    return SpecError(Problem(f"{path}: the metadata's {key} is not {wanted}", None, "CHECKPOINT_ERROR"))


def _read_safetensors(path: str | Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SpecError(Problem(f"weights file not found: {path}", None, "CHECKPOINT_ERROR"))
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SpecError(Problem(f"{path}: cannot read the safetensors file: {reason}", None,
                                "CHECKPOINT_ERROR")) from None
    aliases = _json_metadata(metadata, ALIASES_KEY, path, {})
    if not isinstance(aliases, dict) or not all(isinstance(alias, str) and isinstance(original, str) and original in state
                                                for alias, original in aliases.items()):
        raise _bad_metadata(path, ALIASES_KEY, "a mapping of tied names to names of stored tensors")
    for alias, original in aliases.items():
        state[alias] = state[original]
    return metadata, state


def read_weights(source: Any) -> tuple[dict, dict | None]:
    """A state_dict from a state_dict, a `.safetensors` file or a `specc train` checkpoint.

    Returns:
        `(state_dict, normalizer)`: the normalizer is the input scaling a training checkpoint
        was fitted with (`{"kind": ..., "stats": [(shift, scale) or None per input]}`), else None.

    Raises:
        SpecError: CHECKPOINT_ERROR for a missing or unreadable file.
    """
    if isinstance(source, dict):
        return source, None
    path = Path(source)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)[1], None
    from specc.weights.checkpoint import check_normalizer, load_checkpoint, require_keys

    state = load_checkpoint(path)
    require_keys(state, ("model",), path, "loading its weights")
    if state.get("normalizer") is not None:
        check_normalizer(state["normalizer"], path)
    return state["model"], state.get("normalizer")


def apply_weights(module: nn.Module, source: Any) -> nn.Module:
    """Load weights into `module` from a state_dict, a `.safetensors` file or a training checkpoint.

    Raises:
        SpecError: CHECKPOINT_ERROR for an unreadable file or weights that do not fit the model.
    """
    load_state(module, read_weights(source)[0], source if not isinstance(source, dict) else "weights")
    return module


def load_state(module: nn.Module, state: dict, origin: Any) -> None:
    """`load_state_dict`, with a missing or misshapen tensor reported as one clear line."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1].splitlines()[0]
        raise SpecError(Problem(f"{origin}: the weights do not fit this spec's model: {detail}",
                                None, "CHECKPOINT_ERROR")) from None


def load_into(module: nn.Module, source: Any, weights_map: Any = "strict", allow_missing: Any = (),
              order: list[str] | None = None) -> "WeightsReport":
    """Load another library's (or specc's) weights into `module`, pairing tensors as `weights_map` says.

    Args:
        module: the model to fill (on a real device).
        source: a state_dict, `.safetensors`, `model.safetensors.index.json` (or its folder),
            `.pt/.pth/.bin/.ckpt` (read with weights_only=True; Lightning and `{"state_dict"}` /
            `{"model"}` wrappers are unwrapped).
        weights_map: "strict" (names must match), "auto" (names, then structure; see
            `specc.weights.mapping`) or a mapping of rename rules (then names must match).
        allow_missing: globs of model or file keys that may stay unmatched (they are reported).
        order: module paths in the order the model uses them (the compiler passes its graph's);
            by default the state_dict order.

    Returns:
        The `WeightsReport` of what was matched how.

    Raises:
        SpecError: CHECKPOINT_ERROR when a tensor on either side stays unmatched (and is not
        allowed), or the file cannot be read; TYPE_ERROR for a bad `weights_map`.
    """
    import torch

    from specc.build.shards import copy_full_value
    from specc.weights.files import read_weight_file
    from specc.weights.mapping import plan_load

    if isinstance(allow_missing, str):
        allow_missing = [allow_missing]
    tensors = _unique_state(module)
    plan = plan_load(_targets(module, tensors, order), read_weight_file(source), weights_map, allow_missing)
    plan.report.raise_if_unmatched()
    with torch.no_grad():
        for assignment in plan.assignments:
            value = _assigned_value(assignment, plan.sources)
            target = tensors[assignment.target]
            if tuple(value.shape) != tuple(target.shape):
                raise SpecError(Problem(f"{plan.report.origin}: {assignment.target}: model {list(target.shape)}, "
                                        f"file {list(value.shape)}", None, "CHECKPOINT_ERROR"))
            copy_full_value(target, value)  # a sharded parameter (strategy: fsdp) keeps its part
    return plan.report


def _unique_state(module: nn.Module) -> dict:
    """The state_dict's tensors (parameters themselves), a tied weight under its first name only."""
    seen, tensors = set(), {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            tensors[key] = tensor
    return tensors


def _targets(module: nn.Module, tensors: dict, order: list[str] | None) -> list:
    from specc.weights.mapping import Target

    rank = {path: index for index, path in enumerate(order or [])}

    def use_rank(key: str) -> int | None:
        path = key
        while path:
            path = path.rpartition(".")[0]
            if path in rank:
                return rank[path]
        return None

    def position(key: str) -> int:   # unknown ones last, in state_dict order
        found = use_rank(key)
        return len(rank) if found is None else found

    targets = []
    for key in sorted(tensors, key=position):
        owner = key.rpartition(".")[0]
        layer = type(module.get_submodule(owner)).__name__ if owner else type(module).__name__
        targets.append(Target(key, tuple(tensors[key].shape), layer, tensors[key].is_floating_point(),
                              use_rank(key)))
    return targets


def _assigned_value(assignment, sources: dict):
    import torch

    values = [sources[key] for key in assignment.sources]
    if assignment.how == "transpose":
        return values[0].t()
    if assignment.how == "fuse":
        return torch.cat(values, dim=0)
    if assignment.how == "stack":    # experts: [w1, w3, w1, w3, ...] -> [E, 2F, D], or [w2, ...] -> [E, D, F]
        per_expert = 2 if assignment.target.endswith("gate_up_proj") else 1
        return torch.stack([torch.cat(values[index:index + per_expert]) for index in range(0, len(values), per_expert)])
    if assignment.how == "split":
        return values[0].split(assignment.sizes, dim=0)[assignment.part]
    return values[0]
