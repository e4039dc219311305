"""What a spec can name: torch.nn layers (found by introspection), specc's layers, user imports,
and an allow-list of tensor functions. Each layer's real constructor signature is used to validate
kwargs and to decide which sizes the dry run fills in.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import operator
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from specc.build import functional as specc_functional
from specc.lang.safety import check_code_path, safe_mode

# Containers that make no sense as a spec item (a spec *is* the container).
_NOT_LAYERS = {"Module", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Sequential", "Container"}

# Modules returning (output, state) tuples: the spec passes element 0 on, like Keras layers do.
TUPLE_OUTPUT_LAYERS = {"LSTM", "GRU", "RNN", "MultiheadAttention"}


def passes_first_output(node) -> bool:
    """True when a node's layer returns a tuple and the spec passes element 0 on; `outputs: all` on
    the item keeps the whole tuple (an LSTM's `(output, (h_n, c_n))`) for `getitem` to pick from."""
    return node.target in TUPLE_OUTPUT_LAYERS and node.meta.get("outputs") != "all"


def _last_dim(shapes):
    return shapes[0][-1]


def _channel_dim(shapes):
    return shapes[0][1]


# Constructor args that the dry run fills in from the tensors reaching the layer (batch dim first).
INFERABLE: dict[str, Callable[[list[tuple]], Any]] = {
    "in_features": _last_dim,
    "in_channels": _channel_dim,
    "num_features": _channel_dim,
    "num_channels": _channel_dim,
    "normalized_shape": _last_dim,
    "input_size": _last_dim,
    "embed_dim": _last_dim,
    "d_model": _last_dim,
    "dim": _last_dim,
    "in1_features": lambda shapes: shapes[0][-1],
    "in2_features": lambda shapes: shapes[1][-1],
}


@dataclass(frozen=True)
class LayerInfo:
    """A constructible layer and what its constructor accepts."""

    name: str
    cls: type
    parameters: tuple[inspect.Parameter, ...]
    accepts_any_kwarg: bool

    @property
    def parameter_names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def required(self) -> list[str]:
        return [p.name for p in self.parameters if p.default is inspect.Parameter.empty]

    @property
    def knows_sizes(self) -> bool:
        """torch's and specc's layers: a size arg's name (`num_channels`) means the input's size."""
        return self.cls.__module__.split(".")[0] in ("torch", "specc")

    def inferable(self) -> list[str]:
        """Args the dry run may fill in: known size names that the constructor requires.

        `dim` is a size only in specc's and the user's layers; torch's `dim` is an axis (Unflatten).
        """
        torch_layer = self.cls.__module__.startswith("torch.")
        return [name for name in self.required() if name in INFERABLE and not (name == "dim" and torch_layer)]


@dataclass(frozen=True)
class FunctionInfo:
    """An allow-listed tensor function and how spec args map onto its call."""

    name: str
    call: Callable
    parameters: tuple[str, ...] = ()        # names for positional spec args, in order
    defaults: dict = field(default_factory=dict)
    takes_list: bool = False                # cat/stack take the inputs as one list argument
    min_inputs: int = 1
    max_inputs: int | None = 1
    required: tuple[str, ...] = ()          # args without a default (`topk` needs `k`)


FUNCTIONS: dict[str, FunctionInfo] = {info.name: info for info in [
    FunctionInfo("cat", torch.cat, ("dim",), {"dim": 1}, takes_list=True, max_inputs=None),
    FunctionInfo("stack", torch.stack, ("dim",), {"dim": 1}, takes_list=True, max_inputs=None),
    FunctionInfo("add", torch.add, ("other",), max_inputs=2),
    FunctionInfo("sub", torch.sub, ("other",), max_inputs=2),
    FunctionInfo("mul", torch.mul, ("other",), max_inputs=2),
    FunctionInfo("div", torch.div, ("other",), max_inputs=2),
    FunctionInfo("matmul", torch.matmul, ("other",), max_inputs=2),
    FunctionInfo("flatten", torch.flatten, ("start_dim", "end_dim"), {"start_dim": 1}),
    FunctionInfo("reshape", specc_functional.reshape, ("shape",)),
    FunctionInfo("view", specc_functional.view, ("shape",)),
    FunctionInfo("permute", torch.permute, ("dims",)),
    FunctionInfo("transpose", torch.transpose, ("dim0", "dim1")),
    FunctionInfo("squeeze", torch.squeeze, ("dim",)),
    FunctionInfo("unsqueeze", torch.unsqueeze, ("dim",)),
    FunctionInfo("mean", torch.mean, ("dim", "keepdim")),
    FunctionInfo("sum", torch.sum, ("dim", "keepdim")),
    FunctionInfo("amax", torch.amax, ("dim", "keepdim")),
    FunctionInfo("softmax", torch.softmax, ("dim",), {"dim": -1}),
    FunctionInfo("log_softmax", torch.log_softmax, ("dim",), {"dim": -1}),
    FunctionInfo("getitem", operator.getitem, ("index",)),
    FunctionInfo("select", torch.select, ("dim", "index")),
    FunctionInfo("chunk", torch.chunk, ("chunks", "dim")),
    FunctionInfo("split", torch.split, ("split_size_or_sections", "dim")),
    FunctionInfo("relu", torch.relu),
    FunctionInfo("gelu", F.gelu, ("approximate",)),
    FunctionInfo("silu", F.silu),
    FunctionInfo("sigmoid", torch.sigmoid),
    FunctionInfo("tanh", torch.tanh),
    FunctionInfo("contiguous", specc_functional.contiguous),
    FunctionInfo("roll", torch.roll, ("shifts", "dims")),
    FunctionInfo("expand", specc_functional.expand, ("shape",)),
    FunctionInfo("repeat_interleave", torch.repeat_interleave, ("repeats", "dim")),
    FunctionInfo("where", torch.where, ("other",), min_inputs=2, max_inputs=3),
    FunctionInfo("masked_fill", torch.masked_fill, ("value",), min_inputs=2, max_inputs=2),
    FunctionInfo("gather", specc_functional.gather, ("dim",), min_inputs=2, max_inputs=2),
    FunctionInfo("einsum", specc_functional.einsum, ("equation",), max_inputs=None),
    FunctionInfo("clamp", torch.clamp, ("min", "max")),
    FunctionInfo("exp", torch.exp),
    FunctionInfo("log", torch.log),
    FunctionInfo("abs", torch.abs),
    FunctionInfo("neg", torch.neg),
    FunctionInfo("pow", torch.pow, ("exponent",), max_inputs=2),
    FunctionInfo("rsqrt", torch.rsqrt),
    FunctionInfo("minimum", torch.minimum, ("other",), max_inputs=2),
    FunctionInfo("maximum", torch.maximum, ("other",), max_inputs=2),
    FunctionInfo("floor", torch.floor),
    FunctionInfo("to", specc_functional.to_dtype, ("dtype",)),
    *(FunctionInfo(name, getattr(torch, name)) for name in ("sin", "cos", "sqrt", "erf", "sign", "reciprocal")),
    FunctionInfo("softplus", F.softplus, ("beta", "threshold")),
    FunctionInfo("remainder", torch.remainder, ("other",), max_inputs=2),
    FunctionInfo("floor_divide", torch.floor_divide, ("other",), max_inputs=2),
    # ordering and indexing: topk and sort return (values, indices), like chunk a tuple for getitem
    FunctionInfo("topk", torch.topk, ("k", "dim", "largest", "sorted"), {"dim": -1}, required=("k",)),
    FunctionInfo("sort", torch.sort, ("dim", "descending", "stable"), {"dim": -1}),
    FunctionInfo("argsort", torch.argsort, ("dim", "descending", "stable"), {"dim": -1}),
    FunctionInfo("argmax", torch.argmax, ("dim", "keepdim"), required=("dim",)),
    FunctionInfo("argmin", torch.argmin, ("dim", "keepdim"), required=("dim",)),
    *(FunctionInfo(name, getattr(specc_functional, name), ("dim",), min_inputs=3, max_inputs=3, required=("dim",))
      for name in ("scatter", "scatter_add", "index_add")),
    FunctionInfo("one_hot", F.one_hot, ("num_classes",), required=("num_classes",)),
    FunctionInfo("cumsum", torch.cumsum, ("dim",), required=("dim",)),
    FunctionInfo("cumprod", torch.cumprod, ("dim",), required=("dim",)),
    *(FunctionInfo(name, getattr(torch, name), ("other",), max_inputs=2) for name in ("eq", "ne", "lt", "le", "gt", "ge")),
]}

# Functions that need the module's train/eval state become modules instead.
FUNCTION_AS_LAYER = {"dropout": "Dropout", "attention": "Attention", "scan": "LinearScan"}

MERGES = ("cat", "add", "mul", "stack", "mean", "max", "list")
STRUCTURES = ("parallel", "residual", "sequential")


class Registry:
    """Layers by name: torch.nn, specc.build.layers and the spec's `imports`."""

    def __init__(self, imported: dict[str, type] | None = None):
        self.layers: dict[str, type] = {**_builtin_layers(), **(imported or {})}

    def layer(self, name: str) -> LayerInfo | None:
        cls = self.layers.get(name)
        return None if cls is None else layer_info(name, cls)

    def names(self) -> list[str]:
        return [*self.layers, *FUNCTIONS, *FUNCTION_AS_LAYER]


# Args that a subclass passes to its base itself (LSTM passes mode="LSTM" to RNNBase).
_SET_BY_SUBCLASS = {"mode"}
# Args a `*args, **kwargs` wrapper accepts on top of its base's (nn.RNN picks tanh/relu itself).
_WRAPPER_EXTRAS = {"RNN": [inspect.Parameter("nonlinearity", inspect.Parameter.KEYWORD_ONLY, default="tanh")]}


@lru_cache(maxsize=None)
def layer_info(name: str, cls: type) -> LayerInfo:
    signature = _constructor_signature(cls)
    parameters = tuple(p for p in list(signature.parameters.values())[1:]
                       if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    # factory kwargs are set by specc itself (device/dtype of the build)
    parameters = tuple(p for p in parameters if p.name not in ("device", "dtype"))
    return LayerInfo(name, cls, parameters, accepts_any)


def _constructor_signature(cls: type) -> inspect.Signature:
    """The real constructor signature; for `__init__(self, *args, **kwargs)` wrappers (LSTM, GRU, RNN)
    the first base class that spells its parameters out."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        signature = inspect.signature(klass.__init__)
        kinds = {p.kind for p in list(signature.parameters.values())[1:]}
        if kinds - {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} or not kinds:
            if klass is cls:
                return signature
            kept = [p for p in signature.parameters.values() if p.name not in _SET_BY_SUBCLASS]
            return signature.replace(parameters=kept + _WRAPPER_EXTRAS.get(cls.__name__, []))
    return inspect.signature(cls.__init__)


@lru_cache(maxsize=1)
def _builtin_layers() -> dict[str, type]:
    from specc.build.layers import LAYER_MODULES

    found = {}
    for module in (nn, *map(importlib.import_module, LAYER_MODULES)):
        names = getattr(module, "__all__", None) if module is not nn else None   # specc's: what they export
        for name, value in ((name, getattr(module, name)) for name in names) if names else vars(module).items():
            if (inspect.isclass(value) and issubclass(value, nn.Module) and name[:1].isupper()
                    and name not in _NOT_LAYERS and not name.startswith("Lazy") and not name.startswith("_")):
                found[name] = value
    return found


def import_layer(dotted: str, folder: str | Path | None = None) -> type:
    """Import `pkg.module.Class`; only nn.Module subclasses are accepted.

    Args:
        dotted: the module path and class name, as written in `imports:`.
        folder: the spec's folder: `my_layers.py` there is found before `sys.path`.

    Raises:
        ImportError / TypeError with a message fit for the user: also for a standard-library
            module (refused before importing it) and in safe mode.
    """
    if safe_mode():
        raise ImportError(f"safe mode: imports: {dotted} would import and run code; safe mode refuses every import")
    try:  # the path is checked before anything is imported: `this.X` must not print the Zen of Python
        check_code_path(dotted, "imports", "an nn.Module subclass")
    except ValueError as error:
        raise ImportError(str(error)) from None
    module_name, _, attribute = dotted.rpartition(".")
    try:
        module = _import_module(module_name, folder)
    except ImportError as error:
        raise ImportError(f"cannot import '{module_name}': {error}") from None
    value = getattr(module, attribute, None)
    if value is None:
        raise ImportError(f"module '{module_name}' has no attribute '{attribute}'")
    if not (inspect.isclass(value) and issubclass(value, nn.Module)):
        raise TypeError(f"'{dotted}' is not an nn.Module subclass; only layers can be imported")
    return value


def _import_module(module_name: str, folder: str | Path | None) -> ModuleType:
    """The module from `folder/<module_name as a path>.py` (or its package) if there, else `sys.path`;
    imported again when its file changed since this process imported it (an edited layer is used)."""
    if folder is not None:
        relative = Path(*module_name.split("."))
        for candidate in (Path(folder) / relative.with_suffix(".py"), Path(folder) / relative / "__init__.py"):
            if candidate.is_file():
                return _load_file(module_name, candidate)
    module = importlib.import_module(module_name)
    if module_name in _STAMPS and _STAMPS[module_name] != _stamp(module):
        module = importlib.reload(module)
    _STAMPS[module_name] = _stamp(module)
    return module


_STAMPS: dict[str, str | None] = {}   # module name -> hash of its file when last (re)imported


def _stamp(module: ModuleType | Path) -> str | None:
    """A hash of the module's source file (None without one)."""
    path = Path(module) if isinstance(module, Path) else Path(getattr(module, "__file__", None) or "")
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    except OSError:
        return None


def _load_file(module_name: str, path: Path) -> ModuleType:
    loaded = sys.modules.get(module_name)
    stamp = _stamp(path)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve() \
            and _STAMPS.get(module_name) == stamp:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module   # classes defined there pickle and print as `my_layers.Swin`
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's file failing to import is their error to read
        sys.modules.pop(module_name, None)
        raise ImportError(f"{path}: {type(error).__name__}: {error}") from None
    _STAMPS[module_name] = stamp
    return module
