"""`$in`: an item's input size in its arguments (`groups: $in.channels`, `$(in.shape[1] * 2)`).

Sizes are known only once the dry run has pushed a tensor to the item, so expansion keeps such a
value as a `Deferred` (the text, the vars it sees and the node whose output `in` is); the dry run
resolves it just before the node is built. A var holding a `Deferred` (a block arg defaulting to
`$in.channels`) makes every value that mentions it deferred too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from specc.lang.expressions import ExpressionError, substitute

# `$in.channels`, `$in.shape[1]`, `$in.shape` written as a plain reference
_PLAIN = re.compile(r"\$\{?in\.(shape|channels|features)\b\}?(?:\[(-?\d+)\])?")
# `in.channels` / `in.shape[-1]` inside `$( ... )`
_IN_EXPRESSION = re.compile(r"(?<![\w$.])in\.(shape|channels|features)\b(?:\[(-?\d+)\])?")
_BARE = re.compile(r"\$\{?in\b(?!\.)|(?<![\w$.])in\.(?!shape\b|channels\b|features\b)\w*")
_NAME = re.compile(r"[A-Za-z_]\w*")

ShapeOf = Callable[[str], "tuple | None"]


@dataclass
class Deferred:
    """A value that needs an input size: resolved by the dry run (see `resolve`)."""

    text: str
    variables: Mapping[str, Any]
    source: str | None          # node whose output is `in`; None where `in` is not known

    def __repr__(self) -> str:  # shown in messages and in summaries of unresolved args
        return self.text


def mentions_input(text: str) -> bool:
    """Whether a string uses `$in` (as a reference or inside an expression)."""
    return "$" in text and bool(_PLAIN.search(text) or _BARE.search(text) or ("$(" in text and _IN_EXPRESSION.search(text)))


def needs_input(value: Any, variables: Mapping[str, Any]) -> bool:
    """Whether substituting this string needs an input size: it uses `$in` or a var that does."""
    if not isinstance(value, str) or "$" not in value:
        return False
    if mentions_input(value):
        return True
    return any(contains_deferred(variables.get(name)) for name in set(_NAME.findall(value)))


def contains_deferred(value: Any) -> bool:
    """Whether a value is, or holds, a `Deferred`."""
    if isinstance(value, Deferred):
        return True
    if isinstance(value, list):
        return any(contains_deferred(item) for item in value)
    if isinstance(value, dict):
        return any(contains_deferred(item) for item in value.values())
    return False


def resolve(value: Any, shape_of: ShapeOf) -> Any:
    """Replace every `Deferred` in a value by its result, given the feature shapes of nodes.

    Raises:
        ExpressionError: an unknown size (`in.shape[5]` of a 3-d input) or a bad expression.
    """
    if isinstance(value, Deferred):
        return _resolve_one(value, shape_of)
    if isinstance(value, list):
        return [resolve(item, shape_of) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, shape_of) for key, item in value.items()}
    return value


def _resolve_one(deferred: Deferred, shape_of: ShapeOf) -> Any:
    names = set(_NAME.findall(deferred.text))
    variables = {name: resolve(value, shape_of) if name in names else value
                 for name, value in deferred.variables.items()}
    text = deferred.text
    if mentions_input(text):
        if _BARE.search(text):
            raise ExpressionError(f"'{text}': use $in.shape, $in.channels or $in.features")
        shape = shape_of(deferred.source) if deferred.source is not None else None
        if shape is None:
            raise ExpressionError(f"'{text}': the input is not a tensor, so it has no size")
        text = _rewrite(text, list(shape), variables)
    return substitute(text, variables)


def _rewrite(text: str, shape: list[int], variables: dict) -> str:
    """`$in.shape[1]` -> `$__in_shape_1` (and so on), with the sizes added to `variables`."""
    variables.update(__in_shape=shape, __in_channels=shape[0] if shape else None,
                     __in_features=shape[-1] if shape else None)

    def name_for(match: re.Match) -> str:
        attribute, index = match.group(1), match.group(2)
        if attribute != "shape" or index is None:
            if not shape:
                raise ExpressionError(f"'{text}': the input has no feature dims (shape [])")
            return f"__in_{attribute}"
        if len(index.lstrip("-")) > 9:   # int() refuses 4,301 digits, and no tensor has a billion dims
            raise ExpressionError(f"in.shape[{index[:12]}… ({len(index):,} characters)] is out of range for an "
                                  f"input of shape {shape}")
        position = int(index)
        if not -len(shape) <= position < len(shape):
            raise ExpressionError(f"'{text}': in.shape[{position}] is out of range for an input of shape {shape}")
        name = f"__in_shape_{'m' if position < 0 else ''}{abs(position)}"
        variables[name] = shape[position]
        return name

    text = _PLAIN.sub(lambda match: "$" + name_for(match), text)
    return _IN_EXPRESSION.sub(name_for, text)


def describe_shape(shape: tuple | None) -> str:
    """`(64, 56, 56)` -> `[64, 56, 56]` for messages."""
    return "(non-tensor)" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def resolve_node_args(node: Any, shape_of: ShapeOf) -> str | None:
    """Fill a node's `$in`-dependent args (kept in `node.meta["deferred"]`); an error message or None."""
    try:
        node.args.update(resolve(node.meta["deferred"], shape_of))
    except ExpressionError as error:
        shape = shape_of(node.inputs[0]) if node.inputs else None
        return f"{node.target} '{node.label}': {error} (its input is {describe_shape(shape)})"
    return None
