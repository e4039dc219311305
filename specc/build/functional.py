"""Tensor functions that the spec language adds on top of torch's (kept tiny: they appear in forward)."""
from __future__ import annotations

import torch


def reshape(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Reshape keeping the batch dim: `shape` excludes it, like the spec's `inputs` shapes."""
    return x.reshape(x.shape[0], *shape)


def view(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """View keeping the batch dim (see `reshape`)."""
    return x.view(x.shape[0], *shape)


def contiguous(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous()
