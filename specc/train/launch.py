"""Starting a training on several processes of this machine (`specc train --nproc N`), and
`train`, the public entry point that decides between that and this process.

The launcher sits above `specc.train.training`: each process it starts calls `training.train`,
which never calls back here (see specc.train.ranks for what the processes share).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from specc.lang.errors import Location, Problem, SpecError
from specc.train.ranks import FAILURES, launched, peer_failed, report_failure


class LaunchError(RuntimeError):
    """`launch` could not train: a process failed (its traceback is on stderr), or torchrun
    already started this one."""


def train(spec_or_path: Any, *, out: str | Path = "runs", resume: str | Path | None = None,
          overrides: dict[str, Any] | None = None, verbose: bool = True, nproc: int = 1,
          **train_keys: Any) -> Any:
    """Train the spec's model as its `train:` section says (`specc.train`).

    Args:
        spec_or_path: a spec path, YAML text, dict or `Spec`.
        out: parent folder of run directories.
        resume: a last.pt (or best.pt) to continue from, exactly where it stopped; the run goes on
            writing into that checkpoint's folder.
        overrides: vars or dotted keys, like `--set` (`{"width": 32, "train.data.split.seed": 1}`).
        verbose: print progress and the final table.
        nproc: processes to train on, started here through torchrun's launcher (DDP on one
            machine; `batch_size` is per process; they are spawned, so call this under
            `if __name__ == "__main__":`). 1 = this process.
        **train_keys: keys of the `train:` section (`epochs=5`, `device="cpu"`).

    Returns:
        A `TrainResult` (see its fields); `status` says whether the run completed. With `nproc`,
        rank 0's.

    Raises:
        SpecError: invalid spec, unreadable data or checkpoint (every problem located).
        LaunchError: with `nproc`, a process failed.
    """
    if nproc > 1:
        return launch_training(spec_or_path, nproc, out=out, resume=resume, overrides=overrides,
                               verbose=verbose, **train_keys)
    from specc.train.training import train as train_here

    return train_here(spec_or_path, out=out, resume=resume, overrides=overrides, verbose=verbose, **train_keys)


def launch_training(spec_or_path: Any, nproc: int, *, out: str | Path = "runs", resume: str | Path | None = None,
                    overrides: dict[str, Any] | None = None, verbose: bool = True, **train_keys: Any) -> Any:
    """`specc.train` on `nproc` processes of this machine (see `launch`): what `specc train --nproc`
    runs. Only the spec is read here, so its errors show before any process starts, and this
    process skips importing the training stack (the processes it starts import it).

    Args:
        spec_or_path, out, resume, overrides, verbose, **train_keys: as for `specc.train`.
        nproc: processes to start.

    Returns:
        Rank 0's `TrainResult`.

    Raises:
        SpecError: the spec, data or checkpoint has a problem (found here or by any rank: the
            lowest failing rank's problems; one rank's error ends every process).
        LaunchError: a process failed.
    """
    from specc.lang.spec import load

    if spec_or_path is None and resume is not None:  # resume with the checkpoint's own spec
        from specc.lang.safety import stored_spec_scope
        from specc.train.resume import read_resume_checkpoint

        with stored_spec_scope():   # the checkpoint's spec: safe mode unless its code is trusted (--trust-code)
            # a .dcp's state.pt only, not its shards
            spec = load(read_resume_checkpoint(resume).get("spec"),
                        {**(overrides or {}), **{f"train.{key}": value for key, value in train_keys.items()}})
    else:
        spec = load(spec_or_path, {**(overrides or {}), **{f"train.{key}": value for key, value in train_keys.items()}})
    with tempfile.TemporaryDirectory(prefix="specc-ranks-") as failures:
        FAILURES["folder"] = Path(failures)   # here too: the launcher's logs know a rank's SpecError
        try:
            return launch(_train_process, (spec, str(out), resume, verbose, failures), nproc)
        except LaunchError:
            problems = _first_failure(Path(failures))
            if problems:
                raise SpecError(problems) from None
            raise
        finally:
            FAILURES["folder"] = None


def _train_process(spec: Any, out: str, resume: str | Path | None, verbose: bool, failures: str) -> Any:
    """One process of `launch_training`.

    A SpecError (bad data met by this rank alone, say) must end the whole job: the other ranks wait
    for this one in their next collective and would wait for ever. So its problems go to a file in
    `failures` and the process exits with code 2; torchrun's agent then stops the other processes,
    and the launching process reports the problems as a spec error rather than a crash.

    A peer of that rank may fail too, when the group breaks under it (gloo: connection closed): its
    error is a consequence, not news, so it exits with code 2 quietly as well; the SpecError's rank
    writes its report before it leaves the group, so the peer finds it.
    """
    from specc.train.training import train

    FAILURES["folder"] = Path(failures)
    try:
        return train(spec, out=out, resume=resume, verbose=verbose)
    except SpecError as error:  # met outside the process group, or reported already in it
        report_failure(error)
        _leave(2)
    except Exception:
        if peer_failed():
            _leave(2)
        raise


def _leave(code: int) -> None:
    """End this process now: the interpreter's teardown of a process group whose peer is gone can
    abort (gloo: SIGABRT), which the agent would report as a crash instead of this exit code."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _first_failure(failures: Path) -> list[Problem]:
    """The problems of the lowest rank that reported a SpecError (empty when none did)."""
    reports = sorted(failures.glob("rank*.json"), key=lambda path: int(path.stem.removeprefix("rank")))
    if not reports:
        return []
    problems = []
    for record in json.loads(reports[0].read_text()):
        location = Location(record["file"], record["line"], record["column"]) if record["file"] is not None else None
        problems.append(Problem(record["message"], location, record["code"], record["suggestion"], record["notes"]))
    return problems


def launch(function: Callable[..., Any], args: tuple, nproc: int) -> Any:
    """Run `function(*args)` in `nproc` new processes on this machine, under torchrun's launcher.

    The processes get torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from a
    c10d rendezvous on a free local port), so `function` behaves exactly as under
    `torchrun --standalone --nproc-per-node nproc`. Ctrl-C reaches the processes from the
    terminal; they stop together and save last.pt, and a second Ctrl-C ends them at once.

    Args:
        function: an importable (picklable) function; it runs in freshly spawned interpreters.
        args: its arguments (pickled).
        nproc: processes to start.

    Returns:
        Rank 0's return value.

    Raises:
        LaunchError: a process raised or was killed (its traceback is on stderr above), or this
            process runs under torchrun already.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if launched():
        raise LaunchError("this process already runs under torchrun: start `specc train` without --nproc")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"specc-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          signals_to_handle="SIGTERM,SIGHUP,SIGQUIT")  # SIGINT: _second_ctrl_c_ends_workers
    try:
        with _threads_per_process(nproc), _second_ctrl_c_ends_workers(), _quiet_spec_error_exits():
            return elastic_launch(config, function)(*args)[0]
    except ChildFailedError as error:
        failures = ", ".join(f"rank {rank} (exit code {failure.exitcode})" for rank, failure in error.failures.items())
        raise LaunchError(f"training process failed: {failures}; see its output above") from None


class _SpecErrorExit(logging.Filter):
    """Drops the agent's traceback for a process that exited with code 2: a SpecError that
    `launch_training` reports as one located line (a traceback of torch's own code says nothing);
    and then the warnings that the other processes are being stopped, which is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage() if record.args else ""
        if message.startswith("failed (exitcode: 2)"):
            return False
        # once a rank has reported its SpecError, that error explains every exit: torch stopping the
        # others (before the agent logs the exit), or a peer that died as its group broke
        return not (message.startswith(("Terminating process", "failed (exitcode:")) and peer_failed())


@contextlib.contextmanager
def _quiet_spec_error_exits() -> Iterator[None]:
    logs = [logging.getLogger(name) for name in ("torch.distributed.elastic.multiprocessing.api",
                                                 "torch.multiprocessing.spawn")]
    spec_error_exits = _SpecErrorExit()
    for log in logs:
        log.addFilter(spec_error_exits)
    try:
        yield
    finally:
        for log in logs:
            log.removeFilter(spec_error_exits)


@contextlib.contextmanager
def _threads_per_process(nproc: int) -> Iterator[None]:
    """Share the cores between the processes (torchrun sets OMP_NUM_THREADS=1 for the same reason)."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


@contextlib.contextmanager
def _second_ctrl_c_ends_workers() -> Iterator[None]:
    """Ctrl-C in a terminal signals every process of the job: the workers stop together by
    themselves, so the launcher lets the first one pass; a second one ends the launcher, whose
    agent then terminates the workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first_ctrl_c(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
