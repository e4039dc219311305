"""Writing and restoring sharded checkpoints (`last.dcp/`, see specc.weights.checkpoint for the layout).

Every process writes its own shards of the model and optimizer through torch.distributed.checkpoint
(DCP), with `get_state_dict`/`set_state_dict` naming the tensors as the plain model does; rank 0 then
writes state.pt (the rest of the training state, and each file's sha256) and swaps the link to the
new folder in one `os.replace`, so a crash at any moment leaves the previous checkpoint whole. DCP
reshards on load: a checkpoint of N processes resumes on M (one process included, no process group).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.weights.checkpoint import save_checkpoint
from specc.weights.checkpoint import STATE_FILE, dcp_in_one_process, file_digests
from specc.lang.errors import Problem, SpecError
from specc.train import ranks


def save_sharded(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, link: Path,
                 *, verify: bool = False) -> None:
    """Write a sharded checkpoint at `link` (every rank calls this; `state` holds the non-tensor keys).

    Args:
        state: the checkpoint's other keys (spec, epoch, schedulers, rng, ...), as rank 0 sees them.
        model, optimizer: what DCP saves, each rank its shards.
        link: `<run dir>/last.dcp` and the like.
        verify: read state.pt back after writing it (best.pt's rule).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = link.parent / ranks.on_main(lambda: f".{link.name}.{uuid.uuid4().hex[:12]}")
    ranks.on_main(folder.mkdir)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with dcp_in_one_process():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))
    ranks.on_main(_finish, state, folder, link, verify)


def _finish(state: dict[str, Any], folder: Path, link: Path, verify: bool) -> None:
    """Rank 0, after every rank's shards are on disk: state.pt, then the link swapped atomically."""
    body = {key: value for key, value in state.items() if key not in ("model", "optimizer")}
    save_checkpoint({**body, "sharded": True, "files": file_digests(folder)}, folder / STATE_FILE, verify=verify)
    previous = link.parent / os.readlink(link) if link.is_symlink() else None
    if link.is_dir() and not link.is_symlink():  # a folder copied by hand and resumed: moved aside first
        previous = link.with_name(f".{link.name}.{uuid.uuid4().hex[:12]}")
        os.rename(link, previous)
    temporary = link.with_name(f".{link.name}.link.{os.getpid()}")
    os.symlink(folder.name, temporary)
    os.replace(temporary, link)
    if previous is not None and previous.resolve() != folder.resolve():
        shutil.rmtree(previous, ignore_errors=True)


def remove_sharded(link: Path) -> None:
    """Delete a sharded checkpoint (interrupted.dcp once last.dcp has moved past it). Rank 0."""
    if link.is_symlink():
        target = link.parent / os.readlink(link)
        link.unlink()
        shutil.rmtree(target, ignore_errors=True)


def restore_sharded(model: nn.Module, optimizer: torch.optim.Optimizer | None, path: str | Path) -> None:
    """Load a sharded checkpoint's model (and optimizer) into this rank's shards, resharding as needed.

    Raises:
        SpecError: CHECKPOINT_ERROR when the checkpoint does not fit this spec's model or optimizer.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                         set_state_dict)

    where = str(Path(path).resolve())
    try:
        if optimizer is None:
            model_state = get_model_state_dict(model)
            with dcp_in_one_process():
                dcp.load({"model": model_state}, checkpoint_id=where)
            set_model_state_dict(model, model_state)
            return
        model_state, optimizer_state = get_state_dict(model, optimizer)
        with dcp_in_one_process():
            dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=where)
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
    except (RuntimeError, KeyError, ValueError, CheckpointException) as error:  # CheckpointException: a BaseException
        raise SpecError(Problem(f"{path}: the sharded checkpoint does not fit this spec's model or optimizer: "
                                f"{str(error).strip().splitlines()[0]}", None, "CHECKPOINT_ERROR")) from None


def checkpoint_file(run_dir: Path, name: str, sharded: bool) -> Path:
    """`run_dir/last.pt`, or `run_dir/last.dcp` for a sharded run."""
    return run_dir / (f"{Path(name).stem}.dcp" if sharded else name)


def existing_checkpoint(run_dir: Path, name: str) -> Path | None:
    """`last.pt` or `last.dcp` (whichever the run wrote), or None."""
    for path in (run_dir / name, checkpoint_file(run_dir, name, True)):
        if path.is_file() or (path.is_symlink() and path.exists()):
            return path
    return None


def write_checkpoint(session: Any, name: str, *, verify: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Save the session's state as `name` (last.pt, best.pt, interrupted.pt; a `.dcp` folder when
    sharded): rank 0 alone for a `.pt`, every rank for a sharded one. Returns the path."""
    path = checkpoint_file(session.run_dir, name, session.sharded)
    if session.sharded:
        save_sharded({**session.checkpoint_state(), **(extra or {})}, session.model, session.optimizer, path,
                     verify=verify)
    elif session.is_main:
        save_checkpoint({**session.checkpoint_state(), **(extra or {})}, path, verify=verify)
    return path


def remove_checkpoint(run_dir: Path, name: str) -> None:
    """Delete `name` and its sharded twin, if there (rank 0)."""
    (run_dir / name).unlink(missing_ok=True)
    remove_sharded(checkpoint_file(run_dir, name, True))
