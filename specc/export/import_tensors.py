"""Tensors a module's forward uses directly (`self.class_token`, a registered index) as spec items.

torch.fx records `self.weight` inside a forward as a `get_attr` node. The spec's free tensors
(`parameter`, `buffer`, `constant`) are the same thing: a tensor registered under the item's
name. So a parameter becomes `parameter: {shape}` with its exact shape, a buffer saved in the
state_dict `buffer:` (its exact value), one that is not `constant:` (whose value has a leading 1
for the batch dim), the value written as `arange`, `zeros`, `ones` or a literal. A tensor that has
no such form (a constant whose first dim is not 1, a large literal) raises `Unsupported`, and the
importer keeps the module that uses it as an import.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from specc.build.infer import DTYPES
from specc.export.import_ops import Unsupported

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items() if name != "int64"}
_LITERAL_LIMIT = 256        # values written out in the spec; a bigger buffer is no readable spec


def free_tensor_item(module: nn.Module, target: str) -> dict:
    """`{parameter|buffer|constant: {...}}` for the tensor at `target` (a get_attr node's)."""
    owner_path, _, attribute = target.rpartition(".")
    owner = module.get_submodule(owner_path)
    tensor = getattr(owner, attribute)
    if isinstance(tensor, nn.Parameter):
        if tensor.dim() == 0:
            raise Unsupported(f"{target}: a parameter without dims")
        return {"parameter": {"shape": list(tensor.shape)}}
    if attribute not in owner._non_persistent_buffers_set:
        if tensor.dim() == 0:
            raise Unsupported(f"{target}: a buffer without dims")
        return {"buffer": _value(target, tensor)}
    if tensor.dim() < 1 or tensor.shape[0] != 1:
        raise Unsupported(f"{target}: a tensor used directly that is not saved needs a leading dim of 1 to be a "
                          f"spec constant, it is {list(tensor.shape)}")
    return {"constant": _value(target, tensor[0])}


def _value(target: str, value: torch.Tensor) -> dict:
    """The shortest of the value forms that gives exactly this tensor (and dtype)."""
    if value.dim() == 1 and value.numel() and torch.equal(value, torch.arange(len(value), dtype=value.dtype)):
        return _with_dtype({"arange": len(value)}, value.dtype, torch.int64)
    if value.dim() >= 1 and value.numel() and bool((value == 0).all()):
        return _with_dtype({"zeros": list(value.shape)}, value.dtype, torch.float32)
    if value.dim() >= 1 and value.numel() and bool((value == 1).all()):
        return _with_dtype({"ones": list(value.shape)}, value.dtype, torch.float32)
    if value.numel() > _LITERAL_LIMIT:
        raise Unsupported(f"{target}: a tensor of {value.numel()} values, too many to write in the spec")
    literal = value.tolist()
    return _with_dtype({"value": literal}, value.dtype, torch.tensor(literal).dtype)


def _with_dtype(form: dict, dtype: torch.dtype, default: torch.dtype) -> dict:
    if dtype != default:
        if dtype not in _DTYPE_NAMES:
            raise Unsupported(f"a tensor of dtype {dtype}")
        form["dtype"] = _DTYPE_NAMES[dtype]
    return form


def batch_expanded(node: fx.Node, free_tensor: fx.Node, shape_of) -> fx.Node | None:
    """The input whose batch `node` expands `free_tensor` over (`token.expand(x.shape[0], -1, -1)`):
    the spec's `batch: true`; None when `node` is no such expand."""
    if node.op != "call_method" or node.target != "expand" or not node.args or node.args[0] is not free_tensor:
        return None
    sizes = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = list(sizes[0])
    source = batch_size_of(sizes[0]) if sizes else None
    own = shape_of(free_tensor)
    if source is None or own is None or len(sizes) != len(own):
        return None
    if all(size == -1 or size == kept for size, kept in zip(sizes[1:], own[1:])):
        return source
    return None


def batch_size_of(value: Any) -> fx.Node | None:
    """`x.shape[0]`, `x.size(0)`, `x.size()[0]`: the node `x` whose batch size this is."""
    if not isinstance(value, fx.Node):
        return None
    if value.op == "call_method" and value.target == "size" and len(value.args) == 2 and value.args[1] == 0:
        return value.args[0]
    if value.op == "call_function" and getattr(value.target, "__name__", "") == "getitem" and value.args[1] == 0:
        sizes = value.args[0]
        if isinstance(sizes, fx.Node) and sizes.op == "call_function" and sizes.args[1:] == ("shape",):
            return sizes.args[0]
        if isinstance(sizes, fx.Node) and sizes.op == "call_method" and sizes.target == "size" and len(sizes.args) == 1:
            return sizes.args[0]
    return None
