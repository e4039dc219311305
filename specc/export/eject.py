"""Eject: write a compiled spec out as one standalone PyTorch file (`specc codegen spec.yaml -o model.py`).

The dry run already knows every size, so the file writes them out (`nn.Linear(1024, 128)`) and
needs nothing but torch. Its submodules carry the compiled model's names ("0", "branches.a.0",
"head"), so a state_dict saved from `specc.build(...)` loads into the generated class as it is.

Each container of the module tree (see `specc.export.codegen_tree`) becomes one of:
- a small class per block (`ConvBn(in_channels=12, out=16)`) when a block use takes its input from
  outside and hands back one value; the block's args and the sizes that differ between its uses
  are the class's constructor args;
- an `nn.Sequential` when it is a plain chain of layers keyed 0, 1, 2, ...;
- an `nn.ModuleDict` whose layers the enclosing class's `forward` calls one by one.
"""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from specc.lang.errors import Problem, SpecError
from specc.lang.spec import VARIANT
from specc.export.codegen_render import ClassWriter, Template
from specc.export.codegen_source import checked_name, comment_text, docstring_text, literal
from specc.export.codegen_tree import Part, Tree

_MARKER = re.compile("\x00(\\d+)\x00|\x01(\\d+)\x01|\x02(\\d+)\x02")
_TORCH_NAMES = {"torch": "import torch", "F": "import torch.nn.functional as F", "nn": "from torch import nn"}


def codegen(spec_or_compiled: Any, *, input_shapes: dict[str, list[int]] | None = None, **variables: Any) -> str:
    """The spec as a standalone PyTorch module: one class named after the spec, plus one per block.

    Args:
        spec_or_compiled: YAML path or text, a dict, a `Spec`, or an already `Compiled` spec.
        input_shapes: override the inputs' shapes (without the batch dim), as in `compile`.
        **variables: overrides of the spec's vars (`width=128`).

    Returns:
        Python source that imports only torch (specc's own layers, where used, are copied in).
        `GeneratedClass().load_state_dict(specc.build(spec).state_dict())` works as is.

    Raises:
        SpecError: the spec does not compile, or uses a function the generator cannot write.
    """
    from specc.build.compiled import Compiled
    from specc.build.compiler import compile

    if isinstance(spec_or_compiled, Compiled):
        compiled = spec_or_compiled
    else:
        compiled = compile(spec_or_compiled, device="meta", input_shapes=input_shapes, **variables)
    return _write_file(compiled, variables)


@dataclass
class Variant:
    """One generated class: all block uses whose code differs only in values."""

    name: str
    block: str | None
    instances: list[Part] = field(default_factory=list)
    params: list[str] = field(default_factory=list)          # constructor args, in order
    param_slots: dict[str, int] = field(default_factory=dict)  # arg -> its first slot
    resolved: dict[int, str] = field(default_factory=dict)    # slot -> arg name or literal text


def _write_file(compiled, variables: dict) -> str:
    from specc.build.compiler import class_name

    writer = ClassWriter(Tree(compiled))
    root_name = class_name(compiled.spec)
    variants = _group_block_uses(writer, root_name)
    root = Variant(root_name, None, [writer.parts[""]])
    writer.templates[""] = writer.render_class(writer.parts[""])
    _resolve(root, writer, variants)
    classes = [_class_text(variant, writer, variants) for variant in [*variants.values(), root]]
    body = "\n\n\n".join(classes)
    layer_code = _layer_sources(writer.specc_layers)
    header = _header(compiled, root_name, variables)
    imports = _imports(body + layer_code, writer.user_imports)
    sections = [header + "\n\n" + imports, layer_code, body]
    source = "\n\n\n".join(section for section in sections if section).rstrip() + "\n"
    _audit(source, body)
    return source


# names that reach past the model: none is ever written by the generator, so one in the classes is spec text
_FORBIDDEN_NAMES = {"eval", "exec", "compile", "open", "globals", "locals", "vars", "setattr", "delattr", "input",
                    "breakpoint", "memoryview", "type", "object"}


def _audit(source: str, body: str) -> None:
    """The last guard against spec text becoming code: the file must parse, and the generated classes
    (specc's copied layers aside) may hold no import, dunder name or attribute, or builtin that reaches
    past the model. Every value is written with `literal` and every name checked, so this never fires
    unless that breaks.

    Raises:
        SpecError: the generated code would not parse, or holds such a name.
    """
    try:
        ast.parse(source)
        tree = ast.parse(body)
    except SyntaxError as error:
        raise SpecError(Problem(f"codegen wrote code that does not parse ({error.msg}); please report this spec",
                                None, "LAYER_ERROR")) from None
    for node in ast.walk(tree):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        bad = isinstance(node, (ast.Import, ast.ImportFrom, ast.Lambda, ast.Global))
        bad = bad or (name is not None and ((name.startswith("__") and name != "__init__") or name in _FORBIDDEN_NAMES))
        if bad:
            raise SpecError(Problem(f"codegen refused to write {ast.dump(node)[:80]} into the model's code: spec text "
                                    f"must never become code", None, "LAYER_ERROR"))


# ----- grouping block uses into classes ---------------------------------------------------------

def _group_block_uses(writer: ClassWriter, root_name: str) -> dict[str, Variant]:
    """Render every block use (innermost first) and give uses with the same code the same class."""
    variants: dict[str, Variant] = {}    # template key -> variant
    taken = {root_name, *writer.tree.reserved_class_names()}
    for part in writer.tree.block_parts():      # deepest first, so inner classes exist before outer ones
        template = writer.render_class(part)
        writer.templates[part.path] = template
        key = f"{part.block}\x03{template.key}"
        if key not in variants:
            variants[key] = Variant(_class_name(part.block, taken), part.block)
        variants[key].instances.append(part)
        writer.variant_of[part.path] = key
    for variant in variants.values():   # insertion order is innermost first: inner args are known
        _resolve(variant, writer, variants)
    return variants


def _class_name(block: str, taken: set[str]) -> str:
    base = "".join(word[:1].upper() + word[1:] for word in re.split(r"[^0-9A-Za-z]+", block) if word)
    base = base if base[:1].isalpha() else f"Block{base}"
    name, number = base, 2
    while name in taken:
        name, number = f"{base}{number}", number + 1
    taken.add(name)
    return name


def _resolve(variant: Variant, writer: ClassWriter, variants: dict[str, Variant]) -> None:
    """Decide, slot by slot, whether a value is written as a literal or becomes a constructor arg.

    A value written as a block arg (`$channels`) is always that arg. Any other value becomes an
    arg only where it differs between the uses; an inferred size that always equals an arg (a
    BatchNorm after a conv of `out` channels) is written as that arg.
    """
    first = writer.templates[variant.instances[0].path]
    block_args = set(writer.spec.blocks[variant.block].args) if variant.block else set()
    slots = list(_referenced_slots(first, writer, variants))
    vectors: dict[str, tuple] = {}       # arg name -> its values over the instances
    for strong_pass in (True, False):
        for slot, hint, kind in slots:
            if (kind == "arg" and hint in block_args) != strong_pass:
                continue
            vector = tuple(writer.templates[part.path].values[slot] for part in variant.instances)
            name = _slot_name(vector, hint, kind, strong_pass, vectors)
            variant.resolved[slot] = literal(vector[0]) if name is None else name
            if name is not None and name not in vectors:
                vectors[name] = vector
                variant.param_slots[name] = slot
    variant.params = sorted(vectors, key=variant.param_slots.get)


def _slot_name(vector: tuple, hint: str, kind: str, strong: bool, vectors: dict) -> str | None:
    if strong:
        return hint if hint not in vectors or _same_values(vectors[hint], vector) else _fresh(hint, vectors)
    constant = all(_same_values((value,), vector[:1]) for value in vector)
    same = [name for name, other in vectors.items() if _same_values(other, vector)]
    if same and (kind == "inferred" or not constant):
        return same[0]
    return None if constant else _fresh(hint, vectors)


def _same_values(left: tuple, right: tuple) -> bool:
    return [(type(v).__name__, repr(v)) for v in left] == [(type(v).__name__, repr(v)) for v in right]


def _fresh(hint: str, taken: dict) -> str:
    name, number = hint, 2
    while name in taken:
        name, number = f"{hint}_{number}", number + 1
    return name


def _referenced_slots(template: Template, writer: ClassWriter, variants: dict[str, Variant]):
    """(slot, hint, kind) for every value the class text shows, nested block calls included."""
    for match in _MARKER.finditer(template.text):
        value_slot, _, call = match.groups()
        if value_slot is not None:
            slot = int(value_slot)
            yield slot, *template.hints[slot]
        elif call is not None:
            inner_path, offset, _ = template.calls[int(call)]
            inner = variants[writer.variant_of[inner_path]]
            raw_args = writer.tree.raw_block_args(writer.parts[inner_path])
            for param in inner.params:
                raw = raw_args.get(param)
                # `$channels` passes the outer arg on; `$(expanded // 4)` is a computed value
                strong_name = raw[1:] if isinstance(raw, str) and raw.startswith("$") and raw[1:].isidentifier() else None
                yield offset + inner.param_slots[param], strong_name or param, "arg" if strong_name else "given"


# ----- writing the classes ----------------------------------------------------------------------

def _class_text(variant: Variant, writer: ClassWriter, variants: dict[str, Variant]) -> str:
    template = writer.templates[variant.instances[0].path]
    text = _MARKER.sub(lambda match: _fill(match, variant, writer, variants), template.text)
    signature = "".join(f", {checked_name(name)}{_annotation(variant, writer, name)}" for name in variant.params)
    return f"class {variant.name}({template.base}):\n" + text.replace("\x04", signature, 1)


def _fill(match: re.Match, variant: Variant, writer: ClassWriter, variants: dict[str, Variant]) -> str:
    value_slot, shape_slot, call = match.groups()
    if value_slot is not None:
        return variant.resolved[int(value_slot)]
    if shape_slot is not None:
        return _shape_comment(variant, writer, int(shape_slot))
    inner_path, offset, _ = writer.templates[variant.instances[0].path].calls[int(call)]
    inner = variants[writer.variant_of[inner_path]]
    arguments = ", ".join(f"{param}={variant.resolved[offset + inner.param_slots[param]]}" for param in inner.params)
    return f"{inner.name}({arguments})"


def _annotation(variant: Variant, writer: ClassWriter, name: str) -> str:
    slot = variant.param_slots[name]
    kinds = {type(writer.templates[part.path].values[slot]) for part in variant.instances}
    return f": {kinds.pop().__name__}" if len(kinds) == 1 and kinds <= {int, float, bool, str} else ""


def _shape_comment(variant: Variant, writer: ClassWriter, slot: int) -> str:
    """`(B, 64, 56, 56)`; a dim that differs between uses shows the arg it equals, else `?`."""
    shapes = [writer.templates[part.path].shapes[slot] for part in variant.instances]
    if len({len(shape) for shape in shapes}) != 1:
        return "(...)"
    dims = []
    for position, first in enumerate(shapes[0]):
        column = [shape[position] for shape in shapes]
        if all(value == first for value in column):
            dims.append(str(first))
            continue
        vectors = {name: tuple(writer.templates[part.path].values[variant.param_slots[name]]
                               for part in variant.instances) for name in variant.params}
        dims.append(next((name for name, vector in vectors.items() if list(vector) == column), "?"))
    return comment_text("(" + ", ".join(dims) + ")")


# ----- the file around the classes ----------------------------------------------------------------

def _header(compiled, root_name: str, variables: dict) -> str:
    spec = compiled.spec
    origin = spec.file if spec.file != "<spec>" else "a spec"
    overrides = "".join(f" --variant {value}" if key == VARIANT else f" --set {key}={value}"
                        for key, value in variables.items())
    inputs = ", ".join(f"torch.randn({', '.join(map(str, (2, *node.meta['shape'])))})"
                       if node.dtype.startswith(("float", "bfloat")) else
                       f"torch.zeros({', '.join(map(str, (2, *node.meta['shape'])))}, dtype=torch.{node.dtype})"
                       for node in compiled.graph.inputs)
    return (f'"""{docstring_text(spec.display_name)}: generated by `specc codegen {docstring_text(origin + overrides)}`.\n\n'
            f"Plain PyTorch: nothing here needs specc. Submodule names follow the spec, so the state_dict\n"
            f"of the compiled spec (`specc.build(...)`) loads into {root_name} unchanged.\n\n"
            f"    model = {root_name}().eval()\n"
            f"    outputs = model({inputs})\n"
            f'"""\nfrom __future__ import annotations')


def _imports(code: str, user_imports: dict[str, str]) -> str:
    lines = []
    if re.search(r"\bfnmatch\.", code):
        lines.append("import fnmatch\n")
    lines += [statement for name, statement in _TORCH_NAMES.items() if re.search(rf"(?<![\w.]){name}\.", code)]
    lines += [f"from {module} import {name}" for name, module in sorted(user_imports.items())]
    return "\n".join(lines)


def _layer_sources(classes: set[type]) -> str:
    """The source of the specc layers used, with the module-level helpers they need."""
    if not classes:
        return ""
    import importlib

    from specc.build import functional, layers

    # the layers' modules first; the helpers they import from specc.build.functional (`attention`) after
    modules = [importlib.import_module(name) for name in layers.LAYER_MODULES]
    sources = [inspect.getsource(module) for module in (*modules, functional)]
    statements = [(source, statement) for source in sources for statement in ast.parse(source).body]
    definitions: dict[str, int] = {}
    for index, (_, statement) in enumerate(statements):
        for name in _defined_names(statement):
            definitions.setdefault(name, index)
    needed, pending = set(), [cls.__name__ for cls in classes]
    while pending:                       # the classes, then every module-level name they use
        index = definitions.get(pending.pop())
        if index is None or index in needed:
            continue
        needed.add(index)
        pending.extend(node.id for node in ast.walk(statements[index][1]) if isinstance(node, ast.Name))
    texts = [ast.get_source_segment(*statements[index]) for index in sorted(needed)]   # called at run time: any order
    note = "# specc's own layers used by this model, copied from specc/build/layers.py (and functional.py)\n\n"
    return note + "\n\n\n".join(texts)


def _defined_names(statement: ast.stmt) -> list[str]:
    if isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
        return [statement.name]
    if isinstance(statement, ast.Assign):
        return [target.id for target in statement.targets if isinstance(target, ast.Name) and target.id != "__all__"]
    return []

