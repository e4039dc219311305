"""Free tensors: `- parameter:`, `- buffer:` and `- constant:` items.

A free tensor is a tensor of the model rather than a function of an input: a class token, a
position embedding, a relative-position index. It is registered under the item's qualified name
(`class_token`, `blocks.0.attn.index`) so that is its state_dict key.

  parameter  learnable (`shape`, `init` as in the spec's `init:`, default zeros)
  buffer     not learnable, saved in the state_dict
  constant   not learnable, not saved (rebuilt from the spec)

A parameter or buffer has exactly the shape written, as a library's `nn.Parameter` does (a GRN
weight `[C]`, a position embedding `[1, 197, 768]`), so its state_dict entry is the library's; it
meets batched tensors by torch's broadcasting (trailing dims align). A constant is a computed
helper (positions, masks) that the spec's functions treat like an input of batch 1: `[1, *shape]`.
`batch: true` repeats a tensor's first dim, which must be 1, over the batch of its input (as a view).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from specc.lang.errors import Problem, did_you_mean
from specc.build.functional import DTYPES, batch_expand
from specc.build.input_sizes import contains_deferred

FREE_TENSORS = ("parameter", "buffer", "constant")
_VALUE_FORMS = ("value", "arange", "zeros", "ones")
FREE_TENSOR_KEYS = {"parameter": ("shape", "init", "batch"), "buffer": (*_VALUE_FORMS, "dtype", "batch"),
         "constant": (*_VALUE_FORMS, "dtype", "batch")}


def free_tensor_args(op: str, args: Any, locate: Callable[..., Problem]) -> tuple[dict, list[Problem]]:
    """The checked args of a free-tensor item, with every problem found in them."""
    if not isinstance(args, dict):
        example = "{shape: [1, 768], init: zeros}" if op == "parameter" else "{arange: 7} or {value: [0, 1]}"
        return {}, [locate(f"{op} needs a mapping like {example}", (op,), "TYPE_ERROR")]
    problems = [locate(f"{op} has no argument '{key}'", (op, key), "UNKNOWN_KWARG", did_you_mean(str(key), FREE_TENSOR_KEYS[op]))
                for key in args if key not in FREE_TENSOR_KEYS[op]]
    if op == "parameter":
        # `shap: [4]` is one mistake: its missing `shape` is not reported again
        problems += _shape_problems(args.get("shape"), "shape", op, locate, required=not problems)
        if "init" in args and not _init_ok(args["init"]):
            problems.append(locate(f"parameter: init must be an nn.init name (zeros, normal, trunc_normal, ...), "
                                   f"{{name: {{kwargs}}}} or values ({{arange: N}}, {{value: [...]}}, {{constant: x}}): "
                                   f"{init_problem(args['init'])}", (op, "init"), "TYPE_ERROR"))
        elif value_init(args.get("init")) and not problems and not contains_deferred(args["shape"]):
            problem = values_problem(value_init(args["init"]), torch.Size(args["shape"]).numel())
            if problem is not None:
                problems.append(locate(f"parameter: init: {problem}", (op, "init"), "SHAPE_MISMATCH"))
    else:
        forms = [key for key in _VALUE_FORMS if key in args]
        if len(forms) != 1:
            problems.append(locate(f"{op} needs exactly one of {', '.join(_VALUE_FORMS)}", (op,), "MISSING_ARGUMENT"))
        for form in forms:
            if form in ("zeros", "ones"):
                problems += _shape_problems(args[form], form, op, locate, required=True)
            elif form == "arange" and not contains_deferred(args[form]) and not _ints(args[form], allow_scalar=True):
                problems.append(locate(f"{op}: arange is N or [start, end(, step)] of ints, got {args[form]!r}",
                                       (op, form), "TYPE_ERROR"))
        if "dtype" in args and args["dtype"] not in DTYPES:
            problems.append(locate(f"{op}: unknown dtype {args['dtype']!r}", (op, "dtype"), "TYPE_ERROR",
                                   did_you_mean(str(args["dtype"]), DTYPES)))
    if not isinstance(args.get("batch", False), bool):
        problems.append(locate(f"{op}: batch must be true or false", (op, "batch"), "TYPE_ERROR"))
    elif args.get("batch") and op != "constant" and not problems:
        problems += _batch_dim_problems(op, args, locate)
    return dict(args), problems


def _batch_dim_problems(op: str, args: dict, locate) -> list[Problem]:
    """`batch: true` repeats the first dim over the batch: a parameter's or buffer's must be 1."""
    form = next((key for key in ("shape", "zeros", "ones", "value", "arange") if key in args), None)
    written = args.get(form)
    if form == "arange" or (form == "value" and isinstance(written, list) and len(written) != 1) or (
            form in ("shape", "zeros", "ones") and isinstance(written, list) and written
            and isinstance(written[0], int) and written[0] != 1):
        return [locate(f"{op}: batch: true repeats the first dim over the batch, so it must be 1 "
                       f"(write {form}: [1, ...]); got {written!r}", (op, form), "TYPE_ERROR")]
    return []


def _shape_problems(shape: Any, key: str, op: str, locate, required: bool) -> list[Problem]:
    if shape is None:
        what = "the shape without the batch dim, e.g. [7]" if op == "constant" else "the tensor's shape, e.g. [1, 197, 768]"
        return [locate(f"{op} needs '{key}' ({what})", (op,),
                       "MISSING_ARGUMENT")] if required else []
    if contains_deferred(shape) or _ints(shape, positive=True):
        return []
    return [locate(f"{op}: {key} must be a list of positive ints, got {shape!r}", (op, key), "TYPE_ERROR")]


def _ints(value: Any, positive: bool = False, allow_scalar: bool = False) -> bool:
    values = [value] if allow_scalar and not isinstance(value, list) else value
    return (isinstance(values, list) and 0 < len(values) <= 8
            and all(isinstance(v, int) and not isinstance(v, bool) and (v > 0 or not positive) for v in values))


def _init_ok(how: Any) -> bool:
    return value_init(how) is not None or init_problem(how) is None


VALUE_INITS = ("arange", "value", "constant")   # init from values: `{arange: 16}`, `{value: [..]}`, `{constant: 0.5}`


def value_init(how: Any) -> tuple[str, Any] | None:
    """`(form, argument)` of an init written as values, or None for an nn.init function
    (`constant: {val: 0.5}` is nn.init's; `constant: 0.5` the value form)."""
    if not isinstance(how, dict) or len(how) != 1:
        return None
    form, argument = next(iter(how.items()))
    if form not in VALUE_INITS or (form == "constant" and isinstance(argument, dict)):
        return None
    return form, argument


def values_problem(how: tuple[str, Any], numel: int) -> str | None:
    """Why an init written as values cannot fill a tensor of `numel` numbers, or None: `arange` and
    `value` fill it in row-major order and must give exactly as many numbers (nothing is allocated)."""
    form, argument = how
    if form == "constant":
        return None if isinstance(argument, (int, float)) and not isinstance(argument, bool) else (
            f"constant must be a number, got {argument!r}")
    if form == "arange":
        bounds = argument if isinstance(argument, list) else [argument]
        if not _ints(bounds, allow_scalar=True) or len(bounds) > 3 or bounds[2:3] == [0]:
            return f"arange is N or [start, end(, step)] of ints, got {argument!r}"
        count = len(range(*bounds))
    else:
        try:
            count = torch.tensor(argument, dtype=torch.float64).numel()
        except (TypeError, ValueError, RuntimeError):
            return f"value must be a number or a (nested) list of numbers, got {argument!r}"
    return None if count == numel else f"{form} gives {count} numbers for a tensor of {numel}"


def initial_values(how: tuple[str, Any], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The values of an init written as values, shaped as the tensor (`values_problem` said it fits)."""
    form, argument = how
    if form == "constant":
        return torch.full(shape, float(argument), dtype=dtype)
    if form == "arange":
        values = torch.arange(*(argument if isinstance(argument, list) else [argument]))
    else:
        values = torch.tensor(argument)
    return values.reshape(shape).to(dtype)


def init_problem(how: Any) -> str | None:
    """Why `how` (`zeros`, `{normal: {std: 0.02}}`) is not an nn.init call a spec may make, or None.

    The function must be a public `nn.init.*_` initialiser and every kwarg a parameter of it (its
    tensor and generator excepted), so nothing but a known name and a known keyword ever reaches
    the call, or the code `specc codegen` writes for it.
    """
    name, kwargs = (how, {}) if isinstance(how, str) else next(iter(how.items())) if isinstance(how, dict) and len(how) == 1 \
        else (None, None)
    function_name = f"{name.rstrip('_')}_" if isinstance(name, str) else ""
    if function_name not in INIT_FUNCTIONS:
        return f"unknown initialisation {name!r}"
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict):
        return f"{name}: its args must be a mapping of keyword args, got {kwargs!r}"
    accepted = INIT_FUNCTIONS[function_name]
    for key in kwargs:
        if key not in accepted:
            return f"{name} has no argument {key!r} (it takes {', '.join(accepted) or 'none'})"
    return None


def _init_functions() -> dict[str, tuple[str, ...]]:
    functions = {}
    for name in dir(nn.init):
        if name.endswith("_") and not name.startswith("_") and callable(getattr(nn.init, name)):
            parameters = list(inspect.signature(getattr(nn.init, name)).parameters)[1:]   # [0] is the tensor
            functions[name] = tuple(p for p in parameters if p != "generator")   # a Generator is no YAML value
    return functions


INIT_FUNCTIONS: dict[str, tuple[str, ...]] = _init_functions()


def make_free_tensor(op: str, args: dict, device: torch.device | str) -> torch.Tensor:
    """The tensor of a free-tensor item on `device` (initialised unless on meta): a parameter's or
    buffer's exactly as written, a constant's `[1, *shape]`."""
    with torch.device(device):
        if op == "parameter":
            tensor = torch.zeros(*args["shape"])
            if "init" in args and tensor.device.type != "meta":
                _initialise(tensor, args["init"])
            return nn.Parameter(tensor)
        dtype = DTYPES[args["dtype"]] if "dtype" in args else None
        if "value" in args:
            tensor = torch.tensor(args["value"], dtype=dtype)
        elif "arange" in args:
            bounds = args["arange"] if isinstance(args["arange"], list) else [args["arange"]]
            tensor = torch.arange(*bounds, dtype=dtype)
        else:
            tensor = (torch.zeros if "zeros" in args else torch.ones)(*args.get("zeros", args.get("ones")), dtype=dtype)
        return tensor.unsqueeze(0) if op == "constant" else tensor


def _initialise(tensor: torch.Tensor, how: str | dict) -> None:
    values = value_init(how)
    if values is not None:
        tensor.copy_(initial_values(values, tensor.shape, tensor.dtype))   # checked by free_tensor_args
        return
    name, kwargs = (how, {}) if isinstance(how, str) else next(iter(how.items()))
    getattr(nn.init, name.rstrip("_") + "_")(tensor, **(kwargs or {}))


def free_tensor_value(tensor: torch.Tensor, args: dict, inputs: list) -> torch.Tensor:
    """What the item outputs: the tensor, or with `batch: true` a view over its input's batch."""
    return batch_expand(tensor, inputs[0]) if args.get("batch") else tensor


class FreeTensor(nn.Module):
    """Carries a free tensor from the build to the compiled module, where `attach` registers the
    tensor itself (not this holder) under the item's name."""

    def __init__(self, op: str, tensor: torch.Tensor):
        super().__init__()
        self.op = op
        if op == "parameter":
            self.tensor = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor)
        else:
            self.register_buffer("tensor", tensor, persistent=op == "buffer")

    def attach(self, owner: nn.Module, name: str) -> None:
        """Register the tensor on `owner` as `name`: a parameter, a buffer or a non-persistent buffer."""
        if self.op == "parameter":
            owner.register_parameter(name, self.tensor)
        else:
            owner.register_buffer(name, self.tensor, persistent=self.op == "buffer")
