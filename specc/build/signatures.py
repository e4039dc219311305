"""Turn an item's args (mapping, positional list or scalar) into checked call kwargs.

Layer kwargs are checked against the layer's real constructor signature, so `out_channel` gets
"did you mean 'out_channels'" and a string where an int belongs is caught before anything runs.
"""
from __future__ import annotations

import keyword
import typing
from functools import lru_cache
from typing import Any, Callable

from pydantic import TypeAdapter, ValidationError

from specc.lang.errors import Problem, did_you_mean
from specc.build.input_sizes import contains_deferred
from specc.build.registry import FunctionInfo, LayerInfo

Locate = Callable[..., Problem]


def layer_kwargs(info: LayerInfo, args: Any, locate: Locate) -> tuple[dict, list[Problem]]:
    """Constructor kwargs for a layer item, with every problem found in them."""
    problems: list[Problem] = []
    if args is None:
        kwargs = {}
    elif isinstance(args, dict):
        kwargs = dict(args)
        for key in kwargs:
            # through **kwargs only a plain identifier passes: a key is a Python keyword in the call
            # and in the code `specc codegen` writes, never an expression
            if key not in info.parameter_names and not (info.accepts_any_kwarg and is_keyword_name(key)):
                problems.append(locate(f"{info.name} has no argument {_shown(key)}", (info.name, key), "UNKNOWN_KWARG",
                                       did_you_mean(str(key), info.parameter_names)))
    else:
        values = args if isinstance(args, list) else [args]
        # positional args skip the sizes the dry run infers: `Linear: [10]` is out_features=10
        slots = [name for name in info.parameter_names if name not in info.inferable()]
        if len(values) > len(slots):
            problems.append(locate(f"{info.name} takes at most {len(slots)} positional args ({', '.join(slots)}), "
                                   f"got {len(values)}", (info.name,), "TYPE_ERROR"))
        kwargs = dict(zip(slots, values))
    for key, value in kwargs.items():
        message = _type_problem(info, key, value)
        if message:
            problems.append(locate(message, (info.name, key), "TYPE_ERROR"))
    misspelled = {problem.suggestion for problem in problems if problem.code == "UNKNOWN_KWARG"}
    for name in info.required():
        if name not in kwargs and name not in info.inferable() and name not in misspelled:
            problems.append(locate(f"{info.name} needs '{name}'", (info.name,), "MISSING_ARGUMENT"))
    return kwargs, problems


def is_keyword_name(key: Any) -> bool:
    """True for a string that can be a keyword argument's name: an identifier, not a Python keyword."""
    return isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)


def _shown(key: Any) -> str:
    return f"'{key}'" if is_keyword_name(key) else repr(str(key)[:60])


def function_call_args(info: FunctionInfo, args: Any, input_count: int, locate: Locate) -> tuple[dict, list[Problem]]:
    """Keyword args for an allow-listed function call, with every problem found in them."""
    problems: list[Problem] = []
    if args is None:
        kwargs = {}
    elif isinstance(args, dict):
        kwargs = {}
        for key, value in args.items():
            if key in info.parameters:
                kwargs[key] = value
            else:
                problems.append(locate(f"{info.name} has no argument '{key}'", (info.name, key), "UNKNOWN_KWARG",
                                       did_you_mean(str(key), info.parameters)))
    elif isinstance(args, list) and len(info.parameters) == 1:
        kwargs = {info.parameters[0]: args}           # reshape: [64, 7, 7], permute: [0, 2, 1]
    else:
        values = args if isinstance(args, list) else [args]
        if len(values) > len(info.parameters):
            problems.append(locate(f"{info.name} takes at most {len(info.parameters)} args "
                                   f"({', '.join(info.parameters) or 'none'})", (info.name,), "TYPE_ERROR"))
        kwargs = dict(zip(info.parameters, values))
    kwargs = {**info.defaults, **kwargs}
    misspelled = {problem.suggestion for problem in problems if problem.code == "UNKNOWN_KWARG"}
    problems += [locate(f"{info.name} needs '{name}'", (info.name,), "MISSING_ARGUMENT")
                 for name in info.required if name not in kwargs and name not in misspelled]
    if info.name == "getitem" and isinstance(kwargs.get("index"), str):
        try:
            kwargs["index"] = parse_index(kwargs["index"])
        except ValueError as error:
            problems.append(locate(str(error), (info.name,), "TYPE_ERROR"))
    problems.extend(_input_count_problems(info, kwargs, input_count, locate))
    return kwargs, problems


def parse_index(text: str) -> Any:
    """`"[:, -1]"` -> `(slice(None), -1)`; also `...`, `None` and `a:b:c` parts. No eval."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    parts = [_index_part(part.strip(), text) for part in inner.split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _index_part(part: str, text: str) -> Any:
    if part == "...":
        return Ellipsis
    if part == "None":
        return None
    try:
        if ":" in part:
            bounds = [int(b) if b.strip() else None for b in part.split(":")]
            return slice(*bounds)
        return int(part)
    except ValueError:
        raise ValueError(f"cannot read index '{text}': use ints, ':', '...' and None, like \"[:, -1]\"") from None


_WORDS = {1: "one", 2: "two", 3: "three"}


def _input_count_problems(info: FunctionInfo, kwargs: dict, count: int, locate: Locate) -> list[Problem]:
    if info.max_inputs is not None and info.max_inputs == info.min_inputs + 1 and info.parameters:
        # the last operand is an input or an arg: `add` with `from: [a, b]` or `other: 1`
        operand, inputs = info.parameters[0], _WORDS[info.max_inputs]
        if count == info.max_inputs - 1 and operand not in kwargs:
            return [locate(f"{info.name} needs {inputs} inputs (`from: [...]`) or an `{operand}:` value", (info.name,),
                           "MISSING_ARGUMENT")]
        if count == info.max_inputs and operand in kwargs:
            return [locate(f"{info.name} has {inputs} inputs already; drop `{operand}:`", (info.name, operand), "TYPE_ERROR")]
    if count < info.min_inputs:
        return [locate(f"{info.name} needs at least {_WORDS[info.min_inputs]} inputs (`from: [...]`), got {count}",
                       ("from",), "MISSING_ARGUMENT")]
    if info.max_inputs is not None and count > info.max_inputs:
        return [locate(f"{info.name} takes {info.max_inputs} input(s), got {count} from `from:`", ("from",), "TYPE_ERROR")]
    return []


def _type_problem(info: LayerInfo, key: str, value: Any) -> str | None:
    adapter = _adapter(info.cls, key)
    if adapter is None or value is None or contains_deferred(value):  # `$in` values are checked when built
        return None
    try:
        adapter.validate_python(value)
    except ValidationError as error:
        expected = _annotation_text(info.cls, key)
        return f"{info.name}: '{key}' must be {expected}, got {value!r} ({error.errors()[0]['msg'].lower()})"
    return None


def kwarg_annotation(cls: type, key: str) -> Any:
    """The type annotation of constructor arg `key` (None when it has none or it cannot be read)."""
    annotation = _hints(cls).get(key)
    return None if annotation is typing.Any else annotation


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - third-party annotations may not resolve; then we skip type checks
        return {}


@lru_cache(maxsize=None)
def _adapter(cls: type, key: str) -> TypeAdapter | None:
    annotation = _hints(cls).get(key)
    if annotation is None or annotation is typing.Any:
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:  # noqa: BLE001 - annotations pydantic cannot model (tensors, callables) are not checked
        return None


def _annotation_text(cls: type, key: str) -> str:
    annotation = _hints(cls).get(key)
    text = str(annotation) if getattr(annotation, "__origin__", None) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("Union[", "one of [")
