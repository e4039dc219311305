"""Python source for `specc.codegen`: literals, names, and the calls a generated forward makes."""
from __future__ import annotations

import json
import keyword
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from specc.lang.errors import Problem, SpecError
from specc.build.graph import Node
from specc.build.registry import FUNCTIONS, passes_first_output

_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}


def literal(value: Any) -> str:
    """Python source for a constructor or call argument."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return f'float("{value}")'
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(literal, value)) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(literal, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(key)}: {literal(item)}" for key, item in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if type(value).__name__ == "dtype":
        return str(value)                 # torch.float32
    raise TypeError(f"cannot write {value!r} as Python source")


def checked_name(name: Any) -> str:
    """`name` for a keyword argument, parameter or attribute in generated code: a plain identifier
    (the check refuses anything else already; this keeps the file safe whatever reaches it).

    Raises:
        SpecError: `name` is not an identifier, so writing it would put spec text into the code.
    """
    if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)):
        raise SpecError(Problem(f"codegen: {str(name)[:60]!r} is not a Python name", None, "TYPE_ERROR"))
    return name


def keyword_argument(key: Any, value_source: str) -> str:
    """`key=value` in a generated call, `key` checked by `checked_name`."""
    return f"{checked_name(key)}={value_source}"


def init_call(how: Any, tensor: str) -> str:
    """`nn.init.normal_(tensor, std=0.02)` for an `init:` entry the check accepted.

    Raises:
        SpecError: not a public nn.init function with its own keyword args (refused, never written).
    """
    from specc.build.tensors import INIT_FUNCTIONS, init_problem, value_init

    values = value_init(how)   # `{arange: 16}`, `{value: [...]}`, `{constant: 0.5}`: the values, shaped
    if values is not None:
        form, argument = values
        if form == "constant":
            return f"{tensor}.fill_({literal(argument)})"
        made = (f"torch.arange(*{literal(argument if isinstance(argument, list) else [argument])})" if form == "arange"
                else f"torch.tensor({literal(argument)})")
        return f"{tensor}.copy_({made}.reshape({tensor}.shape))"
    problem = init_problem(how)
    if problem is not None:
        raise SpecError(Problem(f"codegen: init: {problem}", None, "TYPE_ERROR"))
    name, kwargs = (how, {}) if isinstance(how, str) else next(iter(how.items()))
    function = f"{name.rstrip('_')}_"
    assert function in INIT_FUNCTIONS
    extra = "".join(f", {keyword_argument(key, literal(value))}" for key, value in (kwargs or {}).items())
    return f"nn.init.{function}({tensor}{extra})"


def comment_text(text: Any) -> str:
    """Spec text as it may appear in a generated comment: one line, every control character escaped."""
    return "".join(character if character.isprintable() else character.encode("unicode_escape").decode("ascii")
                   for character in str(text))


def docstring_text(text: Any) -> str:
    """Spec text as it may appear inside a generated triple-quoted docstring: backslashes and quotes
    escaped too, so a name holding `\"\"\"` cannot end the string."""
    return comment_text(str(text).replace("\\", "\\\\")).replace('"', '\\"')


def identifier(text: str) -> str:
    """`Conv2d` -> `conv2d`, `0` -> `v0`: a readable lower-case variable name."""
    name = re.sub(r"\W+", "_", str(text)).strip("_").lower() or "v"
    name = f"v{name}" if name[0].isdigit() else name
    return f"{name}_" if keyword.iskeyword(name) or name in ("self", "torch", "nn", "F", "fnmatch") else name


@dataclass
class Statement:
    """One line of a forward: the value it defines, the values it reads, how it is written."""

    value: str
    uses: list[str]
    stream: str                      # preferred variable name ("x", "h", a branch name)
    label: str                       # fallback variable name
    named: bool                      # the spec named it: a value read in several places keeps that name
    render: Callable[[list[str]], str]   # the variables it reads -> the expression
    node: Node                       # the node whose value it defines (for the shape comment)


def shape_text(node: Node) -> str:
    if node.shape is None:
        return "(tuple)"
    labels = node.meta.get("symbolic_shape") or ["B", *node.shape[1:]]
    return "(" + ", ".join(map(str, labels)) + ")"


def allocate(statements: list[Statement], parameters: dict[str, str], outputs: list[str]) -> dict[str, str]:
    """Variable names: the stream's name (`x`) where the old value is dead, else a fresh one."""
    uses: dict[str, list[int]] = defaultdict(list)
    for index, statement in enumerate(statements):
        for used in statement.uses:
            uses[used].append(index)
    for output in outputs:
        uses[output].append(len(statements))
    names, holder = dict(parameters), {name: value for value, name in parameters.items()}

    def free(name: str, index: int) -> bool:
        return name not in holder or max(uses.get(holder[name], [-1])) <= index

    for index, statement in enumerate(statements):
        positions = uses.get(statement.value)
        if not positions:
            continue                     # nothing reads it: written as a bare call
        # a named value read in several places (a U-Net skip) keeps its name; others flow as `x`
        candidates = [statement.label] if statement.named and len(positions) > 1 else []
        candidates += [statement.stream, *([statement.label] if statement.named else [])]
        candidates += [f"{statement.stream}{number}" for number in range(2, len(statements) + 3)]
        name = next(candidate for candidate in candidates if free(candidate, index))
        names[statement.value], holder[name] = name, statement.value
    return names


def plain_call(target: str, arguments: list[str]) -> str:
    return f"{target}({', '.join(arguments)})"


def module_call(node: Node, target: str, arguments: list[str]) -> str:
    if node.target == "MultiheadAttention":      # self-attention: query = key = value
        arguments = (arguments * 3 if len(arguments) == 1 else arguments) + ["need_weights=False"]
    call = f"{target}({', '.join(arguments)})"
    return f"{call}[0]" if passes_first_output(node) else call   # (output, state) -> output


def free_tensor_use(tensor: str, batch: bool, arguments: list[str]) -> str:
    """A free tensor in forward; with `batch: true` a view over the batch of its input."""
    return f"{tensor}.expand({arguments[0]}.shape[0], *{tensor}.shape[1:])" if batch else tensor


def function_call(node: Node, arguments: list[str]) -> str:
    info, kwargs = FUNCTIONS[node.target], dict(node.args)
    if info.name in _SPECC_FUNCTIONS:            # specc's helpers, written as the torch they call
        return _SPECC_FUNCTIONS[info.name](arguments, kwargs)
    if info.name == "getitem":
        return f"{arguments[0]}[{_index(kwargs['index'])}]"
    if info.name in _OPERATORS:
        operands = arguments + ([literal(kwargs.pop("other"))] if "other" in kwargs else [])
        return f" {_OPERATORS[info.name]} ".join(operands)
    if info.name in ("reshape", "view"):
        shape = kwargs["shape"] if isinstance(kwargs["shape"], (list, tuple)) else [kwargs["shape"]]
        x = arguments[0]
        return f"{x}.{info.name}({', '.join([f'{x}.shape[0]', *map(literal, shape)])})"  # batch dim kept
    if info.name == "contiguous":
        return f"{arguments[0]}.contiguous()"
    written = [f"[{', '.join(arguments)}]"] if info.takes_list else arguments
    written += [keyword_argument(key, literal(value)) for key, value in kwargs.items()]
    return f"{_qualified(node, info.call)}({', '.join(written)})"


_SPECC_FUNCTIONS: dict[str, Callable[[list[str], dict], str]] = {
    "to": lambda arguments, kwargs: f"{arguments[0]}.to({_dtype(kwargs['dtype'])})",
    "expand": lambda arguments, kwargs: f"{arguments[0]}.expand({', '.join([f'{arguments[0]}.shape[0]', *map(literal, _sizes(kwargs['shape']))])})",
    "gather": lambda arguments, kwargs: f"torch.gather({arguments[0]}, {literal(kwargs['dim'])}, {arguments[1]})",
    **{name: (lambda arguments, kwargs, name=name:
              f"torch.{name}({arguments[0]}, {literal(kwargs['dim'])}, {arguments[1]}, {arguments[2]})")
       for name in ("scatter", "scatter_add", "index_add")},
    "einsum": lambda arguments, kwargs: f"torch.einsum({', '.join([literal(kwargs['equation']), *arguments])})",
}


def _dtype(name: Any) -> str:
    """`torch.float16` for a dtype name the check accepted (anything else is refused, not written)."""
    from specc.build.functional import DTYPES

    if name not in DTYPES:
        raise SpecError(Problem(f"codegen: unknown dtype {str(name)[:40]!r}", None, "TYPE_ERROR"))
    return literal(DTYPES[name])


def _sizes(shape: Any) -> list:
    return list(shape) if isinstance(shape, (list, tuple)) else [shape]


def _qualified(node: Node, function: Callable) -> str:
    import torch
    import torch.nn.functional as F

    name = getattr(function, "__name__", "")
    if getattr(torch, name, None) is function:
        return f"torch.{name}"
    if getattr(F, name, None) is function:
        return f"F.{name}"
    raise SpecError(Problem(f"codegen cannot write the function '{node.target}' as plain torch",
                            node.location, "LAYER_ERROR"))


def _index(index: Any) -> str:
    parts = index if isinstance(index, tuple) else (index,)
    return ", ".join(_index_part(part) for part in parts)


def _index_part(part: Any) -> str:
    if part is Ellipsis:
        return "..."
    if isinstance(part, slice):
        bounds = ["" if bound is None else str(bound) for bound in (part.start, part.stop)]
        return ":".join(bounds + ([str(part.step)] if part.step is not None else []))
    return repr(part)


def merge_call(node: Node, arguments: list[str]) -> str:
    if node.target == "list":
        return "(" + ", ".join(arguments) + ("," if len(arguments) == 1 else "") + ")"
    if node.target in ("cat", "stack"):
        return f"torch.{node.target}([{', '.join(arguments)}], dim={literal(node.args['dim'])})"
    if node.target == "max":
        result = arguments[0]
        for argument in arguments[1:]:
            result = f"torch.maximum({result}, {argument})"
        return result
    joined = (" * " if node.target == "mul" else " + ").join(arguments)
    return f"({joined}) / {len(arguments)}" if node.target == "mean" else joined


def wrapped_call(function: str, arguments: list[str], preview: Callable[[str], str], width: int = 72) -> str:
    """`nn.Linear(1024, 128)`; long argument lists go on their own lines (`preview` fills in slots)."""
    one_line = f"{function}({', '.join(arguments)})"
    if len(preview(one_line)) <= width:
        return one_line
    lines, current = [], ""
    for argument in arguments:
        if current and len(preview(f"{current} {argument},")) > width:
            lines.append(current)
            current = ""
        current = f"{current} {argument}," if current else f"{argument},"
    return f"{function}(\n" + "\n".join(f"    {line}" for line in [*lines, current]) + "\n)"


def wrapped_list(items: list, indent: int, width: int = 60) -> str:
    text = literal(items)
    if len(text) <= width:
        return text
    return "[\n" + "".join(f"{' ' * indent}{literal(item)},\n" for item in items) + " " * (indent - 4) + "]"


def placed(prefix: str, expression: str, indent: int) -> list[str]:
    first, *rest = expression.split("\n")
    return [" " * indent + prefix + first] + [" " * indent + line for line in rest]


_ATTRIBUTES: set[str] = set()


def module_dict_attributes() -> set[str]:
    """Names a child cannot be reached by as an attribute (`self.keys` is the method)."""
    if not _ATTRIBUTES:
        from torch import nn

        _ATTRIBUTES.update(dir(nn.ModuleDict()), dir(nn.Sequential()))
    return _ATTRIBUTES
