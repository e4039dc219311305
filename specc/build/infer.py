"""The dry run: push `meta` tensors through the graph, filling in sizes the spec leaves out.

Each layer is built on the meta device only once its input has arrived, so `in_features` and
friends are read off the real tensor; nothing is allocated. The first failure is reported at the
spec line of the item that caused it, with the shapes involved.
"""
from __future__ import annotations

import operator
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from specc.lang.errors import Problem, SpecError
from specc.build.graph import Graph, Node
from specc.build.input_sizes import resolve_node_args
from specc.build.tensors import FREE_TENSORS, FreeTensor, free_tensor_value, make_free_tensor
from specc.build.bounds import BuildBudget, BuildOpsExceeded
from specc.build.registry import FUNCTIONS, INFERABLE, Registry, passes_first_output
from specc.build.shape_functions import function_output, merge_output
from specc.build.shape_rules import module_output

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "long": torch.long, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
}


class SkipInitOnMeta(TorchFunctionMode):
    """Skip weight initialisation of meta tensors: it has no values to set, yet torch routes it
    through Python decompositions whose first use imports torch._dynamo (~1-2 s per process)."""

    _TENSOR_METHODS = {torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.zero_, torch.Tensor.fill_,
                       torch.Tensor.random_, torch.Tensor.exponential_, torch.Tensor.bernoulli_}

    def __init__(self, budget: BuildBudget | None = None):
        super().__init__()
        self.budget = budget

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.budget is not None:
            self.budget.spend()   # `LSTM: {num_layers: 1000000000}` stops here, not after hours
        kwargs = kwargs or {}
        initialises = func in self._TENSOR_METHODS or getattr(func, "__module__", None) == "torch.nn.init"
        tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes the tensor by keyword
        if initialises and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


def dry_run(graph: Graph, registry: Registry, batch_size: int = 2,
            input_shapes: dict[str, list[int]] | None = None,
            on_node: Callable[[Node], None] | None = None) -> dict[str, nn.Module]:
    """Run the graph on meta tensors; set each node's `shape`, `dtype` and inferred args.
    `on_node` sees each node once its shape is set (batch_check.BatchWatch.observe).

    Returns:
        The layers built on the meta device, by node name.

    Raises:
        SpecError: located at the first item whose input does not fit.
    """
    run = DryRun(registry, batch_size, input_shapes, on_node)
    run.advance(graph.nodes)
    return run.modules


class DryRun:
    """A dry run that can be advanced node by node: the expander runs the items built so far to read
    an input size an `if:` needs (`if: $(in.channels != out)`), before the rest of the graph exists."""

    def __init__(self, registry: Registry, batch_size: int = 2, input_shapes: dict[str, list[int]] | None = None,
                 on_node: Callable[[Node], None] | None = None):
        self.registry, self.batch_size, self.input_shapes, self.on_node = registry, batch_size, input_shapes or {}, on_node
        self.values: dict[str, Any] = {}
        self.modules: dict[str, nn.Module] = {}
        self.seen_outputs: dict[tuple, Any] = {}
        self.budget = BuildBudget()
        self.done = 0          # how many nodes of the list given to `advance` have run

    def advance(self, nodes: list[Node]) -> None:
        """Run `nodes[self.done:]` (the list grows between calls; earlier nodes are not run again)."""
        for node in nodes[self.done:]:
            if node.meta.get("deferred"):
                _resolve_input_sizes(node, self.values)
            try:
                value = _run_node(node, self.values, self.modules, self.registry, self.batch_size, self.input_shapes,
                                  self.seen_outputs, self.budget)
            except SpecError:
                raise
            except Exception as error:  # noqa: BLE001 - any torch failure becomes a located spec error
                raise SpecError(_failure(node, error, self.values)) from None
            self.values[node.name] = value
            _record(node, value)
            if self.on_node is not None:
                self.on_node(node)
            self.done += 1

    def feature_shape(self, name: str) -> tuple | None:
        """The shape of a node's output without the batch dim, or None when it is not a tensor."""
        value = self.values.get(name)
        return tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else None


def _resolve_input_sizes(node: Node, values: dict) -> None:
    """`$in.channels` and friends in the node's args, now that its input has arrived (input_sizes.py)."""
    def shape_of(name: str) -> tuple | None:
        value = values.get(name)
        return tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else None

    message = resolve_node_args(node, shape_of)
    if message:
        raise SpecError(Problem(message, node.location, "EXPRESSION_ERROR", notes=node.meta.get("via", [])))


def call_inputs(node: Node, inputs: list) -> tuple[tuple, dict]:
    """Positional and keyword args a module node is called with (self-attention takes x three times)."""
    if node.target == "MultiheadAttention":
        if len(inputs) == 1:
            inputs = inputs * 3
        return tuple(inputs), {"need_weights": False}
    if node.target == "TransformerEncoderLayer" and len(inputs) == 2:   # `from: [x, key_padding_mask]`
        return (inputs[0],), {"src_key_padding_mask": inputs[1]}
    return tuple(inputs), {}


def feature_shape(shape: tuple) -> str:
    """`(2, 6, 28, 28)` -> `[6, 28, 28]`: shapes in messages leave out the batch dim, like the spec."""
    return "[" + ", ".join(str(size) for size in shape[1:]) + "]"


def _run_node(node: Node, values: dict, modules: dict, registry: Registry, batch_size: int, input_shapes: dict,
              seen_outputs: dict, budget: BuildBudget | None = None):
    if node.op == "input":
        shape = input_shapes.get(node.name, node.meta["shape"])
        return torch.empty((batch_size, *shape), dtype=DTYPES[node.dtype], device="meta")
    inputs = [values[name] for name in node.inputs]
    if node.op == "module":
        return _run_module(node, inputs, modules, registry, seen_outputs, budget)
    if node.op == "function" and node.target in FREE_TENSORS:
        holder = modules[node.name] = FreeTensor(node.target, make_free_tensor(node.target, node.args, "meta"))
        return free_tensor_value(holder.tensor, node.args, inputs)
    return run_on_meta(node, inputs)


def run_on_meta(node: Node, inputs: list):
    """A function or merge item on meta inputs: its shape rule (shape_functions.py), else the op."""
    # the common items need no meta kernel, whose set-up (sympy, torch._dynamo) costs ~1 s
    predicted = (function_output if node.op == "function" else merge_output)(node.target, inputs, node.args)
    if predicted is not None:
        return predicted
    if node.op == "function":
        return run_function(node, inputs)
    return run_merge(node, inputs)


def _run_module(node: Node, inputs: list, modules: dict, registry: Registry, seen_outputs: dict,
                budget: BuildBudget | None = None):
    if node.shared_with:
        module = modules[node.shared_with]
    else:
        info = registry.layer(node.target)
        shapes = [tuple(value.shape) for value in inputs if isinstance(value, torch.Tensor)]
        _infer_sizes(node, info.inferable(), shapes, info.knows_sizes)
        try:
            with torch.device("meta"), SkipInitOnMeta(budget):
                module = info.cls(**node.args)
        except BuildOpsExceeded:
            raise SpecError(budget.problem(node.target, node.label, node.location, node.meta.get("via", []))) from None
        except Exception as error:  # noqa: BLE001
            raise SpecError(Problem(f"{node.target} '{node.label}' cannot be built with {_kwargs_text(node.args)}: "
                                    f"{_first_line(error)}", node.location, "LAYER_ERROR",
                                    notes=node.meta.get("via", []))) from None
        modules[node.name] = module
    # Meta tensors go through torch's Python decompositions (~ms per op): the 32 identical blocks of
    # a 7B model would pay that 32 times. A layer's output shape depends only on its class, args and
    # input shapes, so an identical layer on identical inputs reuses the first one's result.
    key = memo_key(node, inputs)
    if key is not None and key in seen_outputs:
        return _fresh_meta(seen_outputs[key])
    output = call_layer_on_meta(node, module, inputs)
    if key is not None:
        seen_outputs[key] = output
    return output


def call_layer_on_meta(node: Node, module: nn.Module, inputs: list):
    """A layer item's output on meta inputs: its shape rule (shape_rules.py), else the layer itself,
    in eval mode (shapes as at inference: BatchNorm after a global pool works at batch 1)."""
    args, kwargs = call_inputs(node, inputs)
    with evaluating(module):
        output = module_output(module, args, kwargs)
        if output is None:
            output = module(*args, **kwargs)
    return output[0] if passes_first_output(node) else output


@contextmanager
def evaluating(module: nn.Module):
    """Eval mode for one call, then each layer's own mode back (the dry run's layers become the model on meta)."""
    modes = [(layer, layer.training) for layer in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for layer, mode in modes:
            layer.training = mode


def memo_key(node: Node, inputs: list) -> tuple | None:
    """What a layer item's output shape depends on, or None when an input is not a tensor."""
    if not all(isinstance(value, torch.Tensor) for value in inputs):
        return None
    shapes = tuple((tuple(value.shape), value.dtype) for value in inputs)
    return node.target, repr(sorted(node.args.items())), node.meta.get("outputs"), shapes


def _fresh_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, tuple):
        return tuple(_fresh_meta(item) for item in value)
    return value


def _infer_sizes(node: Node, inferable: list[str], shapes: list[tuple], knows_sizes: bool) -> None:
    """Fill in the size args left out. A given one is checked against the input only where specc knows
    the name means the input's size (torch's and specc's layers): an imported layer's `num_channels`
    (diffusers' `Timesteps`) may mean anything."""
    for name in inferable:
        given = node.args.get(name)
        if given is not None and not knows_sizes:
            continue
        try:
            actual = INFERABLE[name](shapes)
        except IndexError:
            if given is not None:
                continue    # nothing to check it against; the layer itself takes it or fails, located
            raise SpecError(Problem(f"{node.target} '{node.label}' cannot infer '{name}' from input "
                                    f"{', '.join(map(feature_shape, shapes)) or '(none)'}; set it explicitly",
                                    node.location, "SHAPE_MISMATCH", notes=node.meta.get("via", []))) from None
        if given is None:
            node.args[name] = actual
            node.inferred.append(name)
        elif isinstance(given, int) and given != actual:
            raise SpecError(Problem(f"{node.target} '{node.label}': {name}={given} but its input "
                                    f"{feature_shape(shapes[0])} has {actual}; drop {name} to infer it",
                                    node.location, "SHAPE_MISMATCH", notes=node.meta.get("via", [])))


# Functions combining several inputs get the same named-shape check as a parallel merge.
_COMBINING = ("cat", "stack", "add", "sub", "mul", "div")


def run_function(node: Node, inputs: list):
    """Call an allow-listed function item on its input values."""
    info = FUNCTIONS[node.target]
    if node.target in _COMBINING and len(inputs) > 1 and all(isinstance(v, torch.Tensor) for v in inputs):
        _check_merge(node, inputs)
    if info.name == "getitem":
        return info.call(inputs[0], node.args["index"])
    if info.takes_list:
        return info.call(list_argument(inputs), **node.args)
    return info.call(*inputs, **node.args)


def list_argument(inputs: list) -> list:
    """cat/stack take a list: the item's inputs, or the one tuple a `merge: list` / `chunk` produced."""
    if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
        return list(inputs[0])
    return list(inputs)


def run_compiled_node(node: Node, inputs: list, module: nn.Module) -> Any:
    """One non-input node of a compiled spec on `inputs`, with `module`'s own layers and free tensors
    (what summaries and drawings run per item to see each item's output and FLOPs)."""
    if node.op == "function" and node.target in FREE_TENSORS:
        return free_tensor_value(operator.attrgetter(node.name)(module), node.args, inputs)
    if node.op == "function":
        return run_function(node, inputs)
    if node.op == "merge":
        return run_merge(node, inputs)
    args, kwargs = call_inputs(node, inputs)
    output = module.get_submodule(node.shared_with or node.name)(*args, **kwargs)
    return output[0] if passes_first_output(node) else output


def run_merge(node: Node, inputs: list):
    """Combine branch outputs as the merge op says, after checking their shapes."""
    _check_merge(node, inputs)
    if node.target == "list":
        return tuple(inputs)
    if node.target == "cat":
        return torch.cat(inputs, dim=node.args["dim"])
    if node.target == "stack":
        return torch.stack(inputs, dim=node.args["dim"])
    result = inputs[0]
    for value in inputs[1:]:
        result = {"add": torch.add, "mean": torch.add, "mul": torch.mul, "max": torch.maximum}[node.target](result, value)
    return result / len(inputs) if node.target == "mean" else result


def _check_merge(node: Node, inputs: list) -> None:
    """Compare branch shapes first, so the message names the branches rather than torch internals."""
    if node.target == "list":
        return
    labels = node.meta.get("branches") or node.meta.get("from") or list(node.inputs)
    first = inputs[0]
    for label, value in zip(labels[1:], inputs[1:]):
        dim = _mismatch(node, tuple(first.shape), tuple(value.shape))
        if dim is not None:
            raise SpecError(Problem(_merge_message(node, labels[0], first, label, value, dim),
                                    node.meta.get("merge_at") or node.location,   # the `merge:` line if written
                                    "SHAPE_MISMATCH", notes=node.meta.get("via", [])))


def _mismatch(node: Node, left: tuple, right: tuple) -> int | None:
    if node.target in ("cat", "stack") and len(left) != len(right):
        return -1
    if node.target == "cat":
        dim = node.args["dim"] % len(left)
        return next((d for d in range(len(left)) if d != dim and left[d] != right[d]), None)
    if node.target == "stack":
        return next((d for d in range(len(left)) if left[d] != right[d]), None)
    try:
        torch.broadcast_shapes(left, right)
    except RuntimeError:
        offset = len(left) - len(right)
        return next((d for d in range(max(len(left), len(right)))
                     if 0 <= d - offset < len(right) and d < len(left) and left[d] != right[d - offset]
                     and 1 not in (left[d], right[d - offset])), -1)
    return None


def _merge_message(node: Node, left_label, left, right_label, right, dim: int) -> str:
    where = "ranks differ" if dim == -1 else f"sizes differ in dim {dim}"
    # with the batch written B, so `dim N` counts like the printed shapes (and like the spec's torch dims)
    shapes = f"{left_label} {_batch_shape(left)} and {right_label} {_batch_shape(right)}"
    if node.meta.get("branches") == ["body", "shortcut"]:
        return f"residual '{node.meta.get('item')}': cannot add {shapes}: {where}"
    if node.op == "function":
        return f"{node.target} of {shapes}: {where}"
    return f"{node.target} of branches {shapes}: {where}"


def _batch_shape(value: torch.Tensor) -> str:
    """`(2, 6, 28, 28)` -> `[B, 6, 28, 28]`."""
    return "[" + ", ".join(["B", *map(str, value.shape[1:])]) + "]"


def _failure(node: Node, error: Exception, values: dict) -> Problem:
    shapes = ", ".join(feature_shape(tuple(values[name].shape)) if isinstance(values.get(name), torch.Tensor)
                       else "(non-tensor)" for name in node.inputs)
    what = node.target if node.label == node.target else f"{node.target} '{node.label}'"
    message = f"{what} cannot take input {shapes}: {_first_line(error)}"
    return Problem(message, node.location, "SHAPE_MISMATCH", notes=node.meta.get("via", []))


def _record(node: Node, value: Any) -> None:
    node.meta.pop("shapes", None)
    if isinstance(value, torch.Tensor):
        node.shape = tuple(value.shape)
        node.dtype = str(value.dtype).removeprefix("torch.")
        return
    node.shape = None
    if isinstance(value, (tuple, list)) and value and all(isinstance(item, torch.Tensor) for item in value):
        node.meta["shapes"] = [tuple(item.shape) for item in value]   # chunk, split: for named dims (symbolic.py)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _kwargs_text(kwargs: dict) -> str:
    return "(" + ", ".join(f"{key}={value!r}" for key, value in kwargs.items()) + ")"
