"""How one traced operation of an `nn.Module` reads as a spec item (for `specc.from_module`).

A torch.nn layer becomes `{LayerName: {its non-default kwargs}}`, sizes that specc infers left
out (tensor functions are read in import_functions.py). A layer whose constructor args cannot be
read back raises `Unsupported`, and the importer keeps the module around it as an `imports:`
class instead.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

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


def layer_item(module: nn.Module, infer: bool = True, cls: type | None = None) -> tuple[str, dict]:
    """`(ClassName, kwargs)`: the constructor kwargs that differ from their defaults.

    Args:
        module: a torch.nn / specc layer, or a user class that keeps its constructor args as
            attributes of the same names.
        infer: leave out the sizes specc infers from the input (in_features, num_features, ...).
        cls: read the args of this class's constructor (a base class of the module's) instead.

    Raises:
        Unsupported: a required constructor arg cannot be read back from the module.
    """
    cls = cls or type(module)
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


def stand_in(module: nn.Module, inputs: list[torch.Tensor], infer: bool = True) -> tuple[str, dict]:
    """The torch.nn (or specc) layer that a library's subclass of it (timm's `LayerNorm`,
    `LayerNorm2d`) is: same weights under the same names, same outputs on `inputs`.

    Candidates are the nearest torch.nn ancestor and specc's layers derived from it; each is built
    from the args read back as that class, given the module's weights, and run on `inputs`.

    Raises:
        Unsupported: no candidate has the module's weights and computes what it computes.
    """
    from specc.build.registry import INFERABLE

    base = torch_base(type(module))
    if base is None:
        raise Unsupported(f"{type(module).__name__}: not derived from a torch.nn layer")
    wanted = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    shapes = [tuple(value.shape) for value in inputs]
    for candidate in [base, *_specc_layers_derived_from(base)]:
        try:
            name, kwargs = layer_item(module, infer, candidate)
            info = layer_info(candidate.__name__, candidate)
            sizes = {size: INFERABLE[size](shapes) for size in info.inferable() if size not in kwargs}
            rebuilt = candidate(**kwargs, **sizes).eval()
            if {key: tuple(value.shape) for key, value in rebuilt.state_dict().items()} != wanted:
                continue
            rebuilt.load_state_dict(module.state_dict())
            with torch.no_grad():
                same = torch.allclose(rebuilt(*inputs), module(*inputs), rtol=1e-5, atol=1e-6)
        except Exception:  # noqa: BLE001 - a candidate that cannot be built or run this way
            continue
        if same:
            return name, kwargs
    raise Unsupported(f"{type(module).__name__}: derived from {base.__name__}, but neither it nor specc's layers "
                      f"derived from it compute the same")


def example_values(nodes: list) -> list[torch.Tensor]:
    """Random tensors of the shapes and dtypes that reached a traced call (its nodes' tensor_meta)."""
    values = []
    for node in nodes:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue
        floating = meta.dtype.is_floating_point
        values.append(torch.randn(tuple(meta.shape), dtype=meta.dtype) if floating
                      else torch.randint(0, 2, tuple(meta.shape), dtype=meta.dtype))
    return values


def torch_base(cls: type) -> type | None:
    """The nearest torch.nn layer class `cls` derives from, when `cls` is another library's (or the
    user's) subclass; None for torch's and specc's own classes and for plain modules."""
    if cls.__module__.startswith(("torch.", "specc.")):
        return None
    for klass in cls.__mro__[1:]:
        if klass.__module__.startswith("torch.nn.modules") and klass not in (nn.Module, nn.Sequential,
                                                                              nn.ModuleList, nn.ModuleDict):
            return klass
    return None


def _specc_layers_derived_from(base: type) -> list[type]:
    from specc.build import layers

    return [value for value in vars(layers).values()
            if isinstance(value, type) and value is not base and issubclass(value, base)
            and value.__module__ == layers.__name__]


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
