"""The run directory: created atomically under `--out`, locked while a run writes into it, and
every file in it written atomically (a temp file beside it, then os.replace).

A full disk never leaves half a file: the previous version stays, and the error names the file.
"""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any, Callable

from specc.lang.errors import Problem, SpecError

LOCK_NAME = ".lock"


def new_run_dir(out: Path, name: str) -> Path:
    """`out/<name>/<timestamp>/`, created atomically; a suffix when another run took that name.

    Raises:
        SpecError: the name would put the run directory outside `out`.
    """
    out = Path(out)
    parent = (out / name).resolve()
    if not parent.is_relative_to(out.resolve()) or parent == out.resolve():
        raise SpecError(Problem(f"the run name {name!r} would write outside --out {out}", None, "TYPE_ERROR"))
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in range(10_000):
        run_dir = out / name / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        try:
            run_dir.mkdir()  # atomic: exactly one of two racing runs gets each name
            return run_dir
        except FileExistsError:
            continue
    raise SpecError(Problem(f"{out / name}: could not create a new run directory", None, "TYPE_ERROR"))


def lock_run_dir(run_dir: Path) -> Any:
    """Take `run_dir/.lock` (an advisory flock) for as long as a run writes into the directory.

    Returns:
        The open lock file, for `unlock`; None where flock does not exist (Windows).

    Raises:
        SpecError: CHECKPOINT_ERROR when another process holds it (a second `--resume` into the run).
    """
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(Path(run_dir) / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SpecError(Problem(f"{run_dir} is in use by another `specc train` (it holds {LOCK_NAME}); wait "
                                f"for it to finish, or resume a copy of the checkpoint elsewhere", None,
                                "CHECKPOINT_ERROR")) from None
    return handle


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the `.<name>.<pid>.tmp` files that writers killed mid-write (`kill -9`, a power cut)
    left in `run_dir` and its fold folders: those whose process is gone. Called with the lock held.

    Returns:
        The files removed.
    """
    removed = []
    for temporary in [*Path(run_dir).glob(".*.tmp"), *Path(run_dir).glob("fold_*/.*.tmp")]:
        pid = temporary.name.removesuffix(".tmp").rpartition(".")[2]
        if pid.isdigit() and not _alive(int(pid)):
            temporary.unlink(missing_ok=True)
            removed.append(temporary)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)   # signal 0: only asks whether the process exists
    except PermissionError:   # it does, and belongs to another user
        return True
    except (ProcessLookupError, OverflowError, OSError):
        return False
    return True


def unlock(handle: Any) -> None:
    """Release a lock taken by `lock_run_dir` (closing the file releases the flock)."""
    if handle is not None:
        handle.close()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary)`, fsync, then replace `path`: readers see the old file or the new one.

    Raises:
        SpecError: CHECKPOINT_ERROR when the disk is full (the previous file is intact).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(path) from None
        raise
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically (see `write_atomic`)."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def no_space(path: Path) -> SpecError:
    """The error for a full disk while writing `path`."""
    what = "checkpoint" if path.suffix == ".pt" else "file"
    return SpecError(Problem(f"no space left while writing {path}; the previous {what} is intact",
                             None, "CHECKPOINT_ERROR"))
