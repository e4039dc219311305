"""`Compiled`: what `specc.compile` returns — the module, the graph it came from (with dry-run
shapes) and the spec. Its own module so that the checks and weight loaders that take one need not
import the compiler."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from specc.lang.errors import Problem
from specc.build.graph import Graph
from specc.build.infer import DTYPES
from specc.lang.spec import Spec


@dataclass
class Compiled:
    """A compiled spec: the module, the graph it came from (with dry-run shapes) and the spec."""

    spec: Spec
    graph: Graph
    module: nn.Module
    device: torch.device
    batch_size: int
    meta_modules: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    # builds the same model on meta from `meta_modules`; set by the compiler, which owns the fx code
    meta_builder: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)
    warnings: list[Problem] = field(default_factory=list, repr=False)   # located, e.g. UNUSED_ITEM

    @property
    def input_names(self) -> list[str]:
        return list(self.spec.inputs)

    def input_shapes(self) -> dict[str, list[int]]:
        """Each input's shape without the batch dim (vars resolved)."""
        return {node.name: list(node.meta["shape"]) for node in self.graph.inputs}

    def example_inputs(self, batch_size: int = 2, device: str | torch.device | None = None) -> tuple[torch.Tensor, ...]:
        """Random inputs of the spec's shapes and dtypes (integers in [0, 2) for token inputs)."""
        device = torch.device(device) if device is not None else self.device
        tensors = []
        for node in self.graph.inputs:
            shape, dtype = (batch_size, *node.meta["shape"]), DTYPES[node.dtype]
            if device.type == "meta":
                tensors.append(torch.empty(shape, dtype=dtype, device=device))
            elif dtype.is_floating_point:
                tensors.append(torch.randn(shape, dtype=dtype, device=device))
            else:
                tensors.append(torch.randint(0, 2, shape, dtype=dtype, device=device))
        return tuple(tensors)

    def meta_module(self) -> nn.Module:
        """The same model on the meta device (for FLOP counts and summaries without allocating)."""
        if self.device.type == "meta":
            return self.module
        return self.meta_builder()
