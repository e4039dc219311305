"""Tracing for `specc.from_module`: which modules are leaves, and which one torch.fx cannot trace.

torch.nn layers and specc's own (also the verbatim copies `specc codegen` writes into its output)
are leaves: each is one spec item, and so are other libraries' subclasses of torch.nn layers
(timm's `LayerNorm`), which import as the layer that computes the same (`import_ops.stand_in`). The user's classes are traced through, so their calls become
items; one that cannot be traced is found and kept whole (an `imports:` class).
"""
from __future__ import annotations

import re

import functools
import inspect
from typing import Any

from torch import fx, nn

from specc.build.layers import LAYER_MODULES
from specc.export.import_ops import torch_base

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class Tracer(fx.Tracer):
    """torch.nn and specc layers are leaves (and modules in `opaque`); the user's classes are traced through."""

    def __init__(self, opaque: set[str]):
        super().__init__()
        self.opaque = opaque
        # buffers are traced, not folded into constants: what a forward computes from an index
        # buffer (Swin's relative positions) becomes spec items rather than one opaque tensor
        self.proxy_buffer_attributes = True

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        # a parameter's shape is known while tracing (`token.expand(n, *token.shape[1:])` unpacks
        # it); fx offers that for parameters only, so the flag is set per attribute
        self.param_shapes_constant = isinstance(attr_val, nn.Parameter)
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, module: nn.Module, path: str) -> bool:
        if path in self.opaque:
            return True
        if isinstance(module, CONTAINERS):
            return False
        if type(module).__module__.startswith(("torch.nn", *LAYER_MODULES)) or specc_layer(type(module)):
            return True
        # another library's subclass of a torch.nn layer (timm's LayerNorm): one item, as the layer it is
        return torch_base(type(module)) is not None and not module._modules


@functools.cache
def specc_layer(cls: type) -> bool:
    """specc's own layer, or the verbatim copy of it that `specc codegen` writes into its output."""
    import importlib

    modules = [importlib.import_module(name) for name in LAYER_MODULES]
    original = next((getattr(module, cls.__name__) for module in modules if hasattr(module, cls.__name__)), None)
    if original is cls:
        return True
    if not isinstance(original, type) or not issubclass(original, nn.Module) or cls.__module__ in LAYER_MODULES:
        return False
    try:
        return inspect.getsource(cls) == inspect.getsource(original)
    except (OSError, TypeError):     # defined where no source can be read: not known to be a copy
        return False


def failing_module(module: nn.Module, opaque: set[str]) -> str:
    """The deepest submodule that torch.fx cannot trace on its own ("" when only the root fails)."""
    for path, child in module.named_modules():
        if not path or path in opaque or isinstance(child, CONTAINERS) or Tracer(set()).is_leaf_module(child, path):
            continue
        if any(path.startswith(done + ".") for done in opaque):
            continue
        try:
            Tracer(set()).trace(child)
        except Exception:  # noqa: BLE001
            deeper = failing_module(child, set())
            return f"{path}.{deeper}" if deeper else path
    return ""


_WRITABLE_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def refuse_unwritable_names(module: nn.Module) -> None:
    """Every submodule, parameter and buffer name must be letters, digits and `_`: spec names are
    identifiers or positions, and a name holding a newline or quote would break the code torch.fx
    writes while tracing (a SyntaxError instead of a reason)."""
    names = [name for name, _ in module.named_modules(remove_duplicate=False) if name]
    names += [name for name, _ in module.named_parameters(remove_duplicate=False)]
    names += [name for name, _ in module.named_buffers(remove_duplicate=False)]
    for name in names:
        bad = next((part for part in name.split(".") if not _WRITABLE_NAME.match(part)), None)
        if bad is not None:
            raise ValueError(f"cannot import {type(module).__name__}: the name {bad!r} (in {name!r}) is not letters, "
                             f"digits and _, so it cannot be a spec name; rename that submodule or tensor")
