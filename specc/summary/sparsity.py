"""The sparsity of trained weights (`specc summary spec.yaml --checkpoint best.pt`): how many of each
weight tensor's values are exactly zero, per tensor and in total, after `train.prune:` or any other
pruning. Computing (`sparsity`) and rendering (`Sparsity.lines`, `Sparsity.table`) are apart."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specc.weights.loading import read_weights


@dataclass
class TensorSparsity:
    """One tensor: its state_dict name, shape, and how many of its values are zero."""

    name: str
    shape: tuple[int, ...]
    zeros: int
    total: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.total if self.total else 0.0


@dataclass
class Sparsity:
    """Per weight tensor (2 dims or more: matrices and kernels, what pruning cuts) and over them all."""

    source: str
    tensors: list[TensorSparsity]
    parameters: int          # every floating tensor's values: biases, norms and buffers included
    parameter_zeros: int

    @property
    def zeros(self) -> int:
        return sum(tensor.zeros for tensor in self.tensors)

    @property
    def total(self) -> int:
        return sum(tensor.total for tensor in self.tensors)

    def lines(self) -> list[str]:
        """The totals, as `label: value` lines."""
        share = self.zeros / self.total if self.total else 0.0
        overall = self.parameter_zeros / self.parameters if self.parameters else 0.0
        return [f"Weight sparsity: {share:.2%} ({self.zeros:,} of {self.total:,} values in {len(self.tensors)} "
                f"weight tensors are zero)",
                f"All floating tensors: {overall:.2%} zero ({self.parameter_zeros:,} of {self.parameters:,} values, "
                f"biases, norms and buffers included)"]

    def table(self) -> Any:
        """A rich Table: tensor, shape, zeros, sparsity."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"Sparsity of {escape(self.source)}")
        for column, justify in (("Tensor", "left"), ("Shape", "left"), ("Zeros", "right"), ("Sparsity", "right")):
            table.add_column(column, justify=justify)
        for tensor in self.tensors:
            table.add_row(escape(tensor.name), "×".join(map(str, tensor.shape)), f"{tensor.zeros:,}",
                          f"{tensor.fraction:.2%}")
        return table

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "zeros": self.zeros, "total": self.total,
                "parameters": self.parameters, "parameter_zeros": self.parameter_zeros,
                "tensors": [{"name": t.name, "shape": list(t.shape), "zeros": t.zeros, "total": t.total}
                            for t in self.tensors]}


def sparsity(weights: str | Path | dict[str, torch.Tensor]) -> Sparsity:
    """Count the zeros of a checkpoint's (or .safetensors file's, or state_dict's) floating tensors.

    Raises:
        SpecError: CHECKPOINT_ERROR for a missing or unreadable file.
    """
    state, _ = read_weights(weights)
    floating = {name: tensor for name, tensor in state.items() if tensor.is_floating_point()}
    tensors = [TensorSparsity(name, tuple(tensor.shape), int((tensor == 0).sum()), tensor.numel())
               for name, tensor in floating.items() if tensor.dim() >= 2]
    return Sparsity("weights" if isinstance(weights, dict) else str(weights), tensors,
                    sum(tensor.numel() for tensor in floating.values()),
                    sum(int((tensor == 0).sum()) for tensor in floating.values()))
