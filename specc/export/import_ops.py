"""How one traced operation of an `nn.Module` reads as a spec item (for `specc.from_module`).

A torch.nn layer becomes `{LayerName: {its non-default kwargs}}`, sizes that specc infers left
out; a tensor function or method becomes the specc function of the same meaning, with the spec's
conventions (`reshape` shapes without the batch dim, torch dims elsewhere). Anything else raises
`Unsupported`, and the importer keeps the module around it as an `imports:` class instead.
"""
from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from specc.build.registry import TUPLE_OUTPUT_LAYERS, layer_info

_MISSING = object()
_FACTORY = {"device", "dtype"}
# kwargs torch stores under another attribute (or only as the presence of a tensor)
_STORED_AS = {
    "bias": lambda m: (m.bias is not None) if not isinstance(getattr(m, "bias", None), bool) else m.bias,
    "add_bias_kv": lambda m: m.bias_k is not None,
}
_TRANSFORMER_LAYER = {   # TransformerEncoderLayer keeps its kwargs in its submodules
    "nhead": lambda m: m.self_attn.num_heads, "dim_feedforward": lambda m: m.linear1.out_features,
    "dropout": lambda m: m.dropout.p, "layer_norm_eps": lambda m: m.norm1.eps,
    "batch_first": lambda m: m.self_attn.batch_first, "norm_first": lambda m: m.norm_first,
    "bias": lambda m: m.linear1.bias is not None,
    "activation": lambda m: {1: "relu", 2: "gelu"}.get(getattr(m, "activation_relu_or_gelu", 0), _MISSING),
}


class Unsupported(Exception):
    """This operation (or module) has no spec form."""


def layer_item(module: nn.Module, infer: bool = True) -> tuple[str, dict]:
    """`(ClassName, kwargs)`: the constructor kwargs that differ from their defaults.

    Args:
        module: a torch.nn / specc layer, or a user class that keeps its constructor args as
            attributes of the same names.
        infer: leave out the sizes specc infers from the input (in_features, num_features, ...).

    Raises:
        Unsupported: a required constructor arg cannot be read back from the module.
    """
    cls = type(module)
    info = layer_info(cls.__name__, cls)
    inferable = set(info.inferable()) if infer else set()
    sizes = set(info.inferable())          # read back when stored; otherwise specc infers them
    readers = _TRANSFORMER_LAYER if isinstance(module, nn.TransformerEncoderLayer) else {}
    kwargs = {}
    for parameter in info.parameters:
        if parameter.name in inferable or parameter.name in _FACTORY:
            continue
        value = _read(module, parameter.name, readers)
        required = parameter.default is inspect.Parameter.empty
        if value is _MISSING:
            if required and parameter.name not in sizes:
                raise Unsupported(f"{cls.__name__}: cannot read its constructor arg '{parameter.name}' back")
            continue
        value = _plain(parameter.name, value, parameter.default)
        if value is _MISSING or (not required and _same(value, _plain(parameter.name, parameter.default, None))):
            continue
        if isinstance(module, nn.MultiheadAttention) and parameter.name in ("kdim", "vdim") and value == module.embed_dim:
            continue
        kwargs[parameter.name] = value
    return cls.__name__, kwargs


def fit_constructor(module: nn.Module, kwargs: dict, input_shapes: list[tuple]) -> dict:
    """Check that `type(module)(**kwargs)` has the module's state_dict keys and shapes; constructor
    flags that are not stored as attributes (`bias=False`) are tried both ways.

    Args:
        module: a user class the importer keeps as an import.
        kwargs: the args read back from its attributes.
        input_shapes: the shapes reaching it, for the sizes specc infers.

    Raises:
        Unsupported: no such constructor call rebuilds the module.
    """
    from itertools import product

    from specc.build.registry import INFERABLE

    cls = type(module)
    info = layer_info(cls.__name__, cls)
    sizes = {name: INFERABLE[name](input_shapes) for name in info.inferable() if name not in kwargs}
    unread = [p.name for p in info.parameters if p.name not in kwargs and isinstance(p.default, bool)
              and _read(module, p.name, {}) is _MISSING]
    wanted = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    for flags in product(*[(p.default, not p.default) for p in info.parameters if p.name in unread[:4]]):
        trial = {**kwargs, **dict(zip(unread, flags))}
        with torch.device("meta"):
            try:
                rebuilt = cls(**trial, **sizes)
            except Exception:  # noqa: BLE001 - a combination the class refuses
                continue
        if {key: tuple(value.shape) for key, value in rebuilt.state_dict().items()} == wanted:
            return {**kwargs, **{name: value for name, value in zip(unread, flags)
                                 if value != info.parameters[[p.name for p in info.parameters].index(name)].default}}
    raise Unsupported(f"{cls.__name__}: no constructor call found that rebuilds its weights from the args read back")


def _read(module: nn.Module, name: str, readers: dict) -> Any:
    if name in readers:
        return readers[name](module)
    if name in _STORED_AS and hasattr(module, name if name != "add_bias_kv" else "bias_k"):
        return _STORED_AS[name](module)
    if name.startswith("_"):
        return _MISSING
    return getattr(module, name, _MISSING)


def _plain(name: str, value: Any, default: Any) -> Any:
    """YAML-ready values: tuples as lists, `(3, 3)` as `3` where the layer takes either."""
    if isinstance(value, torch.Tensor) or callable(value) or isinstance(value, torch.dtype):
        return _MISSING
    if isinstance(value, tuple):
        value = [_plain(name, item, None) for item in value]
        if name in ("kernel_size", "stride", "padding", "dilation", "output_padding") and len(set(map(str, value))) == 1:
            return value[0]
    return value


def _same(value: Any, default: Any) -> bool:
    return value == default or (isinstance(default, (int, float)) and isinstance(value, list)
                                and all(item == default for item in value))


def is_tuple_layer(module: nn.Module) -> bool:
    return type(module).__name__ in TUPLE_OUTPUT_LAYERS


# ----- functions --------------------------------------------------------------------------------
_UNARY = {torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
          F.tanh: "tanh", F.silu: "silu", torch.exp: "exp", torch.log: "log", torch.abs: "abs", torch.neg: "neg",
          torch.rsqrt: "rsqrt", operator.neg: "neg", torch.floor: "floor"}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "exp", "log", "abs", "neg", "rsqrt", "floor", "contiguous"}
_BINARY = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub", operator.isub: "sub",
           torch.sub: "sub", operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", operator.truediv: "div",
           torch.div: "div", operator.matmul: "matmul", torch.matmul: "matmul", torch.minimum: "minimum",
           torch.maximum: "maximum"}
_BINARY_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "matmul": "matmul",
                   "__add__": "add", "__mul__": "mul", "__sub__": "sub", "__truediv__": "div"}
_COMMUTATIVE = {"add", "mul", "minimum", "maximum"}
# functions that have a layer of the same meaning (and no parameters): the item is that layer
_AS_LAYER = {F.hardswish: "Hardswish", F.hardsigmoid: "Hardsigmoid", F.relu6: "ReLU6", F.gelu: None}


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
    target, args, kwargs = node.target, list(node.args), dict(node.kwargs)
    name = target if node.op == "call_method" else None
    if node.op == "call_function" and target in _UNARY or name in _UNARY_METHODS:
        return (_UNARY.get(target) or name), [args[0]]
    if node.op == "call_function" and target is F.gelu or name == "gelu":
        approximate = kwargs.get("approximate", "none")
        return ("gelu" if approximate == "none" else {"gelu": {"approximate": approximate}}), [args[0]]
    if node.op == "call_function" and target in _AS_LAYER:
        return {_AS_LAYER[target]: {}}, [args[0]]
    if node.op == "call_function" and target in _BINARY or name in _BINARY_METHODS:
        return _binary(_BINARY.get(target) or _BINARY_METHODS[name], args, tensors)
    if target in (torch.flatten,) or name == "flatten":
        start = kwargs.get("start_dim", args[1] if len(args) > 1 else (0 if name is None else 0))
        end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
        return {"flatten": _drop_defaults({"start_dim": start, "end_dim": end}, {"start_dim": 1, "end_dim": -1})}, [args[0]]
    if target is torch.cat or target is torch.stack:
        parts = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        op = "cat" if target is torch.cat else "stack"
        return ({op: dim} if dim != 1 else op), list(parts)
    if name in ("view", "reshape") or target is torch.reshape:
        return _reshape(node, args, shape_of, "view" if name == "view" else "reshape")
    if name == "permute" or target is torch.permute:
        dims = args[1:] if name and not isinstance(args[1], (list, tuple)) else args[1]
        return {"permute": list(dims)}, [args[0]]
    if name == "transpose" or target is torch.transpose:
        return {"transpose": [args[1], args[2]]}, [args[0]]
    if name in ("unsqueeze", "squeeze") or target in (torch.unsqueeze, torch.squeeze):
        op = name or target.__name__
        return ({op: args[1]} if len(args) > 1 else op), [args[0]]
    if name in ("mean", "sum", "amax") or target in (torch.mean, torch.sum, torch.amax):
        op = name or target.__name__
        call = _drop_defaults({"dim": _listed(kwargs.get("dim", args[1] if len(args) > 1 else None)),
                               "keepdim": kwargs.get("keepdim", args[2] if len(args) > 2 else False)},
                              {"dim": None, "keepdim": False})
        return ({op: call} if call else op), [args[0]]
    if name in ("softmax", "log_softmax") or target in (torch.softmax, F.softmax, torch.log_softmax, F.log_softmax):
        op = name or target.__name__
        dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
        return ({op: dim} if dim != -1 else op), [args[0]]
    if name in ("chunk", "split") or target in (torch.chunk, torch.split):
        op = name or target.__name__
        return {op: [args[1], kwargs.get("dim", args[2] if len(args) > 2 else 0)]}, [args[0]]
    if target is operator.getitem:
        return _getitem(args)
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


def _reshape(node: fx.Node, args: list, shape_of, op: str) -> tuple[Any, list]:
    source, output = shape_of(args[0]), shape_of(node)
    if output is None or source is None or output[0] != source[0]:
        raise Unsupported(f"{op} that changes the batch dim")   # the spec's reshape keeps it
    return {op: list(output[1:])}, [args[0]]


def _getitem(args: list) -> tuple[Any, list]:
    index = args[1]
    if isinstance(index, int):
        return {"getitem": index}, [args[0]]
    if isinstance(index, tuple) and index and isinstance(index[-1], int) and all(
            isinstance(part, slice) and part == slice(None) for part in index[:-1]):
        return {"select": [len(index) - 1, index[-1]]}, [args[0]]
    raise Unsupported(f"indexing with {index!r}")


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _drop_defaults(values: dict, defaults: dict) -> dict:
    return {key: value for key, value in values.items() if defaults.get(key, _MISSING) != value}
