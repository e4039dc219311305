"""Named (symbolic) dimensions: `inputs: {tokens: {shape: [seq]}}` with `vars: {seq: 128}`.

The first dry run uses the var's value. A second dry run with that one dim doubled shows which
output dims follow it; those are labelled `seq`, `seq*4` or `seq/2` in `node.meta["symbolic_shape"]`
(batch dim included, as "B"), for summary and draw to show; an output that is a tuple of tensors
(`chunk`, `split`) gets one such list per tensor in `node.meta["symbolic_shapes"]`.
"""
from __future__ import annotations

import copy
from fractions import Fraction

from specc.lang.errors import SpecError
from specc.build.graph import Graph
from specc.build.infer import dry_run
from specc.build.registry import Registry


def label_symbolic_dims(graph: Graph, registry: Registry, batch_size: int) -> None:
    """Fill `node.meta["symbolic_shape"]` for every tensor node when an input has named dims."""
    for node in graph.nodes:
        if node.shape is not None:
            node.meta["symbolic_shape"] = ["B", *node.shape[1:]]
        if "shapes" in node.meta:
            node.meta["symbolic_shapes"] = [["B", *shape[1:]] for shape in node.meta["shapes"]]
    for input_node in graph.inputs:
        for dim, symbol in input_node.meta.get("symbols", {}).items():
            _label_one(graph, registry, batch_size, input_node.name, dim, symbol)


def _label_one(graph: Graph, registry: Registry, batch_size: int, input_name: str, dim: int, symbol: str) -> None:
    value = graph[input_name].meta["shape"][dim]
    # double first; a model capped at the declared size (positional tables) still runs at half of it
    for probe_size in (value * 2, value // 2):
        probe = _probe(graph, registry, batch_size, input_name, dim, probe_size) if probe_size >= 1 else None
        if probe is not None:
            break
    else:
        return  # the model only works at the declared size: leave the numbers
    for node, probed in zip(graph.nodes, probe.nodes):
        if node.shape is not None and probed.shape is not None:
            _label_dims(node.meta["symbolic_shape"], node.shape, probed.shape, symbol, value)
        shapes, probed_shapes = node.meta.get("shapes"), probed.meta.get("shapes")
        if shapes is not None and probed_shapes is not None and len(shapes) == len(probed_shapes):
            for labels, shape, probed_shape in zip(node.meta["symbolic_shapes"], shapes, probed_shapes):
                _label_dims(labels, shape, probed_shape, symbol, value)


def _label_dims(labels: list, shape: tuple, probed: tuple, symbol: str, value: int) -> None:
    """Label the dims of `shape` (not the batch dim) that the probe changed: they follow `symbol`."""
    if len(shape) != len(probed):
        return
    for index in range(1, len(shape)):
        if probed[index] != shape[index] and isinstance(labels[index], int):
            labels[index] = _expression(symbol, Fraction(shape[index], value))


def _probe(graph: Graph, registry: Registry, batch_size: int, input_name: str, dim: int, size: int) -> Graph | None:
    """A copy of the graph dry-run with one input dim set to `size`, or None if it does not run."""
    shapes = {node.name: list(node.meta["shape"]) for node in graph.inputs}
    shapes[input_name][dim] = size
    probe = copy.deepcopy(graph)
    for node in probe.nodes:
        if node.op == "module":  # let the probe infer sizes afresh
            for name in node.inferred:
                node.args.pop(name, None)
            node.inferred = []
    try:
        dry_run(probe, registry, batch_size, shapes)
    except SpecError:
        return None
    return probe


def _expression(symbol: str, ratio: Fraction) -> str:
    if ratio == 1:
        return symbol
    if ratio.denominator == 1:
        return f"{symbol}*{ratio.numerator}"
    if ratio.numerator == 1:
        return f"{symbol}/{ratio.denominator}"
    return f"{symbol}*{ratio.numerator}/{ratio.denominator}"
