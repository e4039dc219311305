"""Checks around a checkpoint's bytes that a stranger's file or a full disk make necessary: a failed
write told apart from a bug (and a full disk from other write failures), and the stored input
scaling's structure (`normalizer`), which evaluate, predict and export apply to data."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from specc.lang.errors import Problem, SpecError

# What torch's zip writer raises when a write comes up short (a full disk): it reports the
# position it expected, not the OSError, which Python may raise only at close or not at all.
_TORCH_WRITE_FAILURES = ("unexpected pos", "write failed", "No space left")


def write_failure(error: BaseException, path: Path, temporary: Path) -> SpecError | None:
    """The CHECKPOINT_ERROR for a failed write of `temporary` (called before it is removed), or None
    for an error that is not about writing (a bug, to be re-raised as it is)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return no_space(path)
        cause = cause.__cause__ or cause.__context__
    if not (isinstance(error, OSError) or any(text in str(error) for text in _TORCH_WRITE_FAILURES)):
        return None
    if _disk_full(temporary.parent):
        return no_space(path)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return SpecError(Problem(f"cannot write {path} ({reason}); the previous checkpoint is intact",
                             None, "CHECKPOINT_ERROR"))


def no_space(path: Path) -> SpecError:
    """The error a full disk gives while `path` is written."""
    return SpecError(Problem(f"no space left while writing {path}; the previous checkpoint is intact",
                             None, "CHECKPOINT_ERROR"))


def _disk_full(folder: Path) -> bool:
    """Less than 1 MiB left for this user: checked while the failed temporary file still takes its space."""
    try:
        usage = os.statvfs(folder)
    except (OSError, AttributeError):   # no statvfs on Windows
        return False
    return usage.f_bavail * usage.f_frsize < 2**20


def check_normalizer(normalizer: Any, path: str | Path) -> None:
    """The input scaling stored with the weights has the shape `Normalizer.state_dict` writes:
    `{"kind": str, "stats": [None or [shift, scale] per input]}`, shift and scale floating tensors
    of one shape (a file from a stranger may hold anything there).

    Raises:
        SpecError: CHECKPOINT_ERROR saying what is wrong.
    """
    def fits(entry: Any) -> bool:
        return entry is None or (isinstance(entry, (list, tuple)) and len(entry) == 2
                                 and all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in entry)
                                 and entry[0].shape == entry[1].shape)

    if not (isinstance(normalizer, dict) and isinstance(normalizer.get("kind"), str)
            and isinstance(normalizer.get("stats"), list) and all(fits(entry) for entry in normalizer["stats"])):
        raise SpecError(Problem(f"{path}: the checkpoint's `normalizer` is malformed (it needs kind: a name and "
                                f"stats: a list holding, per input, null or [shift, scale] tensors of one shape)",
                                None, "CHECKPOINT_ERROR"))
