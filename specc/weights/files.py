"""Reading other libraries' weight files into a flat {name: tensor} dict, without running their code.

Formats: `.safetensors`, a Hugging Face sharded checkpoint (`model.safetensors.index.json`, or a
folder holding one), and torch files (`.pt`, `.pth`, `.bin`, `.ckpt`) read with
`torch.load(weights_only=True)`, so a file can hold tensors and plain containers but never code.
A torch file may wrap its state_dict: `{"state_dict": ...}` (Lightning and many training
scripts), `{"model": ...}`, or a `specc train` checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specc.lang.errors import Problem, SpecError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
INDEX_NAME = "model.safetensors.index.json"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "weights")
_MAX_NESTING = 4


@dataclass
class WeightFile:
    """The tensors of a weight file, by name; `registration_order` says whether their order is the
    order the original modules registered them (torch files) rather than sorted (safetensors)."""

    tensors: dict[str, torch.Tensor]
    origin: str
    registration_order: bool


def read_weight_file(source: Any) -> WeightFile:
    """A state_dict, or a weight file in any of the formats above.

    Raises:
        SpecError: CHECKPOINT_ERROR for a missing, unreadable or tensor-less file.
    """
    if isinstance(source, dict):
        return WeightFile(_unwrap(source, "weights"), "weights", True)
    path = Path(source)
    if path.is_dir():
        path = _folder_file(path)
    if not path.is_file():
        raise _error(f"weights file not found: {path}")
    if path.name.endswith(".index.json"):
        return WeightFile(_read_sharded(path), str(path), False)
    if path.suffix == ".safetensors":
        return WeightFile(_read_safetensors(path), str(path), False)
    if path.suffix in TORCH_SUFFIXES:
        return WeightFile(_unwrap(_torch_load(path), str(path)), str(path), True)
    raise _error(f"{path}: unknown weights format '{path.suffix}'; use .safetensors, "
                 f"{INDEX_NAME}, or {', '.join(TORCH_SUFFIXES)}")


def _folder_file(folder: Path) -> Path:
    for name in (INDEX_NAME, "model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise _error(f"{folder}: no {INDEX_NAME}, model.safetensors or pytorch_model.bin in the folder")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise _error(f"{path}: cannot read the safetensors file: {_first_line(error)}") from None


def _read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _error(f"{index_path}: not a sharded-checkpoint index ({_first_line(error)})") from None
    tensors: dict[str, torch.Tensor] = {}
    for shard in dict.fromkeys(weight_map.values()):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise _error(f"{index_path}: shard {shard!r} is not a file name beside the index")
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise _error(f"{index_path}: shard {shard} is missing")
        tensors.update(_read_safetensors(shard_path))
    missing = [name for name in weight_map if name not in tensors]
    if missing:
        raise _error(f"{index_path}: {len(missing)} tensors listed in the index are in no shard, e.g. {missing[0]}")
    return tensors


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for foreign or truncated files
        raise _error(f"{path}: cannot read the file with weights_only=True (it may hold pickled code, "
                      f"which specc never runs): {_first_line(error)}") from None


def _unwrap(state: Any, origin: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint: follow wrapper keys, drop non-tensor entries."""
    lightning = isinstance(state, dict) and "pytorch-lightning_version" in state
    for _ in range(_MAX_NESTING):
        if not isinstance(state, dict) or _is_state_dict(state):
            break
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(state.get(key), dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not _is_state_dict(state):
        raise _error(f"{origin}: no state_dict found (looked for tensors and under {', '.join(_WRAPPER_KEYS)})")
    tensors = {str(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    return _strip_lightning_prefix(tensors) if lightning else tensors


def _is_state_dict(state: dict) -> bool:
    return bool(state) and sum(isinstance(value, torch.Tensor) for value in state.values()) * 2 >= len(state)


def _strip_lightning_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LightningModule saves its network under its attribute name (`model.conv1.weight`)."""
    heads = {key.partition(".")[0] for key in tensors}
    if len(heads) == 1 and all("." in key for key in tensors):
        return {key.partition(".")[2]: value for key, value in tensors.items()}
    return tensors


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _error(message: str) -> SpecError:
    return SpecError(Problem(message, None, "CHECKPOINT_ERROR"))
