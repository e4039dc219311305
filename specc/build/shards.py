"""Writing a full tensor into a parameter that may hold only a shard of it (a DTensor under
`strategy: fsdp` or `parallel: {tensor: N}`): each process keeps its own part, with no communication."""
from __future__ import annotations

import torch


def copy_full_value(target: torch.Tensor, full: torch.Tensor) -> None:
    """`target.copy_(full)`, where `target` may be a DTensor holding this process's part of `full`.

    Every process holds `full` alike (the same file, the same seeded draw), so each cuts its own part.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        part = distribute_tensor(full.to(target.dtype), target.device_mesh, target.placements, src_data_rank=None)
        target.to_local().copy_(part.to_local())
    else:
        target.copy_(full)
