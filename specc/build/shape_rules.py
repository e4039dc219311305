"""Output shapes of common layers without running their kernels (the dry run's fast path).

See shape_functions.py for why: a layer's meta forward goes through torch's Python meta kernels
and decompositions, whose first use imports sympy and torch._dynamo. A rule is keyed by the
layer's exact class (a subclass may change `forward`) and answers only the plain case: the input
fits, one floating dtype, a dense layout. Otherwise it returns None and the layer runs on meta,
so torch still decides — and words — every error.
"""
from __future__ import annotations

from math import prod
from typing import Any, Callable

import torch
from torch import nn

from specc.build import layers as specc_layers
from specc.build.shape_attention import ATTENTION_RULES
from specc.build.shape_functions import broadcast, empty, floats, like, one_input as _one_input, weight_dtype as _weight_dtype, wrap_dim

Tensor = torch.Tensor

_SAME_SHAPE = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Softshrink, nn.Hardshrink, nn.LogSigmoid, nn.Dropout, nn.AlphaDropout, specc_layers.DropPath,
)
# channel dropouts: the input rank each expects without warning (batch first)
_CHANNEL_DROPOUT_RANK = {nn.Dropout1d: 3, nn.Dropout2d: 4, nn.Dropout3d: 5}
_BATCH_NORM_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}
_INSTANCE_NORM_RANK = {nn.InstanceNorm1d: 3, nn.InstanceNorm2d: 4, nn.InstanceNorm3d: 5}
_SPATIAL_DIMS = {
    nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3,
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}


def module_output(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """What `module(*args, **kwargs)` returns on meta inputs, or None: no rule, run the layer."""
    rule = MODULE_RULES.get(type(module))
    if rule is None or not all(isinstance(arg, Tensor) and arg.is_meta for arg in args):
        return None
    return rule(module, args, kwargs)


def _tuple(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _same_shape(module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if x is None or not (floats(x) or isinstance(module, nn.Identity)):
        return None
    return like(x)


def _channel_dropout(module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    return like(x) if x is not None and floats(x) and x.dim() == _CHANNEL_DROPOUT_RANK[type(module)] else None


def _softmax(module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if x is None or not floats(x) or not x.is_contiguous() or module.dim is None:
        return None
    return empty(x.shape, x.dtype) if wrap_dim(module.dim, x.dim()) is not None else None


def _linear(module: nn.Linear, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if x is None or x.dim() < 1 or x.shape[-1] != module.in_features or not _weight_dtype(module, x):
        return None
    return empty((*x.shape[:-1], module.out_features), x.dtype)


def _embedding(module: nn.Embedding, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if x is None or x.dtype not in (torch.long, torch.int32) or module.max_norm is not None:
        return None
    return empty((*x.shape, module.embedding_dim), module.weight.dtype)


def _conv(module: nn.modules.conv._ConvNd, args: tuple, kwargs: dict) -> Tensor | None:
    """Conv1d/2d/3d and their transposes with zero padding, on a contiguous batched input."""
    x = args[0] if len(args) == 1 and not kwargs else None
    n = _SPATIAL_DIMS[type(module)]
    if (x is None or x.dim() != n + 2 or x.shape[1] != module.in_channels or not x.is_contiguous()
            or module.padding_mode != "zeros" or not _weight_dtype(module, x)):
        return None
    sizes = _conv_sizes(module, tuple(x.shape[2:]))
    if sizes is None or min(sizes) < 1:
        return None
    return empty((x.shape[0], module.out_channels, *sizes), x.dtype)


def _conv_sizes(module: nn.modules.conv._ConvNd, spatial: tuple) -> tuple | None:
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if module.transposed:
        return tuple((size - 1) * s - 2 * p + d * (k - 1) + extra + 1 for size, k, s, p, d, extra
                     in zip(spatial, kernel, stride, module.padding, dilation, module.output_padding))
    if module.padding == "same":
        return spatial
    padding = (0,) * len(spatial) if module.padding == "valid" else module.padding
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                 for size, k, s, p, d in zip(spatial, kernel, stride, padding, dilation))


def _pool(module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
    """MaxPool/AvgPool 1d/2d/3d on a batched floating input (torch's pooling_output_shape)."""
    x = _one_input(args, kwargs)
    n = _SPATIAL_DIMS[type(module)]
    if x is None or x.dim() != n + 2 or not floats(x) or not x.is_contiguous() or getattr(module, "return_indices", False):
        return None
    kernel, padding = _tuple(module.kernel_size, n), _tuple(module.padding, n)
    stride = _tuple(module.stride or module.kernel_size, n)
    dilation = _tuple(getattr(module, "dilation", 1), n)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        return None  # torch refuses padding over half the kernel: let it say so
    sizes = tuple(_pooled_size(size, k, s, p, d, module.ceil_mode)
                  for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation))
    return empty((*x.shape[:2], *sizes), x.dtype) if min(sizes) >= 1 else None


def _pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def _adaptive_pool(module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    n = _SPATIAL_DIMS[type(module)]
    if x is None or x.dim() != n + 2 or not floats(x) or not x.is_contiguous() or getattr(module, "return_indices", False):
        return None
    sizes = tuple(size if wanted is None else wanted for size, wanted in zip(x.shape[2:], _tuple(module.output_size, n)))
    if min(x.shape[1:]) < 1 or min(sizes) < 1:
        return None
    return empty((*x.shape[:2], *sizes), x.dtype)


def _flatten(module: nn.Flatten, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if x is None or not x.is_contiguous() or x.dim() == 0:
        return None
    start, end = wrap_dim(module.start_dim, x.dim()), wrap_dim(module.end_dim, x.dim())
    if start is None or end is None or start > end:
        return None
    return x.view(*x.shape[:start], prod(x.shape[start:end + 1]), *x.shape[end + 1:])  # a view: C++, no meta kernel


def _batch_norm(module: nn.modules.batchnorm._BatchNorm, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if (x is None or x.dim() not in _BATCH_NORM_RANKS[type(module)] or x.shape[1] != module.num_features
            or not x.is_contiguous() or not _weight_dtype(module, x)):
        return None
    if module.training and x.shape[0] * prod(x.shape[2:]) == 1:
        return None  # "Expected more than 1 value per channel when training": torch's message
    return empty(x.shape, x.dtype)


def _instance_norm(module: nn.modules.instancenorm._InstanceNorm, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if (x is None or x.dim() != _INSTANCE_NORM_RANK[type(module)] or x.shape[1] != module.num_features
            or prod(x.shape[2:]) <= 1 or not x.is_contiguous() or not _weight_dtype(module, x)):
        return None
    return empty(x.shape, x.dtype)


def _last_dims_norm(module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
    """LayerNorm and RMSNorm normalise the trailing `normalized_shape` dims."""
    x = _one_input(args, kwargs)
    shape = tuple(module.normalized_shape)
    if x is None or tuple(x.shape[x.dim() - len(shape):]) != shape or x.dim() < len(shape):
        return None
    return empty(x.shape, x.dtype) if _weight_dtype(module, x) else None  # contiguous even for a permuted input


def _group_norm(module: nn.GroupNorm, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if x is None or x.dim() < 2 or x.shape[1] != module.num_channels or not x.is_contiguous() or not _weight_dtype(module, x):
        return None
    if x.shape[0] * x.shape[1] // module.num_groups * prod(x.shape[2:]) == 1:
        return None  # torch's "more than 1 value per channel" check
    return empty(x.shape, x.dtype)


def _layer_norm_2d(module: specc_layers.LayerNorm2d, args: tuple, kwargs: dict) -> Tensor | None:
    x = _one_input(args, kwargs)
    if x is None or x.dim() < 2 or (x.shape[1],) != tuple(module.normalized_shape) or not _weight_dtype(module, x):
        return None
    if not x.is_contiguous():
        return None
    return empty((*x.shape[:1], *x.shape[2:], x.shape[1]), x.dtype).movedim(-1, 1)  # channels back in place


def _linear_scan(module: specc_layers.LinearScan, args: tuple, kwargs: dict) -> Tensor | None:
    """`scan`: the broadcast shape of a and b (an initial state must fit it without the time dim)."""
    if kwargs or not 2 <= len(args) <= 3 or not floats(*args):
        return None
    shape = broadcast(tuple(args[0].shape), tuple(args[1].shape))
    axis = None if not shape else wrap_dim(module.dim, len(shape))
    if axis is None or shape[axis] == 0:
        return None
    step = shape[:axis] + shape[axis + 1:]
    if len(args) == 3 and (args[2].dim() > len(step) or broadcast(tuple(args[2].shape), step) != step):
        return None
    return empty(shape, args[0].dtype)


MODULE_RULES: dict[type, Callable[[nn.Module, tuple, dict], Any]] = {
    **dict.fromkeys(_SAME_SHAPE, _same_shape),
    **dict.fromkeys(_CHANNEL_DROPOUT_RANK, _channel_dropout),
    nn.Softmax: _softmax, nn.LogSoftmax: _softmax, nn.Softmin: _softmax,
    nn.Linear: _linear,
    nn.Embedding: _embedding,
    **dict.fromkeys((cls for cls in _SPATIAL_DIMS if issubclass(cls, nn.modules.conv._ConvNd)), _conv),
    **dict.fromkeys((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), _pool),
    **dict.fromkeys((cls for cls in _SPATIAL_DIMS if cls.__name__.startswith("Adaptive")), _adaptive_pool),
    nn.Flatten: _flatten,
    **dict.fromkeys(_BATCH_NORM_RANKS, _batch_norm),
    **dict.fromkeys(_INSTANCE_NORM_RANK, _instance_norm),
    nn.LayerNorm: _last_dims_norm, nn.RMSNorm: _last_dims_norm,
    nn.GroupNorm: _group_norm,
    specc_layers.LayerNorm2d: _layer_norm_2d,
    **ATTENTION_RULES,
    specc_layers.LinearScan: _linear_scan,
}
