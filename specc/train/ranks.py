"""Training on several processes or machines under torchrun: process group, ranks, reductions.

specc has no launcher of its own. `torchrun --nproc-per-node N -m specc train spec.yaml` starts N
copies of `specc train`, and `specc train --nproc N` does the same through torchrun's Python API
(`torch.distributed.launcher`: the same agent and rendezvous as `torchrun --standalone`). Each
process reads the whole data set, trains on its shard of every epoch's permutation, and
DistributedDataParallel averages the gradients, so every rank holds the same weights. Losses and
metrics are summed over the ranks; rank 0 alone prints and writes files (docs/distributed.md).

Outside torchrun every helper here is a no-op, so the loop calls them unconditionally.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from specc.lang.errors import SpecError


# Set by `specc train --nproc` in each process it starts (launch._train_process): the folder where a
# rank that meets a SpecError writes its problems, for the launcher to report as one located error.
FAILURES: dict[str, Path | None] = {"folder": None}


def report_failure(error: SpecError) -> None:
    """Write this rank's problems for the launcher (once; no-op outside `specc train --nproc`)."""
    folder = FAILURES["folder"]
    if folder is None:
        return
    path = folder / f"rank{os.environ.get('RANK', '0')}.json"
    if path.exists():
        return
    records = [{**problem.to_dict(), "notes": list(problem.notes)} for problem in error.problems]
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(records))
    temporary.replace(path)   # whole or absent: a peer or the launcher never reads half a report


def peer_failed() -> bool:
    """Another rank of this `specc train --nproc` job has reported a SpecError."""
    folder = FAILURES["folder"]
    return folder is not None and any(folder.glob("rank*.json"))


def launched() -> bool:
    """True inside a process that torchrun started as one of several."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's global rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes training together (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that prints, logs and writes the run directory."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, plain `cuda` means this process's GPU: `cuda:<LOCAL_RANK>`."""
    if launched() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join the torchrun job for the length of a run, and leave it cleanly (also on errors and Ctrl-C).

    The backend is `nccl` on CUDA and `gloo` otherwise; the address, rank and world size come from
    the environment torchrun sets. Outside torchrun, or when the caller has already joined a
    group (which it then keeps), nothing is started or stopped.

    Args:
        device: the configured training device.

    Yields:
        This process's device (`cuda:<LOCAL_RANK>` for plain `cuda`).
    """
    device = local_device(device)
    if not launched() or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with _sigterm_unwinds():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            yield device
        except SpecError as error:
            # before the group goes: a peer that then loses its connection finds the report (peer_failed)
            report_failure(error)
            raise
        finally:
            dist.destroy_process_group()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """torchrun's agent stops its workers with SIGTERM (after a second Ctrl-C, or when a peer
    failed): exit through `finally` blocks, so the process group is destroyed and logs closed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_unwinding(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_unwinding)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wrap_model(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel; constructing it copies rank 0's weights to every rank.

    `static_graph`: a compiled spec runs the same layers at every step, and with the flag DDP
    learns in the first step which parameters get no gradient (those feeding only the other
    outputs of a multi-output spec) instead of searching the autograd graph after every step.
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, static_graph=True)


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over every rank (the same tensor in a single process)."""
    if world_size() == 1:
        return tensor
    shared = tensor.to(_collective_device())
    dist.all_reduce(shared, op=dist.ReduceOp.SUM)
    return shared.to(tensor.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one: decisions to stop are taken together."""
    if world_size() == 1:
        return flag
    return bool(reduce_sum(torch.tensor([int(flag)], device=_collective_device())).item())


def share_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP copies them at the start of each training forward, so after an epoch's last step each rank
    holds its own until the next one; validation and checkpoints must see one model.
    """
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def on_main(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` run on rank 0 only, its result shared with every rank.

    Files are read and written by rank 0 alone (the run directory, checkpoints), so processes on
    other machines need no copy of them, and no rank races rank 0's writes. An error on rank 0 is
    raised on every rank: a SpecError as itself, anything else as a RuntimeError.
    """
    if world_size() == 1:
        return function(*args)
    outcome: tuple[Any, list | None, str | None] = (None, None, None)
    error: Exception | None = None
    if is_main():
        try:
            outcome = (function(*args), None, None)
        except SpecError as failure:
            error, outcome = failure, (None, failure.problems, None)
        except Exception as failure:  # noqa: BLE001 - re-raised below, after the other ranks hear of it
            error, outcome = failure, (None, None, f"{type(failure).__name__}: {failure}")
    shared = [outcome]
    dist.broadcast_object_list(shared, src=0)
    value, problems, message = shared[0]
    if error is not None:
        raise error
    if problems is not None:
        raise SpecError(problems)
    if message is not None:
        raise RuntimeError(f"rank 0 failed: {message}")
    return value


def _collective_device() -> torch.device:
    """NCCL reduces tensors on this process's GPU; gloo on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
