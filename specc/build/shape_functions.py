"""Output shapes of tensor functions and merges without running a kernel (the dry run's fast path).

Most of torch's meta kernels are Python (torch._meta_registrations, torch._decomp); the first
call of many of them imports sympy and torch._dynamo, about 1 s of every `specc check`. These
rules compute what the kernel would return — shape, dtype and layout — from the input shapes
alone. A rule only answers the plain case it knows; anything else (mixed dtypes, unusual
layouts, shapes that do not fit) returns None and the real meta kernel runs, so torch still
decides and words every error. tests/test_shape_rules.py checks each rule against the kernel.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

Tensor = torch.Tensor


def empty(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """A contiguous meta tensor (torch.empty on meta is a C++ kernel: no Python meta set-up)."""
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def like(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """What an elementwise kernel returns for `x` alone: the same shape, laid out densely in the
    order of `x`'s strides (a permuted input gives a permuted output, a slice a packed one)."""
    dtype = dtype or x.dtype
    if x.is_contiguous():
        return empty(x.shape, dtype)
    order = sorted(range(x.dim()), key=lambda dim: -x.stride(dim))  # outermost first; ties keep their order
    strides, step = [0] * x.dim(), 1
    for dim in reversed(order):
        strides[dim], step = step, step * x.shape[dim]
    return torch.empty_strided(tuple(x.shape), tuple(strides), dtype=dtype, device="meta")


def meta_tensors(*values: Any) -> bool:
    return all(isinstance(value, Tensor) and value.is_meta for value in values)


def floats(*tensors: Any) -> bool:
    """Every value is a meta tensor of one floating dtype (no type promotion to work out)."""
    if not all(isinstance(t, Tensor) and t.is_meta for t in tensors):
        return False
    return tensors[0].is_floating_point() and all(t.dtype == tensors[0].dtype for t in tensors)


def weight_dtype(module: torch.nn.Module, x: Tensor) -> bool:
    """The input has the layer's floating dtype (else torch promotes or refuses: its call)."""
    weight = next(module.parameters(), None)
    return floats(x) and (weight is None or weight.dtype == x.dtype)


def one_input(args: tuple, kwargs: dict) -> Tensor | None:
    """The input of a layer called on one tensor and no keywords, else None."""
    return args[0] if len(args) == 1 and not kwargs else None


def broadcast(*shapes: Sequence[int]) -> tuple[int, ...] | None:
    """Broadcast shape of `shapes`, None where they do not broadcast."""
    rank = max(len(shape) for shape in shapes)
    result = []
    for dim in range(rank):
        sizes = {shape[dim - rank + len(shape)] for shape in shapes if dim - rank + len(shape) >= 0} - {1}
        if len(sizes) > 1:
            return None
        result.append(sizes.pop() if sizes else 1)
    return tuple(result)


def wrap_dim(dim: Any, rank: int) -> int | None:
    """`dim` as a non-negative axis of a `rank`-dim tensor, None where it is not one."""
    if not isinstance(dim, int) or isinstance(dim, bool) or not -max(rank, 1) <= dim < max(rank, 1):
        return None
    return dim % max(rank, 1)


def elementwise(inputs: list, kwargs: dict, scalars: tuple[str, ...] = (), floating: bool = False) -> Tensor | None:
    """Output of a one- or two-tensor elementwise function; `scalars` are the kwargs it may take,
    `floating`: it is only ruled for floating inputs (exp of an int tensor makes floats)."""
    if any(key not in scalars for key in kwargs) or not 1 <= len(inputs) <= 2 or not meta_tensors(*inputs):
        return None
    numbers = [value for value in kwargs.values() if value is not None]
    if any(not isinstance(value, (int, float)) or isinstance(value, bool) for value in numbers):
        return None
    if (floating and not floats(*inputs)) or any(value.dtype == torch.bool or value.is_complex() for value in inputs):
        return None
    dtype = torch.result_type(*inputs) if len(inputs) == 2 else inputs[0].dtype  # C++: torch's own promotion
    for number in numbers:
        dtype = torch.result_type(torch.empty((), dtype=dtype, device="meta"), number)
    if len(inputs) == 1:
        return like(inputs[0], dtype)
    shape = broadcast(*(tuple(value.shape) for value in inputs))
    if shape is None or not _contiguous_result(inputs, shape):
        return None
    return empty(shape, dtype)


def _contiguous_result(inputs: list, shape: tuple) -> bool:
    """Contiguous operands give a contiguous result; so does a contiguous first operand of the full
    shape without size-1 dims, whatever the others' layout (torch orders dims by the first)."""
    if all(value.is_contiguous() for value in inputs):
        return True
    first = inputs[0]
    return first.is_contiguous() and tuple(first.shape) == shape and 1 not in shape


def reduction(inputs: list, kwargs: dict) -> Tensor | None:
    """mean/sum/amax over `dim` (an int or a list), with or without `keepdim`."""
    if len(inputs) != 1 or not floats(*inputs) or not inputs[0].is_contiguous() or set(kwargs) - {"dim", "keepdim"}:
        return None
    x, dims, keepdim = inputs[0], kwargs.get("dim"), kwargs.get("keepdim", False)
    if dims is None or not isinstance(keepdim, bool):
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    axes = [wrap_dim(dim, x.dim()) for dim in dims]
    if not axes or None in axes or len(set(axes)) != len(axes) or x.dim() == 0:
        return None
    shape = [1 if axis in axes else size for axis, size in enumerate(x.shape) if keepdim or axis not in axes]
    return empty(shape, x.dtype)


def softmax(inputs: list, kwargs: dict) -> Tensor | None:
    if len(inputs) != 1 or not floats(*inputs) or set(kwargs) != {"dim"} or not inputs[0].is_contiguous():
        return None
    return empty(inputs[0].shape, inputs[0].dtype) if wrap_dim(kwargs["dim"], inputs[0].dim()) is not None else None


def matmul(left: Tensor, right: Tensor) -> Tensor | None:
    """`left @ right` for matrices and batches of matrices (batch dims broadcast); vectors: None."""
    if not floats(left, right) or left.dim() < 2 or right.dim() < 2 or left.shape[-1] != right.shape[-2]:
        return None
    batch = broadcast(tuple(left.shape[:-2]), tuple(right.shape[:-2]))
    return None if batch is None else empty((*batch, left.shape[-2], right.shape[-1]), left.dtype)


def concatenate(inputs: list, dim: Any, new_axis: bool = False) -> Tensor | None:
    """torch.cat (or torch.stack with `new_axis`) of same-dtype, same-rank, contiguous tensors."""
    if not inputs or not floats(*inputs) or not all(value.is_contiguous() for value in inputs):
        return None
    first = tuple(inputs[0].shape)
    rank = len(first) + (1 if new_axis else 0)
    axis = wrap_dim(dim, rank)
    if axis is None or first == () or any(value.dim() != len(first) for value in inputs):
        return None
    if new_axis:
        if any(tuple(value.shape) != first for value in inputs):
            return None
        return empty((*first[:axis], len(inputs), *first[axis:]), inputs[0].dtype)
    if any(tuple(value.shape[:axis]) + tuple(value.shape[axis + 1:]) != first[:axis] + first[axis + 1:]
           for value in inputs):
        return None
    return empty((*first[:axis], sum(value.shape[axis] for value in inputs), *first[axis + 1:]), inputs[0].dtype)


def _list_inputs(inputs: list) -> list:
    if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
        return list(inputs[0])
    return list(inputs)


def _binary(inputs: list, kwargs: dict, floating: bool = False) -> Tensor | None:
    """add/sub/mul/div of two tensors or of a tensor and a number `other`."""
    if len(inputs) == 2:
        return elementwise(inputs, kwargs, floating=floating) if not kwargs else None
    return elementwise(inputs, kwargs, scalars=("other",), floating=floating) if "other" in kwargs else None


def _dense_float(inputs: list, kwargs: dict, keys: set) -> Tensor | None:
    """The one input of an ordering or scan function, when it is a contiguous floating meta tensor
    and the spec args are among `keys` (else torch decides)."""
    if len(inputs) != 1 or not floats(*inputs) or not inputs[0].is_contiguous() or set(kwargs) - keys:
        return None
    return inputs[0] if inputs[0].dim() > 0 else None


def along(inputs: list, kwargs: dict, keys: set = frozenset({"dim"}), dtype: torch.dtype | None = None) -> Tensor | None:
    """cumsum/cumprod (same shape) and argsort (int64 indices) along a valid `dim`."""
    x = _dense_float(inputs, kwargs, keys)
    if x is None or wrap_dim(kwargs.get("dim"), x.dim()) is None:
        return None
    return empty(x.shape, dtype or x.dtype)


def arg_reduction(inputs: list, kwargs: dict) -> Tensor | None:
    """argmax/argmin over one `dim`: int64 indices, that dim dropped or kept as 1."""
    x = _dense_float(inputs, kwargs, {"dim", "keepdim"})
    keepdim = kwargs.get("keepdim", False)
    axis = None if x is None else wrap_dim(kwargs.get("dim"), x.dim())
    if axis is None or not isinstance(keepdim, bool):
        return None
    return empty([1 if dim == axis else size for dim, size in enumerate(x.shape) if keepdim or dim != axis], torch.int64)


def top_k(inputs: list, kwargs: dict) -> Any:
    """topk: `(values, indices)` with `k` entries along `dim`."""
    x = _dense_float(inputs, kwargs, {"k", "dim", "largest", "sorted"})
    axis = None if x is None else wrap_dim(kwargs.get("dim", -1), x.dim())
    k = kwargs.get("k")
    if axis is None or not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= x.shape[axis]:
        return None
    shape = [k if dim == axis else size for dim, size in enumerate(x.shape)]
    return torch.return_types.topk((empty(shape, x.dtype), empty(shape, torch.int64)))


def sort(inputs: list, kwargs: dict) -> Any:
    """sort: `(values, indices)` of the input's shape."""
    x = _dense_float(inputs, kwargs, {"dim", "descending", "stable"})
    if x is None or wrap_dim(kwargs.get("dim", -1), x.dim()) is None:
        return None
    return torch.return_types.sort((empty(x.shape, x.dtype), empty(x.shape, torch.int64)))


def one_hot(inputs: list, kwargs: dict) -> Tensor | None:
    """one_hot of int64 class indices: a trailing dim of `num_classes`, int64."""
    count = kwargs.get("num_classes")
    if (len(inputs) != 1 or not meta_tensors(*inputs) or inputs[0].dtype != torch.int64 or set(kwargs) != {"num_classes"}
            or not isinstance(count, int) or isinstance(count, bool) or count < 1):
        return None
    return empty((*inputs[0].shape, count), torch.int64)


def gather(inputs: list, kwargs: dict) -> Tensor | None:
    """gather: the index's shape, the input's dtype (index no larger than the input off `dim`)."""
    if len(inputs) != 2 or set(kwargs) != {"dim"} or not floats(inputs[0]) or not meta_tensors(inputs[1]):
        return None
    x, index = inputs
    axis = wrap_dim(kwargs["dim"], x.dim())
    if (axis is None or index.dtype != torch.int64 or index.dim() != x.dim()
            or any(index.shape[dim] > x.shape[dim] for dim in range(x.dim()) if dim != axis)):
        return None
    return empty(index.shape, x.dtype)


def scatter(inputs: list, kwargs: dict, name: str) -> Tensor | None:
    """scatter/scatter_add/index_add of `source` into `x` at `index`: a new tensor like `x`."""
    if len(inputs) != 3 or set(kwargs) != {"dim"} or not floats(inputs[0], inputs[2]) or not meta_tensors(inputs[1]):
        return None
    x, index, source = inputs
    axis = wrap_dim(kwargs["dim"], x.dim())
    if axis is None or index.dtype != torch.int64 or not x.is_contiguous() or source.dim() != x.dim():
        return None
    if name == "index_add":
        fits = (index.dim() == 1 and source.shape[axis] == index.shape[0]
                and all(source.shape[dim] == x.shape[dim] for dim in range(x.dim()) if dim != axis))
    else:
        fits = index.dim() == x.dim() and all(
            index.shape[dim] <= source.shape[dim] and (dim == axis or index.shape[dim] <= x.shape[dim])
            for dim in range(x.dim()))
    return empty(x.shape, x.dtype) if fits else None


_FLOATING_FUNCTIONS = ("silu", "sigmoid", "tanh", "exp", "log", "rsqrt", "sin", "cos", "sqrt", "erf", "reciprocal")

# function item name -> rule(inputs, spec args) returning the output, or None to run the kernel
FUNCTION_RULES: dict[str, Callable[[list, dict], Tensor | None]] = {
    **{name: (lambda inputs, kwargs: elementwise(inputs, kwargs, floating=True)) for name in _FLOATING_FUNCTIONS},
    **{name: (lambda inputs, kwargs: elementwise(inputs, kwargs)) for name in ("relu", "abs", "neg", "floor", "sign")},
    "softplus": lambda inputs, kwargs: elementwise(inputs, kwargs, scalars=("beta", "threshold"), floating=True),
    **{name: _binary for name in ("remainder", "floor_divide")},
    **{name: along for name in ("cumsum", "cumprod")},
    "argsort": lambda inputs, kwargs: along(inputs, kwargs, {"dim", "descending", "stable"}, torch.int64),
    "argmax": arg_reduction, "argmin": arg_reduction,
    "topk": top_k, "sort": sort, "one_hot": one_hot, "gather": gather,
    **{name: (lambda inputs, kwargs, name=name: scatter(inputs, kwargs, name)) for name in ("scatter", "scatter_add", "index_add")},
    "clamp": lambda inputs, kwargs: elementwise(inputs, kwargs, scalars=("min", "max")) if kwargs else None,
    "gelu": lambda inputs, kwargs: (elementwise(inputs, {}, floating=True) if kwargs.get("approximate", "none") in ("none", "tanh")
                                    and set(kwargs) <= {"approximate"} else None),
    **{name: _binary for name in ("add", "sub", "mul")},
    "div": lambda inputs, kwargs: _binary(inputs, kwargs, floating=True),  # int / int is float: not ruled
    **{name: (lambda inputs, kwargs: elementwise(inputs, {}) if len(inputs) == 2 and not kwargs else None)
       for name in ("minimum", "maximum")},
    "matmul": lambda inputs, kwargs: matmul(*inputs) if len(inputs) == 2 and not kwargs else None,
    "softmax": softmax,
    "log_softmax": softmax,
    **{name: reduction for name in ("mean", "sum", "amax")},
    "cat": lambda inputs, kwargs: concatenate(_list_inputs(inputs), kwargs.get("dim", 1)) if set(kwargs) <= {"dim"} else None,
    "stack": lambda inputs, kwargs: (concatenate(_list_inputs(inputs), kwargs.get("dim", 1), new_axis=True)
                                     if set(kwargs) <= {"dim"} else None),
}


def function_output(target: str, inputs: list, kwargs: dict) -> Tensor | None:
    """The output of function item `target` on `inputs`, or None: no rule, run the kernel."""
    rule = FUNCTION_RULES.get(target)
    return rule(inputs, kwargs) if rule else None


def merge_output(target: str, inputs: list, kwargs: dict) -> Tensor | None:
    """The output of a parallel/residual merge, or None (then run_merge checks and runs it)."""
    if target in ("cat", "stack"):
        return concatenate(inputs, kwargs.get("dim"), new_axis=target == "stack")
    if target in ("add", "mean", "mul", "max") and len(inputs) >= 2 and floats(*inputs):
        shape = broadcast(*(tuple(value.shape) for value in inputs))
        if shape is not None and all(value.is_contiguous() for value in inputs):
            return empty(shape, inputs[0].dtype)
    return None
