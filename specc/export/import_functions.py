"""How one traced tensor function or method reads as a spec function item (for `specc.from_module`).

A torch function or `Tensor` method becomes the specc function of the same meaning, with the
spec's conventions (`reshape` / `expand` shapes without the batch dim, torch dims elsewhere).
Arguments may come positionally or by keyword, as PyTorch allows. Anything else raises
`Unsupported`, and the importer keeps the module around it as an `imports:` class instead.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx
from torch.nn import functional as F

from specc.build.infer import DTYPES
from specc.export.import_ops import Unsupported
from specc.export.import_tensors import batch_size_of

_MISSING = object()
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items() if name != "int64"}
_UNARY = {torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
          F.tanh: "tanh", F.silu: "silu", torch.exp: "exp", torch.log: "log", torch.abs: "abs", torch.neg: "neg",
          torch.rsqrt: "rsqrt", operator.neg: "neg", torch.floor: "floor",
          **{getattr(torch, name): name for name in ("sin", "cos", "sqrt", "erf", "sign", "reciprocal")}}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "exp", "log", "abs", "neg", "rsqrt", "floor", "contiguous",
                  "sin", "cos", "sqrt", "erf", "sign", "reciprocal"}
_COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")
_BINARY = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub", operator.isub: "sub",
           torch.sub: "sub", operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", operator.truediv: "div",
           torch.div: "div", operator.matmul: "matmul", torch.matmul: "matmul", torch.minimum: "minimum",
           torch.maximum: "maximum", torch.remainder: "remainder", operator.mod: "remainder",
           torch.floor_divide: "floor_divide", operator.floordiv: "floor_divide",
           **{getattr(operator, name): name for name in _COMPARISONS}, **{getattr(torch, name): name for name in _COMPARISONS}}
_BINARY_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "matmul": "matmul",
                   "__add__": "add", "__mul__": "mul", "__sub__": "sub", "__truediv__": "div",
                   **{name: name for name in _COMPARISONS}}
_COMMUTATIVE = {"add", "mul", "minimum", "maximum", "eq", "ne"}
# functions that have a layer of the same meaning (and no parameters): the item is that layer
_AS_LAYER = {F.hardswish: "Hardswish", F.hardsigmoid: "Hardsigmoid", F.relu6: "ReLU6", F.gelu: None}
# spec functions whose args are torch's, in torch's order, after the tensor inputs
_PLAIN = {"roll": ("shifts", "dims"), "repeat_interleave": ("repeats", "dim"), "clamp": ("min", "max"),
          "pow": ("exponent",), "where": ("other",), "masked_fill": ("value",)}
_PLAIN.update({"softplus": ("beta", "threshold"), "one_hot": ("num_classes",), "cumsum": ("dim",), "cumprod": ("dim",),
               "topk": ("k", "dim", "largest", "sorted"), "sort": ("dim", "descending", "stable"),
               "argsort": ("dim", "descending", "stable"), "argmax": ("dim", "keepdim"), "argmin": ("dim", "keepdim")})
_PLAIN_FUNCTIONS = ({getattr(torch, name): name for name in _PLAIN if hasattr(torch, name)}
                    | {torch.clip: "clamp", operator.pow: "pow", F.softplus: "softplus", F.one_hot: "one_hot"})
_CASTS = {"float": torch.float32, "double": torch.float64, "half": torch.float16, "long": torch.int64,
          "int": torch.int32, "bool": torch.bool, "bfloat16": torch.bfloat16}


class _Call:
    """A node's arguments, read by position or keyword."""

    def __init__(self, node: fx.Node):
        self.args, self.kwargs = list(node.args), dict(node.kwargs)

    def get(self, index: int, name: str, default: Any = _MISSING) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        if index < len(self.args):
            return self.args[index]
        if default is _MISSING:
            raise Unsupported(f"no '{name}' argument")
        return default


def function_item(node: fx.Node, tensors: list[fx.Node], shape_of) -> tuple[Any, list[fx.Node]]:
    """`(item, inputs)`: the spec item for a call_function/call_method node and the tensor nodes it
    consumes, in order.

    Args:
        node: the fx node.
        tensors: which of the node's argument nodes carry tensors (the others are sizes).
        shape_of: node -> its output shape (from the example run).

    Raises:
        Unsupported: no spec function means this.
    """
    target, call = node.target, _Call(node)
    args, kwargs = call.args, call.kwargs
    name = target if node.op == "call_method" else None
    if node.op == "call_function" and target in _UNARY or name in _UNARY_METHODS:
        return (_UNARY.get(target) or name), [args[0]]
    if node.op == "call_function" and target is F.gelu or name == "gelu":
        approximate = kwargs.get("approximate", "none")
        return ("gelu" if approximate == "none" else {"gelu": {"approximate": approximate}}), [args[0]]
    if node.op == "call_function" and target in _AS_LAYER:
        return {_AS_LAYER[target]: {}}, [args[0]]
    if node.op == "call_function" and target in _BINARY or name in _BINARY_METHODS:
        if set(kwargs) - {"other"}:
            raise Unsupported(f"{getattr(target, '__name__', target)} with {', '.join(kwargs)}")
        return _binary(_BINARY.get(target) or _BINARY_METHODS[name], [args[0], call.get(1, "other")], tensors)
    if target in (torch.flatten,) or name == "flatten":
        values = {"start_dim": call.get(1, "start_dim", 0), "end_dim": call.get(2, "end_dim", -1)}
        return {"flatten": _drop_defaults(values, {"start_dim": 1, "end_dim": -1})}, [args[0]]
    if target is torch.cat or target is torch.stack:
        op, dim = ("cat" if target is torch.cat else "stack"), call.get(1, "dim", 0)
        return ({op: dim} if dim != 1 else op), list(call.get(0, "tensors"))
    if name in ("view", "reshape") or target is torch.reshape:
        return _reshape(node, args, shape_of, "view" if name == "view" else "reshape")
    if name == "permute" or target is torch.permute:
        dims = call.get(1, "dims")
        return {"permute": list(args[1:]) if name and isinstance(dims, int) else list(dims)}, [args[0]]
    if name == "transpose" or target is torch.transpose:
        return {"transpose": [call.get(1, "dim0"), call.get(2, "dim1")]}, [args[0]]
    if name in ("unsqueeze", "squeeze") or target in (torch.unsqueeze, torch.squeeze):
        op, dim = name or target.__name__, call.get(1, "dim", None)
        return ({op: dim} if dim is not None else op), [args[0]]
    if name in ("mean", "sum", "amax") or target in (torch.mean, torch.sum, torch.amax):
        values = {"dim": _listed(call.get(1, "dim", None)), "keepdim": call.get(2, "keepdim", False)}
        values = _drop_defaults(values, {"dim": None, "keepdim": False})
        op = name or target.__name__
        return ({op: values} if values else op), [args[0]]
    if name in ("softmax", "log_softmax") or target in (torch.softmax, F.softmax, torch.log_softmax, F.log_softmax):
        op, dim = name or target.__name__, call.get(1, "dim", -1)
        return ({op: dim} if dim != -1 else op), [args[0]]
    if name in ("chunk", "split") or target in (torch.chunk, torch.split):
        op = name or target.__name__
        size = call.get(1, "chunks" if op == "chunk" else "split_size_or_sections")
        return {op: [_listed(size), call.get(2, "dim", 0)]}, [args[0]]  # fx: its own list type
    if target is operator.getitem:
        return _getitem(args)
    if target is torch.einsum and isinstance(args[0], str):      # einsum(equation, *operands) or (equation, [operands])
        operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        return {"einsum": args[0]}, operands
    if name == "to" or name in _CASTS:
        return _cast(name, call), [args[0]]
    if name == "expand":
        return _expand(node, args, shape_of), [args[0]]
    if node.op == "call_function" and target in _PLAIN_FUNCTIONS or name in _PLAIN:
        return _plain(_PLAIN_FUNCTIONS.get(target) or name, call, tensors)
    raise Unsupported(f"{node.op} {getattr(target, '__name__', target)}")


def _binary(op: str, args: list, tensors: list) -> tuple[Any, list]:
    left, right = args[0], args[1]
    if left in tensors and right in tensors:
        return op, [left, right]
    if left in tensors and isinstance(right, (int, float)):
        return {op: {"other": right}}, [left]
    if right in tensors and isinstance(left, (int, float)) and op in _COMMUTATIVE:
        return {op: {"other": left}}, [right]
    raise Unsupported(f"{op} of {type(left).__name__} and {type(right).__name__}")


def _plain(op: str, call: _Call, tensors: list) -> tuple[Any, list]:
    """A function whose tensors come first and whose other args are the spec function's."""
    count = next((index for index, value in enumerate(call.args) if value not in tensors), len(call.args))
    inputs = call.args[:count]
    if any(isinstance(value, fx.Node) for value in [*call.args[count:], *call.kwargs.values()]):
        raise Unsupported(f"{op} with a tensor or a size among its other arguments")
    values = dict(zip(_PLAIN[op], call.args[len(inputs):]))
    unknown = set(call.kwargs) - set(_PLAIN[op])
    if unknown or len(call.args) - len(inputs) > len(_PLAIN[op]):
        raise Unsupported(f"{op} with {', '.join(sorted(unknown)) or 'more arguments'}")
    values.update(call.kwargs)
    values = {key: _listed(value) for key, value in values.items() if value is not None}
    return ({op: values} if values else op), inputs


def _cast(name: str, call: _Call) -> Any:
    """`x.to(torch.long)`, `x.float()`: the spec's `to`; a move to a device is no spec item."""
    dtype = _CASTS[name] if name in _CASTS else call.get(1, "dtype")
    extra = set(call.kwargs) - {"dtype"} if name == "to" else set(call.kwargs)
    if not isinstance(dtype, torch.dtype) or dtype not in _DTYPE_NAMES or extra or len(call.args) > 2:
        raise Unsupported(f"{name} that is not a cast to a dtype")
    return {"to": _DTYPE_NAMES[dtype]}


def _expand(node: fx.Node, args: list, shape_of) -> Any:
    """`x.expand(x.shape[0], a, b)`, `x.expand(-1, a, b)`: the spec's `expand` keeps the batch."""
    sizes = list(args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = list(sizes[0])
    output = shape_of(node)
    if not sizes or output is None or (sizes[0] != -1 and batch_size_of(sizes[0]) is not args[0]):
        raise Unsupported("expand that changes the batch dim")
    return {"expand": list(output[1:])}


def _reshape(node: fx.Node, args: list, shape_of, op: str) -> tuple[Any, list]:
    source, output = shape_of(args[0]), shape_of(node)
    if output is None or source is None:
        raise Unsupported(f"{op} of a tensor of unknown shape")
    if output[0] == source[0]:
        return {op: list(output[1:])}, [args[0]]
    inserted = _inserted_ones(list(source), list(output))
    if inserted is None:
        raise Unsupported(f"{op} that changes the batch dim")   # the spec's reshape keeps it
    # only size-1 dims added (a [C] layer scale as [1, C, 1, 1]): the same tensor, unsqueezed
    return {"sequential": [{"unsqueeze": dim} for dim in inserted]}, [args[0]]


def _inserted_ones(source: list[int], output: list[int]) -> list[int] | None:
    """The `unsqueeze` dims that turn `source` into `output`, when `output` only adds 1s; else None."""
    current, dims = list(source), []
    for index, size in enumerate(output):
        if index < len(current) and current[index] == size:
            continue
        if size != 1:
            return None
        current.insert(index, 1)
        dims.append(index)
    return dims if current == output and dims else None


def _getitem(args: list) -> tuple[Any, list]:
    index = args[1]
    if isinstance(index, int):
        return {"getitem": index}, [args[0]]
    if not isinstance(index, tuple) or not index:
        index = (index,)
    if isinstance(index[-1], int) and all(part == slice(None) for part in index[:-1]):
        return {"select": [len(index) - 1, index[-1]]}, [args[0]]
    if index[0] in (slice(None), Ellipsis) and all(_indexable(part) for part in index):
        return {"getitem": "[" + ", ".join(map(_index_text, index)) + "]"}, [args[0]]
    raise Unsupported(f"indexing with {index!r}")


def _indexable(part: Any) -> bool:
    """What the spec's index strings hold: ints, slices of ints, `...`, None."""
    if isinstance(part, slice):
        return all(bound is None or isinstance(bound, int) for bound in (part.start, part.stop, part.step))
    return part is None or part is Ellipsis or isinstance(part, int)


def _index_text(part: Any) -> str:
    if isinstance(part, slice):
        text = ":".join("" if bound is None else str(bound) for bound in (part.start, part.stop, part.step))
        return text[:-1] if part.step is None else text       # `1:`, `:`, `0::2`
    return "..." if part is Ellipsis else str(part)


def _listed(value: Any) -> Any:
    """Plain lists for YAML (fx hands list args over as its own immutable list type)."""
    return [_listed(item) for item in value] if isinstance(value, (list, tuple)) else value


def _drop_defaults(values: dict, defaults: dict) -> dict:
    return {key: value for key, value in values.items() if defaults.get(key, _MISSING) != value}
