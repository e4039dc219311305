"""A user's own layers, imported by specs in the tests through `imports: [user_layers.Scale]`."""
from __future__ import annotations

import torch
from torch import nn


class Scale(nn.Module):
    """Multiplies each feature by a learned factor (a stand-in for any custom layer)."""

    def __init__(self, num_features: int, initial: float = 1.0):
        super().__init__()
        self.factor = nn.Parameter(torch.full((num_features,), float(initial)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def make_scale(num_features: int) -> Scale:
    """A factory function: not an nn.Module subclass, so `imports:` must refuse it."""
    return Scale(num_features)
