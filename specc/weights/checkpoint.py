"""Checkpoints: written atomically, read with `weights_only=True`, carrying the resolved spec.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes),
so `torch.load(..., weights_only=True)` reads it and a run can be rebuilt from the file alone:

    format      "specc-checkpoint/1"
    spec        the resolved spec (plain data, overrides applied)
    epoch       completed epochs
    model       state_dict (for SWA's best.pt: the averaged weights)
    optimizer, schedulers, scaler, swa        training state, for --resume
    rng         torch (and CUDA) RNG states and the batch-order generator's state
    trackers    best value of the checkpoint monitor, early-stopping counters
    history     one dict per epoch (what metrics.csv shows)
    normalizer  input scaling fitted on the training split
    classes     names of text labels (csv), or None
    fold        0-based K-fold index, or None
    checksum    "sha256:<hex>" of every tensor and value above, verified on load
    interrupted {"epoch": e, "step": s, ...} in interrupted.pt only: the state after step s of epoch e

A `strategy: fsdp` run writes sharded checkpoints instead (`last.dcp/`, a link to a folder):

    last.dcp -> .last.dcp.<id>/
        .metadata, __0_0.distcp, ...   torch.distributed.checkpoint (DCP): "model" and "optimizer",
                                       each process's shards in its own file (specc.train.sharded_state)
        state.pt    every other key above, a checkpoint itself (checksummed), plus `sharded: True` and
                    `files`: the sha256 of each DCP file

DCP reshards on load, so such a folder resumes on any number of processes; `load_checkpoint` reads it
without a process group, the model's full tensors included, so every command reads sharded runs.

Writing checks the disk: a full disk is a CHECKPOINT_ERROR naming the file, and the previous
file stays intact. Reading checks the checksum, so flipped bytes are an error, not wrong weights.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from specc.lang.errors import Problem, SpecError
from specc.lang.limits import limit, raise_hint
from specc.weights.checkpoint_checks import check_normalizer, write_failure

FORMAT = "specc-checkpoint/1"


ZIP_MAGIC = b"PK\x03\x04"


def save_checkpoint(state: dict[str, Any], path: Path, *, verify: bool = False) -> None:
    """Write `state` (with its checksum) to `path` atomically: a temp file in the same folder,
    fsync, then os.replace. An interruption at any moment leaves either the old file or the new one.

    Args:
        state: the checkpoint's keys (see the module docstring); `format` and `checksum` are added.
        path: the file to (re)write.
        verify: read the written file back and check its checksum (best.pt: the file kept longest).

    Raises:
        SpecError: CHECKPOINT_ERROR when the disk is full or the written file does not read back.
    """
    path = Path(path)
    state = {key: value for key, value in state.items() if key not in ("format", "checksum")}
    content = {"format": FORMAT, **state, "checksum": checksum(state)}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(content, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if verify:
            load_checkpoint(temporary, shown_as=path)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        failure = write_failure(error, path, temporary)
        if failure is None:
            raise
        raise failure from None
    finally:
        if temporary.exists():
            temporary.unlink()


def checksum(state: dict[str, Any]) -> str:
    """sha256 of every tensor's bytes, dtype and shape and every other value, in key order."""
    digest = hashlib.sha256()
    _digest(state, digest)
    return f"sha256:{digest.hexdigest()}"


def _digest(value: Any, digest) -> None:
    if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor and hasattr(value, "__tensor_flatten__"):
        names, context = value.__tensor_flatten__()   # a quantized tensor subclass: its plain tensors and layout
        digest.update(f"S{type(value).__name__}{context!r}".encode())
        for name in names:
            _digest(getattr(value, name), digest)
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _digest(value[key], digest)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _digest(item, digest)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


def load_checkpoint(path: str | Path, *, shown_as: str | Path | None = None) -> dict[str, Any]:
    """Read a specc checkpoint on the CPU with `weights_only=True` and verify its checksum; a sharded
    one (a `.dcp` folder) with its model's full tensors.

    Args:
        path: the file.
        shown_as: the name errors use (a temp file being verified is reported as its target).

    Raises:
        SpecError: CHECKPOINT_ERROR when the file is missing, corrupted or not a specc checkpoint.
    """
    path, shown = Path(path), Path(shown_as or path)
    if path.is_dir():  # a `strategy: fsdp` run's last.dcp/ (see below)
        if is_sharded(path):
            return load_sharded_checkpoint(path)
    if not path.is_file():
        raise SpecError(Problem(f"checkpoint not found: {shown}", None, "CHECKPOINT_ERROR"))
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        raise SpecError(Problem(f"{shown}: not a checkpoint: a torch file is a zip archive, this file starts "
                                f"with {head!r}", None, "CHECKPOINT_ERROR"))
    try:
        state = _load_weights_only(path)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise SpecError(Problem(f"{shown}: cannot read the checkpoint (corrupted or not a torch file): "
                                f"{_reason(error)}", None, "CHECKPOINT_ERROR")) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SpecError(Problem(f"{shown}: not a specc checkpoint (written by `specc train`)", None, "CHECKPOINT_ERROR"))
    check_structure(state, shown)
    stored = state.get("checksum")
    if stored is not None:
        body = {key: value for key, value in state.items() if key not in ("format", "checksum")}
        if checksum(body) != stored:
            raise SpecError(Problem(f"{shown}: the checkpoint is corrupted (its checksum does not match its "
                                    f"contents)", None, "CHECKPOINT_ERROR"))
    return state


def check_structure(state: dict[str, Any], shown: str | Path) -> None:
    """Refuse a checkpoint whose lists and dicts would make reading it explode before anything walks
    them: shared references (`b = [b, b]` 40 times: a few hundred bytes, 2**40 values to checksum),
    cycles, and nesting deeper than Python's stack. The stored spec must also fit a spec file's
    bounds (SPECC_MAX_YAML_NODES values, SPECC_MAX_NESTING levels), as it is validated like one.

    Raises:
        SpecError: CHECKPOINT_ERROR naming the bound and its environment variable.
    """
    _check_size(state, shown, "the checkpoint", "MAX_CHECKPOINT_VALUES", "MAX_CHECKPOINT_DEPTH")
    if "spec" in state:
        _check_size(state["spec"], shown, "the checkpoint's stored spec", "MAX_YAML_NODES", "MAX_NESTING")


def _check_size(root: Any, shown: str | Path, what: str, values_bound: str, depth_bound: str) -> None:
    """Count `root`'s values as if every shared reference were a copy, without expanding any: an
    iterative post-order walk with an identity memo (each list/dict/tuple is sized once)."""
    max_values, max_depth = limit(values_bound), limit(depth_bound)
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while stack:
        value, depth, children_done = stack.pop()
        children = _children(value)
        if children is None or id(value) in sizes:
            continue
        if not children_done:
            if depth > max_depth:
                raise _too_big(shown, f"{what} nests more than {max_depth:,} levels deep", depth_bound)
            open_ids.add(id(value))
            stack.append((value, depth, True))
            for child in children:
                if id(child) in open_ids:
                    raise SpecError(Problem(f"{shown}: {what} holds itself (a list or dict inside itself)", None,
                                            "CHECKPOINT_ERROR"))
                stack.append((child, depth + 1, False))
            continue
        open_ids.discard(id(value))
        sizes[id(value)] = size = 1 + sum(sizes.get(id(child), 1) for child in children)
        if size > max_values:
            raise _too_big(shown, f"{what} holds more than {max_values:,} values once its shared references "
                                  f"are repeated", values_bound)


def _children(value: Any) -> list | None:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


def _too_big(shown: str | Path, message: str, bound: str) -> SpecError:
    return SpecError(Problem(f"{shown}: {message} ({raise_hint(bound)})", None, "CHECKPOINT_ERROR"))


def _load_weights_only(path: Path) -> Any:
    """`torch.load(weights_only=True)`; a checkpoint of `specc quantize` holds torchao's tensor types,
    which torchao adds to torch's allow-list when imported, so it is imported (if installed) and the
    file read again. The allow-list still decides: nothing but those vetted types is unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "torchao" not in str(error) or "torchao" in sys.modules:
            raise
        try:
            import_torchao()
        except ImportError:
            raise error from None
        return torch.load(path, map_location="cpu", weights_only=True)


def import_torchao() -> Any:
    """Import torchao.quantization quietly (see `torchao_quiet`).

    Raises:
        ImportError: torchao is not installed.
    """
    with torchao_quiet():
        return importlib.import_module("torchao.quantization")


@contextlib.contextmanager
def torchao_quiet() -> Iterator[None]:
    """On a CPU machine torchao logs a warning per GPU-only extension it cannot load, and warns about
    torch internals while it quantizes: noise, none of it about the user's model."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _reason(error: Exception) -> str:
    """torch's first line, without its advice to load with weights_only=False (which runs pickles)."""
    lines = [line.strip() for line in str(error).strip().splitlines()
             if line.strip() and "weights_only" not in line and "WeightsUnpickler" not in line]
    return lines[0] if lines else type(error).__name__


def require_keys(state: dict[str, Any], keys: tuple[str, ...], path: str | Path, use: str) -> None:
    """The checkpoint holds what `use` needs (a file with keys missing is reported, not a KeyError).

    Raises:
        SpecError: CHECKPOINT_ERROR naming the missing keys.
    """
    missing = [key for key in keys if key not in state]
    if missing:
        raise SpecError(Problem(f"{path}: the checkpoint lacks {', '.join(missing)}, which {use} needs "
                                f"(was it written by `specc train`?)", None, "CHECKPOINT_ERROR"))
    if "model" in keys and not (isinstance(state["model"], dict)
                                and all(isinstance(v, torch.Tensor) for v in state["model"].values())):
        raise SpecError(Problem(f"{path}: the checkpoint's `model` is not a state_dict of tensors", None,
                                "CHECKPOINT_ERROR"))
    if "normalizer" in keys:
        check_normalizer(state["normalizer"], path)


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path, *, assign: bool = False) -> None:
    """Load weights, turning a structure mismatch into a clear error instead of a traceback.
    `assign` keeps the checkpoint's tensor objects (quantized tensor subclasses must stay what they are)."""
    try:
        model.load_state_dict(state["model"], assign=assign)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1].splitlines()[0]
        raise SpecError(Problem(f"{path}: the checkpoint does not fit this spec's model: {detail}",
                                None, "CHECKPOINT_ERROR")) from None


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream the loop uses: dropout & co (torch, CUDA) and the batch order."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- sharded checkpoints (strategy: fsdp) ---------------------------------------------------------
STATE_FILE = "state.pt"
SUFFIX = ".dcp"


def is_sharded(path: str | Path) -> bool:
    """True for a sharded checkpoint folder (or the link to one)."""
    return Path(path).is_dir() and (Path(path) / STATE_FILE).is_file()


def file_digests(folder: Path) -> dict[str, str]:
    """`{file name: "sha256:<hex>"}` of every DCP file in `folder` (not state.pt)."""
    digests = {}
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.name != STATE_FILE and not file.name.startswith(f".{STATE_FILE}"):
            digest = hashlib.sha256()
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
            digests[file.name] = f"sha256:{digest.hexdigest()}"
    return digests


def read_sharded_state(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """state.pt of a sharded checkpoint, its DCP files checked against their recorded sha256.

    Raises:
        SpecError: CHECKPOINT_ERROR for a missing, changed or extra file.
    """
    folder = Path(path)
    state = load_checkpoint(folder / STATE_FILE, shown_as=folder)
    if verify:
        recorded, found = state.get("files", {}), file_digests(folder.resolve())
        changed = sorted(name for name in set(recorded) | set(found) if recorded.get(name) != found.get(name))
        if changed:
            raise SpecError(Problem(f"{path}: the checkpoint is corrupted or incomplete ({', '.join(changed)} "
                                    f"missing or changed since it was written)", None, "CHECKPOINT_ERROR"))
    return state


@contextlib.contextmanager
def dcp_in_one_process() -> Iterator[None]:
    """DCP warns on every save or load without a process group that it assumes one process: which is
    what specc means there (one-process FSDP, evaluate or resume from a sharded checkpoint), so the
    warning tells the user nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is .*assuming the intent is to (save|load) "
                                                  r"in a single process", category=UserWarning)
        yield


def load_sharded_checkpoint(path: str | Path) -> dict[str, Any]:
    """A sharded checkpoint as one process's dict: state.pt's keys plus `model`, the full tensors
    gathered from every shard on the CPU (the optimizer state stays on disk).

    Raises:
        SpecError: CHECKPOINT_ERROR for a corrupted or unreadable checkpoint.
    """
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    state = read_sharded_state(path)
    try:
        with dcp_in_one_process():
            loaded = _load_state_dict_from_keys({"model"}, checkpoint_id=str(Path(path).resolve()))
    except Exception as error:  # DCP raises several types for damaged folders
        raise SpecError(Problem(f"{path}: cannot read the sharded checkpoint: {str(error).splitlines()[0]}", None,
                                "CHECKPOINT_ERROR")) from None
    model = loaded.get("model", {})
    state["model"] = {name: tensor for name, tensor in model.items() if isinstance(tensor, torch.Tensor)}
    return state
