"""Types of `train:` optimizer, scheduler and loss arguments, read off the torch signatures.

`{Adam: {betas: 0.9}}` used to pass `specc check` and fail at the first step of `specc train`.
Each argument is checked at load against its annotation (`tuple[float, float]`, `float | None`,
`Literal['min', 'max']`), or its default's type when it has none, plus the few bounds every
optimizer shares (`lr > 0`, `betas` in [0, 1)). Pure Python: the classes come from the caller.
"""
from __future__ import annotations

import inspect
import math
import re
from typing import Any

# Bounds torch checks only when the optimizer is built, at the first step of training.
POSITIVE = ("max_lr", "eps")
# lr 0 is allowed, as torch.optim allows it: a parameter group at lr 0 stays where it is
NON_NEGATIVE = ("lr", "weight_decay", "momentum", "dampening", "label_smoothing")


class ArgumentError(ValueError):
    """A wrong argument; `subpath` (call name, argument) locates it below the validated field."""

    def __init__(self, message: str, subpath: tuple):
        super().__init__(message)
        self.subpath = subpath


def check_argument_types(cls: type, call_name: str, kwargs: dict, what: str, skip: tuple = ()) -> None:
    """Raise ArgumentError for the first argument whose value does not fit its parameter's type or bounds."""
    parameters = inspect.signature(cls).parameters
    for key, value in kwargs.items():
        parameter = parameters.get(key)
        if parameter is None or key in skip:
            continue
        expected = expected_type(parameter)
        problem = None if expected is None else mismatch(value, expected)
        problem = problem or _bound_problem(key, value)
        if problem:
            default = parameter.default
            shown = "" if default in (None, inspect.Parameter.empty) else \
                f"; the default is {list(default) if isinstance(default, tuple) else default!r}"
            raise ArgumentError(f"{what} {call_name}: {key} {problem}, got {value!r}{shown}", (call_name, key))


def expected_type(parameter: inspect.Parameter) -> Any:
    """A small type tree from the annotation (or the default's type): None when nothing is known."""
    annotation = parameter.annotation
    if annotation is not inspect.Parameter.empty:
        text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        parsed = parse_type(text)
        if parsed is not None:
            return parsed
    default = parameter.default
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, float):
        return "number"
    if isinstance(default, int):
        return "int"
    if isinstance(default, str):
        return "str"
    return None


def parse_type(text: str) -> Any:
    """`"tuple[float | Tensor, float]"` -> `("tuple", ["number", "tensor"], ["number"])`-like trees;
    None for anything this cannot check (callables, classes), so such arguments pass."""
    text = text.strip().replace("typing.", "").replace("torch.", "")
    parts = _split(text, "|")
    if len(parts) > 1:
        return _union([parse_type(part) for part in parts])
    head, _, rest = text.partition("[")
    inner = rest[:-1] if rest.endswith("]") else ""
    simple = {"float": "number", "int": "int", "bool": "bool", "str": "str", "None": "none", "NoneType": "none",
              "Tensor": "tensor"}
    if head in simple and not rest:
        return simple[head]
    if head == "Optional":
        member = parse_type(inner)
        return None if member is None else ("union", [member, "none"])
    if head == "Union":
        return _union([parse_type(part) for part in _split(inner, ",")])
    if head == "Literal":
        return ("literal", [_literal(part) for part in _split(inner, ",")])
    if head in ("tuple", "Tuple", "list", "List", "Sequence"):
        items = _split(inner, ",")
        if head.lower() == "tuple" and items and items[-1] != "...":
            members = [parse_type(part) for part in items]
            return None if None in members else ("tuple", members)
        member = parse_type(items[0]) if items else None
        return None if member is None else ("list", member)
    return None


def _union(members: list) -> Any:
    if None in members:
        return None
    if any(member not in ("tensor", "none") for member in members):   # `lr: float | Tensor`: YAML gives the float
        members = [member for member in members if member != "tensor"]
    return members[0] if len(members) == 1 else ("union", members)


def mismatch(value: Any, expected: Any) -> str | None:
    """None when `value` fits `expected`, else what was expected, in words."""
    if _fits(value, expected):
        return None
    return f"must be {describe(expected)}"


def describe(expected: Any) -> str:
    if isinstance(expected, str):
        return {"number": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
                "none": "null", "tensor": "a list of numbers"}[expected]
    kind, members = expected
    if kind == "union":
        return " or ".join(describe(member) for member in members)
    if kind == "literal":
        return "one of " + ", ".join(repr(member) for member in members)
    if kind == "tuple":
        if len(set(map(str, members))) == 1 and isinstance(members[0], str) and members[0] in _PLURALS:
            return f"a list of {len(members)} {_PLURALS[members[0]]}"
        return f"a list of {len(members)}: {', '.join(map(describe, members))}"
    return f"a list of {describe(members)}"


_PLURALS = {"number": "numbers", "int": "integers", "bool": "booleans", "str": "strings"}


def _fits(value: Any, expected: Any) -> bool:
    if isinstance(expected, str):
        if expected == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if expected == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if expected == "bool":
            return isinstance(value, bool)
        if expected == "str":
            return isinstance(value, str)
        if expected == "none":
            return value is None
        return isinstance(value, list) and all(_fits(item, "number") for item in value)   # a tensor from YAML
    kind, members = expected
    if kind == "union":
        return any(_fits(value, member) for member in members)
    if kind == "literal":
        return value in members
    if kind == "tuple":
        return isinstance(value, (list, tuple)) and len(value) == len(members) and \
            all(_fits(item, member) for item, member in zip(value, members))
    return isinstance(value, (list, tuple)) and all(_fits(item, members) for item in value)


def _bound_problem(key: str, value: Any) -> str | None:
    numbers = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else \
        [item for item in value if isinstance(item, (int, float))] if isinstance(value, (list, tuple)) else []
    if key in POSITIVE and any(number <= 0 for number in numbers):
        return "must be > 0"
    if key in NON_NEGATIVE and any(number < 0 for number in numbers):
        return "must be >= 0"
    if key == "betas" and any(not 0 <= number < 1 for number in numbers):
        return "must be in [0, 1)"
    return None


def _split(text: str, separator: str) -> list[str]:
    """Split at `separator` outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return [part for part in parts if part]


def _literal(text: str) -> Any:
    text = text.strip()
    if text[:1] in "'\"":
        return text[1:-1]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return {"True": True, "False": False, "None": None}.get(text, text)
