"""Per-item figures for the HTML viewer: parameters and forward FLOPs of each node of a compiled spec.

The compiled graph is run one node at a time on the meta device under one FlopCounterMode (the
same way `specc summary` counts), so each item gets the FLOPs of its own call and nothing is
allocated. Drawing sits beside the summary stage, not above it, hence this small runner of its own.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from specc.build.graph import Graph, Node
from specc.build.flop_rules import run_counted
from specc.build.infer import DTYPES


def node_figures(graph: Graph, module: nn.Module) -> dict[str, dict[str, int]]:
    """`{node name: {"params": n, "shared_params": n, "flops": n}}` for a batch of 1.

    Args:
        graph: the compiled graph (on the meta device).
        module: the compiled module whose submodules the nodes name.

    Returns:
        One entry per node; a module reused with `share:` counts its weights once, at its first use.
    """
    modes = {layer: layer.training for layer in module.modules()}
    module.eval()   # as the dry run: BatchNorm1d after a global pool cannot train on a batch of 1
    try:
        return _figures(graph, module)
    finally:
        for layer, training in modes.items():
            layer.training = training


def _figures(graph: Graph, module: nn.Module) -> dict[str, dict[str, int]]:
    figures, counted = {}, set()
    last_use = {name: index for index, node in enumerate(graph.nodes) for name in node.inputs}
    values: dict[str, Any] = {}
    for index, node in enumerate(graph.nodes):
        values[node.name], flops = _run(node, values, module)
        entry = {"params": 0, "shared_params": 0, "flops": flops}
        if node.op == "module":
            for parameter in module.get_submodule(node.shared_with or node.name).parameters():
                key = "shared_params" if id(parameter) in counted else "params"
                entry[key] += parameter.numel()
                counted.add(id(parameter))
        figures[node.name] = entry
        for name in set(node.inputs):
            if last_use[name] == index:
                del values[name]
    return figures


def _run(node: Node, values: dict, module: nn.Module) -> tuple[Any, int]:
    if node.op == "input":
        shape = [1, *node.shape[1:]]
        return torch.empty(shape, dtype=DTYPES[node.dtype or "float32"], device="meta"), 0
    # FLOP formulas where the layer has one (build/flop_rules.py), else FlopCounterMode
    return run_counted(node, [values[name] for name in node.inputs], module, _flop_counter)


def _flop_counter():
    """FlopCounterMode, with the formula torch 2.13 lacks for the CPU flash-attention kernel."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: cpu_attention_flops} if cpu_attention else None)
