"""Vars in specs: `$name` references and `$(expr)` expressions, evaluated without `eval`.

The evaluator walks Python's own AST but first checks every node against an allow-list: numbers,
strings, `true`/`false`, var names, `+ - * / // % **`, comparisons, `and or not`, `a if c else b`
and calls to min/max/int/round/abs — nothing that can touch the interpreter. Every operation is
bounded before it runs (integer size, string and list length, expression depth), so a spec cannot
make the evaluator spend minutes or gigabytes: see `MAX_INT_BITS` and friends.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Mapping

# Bounds: far above any real model size, far below what would take seconds or gigabytes.
MAX_INT_BITS = 1024              # ~308 decimal digits
MAX_LENGTH = 100_000             # characters of a string, items of a list
MAX_EXPRESSION_LENGTH = 10_000   # characters of one `$(...)` or of a string holding references
MAX_EXPRESSION_DEPTH = 100       # nesting of operators and calls in one expression

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_CALLS = {"min": min, "max": max, "int": int, "round": round, "abs": abs}
_NAMED_CONSTANTS = {"true": True, "false": False, "True": True, "False": False}
# Node types that may appear at all; operators and calls are checked further by the evaluator.
_ALLOWED_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp,
                  ast.And, ast.Or, ast.Compare, ast.IfExp, ast.Call, ast.Subscript, *_BINARY, *_UNARY, *_COMPARE)
_ALLOWED = ("numbers, strings, true/false, vars, + - * / // % **, == != < <= > >=, and/or/not, "
            "a if cond else b, list[index] and min/max/int/round/abs")

# `$name` or `${name}`; `$(expression)` is found by counting parentheses (any nesting depth)
_NAME_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


class ExpressionError(ValueError):
    """A bad expression or an unknown var; `name` is set for unknown vars."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


def evaluate(expression: str, variables: Mapping[str, Any]) -> Any:
    """Evaluate a small expression such as `width * 4`, `max(1, dim // heads)` or `a if a > b else b`.

    Args:
        expression: the text inside `$( )`.
        variables: the visible vars by name.

    Returns:
        The value (int, float, bool, str or a var's own value).

    Raises:
        ExpressionError: unparsable, not allowed, an unknown var, a failing operation or a result
            past the bounds (`MAX_INT_BITS`, `MAX_LENGTH`, `MAX_EXPRESSION_DEPTH`).
    """
    shown = _shorten(expression)
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression '$({shown})' is longer than {MAX_EXPRESSION_LENGTH:,} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        # MemoryError / RecursionError: the parser's own guard against very deep nesting
        raise ExpressionError(f"cannot parse expression '$({shown})'") from None
    _check_tree(tree, shown)
    return _Evaluator(variables, shown).value(tree.body)


def substitute(value: Any, variables: Mapping[str, Any]) -> Any:
    """Replace var references inside a value (recursively through lists and dicts).

    A string that is exactly one reference (`$width`, `$(width * 2)`) becomes the var's value with its
    type; references inside a longer string (`block_$i`) are formatted into it.

    Raises:
        ExpressionError: as `evaluate`, or a formatted string longer than `MAX_LENGTH`.
    """
    if isinstance(value, str):
        return _substitute_string(value, variables)
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    return value


def references(value: Any) -> bool:
    """Whether a value mentions any var."""
    if isinstance(value, str):
        try:
            return bool(_find_references(value))
        except ExpressionError:
            return True  # an unbalanced `$(` is still meant as a reference
    if isinstance(value, list):
        return any(references(item) for item in value)
    if isinstance(value, dict):
        return any(references(item) for item in value.values())
    return False


def resolve_vars(raw: Mapping[str, Any], outer: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Resolve vars in order, so a var may use the ones defined before it (`hidden: $(dim * 4)`)."""
    resolved = dict(outer or {})
    for name, value in raw.items():
        resolved[name] = substitute(value, resolved)
    return resolved


def _substitute_string(text: str, variables: Mapping[str, Any]) -> Any:
    if "$" not in text:
        return text
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"a string using vars may hold at most {MAX_EXPRESSION_LENGTH:,} characters "
                              f"(this one has {len(text):,})")
    found = _find_references(text)
    stripped = len(text) - len(text.lstrip()), len(text.rstrip())
    if len(found) == 1 and (found[0][0], found[0][1]) == stripped:
        return _resolve(found[0], variables)  # exactly one reference: keep the value's type
    pieces, position, total = [], 0, len(text)
    for reference in found:
        piece = str(_resolve(reference, variables))
        total += len(piece)
        if total > MAX_LENGTH:
            raise ExpressionError(f"formatting vars into '{_shorten(text)}' gives more than {MAX_LENGTH:,} characters")
        pieces += [text[position:reference[0]], piece]
        position = reference[1]
    return "".join(pieces) + text[position:]


def _find_references(text: str) -> list[tuple[int, int, str | None, str | None]]:
    """(start, end, expression, name) of each `$(expr)`, `${name}` and `$name` in `text`."""
    found, position = [], 0
    while (start := text.find("$", position)) >= 0:
        if text.startswith("$(", start):
            end = _closing_parenthesis(text, start + 1)
            found.append((start, end, text[start + 2:end - 1], None))
            position = end
            continue
        match = _NAME_REFERENCE.match(text, start)
        if match:
            found.append((start, match.end(), None, match.group(1) or match.group(2)))
        position = match.end() if match else start + 1
    return found


def _closing_parenthesis(text: str, opening: int) -> int:
    """The index just past the `)` matching the `(` at `opening` (parentheses in quotes do not count)."""
    depth, quote = 0, None
    for index in range(opening, len(text)):
        character = text[index]
        if quote:
            quote = None if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
            if depth == 0:
                return index + 1
    raise ExpressionError(f"'{_shorten(text)}': '$(' without its closing ')'")


def _resolve(reference: tuple, variables: Mapping[str, Any]) -> Any:
    _, _, expression, name = reference
    if expression is not None:
        return evaluate(expression, variables)
    return _lookup(name, variables)


def _lookup(name: str, variables: Mapping[str, Any]) -> Any:
    if name not in variables:
        raise ExpressionError(f"unknown var '${name}'", name)
    return variables[name]


def _check_tree(tree: ast.Expression, shown: str) -> None:
    """Refuse any node outside the allow-list, and nesting past MAX_EXPRESSION_DEPTH (iteratively:
    a recursive walk is exactly what a deep expression would break)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise ExpressionError(f"'$({shown})' nests deeper than {MAX_EXPRESSION_DEPTH} levels")
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(f"'$({shown})' may only use {_ALLOWED}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _CALLS
                                               and not node.keywords):
            raise ExpressionError(f"'$({shown})' may only use {_ALLOWED}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str)):
            raise ExpressionError(f"'$({shown})' may only use {_ALLOWED}")
        children = node.args if isinstance(node, ast.Call) else ast.iter_child_nodes(node)
        stack.extend((child, depth + 1) for child in children)


class _Evaluator:
    """Evaluates a checked tree; every result passes `_bounded`."""

    def __init__(self, variables: Mapping[str, Any], shown: str):
        self.variables = variables
        self.shown = shown

    def fail(self, reason: str) -> ExpressionError:
        return ExpressionError(f"cannot evaluate '$({self.shown})': {reason}")

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return self.bounded(node.value)
        if isinstance(node, ast.Name):
            if node.id not in self.variables and node.id in _NAMED_CONSTANTS:
                return _NAMED_CONSTANTS[node.id]
            return _lookup(node.id, self.variables)
        if isinstance(node, ast.BinOp):
            return self.binary(node)
        if isinstance(node, ast.UnaryOp):
            return self.apply(_UNARY[type(node.op)], self.value(node.operand))
        if isinstance(node, ast.BoolOp):
            return self.boolean(node)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.IfExp):  # only the chosen branch is evaluated
            return self.value(node.body) if self.value(node.test) else self.value(node.orelse)
        if isinstance(node, ast.Subscript):
            return self.index(node)
        return self.call(node)

    def index(self, node: ast.Subscript) -> Any:
        """`dims[i]`, `dims[-1]`: one element of a list (or a string), by an int."""
        container, position = self.value(node.value), self.value(node.slice)
        if not isinstance(container, (list, str)):
            raise self.fail(f"only a list can be indexed, not {type(container).__name__}")
        if not isinstance(position, int) or isinstance(position, bool):
            raise self.fail(f"an index must be an int, got {position!r}")
        if not -len(container) <= position < len(container):
            raise self.fail(f"index {position} is out of range for a list of {len(container)}")
        return container[position]

    def binary(self, node: ast.BinOp) -> Any:
        left, right = self.value(node.left), self.value(node.right)
        kind = type(node.op)
        if kind is ast.Pow:
            self.check_power(left, right)
        elif kind is ast.Mult:
            self.check_repetition(left, right)
        elif kind is ast.Add and _is_sized(left) and _is_sized(right):
            self.check_length(len(left) + len(right))
        elif kind is ast.Mod and not (_is_number(left) and _is_number(right)):
            raise self.fail("% works on numbers only")  # str % would format (and can grow without bound)
        result = self.apply(_BINARY[kind], left, right)
        # keep sizes integral: 64 / 2 is 32, not 32.0
        return int(result) if kind is ast.Div and isinstance(result, float) and result.is_integer() else result

    def boolean(self, node: ast.BoolOp) -> Any:
        result = None
        for operand in node.values:  # short-circuits like Python: `a or b` is a when a is true
            result = self.value(operand)
            if bool(result) == isinstance(node.op, ast.Or):
                return result
        return result

    def compare(self, node: ast.Compare) -> bool:
        left = self.value(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.value(right_node)
            if not self.apply(_COMPARE[type(op)], left, right):
                return False
            left = right
        return True

    def call(self, node: ast.Call) -> Any:
        name = node.func.id
        arguments = [self.value(argument) for argument in node.args]
        if name == "round" and len(arguments) == 2 and isinstance(arguments[1], int) and abs(arguments[1]) > 308:
            raise self.fail("round's digits must lie between -308 and 308")
        return self.apply(_CALLS[name], *arguments)

    def apply(self, function, *arguments) -> Any:
        try:
            result = function(*arguments)
        except OverflowError:
            raise self.fail("the number is too large") from None
        except (ZeroDivisionError, TypeError, ValueError) as error:
            raise self.fail(str(error)) from None
        return self.bounded(result)

    def check_power(self, base: Any, exponent: Any) -> None:
        if not (_is_number(base) and _is_number(exponent)):
            return  # the operator itself raises TypeError
        magnitude = abs(base)
        if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and magnitude > 1:
            if exponent > MAX_INT_BITS or exponent * math.log2(magnitude) > MAX_INT_BITS:
                raise self.fail(f"the result would have more than {MAX_INT_BITS} bits (~308 digits)")

    def check_repetition(self, left: Any, right: Any) -> None:
        sized, count = (left, right) if _is_sized(left) else (right, left)
        if _is_sized(sized) and isinstance(count, int):
            self.check_length(len(sized) * max(count, 0))

    def check_length(self, length: int) -> None:
        if length > MAX_LENGTH:
            raise self.fail(f"the result would hold {length:,} items, more than {MAX_LENGTH:,}")

    def bounded(self, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise self.fail(f"the result has more than {MAX_INT_BITS} bits (~308 digits)")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(f"the result {value} is not a finite number")
        if isinstance(value, complex):
            raise self.fail("the result is a complex number")
        if _is_sized(value):
            self.check_length(len(value))
        return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _is_sized(value: Any) -> bool:
    return isinstance(value, (str, list, tuple))


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"
