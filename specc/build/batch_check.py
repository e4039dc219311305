"""The batch dim stays the batch: after the dry run, every item's output is checked at two batch sizes.

An item that indexes or reduces the batch (`getitem: [0]` after an LSTM, which already passed
element 0 on; `squeeze` at batch 1; `mean: {dim: 0}`) gives a model that runs and returns the wrong
thing. The dry run's batch alone cannot see it when a feature dim happens to equal the batch size,
so the graph is run a second time on meta tensors at another batch size: a dim holds the batch
only when it is the batch size in both runs.

An item may declare where its batch is (`batch_dim: 1` for an LSTM's `h_n`, `batch_dim: false` for
a batchless value); items reading such a value are not checked until the batch is back at dim 0.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from specc.lang.errors import Problem, SpecError
from specc.build.graph import Graph, Node
from specc.build.infer import DTYPES, call_layer_on_meta, memo_key, run_on_meta
from specc.build.tensors import FREE_TENSORS, free_tensor_value

# What a value's batch is known to be: at dim 0 (checked), absent (free tensors), or elsewhere (declared).
AT_ZERO, ABSENT, ELSEWHERE = "at_zero", "absent", "elsewhere"


def second_batch_size(batch_size: int) -> int:
    """1 beside any other size, so a model that only breaks at batch 1 (`squeeze`) is caught by
    `specc check` and `specc summary` (batch 1) alike; 2 beside 1."""
    return 2 if batch_size == 1 else 1


class BatchWatch:
    """Follows the batch dim through the dry run (`observe`, called after each node), then `confirm`s
    it with a second run at another batch size.

    During the dry run only a dim 0 that is not the batch size is certain to be wrong (a feature
    dim may equal the batch size by chance); the second run settles the rest.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.states: dict[str, str] = {}
        self.first: dict[str, tuple | None] = {}

    def observe(self, node: Node) -> None:
        """Raises: SpecError at an item whose output at the dry run's batch size cannot hold the batch at dim 0."""
        self.first[node.name] = node.shape
        self.states[node.name] = _state_of(node, self.states, [(self.first, self.batch_size)])

    def confirm(self, graph: Graph, modules: dict[str, nn.Module]) -> None:
        """Run the graph again with the dry run's meta layers at the second batch size.

        Raises:
            SpecError: at the first item whose output lost or moved the batch dim, or that fails at that size.
        """
        other = second_batch_size(self.batch_size)
        runs = [(self.first, self.batch_size), ({}, other)]
        states: dict[str, str] = {}
        values: dict[str, Any] = {}
        seen: dict[tuple, Any] = {}   # identical layers on identical inputs: run once (a 7B model has 32)
        with torch.no_grad():
            for node in graph.nodes:
                value = _run_located(node, values, modules, other, seen, runs)
                values[node.name] = value
                runs[1][0][node.name] = tuple(value.shape) if isinstance(value, torch.Tensor) else None
                states[node.name] = _state_of(node, states, runs)


def _state_of(node: Node, states: dict, runs: list[tuple[dict, int]]) -> str:
    if node.op == "input":
        return AT_ZERO
    declared = node.meta.get("batch_dim", 0)
    shapes = [shapes.get(node.name) for shapes, _ in runs]
    if declared is False:
        return ABSENT
    if any(shape is None for shape in shapes):    # a tuple: its elements are checked where picked
        return AT_ZERO if any(states.get(name) == AT_ZERO for name in node.inputs) else ABSENT
    inputs = [states[name] for name in node.inputs]
    batch_dims = _batch_dims(shapes, [size for _, size in runs])
    settled = len(runs) > 1   # with one run a dim may equal the batch size by chance: only a lost batch is certain
    if "batch_dim" in node.meta:
        rank = len(shapes[0])
        if settled and (not -rank <= declared < rank or declared % rank not in batch_dims):
            raise SpecError(_problem(node, f"declares batch_dim: {declared}, but its output "
                                           f"{_shape_text(node.name, runs)} has the batch at {_where(batch_dims)}", runs))
        return AT_ZERO if rank and declared % rank == 0 else ELSEWHERE
    if ELSEWHERE in inputs:   # reading a value declared to hold its batch elsewhere: back at 0 or not checked
        return AT_ZERO if settled and 0 in batch_dims else ELSEWHERE
    if AT_ZERO not in inputs:   # computed from free tensors alone
        return ABSENT
    if 0 in batch_dims or (batch_dims and not settled):
        return AT_ZERO
    batched = [name for name in node.inputs if states[name] == AT_ZERO and runs[-1][0].get(name) is not None]
    given = f"input {_shape_text(batched[0], runs)} -> " if batched else ""
    raise SpecError(_problem(node, f"{'moves' if batch_dims else 'drops'} the batch dim: {given}output "
                                   f"{_shape_text(node.name, runs)}", runs))


def _batch_dims(shapes: list[tuple], sizes: list[int]) -> list[int]:
    """The dims that are the batch size in every run."""
    if len({len(shape) for shape in shapes}) != 1:
        return []
    return [dim for dim in range(len(shapes[0])) if all(shape[dim] == size for shape, size in zip(shapes, sizes))]


def _shape_text(name: str, runs: list[tuple[dict, int]]) -> str:
    """`[B, 5, 8]` with the dims that follow the batch size written B (once two runs agree)."""
    shapes = [shapes[name] for shapes, _ in runs]
    batch = set(_batch_dims(shapes, [size for _, size in runs])) if len(runs) > 1 else set()
    if len(set(shapes)) > 1 and not batch:   # sizes that follow the batch some other way: show each run
        return ", ".join(f"{list(shape)} at batch {size}" for shape, (_, size) in zip(shapes, runs))
    return "[" + ", ".join("B" if dim in batch else str(size) for dim, size in enumerate(shapes[0])) + "]"


def _where(batch_dims: list[int]) -> str:
    return f"dim {batch_dims[0]}" if batch_dims else "no dim"


def _problem(node: Node, what: str, runs: list[tuple[dict, int]]) -> Problem:
    sizes = " and ".join(str(size) for _, size in runs)
    legend = "B = the batch; " if len(runs) > 1 else ""
    message = (f"{_name(node)} {what} ({legend}dry run{'s' if len(runs) > 1 else ''} at batch {sizes}). If that is intended, say where the "
               f"batch is: `batch_dim: <dim>` on the item, or `batch_dim: false`")
    return Problem(message, node.location, "BATCH_DIM", notes=node.meta.get("via", []))


def _name(node: Node) -> str:
    return node.target if node.label == node.target else f"{node.target} '{node.label}'"


def _run_located(node: Node, values: dict, modules: dict, batch_size: int, seen: dict, runs) -> Any:
    try:
        return _run(node, values, modules, batch_size, seen)
    except SpecError:
        raise
    except Exception as error:  # noqa: BLE001 - a layer that works at one batch size only
        shapes = ", ".join(_shape_text(name, runs[:1]) for name in node.inputs if runs[0][0].get(name) is not None)
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SpecError(Problem(f"{_name(node)} works on input {shapes} at batch {runs[0][1]} but not at batch "
                                f"{batch_size}: {text}", node.location, "SHAPE_MISMATCH",
                                notes=node.meta.get("via", []))) from None


def _run(node: Node, values: dict, modules: dict, batch_size: int, seen: dict) -> Any:
    if node.op == "input":
        return torch.empty((batch_size, *node.meta["shape"]), dtype=DTYPES[node.dtype], device="meta")
    inputs = [values[name] for name in node.inputs]
    if node.op == "function" and node.target in FREE_TENSORS:
        return free_tensor_value(modules[node.name].tensor, node.args, inputs)
    if node.op in ("function", "merge"):
        return run_on_meta(node, inputs)
    key = memo_key(node, inputs)
    if key is not None and key in seen:
        return seen[key]
    output = call_layer_on_meta(node, modules[node.shared_with or node.name], inputs)
    if key is not None:
        seen[key] = output
    return output
