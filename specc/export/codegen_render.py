"""Class code for `specc.codegen`: each block use (and the root) rendered as a `Template`.

A template is the class's text with every constructor value left as a numbered slot, so that the
uses of one block can share a class and only the values that differ between them (or that the
spec wrote as the block's args) become constructor args. `specc.codegen` fills the slots in.
"""
from __future__ import annotations

import fnmatch
import inspect
import json
import keyword
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from specc.export.codegen_source import (Statement, allocate, checked_name, comment_text, docstring_text, free_tensor_use, function_call,
                                  identifier, init_call, keyword_argument, literal, merge_call, module_call,
                                  module_dict_attributes, placed, plain_call, shape_text, wrapped_call, wrapped_list)
from specc.export.codegen_tree import Part, Tree, holds_tensors, inside, is_free_tensor, parent, units_in_run_order
from specc.build.graph import Node
from specc.build.layers import LAYER_MODULES
from specc.build.registry import layer_info

_STREAMS = {"body": "h", "shortcut": "shortcut"}    # variable names for values inside a residual
_REGISTER = {"parameter": "register_parameter", "buffer": "register_buffer", "constant": "register_buffer"}
_PERSISTENT = {"parameter": "", "buffer": "", "constant": ", persistent=False"}   # constants are not saved


@dataclass
class Template:
    """A class's code with markers: \\x00slot\\x00 values, \\x01n\\x01 shape comments, \\x02n\\x02 block calls."""

    text: str = ""
    base: str = "nn.ModuleDict"
    values: list = field(default_factory=list)
    hints: list[tuple[str, str]] = field(default_factory=list)    # (name, "arg" | "inferred" | "given")
    shapes: list[list] = field(default_factory=list)
    calls: list[tuple[str, int, int]] = field(default_factory=list)  # (inner block use path, first slot, slots)
    call_keys: list[str] = field(default_factory=list)

    def value(self, value: Any, hint: str, kind: str = "given") -> str:
        self.values.append(value)
        self.hints.append((hint, kind))
        return f"\x00{len(self.values) - 1}\x00"

    def shape(self, labels: list) -> str:
        self.shapes.append(labels)
        return f"\x01{len(self.shapes) - 1}\x01"

    def call(self, path: str, inner: "Template", key: str) -> str:
        self.calls.append((path, len(self.values), len(inner.values)))
        self.call_keys.append(key)
        self.values.extend(inner.values)
        self.hints.extend([("", "given")] * len(inner.values))
        return f"\x02{len(self.calls) - 1}\x02"

    @property
    def key(self) -> str:
        """The code with values left out: uses of a block with equal keys share a class."""
        shape = re.sub("\x00\\d+\x00|\x01\\d+\x01", lambda m: m.group(0)[0], self.text)
        return self.base + shape + "\x03".join(self.call_keys)

    def preview(self, text: str) -> str:
        """`text` with this use's values filled in (to spot identical repeated layers)."""
        def fill(match: re.Match) -> str:
            kind, number = match.group(0)[0], int(match.group(0)[1:-1])
            if kind == "\x00":
                return repr(self.values[number])
            _, offset, count = self.calls[number]
            return self.call_keys[number] + repr(self.values[offset:offset + count])
        return re.sub("\x00\\d+\x00|\x02\\d+\x02", fill, re.sub("\x01\\d+\x01", "", text))


class ClassWriter:
    """Renders class templates for the parts of a `Tree`; remembers the layer classes it used."""

    def __init__(self, tree: Tree):
        self.tree, self.graph, self.spec, self.compiled = tree, tree.graph, tree.spec, tree.compiled
        self.parts = tree.parts
        self.order = {node.name: index for index, node in enumerate(tree.graph.nodes)}
        self.templates: dict[str, Template] = {}
        self.variant_of: dict[str, str] = {}
        self.specc_layers: set[type] = set()
        self.user_imports: dict[str, str] = {}

    # ----- class templates ---------------------------------------------------------------------
    def render_class(self, part: Part) -> Template:
        """The class for a block use (or the root), values left as slots."""
        template = Template(base="nn.Sequential" if part.sequential else "nn.ModuleDict")
        lines = [f'    """{self._docstring(part)}"""', "", "    def __init__(self\x04) -> None:"]
        if part.sequential:
            lines += ["        super().__init__("]
            lines += self._listed(part, template, 12)
            lines += ["        )"]
        else:
            lines += ["        super().__init__()"]
            lines += self._init_lines("self", part, template, part)
            if part.style == "root":
                lines += self._init_and_ties()
            lines += ["", *self._forward(part, template)]
            if part.style == "root" and self.spec.init:
                lines += self._init_method()
        template.text = "\n".join(lines)
        return template

    def _docstring(self, part: Part) -> str:
        if part.style != "root":
            return f"The spec's `{docstring_text(part.block)}` block."
        inputs = ", ".join(f"{node.name} {shape_text(node)} {node.dtype}" for node in self.graph.inputs)
        outputs = ", ".join(f"{name} {shape_text(self.graph[name])}" for name in self.graph.outputs)
        return (f"{docstring_text(self.spec.display_name)}: {docstring_text(inputs)} -> {docstring_text(outputs)}.\n\n"
                f"    Layers sit under the spec's item names (an unnamed item's is its index), so the\n"
                f"    state_dict keys match the compiled spec's and weights move between the two unchanged.\n    ")

    def _init_lines(self, target: str, container: Part, template: Template, owner: Part) -> list[str]:
        """`self.x = ...` per child, in graph order (so a seeded build draws the same numbers); free
        tensors are registered, and a container holding some is filled in line by line."""
        ordered = units_in_run_order(container, self.order)
        if ordered is not None:
            return self._init_in_run_order(target, container, ordered, template, owner)
        lines = []
        for key, child in container.children.items():
            if is_free_tensor(child):
                lines += placed(f"{target}.{_REGISTER[child.target]}({json.dumps(key)}, ",
                                self._free_tensor(child, template, owner) + _PERSISTENT[child.target] + ")", 8)
            elif isinstance(child, Part) and not child.callable and holds_tensors(child):
                access = self._access(target, container, key)
                lines += placed(f"{access} = ", "nn.ModuleDict()", 8) + self._init_lines(access, child, template, owner)
            else:
                lines += placed(f"{self._access(target, container, key)} = ", self._expression(child, template, owner), 8)
        return lines

    def _init_in_run_order(self, target: str, container: Part, units: list, template: Template, owner: Part) -> list[str]:
        """`self.a.b = ...` per layer in graph order, each plain container made where first needed."""
        lines, made = [], set()
        for keys, child in units:
            access, part = target, container
            for depth, key in enumerate(keys[:-1]):
                access, part = self._access(access, part, key), part.children[key]
                if keys[:depth + 1] not in made:
                    made.add(keys[:depth + 1])
                    lines += placed(f"{access} = ", "nn.ModuleDict()", 8)
            if is_free_tensor(child):
                lines += placed(f"{access}.{_REGISTER[child.target]}({json.dumps(keys[-1])}, ",
                                self._free_tensor(child, template, owner) + _PERSISTENT[child.target] + ")", 8)
            else:
                lines += placed(f"{self._access(access, part, keys[-1])} = ", self._expression(child, template, owner), 8)
        return lines

    def _free_tensor(self, node: Node, template: Template, owner: Part) -> str:
        """The tensor as `make_free_tensor` builds it (a constant `[1, *shape]`), initialised the same way."""
        args, raw = node.args, self.tree.item_args.get(node.location, {})
        if node.target == "parameter":
            tensor = f"torch.zeros({self._free_values(template, args['shape'], raw.get('shape'), owner, 'size')})"
            if args.get("init") is not None:
                tensor = init_call(args["init"], tensor)
            return f"nn.Parameter({tensor})"
        dtype = f", dtype=torch.{args['dtype']}" if "dtype" in args else ""
        if "value" in args:
            tensor = f"torch.tensor({self._free_values(template, [args['value']], [raw.get('value')], owner, 'value')}{dtype})"
        elif "arange" in args:
            bounds = args["arange"] if isinstance(args["arange"], list) else [args["arange"]]
            written = raw.get("arange") if isinstance(raw.get("arange"), list) else [raw.get("arange")]
            tensor = f"torch.arange({self._free_values(template, bounds, written, owner, 'length')}{dtype})"
        else:
            form = "zeros" if "zeros" in args else "ones"
            tensor = f"torch.{form}({self._free_values(template, args[form], raw.get(form), owner, 'size')}{dtype})"
        return f"{tensor}.unsqueeze(0)" if node.target == "constant" else tensor

    @staticmethod
    def _free_values(template: Template, values: list, written: Any, owner: Part, hint: str) -> str:
        """Value slots, comma-separated; one written as a block arg (`$window`) stays that arg."""
        written = written if isinstance(written, list) and len(written) == len(values) else [None] * len(values)
        slots = []
        for value, raw in zip(values, written):
            is_arg = owner.block and isinstance(raw, str) and raw.startswith("$") and raw[1:] in owner.block_args
            slots.append(template.value(value, raw[1:], "arg") if is_arg else template.value(value, hint))
        return ", ".join(slots)

    def _expression(self, element: Any, template: Template, owner: Part) -> str:
        if isinstance(element, Node):
            return self._constructor(element, template, owner)
        if element.style == "block":
            return template.call(element.path, self.templates[element.path], self.variant_of[element.path])
        if element.sequential:
            return self._sequential(element, template, owner)
        entries = [line for key, child in element.children.items()
                   for line in placed(f"{json.dumps(key)}: ", self._expression(child, template, owner) + ",", 4)]
        return "nn.ModuleDict({\n" + "\n".join(entries) + "\n})"

    def _sequential(self, part: Part, template: Template, owner: Part) -> str:
        children = [self._expression(child, template, owner) for child in part.children.values()]
        if len(children) >= 3 and len({template.preview(child) for child in children}) == 1:
            return f"nn.Sequential(*({children[0]} for _ in range({len(children)})))"
        if len(children) == 1 and "\n" not in children[0]:
            return f"nn.Sequential({children[0]})"
        return "nn.Sequential(\n" + "\n".join(self._listed(part, template, 4, children)) + "\n)"

    def _listed(self, part: Part, template: Template, indent: int, children: list[str] | None = None) -> list[str]:
        """The children of a chain, one per line, each with its output shape."""
        if children is None:
            children = [self._expression(child, template, part) for child in part.children.values()]
        lines = []
        for child, text in zip(part.children.values(), children):
            output = child if isinstance(child, Node) else self.graph[child.output]
            lines += placed("", text + "," + self._comment(output, template), indent)
        return lines

    def _comment(self, node: Node, template: Template) -> str:
        if node.shape is None:
            return ""
        # a free tensor (and what is computed from it alone) has a batch dim of 1, not B
        broadcast = node.shape[0] == 1 and self.compiled.batch_size > 1
        labels = node.meta.get("symbolic_shape") or [1 if broadcast else "B", *node.shape[1:]]
        return f"  # {template.shape(list(labels))}"

    def _constructor(self, node: Node, template: Template, owner: Part) -> str:
        cls = type(self.compiled.module.get_submodule(node.name))
        info = layer_info(node.target, cls)
        raw = self.tree.item_args.get(node.location, {}) if owner.block else {}
        arguments, positional = [], True
        for parameter in info.parameters:
            if parameter.name not in node.args:
                positional = False
                continue
            slot = self._slot(template, node, parameter.name, raw.get(parameter.name), owner)
            positional = (positional and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
                          and parameter.default is inspect.Parameter.empty)
            arguments.append(slot if positional else f"{parameter.name}={slot}")
        for key in node.args:
            if key not in info.parameter_names:     # taken through **kwargs
                arguments.append(keyword_argument(key, self._slot(template, node, key, raw.get(key), owner)))
        return wrapped_call(self._class_reference(cls, node.target), arguments, template.preview)

    @staticmethod
    def _slot(template: Template, node: Node, name: str, raw: Any, owner: Part) -> str:
        """A value slot; its hint says whether the spec wrote it as a block arg or the dry run
        inferred it from a value made inside the block (so it follows the block's args)."""
        value = node.args[name]
        if owner.block and isinstance(raw, str) and raw.startswith("$") and raw[1:] in owner.block_args:
            return template.value(value, raw[1:], "arg")
        made_inside = all(inside(source, owner.path) for source in node.inputs)
        return template.value(value, name, "inferred" if name in node.inferred and made_inside else "given")

    def _class_reference(self, cls: type, target: str) -> str:
        from torch import nn

        if getattr(nn, target, None) is cls:
            return f"nn.{target}"
        if cls.__module__ in LAYER_MODULES:
            self.specc_layers.add(cls)
        else:
            self.user_imports[cls.__name__] = cls.__module__
        return cls.__name__

    def _access(self, owner_expression: str, container: Any, key: str) -> str:
        """`self.head`, `self["0"]` (ModuleDict) or `self[0]` (Sequential)."""
        if isinstance(container, Part) and container.sequential:
            return f"{owner_expression}[{int(key)}]"
        if key.isidentifier() and not keyword.iskeyword(key) and key not in module_dict_attributes():
            return f"{owner_expression}.{key}"
        return f"{owner_expression}[{json.dumps(key)}]"

    def _path(self, target: str, part: Part) -> str:
        """The expression reaching module `target` (a full path) from inside `part`'s class."""
        relative = target[len(part.path) + 1:] if part.path else target
        expression, container = "self", part
        for key in relative.split("."):
            expression = self._access(expression, container, key)
            container = container.children[key] if isinstance(container, Part) else None
        return expression

    # ----- forward -----------------------------------------------------------------------------
    def _forward(self, part: Part, template: Template) -> list[str]:
        statements = self._statements(part)
        parameters = self._forward_parameters(part)
        outputs = self.graph.outputs if part.style == "root" else [part.output]
        names = allocate(statements, parameters, outputs)
        returns = "torch.Tensor" if len(outputs) == 1 and self.graph[outputs[0]].shape is not None else "tuple"
        signature = ", ".join(f"{name}: torch.Tensor" for name in parameters.values())
        lines = [f"    def forward(self, {signature}) -> {returns}:"]
        for statement in statements:
            code = statement.render([names[name] for name in statement.uses])
            line = f"{names[statement.value]} = {code}" if statement.value in names else code
            lines.append(f"        {line}{self._comment(statement.node, template)}")
        lines.append(f"        return {', '.join(names[name] for name in outputs)}")
        return lines

    def _forward_parameters(self, part: Part) -> dict[str, str]:
        if part.style == "root":
            return {node.name: node.name for node in self.graph.inputs}
        names: dict[str, str] = {}
        for index, value in enumerate(part.inputs):
            name = "x" if index == 0 else identifier(self.graph[value].label)
            while name in names.values():
                name += "_"
            names[value] = name
        return names

    def _statements(self, part: Part) -> list[Statement]:
        statements = []
        for node in part.nodes:
            unit = self._unit_of(node, part)
            if unit is None:
                statements.append(self._node_statement(node, part))
            elif node is unit.nodes[-1]:
                statements.append(self._unit_statement(unit, part))
        return statements

    def _unit_of(self, node: Node, part: Part) -> Part | None:
        """The outermost container below `part` that is called as a whole and holds `node`."""
        unit, path = None, self.tree.home[node.name]
        while path != part.path:
            if self.parts[path].callable:
                unit = self.parts[path]
            path = parent(path)
        return unit

    def _stream(self, scopes: tuple, part: Part, limit: str | None = None) -> str:
        name = "x"
        for scope in scopes:
            if scope.path == part.path or not inside(scope.path, part.path):
                continue
            if limit is not None and not inside(limit, scope.path):
                continue
            if scope.kind == "branch":
                name = identifier(scope.label)
            elif scope.kind in _STREAMS:
                name = _STREAMS[scope.kind]
        return name

    def _unit_statement(self, unit: Part, part: Part) -> Statement:
        target, inputs = self._path(unit.path, part), list(unit.inputs)
        key = unit.path.rpartition(".")[2]
        named = key.isidentifier() and unit.kind not in ("body", "shortcut", "branch")
        return Statement(unit.output, inputs, self._stream(unit.nodes[0].scopes, part, unit.path),
                         identifier(key if key.isidentifier() else unit.block or unit.kind or "h"), named,
                         partial(plain_call, target), self.graph[unit.output])

    def _tensor_path(self, name: str, part: Part) -> str:
        """The expression reaching free tensor `name` from inside `part`'s class."""
        owner_path, _, key = name.rpartition(".")
        owner = "self" if owner_path == part.path else self._path(owner_path, part)
        if key.isidentifier() and not keyword.iskeyword(key) and key not in module_dict_attributes():
            return f"{owner}.{key}"
        return f"getattr({owner}, {json.dumps(key)})"

    def _node_statement(self, node: Node, part: Part) -> Statement:
        if is_free_tensor(node):
            render = partial(free_tensor_use, self._tensor_path(node.name, part), bool(node.args.get("batch")))
            return Statement(node.name, list(node.inputs) if node.args.get("batch") else [], self._stream(node.scopes, part),
                             identifier(node.label or node.target), True, render, node)
        if node.op == "module":
            render = partial(module_call, node, self._path(node.shared_with or node.name, part))
        else:
            render = partial(function_call if node.op == "function" else merge_call, node)
        named = node.label not in (node.target, "") and node.op != "merge"
        return Statement(node.name, list(node.inputs), self._stream(node.scopes, part),
                         identifier(node.label or node.target), named, render, node)

    # ----- init: and tie: ----------------------------------------------------------------------
    def _init_and_ties(self) -> list[str]:
        lines = ["        self._init_weights()  # the spec's `init:`"] if self.spec.init else []
        lines += [f"        self.get_submodule({literal(path)}).requires_grad_(False)  # spec `trainable: false`"
                  if kind == "module" else f"        self.get_parameter({literal(path)}).requires_grad_(False)"
                  for path, kind in self._fixed()]
        for target, source in self.spec.tie.items():
            owner, _, attribute = target.rpartition(".")
            source_owner, _, source_attribute = source.rpartition(".")
            lines.append(f"        {self._path(owner, self.parts[''])}.{_attribute(attribute)} = "
                         f"{self._path(source_owner, self.parts[''])}.{_attribute(source_attribute)}  # tied (spec `tie:`)")
        return lines

    def _init_method(self) -> list[str]:
        lines = ["", "    def _init_weights(self) -> None:",
                 '        """The spec\'s `init:` section, applied before weights are tied (as specc does)."""',
                 "        parameters = dict(self.named_parameters())", "        with torch.no_grad():"]
        layer_types = {node.target for node in self.graph.nodes if node.op == "module"}
        for key, how in self.spec.init.items():
            if key in layer_types:
                paths = [node.name for node in self.graph.nodes if node.target == key and not node.shared_with
                         and getattr(self.compiled.module.get_submodule(node.name), "weight", None) is not None]
                lines += [f"            for path in {wrapped_list(paths, 16)}:  # every {comment_text(key)}",
                          f"                {init_call(how, 'self.get_submodule(path).weight')}"]
            else:
                names = [name for name, _ in self.compiled.module.named_parameters()]
                matched = any(fnmatch.fnmatchcase(name, key) or name.rsplit(".", 1)[-1] == key for name in names)
                tensors = "parameters" if matched else "dict(self.named_buffers())"   # buffers when no parameter matches
                lines += [f"            for name, parameter in {tensors}.items():",
                          f"                if fnmatch.fnmatchcase(name, {literal(key)}) or name.rsplit(\".\", 1)[-1] == {literal(key)}:",
                          f"                    {init_call(how, 'parameter')}"]
        return lines

    def _fixed(self) -> list[tuple[str, str]]:
        """(path, "module" | "parameter") of the items marked `trainable: false`."""
        return [(node.shared_with or node.name, "module" if node.op == "module" else "parameter")
                for node in self.graph.nodes if node.meta.get("trainable") is False
                and (node.op == "module" or node.target == "parameter")]


def _attribute(name: str) -> str:
    """A parameter's name written after a dot: only an identifier is ever written."""
    return checked_name(name)
