"""Vars in specs: `$name` references and `$(expr)` arithmetic, evaluated without `eval`.

The evaluator walks Python's own AST but accepts only numbers, var names, + - * / // % **,
unary signs and calls to min/max/int/round — nothing that can touch the interpreter.
"""
from __future__ import annotations

import ast
import operator
import re
from typing import Any, Mapping

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CALLS = {"min": min, "max": max, "int": int, "round": round, "abs": abs}

# `$name`, `${name}` or `$(expression)`; the expression may hold one level of nested parentheses
_REFERENCE = re.compile(r"\$(?:\(((?:[^()]|\([^()]*\))*)\)|\{(\w+)\}|(\w+))")


class ExpressionError(ValueError):
    """A bad expression or an unknown var; `name` is set for unknown vars."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


def evaluate(expression: str, variables: Mapping[str, Any]) -> Any:
    """Evaluate a small arithmetic expression such as `width * 4` or `max(1, dim // heads)`."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ExpressionError(f"cannot parse expression '$({expression})'") from None
    return _evaluate_node(tree.body, variables, expression)


def substitute(value: Any, variables: Mapping[str, Any]) -> Any:
    """Replace var references inside a value (recursively through lists and dicts).

    A string that is exactly one reference (`$width`, `$(width * 2)`) becomes the var's value with its
    type; references inside a longer string (`block_$i`) are formatted into it.
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
        return bool(_REFERENCE.search(value))
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
    match = _REFERENCE.fullmatch(text.strip())
    if match:
        return _resolve_match(match, variables)
    if "$" not in text:
        return text
    return _REFERENCE.sub(lambda m: str(_resolve_match(m, variables)), text)


def _resolve_match(match: re.Match, variables: Mapping[str, Any]) -> Any:
    expression, braced, plain = match.groups()
    if expression is not None:
        return evaluate(expression, variables)
    return _lookup(braced or plain, variables)


def _lookup(name: str, variables: Mapping[str, Any]) -> Any:
    if name not in variables:
        raise ExpressionError(f"unknown var '${name}'", name)
    return variables[name]


def _evaluate_node(node: ast.AST, variables: Mapping[str, Any], source: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        return _lookup(node.id, variables)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _evaluate_node(node.left, variables, source)
        right = _evaluate_node(node.right, variables, source)
        try:
            result = _BINARY[type(node.op)](left, right)
        except (ZeroDivisionError, TypeError, OverflowError) as error:
            raise ExpressionError(f"cannot evaluate '$({source})': {error}") from None
        # keep sizes integral: 64 / 2 is 32, not 32.0
        return int(result) if isinstance(result, float) and result.is_integer() and isinstance(node.op, ast.Div) else result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate_node(node.operand, variables, source))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS and not node.keywords:
        arguments = [_evaluate_node(argument, variables, source) for argument in node.args]
        return _CALLS[node.func.id](*arguments)
    raise ExpressionError(
        f"'$({source})' may only use numbers, vars, + - * / // % ** and min/max/int/round/abs")
