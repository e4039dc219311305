"""Initial values of a model built on `meta`, one layer at a time: what a sharded training start uses
so that no process ever holds the whole model (specc.train.sharding).

A seeded one-process build draws every layer's initial weights in spec order (each layer's own
constructor), then applies the spec's `init:` in its key order. `initial_values` replays exactly those
draws on the CPU, yielding each parameter and buffer as a full tensor as soon as its layer is made; the
caller keeps its own shard of each and drops the rest. So N processes start from the very weights a
1-process build with the same seed has, while the largest full tensor alive is one layer's.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from specc.build.compiled import Compiled
from specc.build.compiler import spec_registry
from specc.build.initial_values import init_targets, tensor_named
from specc.build.tensors import FREE_TENSORS, make_free_tensor


def initial_values(compiled: Compiled, seed: int | None) -> Iterator[tuple[str, torch.Tensor]]:
    """`(qualified name, full CPU tensor)` of every parameter and buffer, drawn as a seeded build draws them.

    A name may come twice: the `init:` keys re-draw the parameters they choose after the layers are
    made. Tied parameters (`tie:`) come under each name, as before the tie; the caller keeps the
    source's values (see `tied_names`).

    Args:
        compiled: the spec compiled on `meta` (its graph and module give names and shapes).
        seed: the training seed; None draws from the current random state.
    """
    if seed is not None:
        torch.manual_seed(seed)
    spec, graph = compiled.spec, compiled.graph
    registry = spec_registry(spec)
    with torch.no_grad():
        for node in graph.nodes:
            if node.op == "module" and not node.shared_with:
                with torch.device("cpu"):
                    layer = registry.layer(node.target).cls(**node.args)
                for name, tensor in [*layer.named_parameters(), *layer.named_buffers()]:
                    yield f"{node.name}.{name}", tensor.detach()
                del layer
            elif node.op == "function" and node.target in FREE_TENSORS:
                yield node.name, make_free_tensor(node.target, node.args, "cpu").detach()
        for _key, _location, initialise, names in init_targets(compiled.module, graph, spec, every_name=True):
            for name in names:
                meta = tensor_named(compiled.module, name)   # a parameter, or a buffer init: sets
                tensor = torch.empty(meta.shape, dtype=meta.dtype)
                initialise(tensor)
                yield name, tensor


def tied_names(compiled: Compiled) -> set[str]:
    """Parameter names that `tie:` points at another parameter: their own draws are discarded."""
    return set(compiled.spec.tie)


def local_targets(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `module` by each of its names (sharded ones as DTensors)."""
    return {**dict(module.named_parameters(remove_duplicate=False)), **dict(module.named_buffers(remove_duplicate=False))}
