"""The module tree behind `specc.codegen`: which container of the compiled model is written how.

A compiled model's submodules nest by their dotted names ("layer1.0.body.conv1"). `Tree` rebuilds
that nesting from the graph and decides, for each container (`Part`), whether the generated code
makes it a block class, an nn.Sequential, or an nn.ModuleDict whose layers the enclosing forward
calls one by one.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

from specc.build.graph import Node
from specc.build.registry import TUPLE_OUTPUT_LAYERS
from specc.build.tensors import FREE_TENSORS

_META_KEYS = ("name", "from", "repeat", "merge", "shortcut", "share", "if", "flat", "names", "batch_dim", "outputs")


@dataclass(eq=False)
class Part:
    """A container of the module tree: the root, a block use, a branch, a residual body, ..."""

    path: str
    kind: str = ""                  # the scope kind ("block", "body", ...); "root"; "" without a scope
    label: str = ""
    children: dict[str, Any] = field(default_factory=dict)   # key -> Part or module Node
    nodes: list[Node] = field(default_factory=list)          # every graph node inside, in order
    inputs: list[str] = field(default_factory=list)          # values read from outside
    output: str | None = None       # the one value handed out; None when several (or none) leave
    style: str = "inline"           # "root" | "block" | "sequential" | "inline"
    block: str | None = None        # for block uses: the block's name
    block_args: tuple = ()          # for block uses: the block's declared args
    chain: bool = False             # a plain chain of its children keyed 0, 1, 2, ...

    @property
    def callable(self) -> bool:
        """Called as one module from the enclosing forward (else its layers are called one by one)."""
        return self.style in ("block", "sequential")

    @property
    def sequential(self) -> bool:
        return self.style == "sequential" or (self.style == "block" and self.chain)


def is_free_tensor(node: Any) -> bool:
    """A `parameter` / `buffer` / `constant` item: a tensor registered on its container, like a layer."""
    return isinstance(node, Node) and node.op == "function" and node.target in FREE_TENSORS


def owns_module(node: Node) -> bool:
    """The node has a place in the module tree: a layer (not a `share:` call) or a free tensor."""
    return (node.op == "module" and not node.shared_with) or is_free_tensor(node)


def holds_tensors(part: "Part") -> bool:
    """Free tensors sit in this part or in a part below that its enclosing class writes inline."""
    return any(is_free_tensor(child) or (isinstance(child, Part) and not child.callable and holds_tensors(child))
               for child in part.children.values())


def units_in_run_order(container: "Part", order: dict[str, int]) -> list[tuple[tuple[str, ...], Any]] | None:
    """The layers, free tensors and block uses under `container` and its plain containers, by key path,
    in the order the graph builds them; None when nesting them gives that order already. Dotted names
    interleave containers (diffusers' resnets.0, attentions.0, resnets.1): a nested literal would build
    resnets.1 before attentions.0, and a seeded build would draw other numbers."""
    units = list(_units(container, ()))
    firsts = [_first_index(child, order) for _, child in units]
    if firsts == sorted(firsts):
        return None
    return [unit for _, unit in sorted(zip(firsts, units), key=lambda pair: pair[0])]


def _units(container: "Part", keys: tuple) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, child in container.children.items():
        if isinstance(child, Part) and not child.callable and not child.sequential:
            yield from _units(child, keys + (key,))
        else:
            yield keys + (key,), child


def _first_index(child: Any, order: dict[str, int]) -> int:
    if isinstance(child, Node):
        return order[child.name]
    built = [node for node in child.nodes if owns_module(node)] or child.nodes
    return min(order[node.name] for node in built)


def inside(path: str, ancestor: str) -> bool:
    return ancestor == "" or path == ancestor or path.startswith(ancestor + ".")


def parent(path: str) -> str:
    return path.rpartition(".")[0]


def depth(path: str) -> int:
    return 0 if path == "" else path.count(".") + 1


class Tree:
    """The compiled model's module tree, analysed for code generation."""

    def __init__(self, compiled):
        self.compiled, self.graph, self.spec = compiled, compiled.graph, compiled.spec
        self.parts: dict[str, Part] = {"": Part("", kind="root", style="root")}
        self.home: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = defaultdict(list)
        self.item_args = self._item_args()
        self._build()
        for part in sorted(self.parts.values(), key=lambda p: depth(p.path), reverse=True):
            self._analyse(part)

    # ----- structure ---------------------------------------------------------------------------
    def _build(self) -> None:
        for node in self.graph.nodes:
            for used in node.inputs:
                self.consumers[used].append(node.name)
            if owns_module(node):
                parent, _, key = node.name.rpartition(".")
                self._part(parent).children[key] = node
        for node in self.graph.nodes:
            for scope in node.scopes:
                part = self.parts.get(scope.path)
                if part is not None and not part.kind:
                    part.kind, part.label = scope.kind, scope.label
        for node in self.graph.nodes:
            if node.op != "input":
                self._add_member(node)

    def _part(self, path: str) -> Part:
        if path not in self.parts:
            owner = self._part(parent(path))
            self.parts[path] = owner.children[path.rpartition(".")[2]] = Part(path)
        return self.parts[path]

    def _add_member(self, node: Node) -> None:
        if owns_module(node):
            home = parent(node.name)
        else:
            home = next((scope.path for scope in reversed(node.scopes) if scope.path in self.parts), "")
        self.home[node.name] = home
        path = home
        while True:
            self.parts[path].nodes.append(node)
            if path == "":
                break
            path = parent(path)

    def _analyse(self, part: Part) -> None:
        if part.style == "root":
            return
        produced = {node.name for node in part.nodes}
        part.inputs = list(dict.fromkeys(name for node in part.nodes for name in node.inputs if name not in produced))
        leaving = [node.name for node in part.nodes if node.name in self.graph.outputs
                   or any(consumer not in produced for consumer in self.consumers[node.name])]
        reaches_out = any(node.shared_with and not inside(node.shared_with, part.path) for node in part.nodes)
        if len(leaving) == 1 and leaving[0] == part.nodes[-1].name and part.inputs and not reaches_out:
            part.output = leaving[0]
        part.chain = self._is_chain(part)
        block = part.label.rpartition(": ")[2] if part.kind == "block" else None
        if block in self.spec.blocks and part.output is not None:
            part.style, part.block, part.block_args = "block", block, tuple(self.spec.blocks[block].args)
        elif part.chain:
            part.style = "sequential"

    def _is_chain(self, part: Part) -> bool:
        keys = list(part.children)
        if part.output is None or len(part.inputs) != 1 or keys != [str(i) for i in range(len(keys))]:
            return False
        previous, covered = part.inputs[0], 0
        for child in part.children.values():
            if isinstance(child, Node):
                if is_free_tensor(child) or child.target in TUPLE_OUTPUT_LAYERS or child.inputs != [previous]:
                    return False
                previous, covered = child.name, covered + 1
            else:
                if not child.callable or child.inputs != [previous]:
                    return False
                previous, covered = child.output, covered + len(child.nodes)
        return covered == len(part.nodes) and previous == part.output

    def block_parts(self) -> list[Part]:
        """Block uses written as classes, innermost first."""
        parts = [part for part in self.parts.values() if part.style == "block"]
        return sorted(parts, key=lambda part: depth(part.path), reverse=True)

    def reserved_class_names(self) -> set[str]:
        from specc.build import layers

        return set(layers.__all__) | {dotted.rpartition(".")[2] for dotted in self.spec.imports}

    def _item_args(self) -> dict:
        """Spec item location -> the item's args as written (`{out_channels: $channels}`)."""
        found: dict = {}

        def walk(value: Any, path: tuple) -> None:
            if isinstance(value, dict):
                ops = [key for key in value if key not in _META_KEYS]
                if len(ops) == 1 and isinstance(value[ops[0]], dict):
                    found.setdefault(self.spec.source.locate(path), value[ops[0]])
                for key, inner in value.items():
                    walk(inner, path + (key,))
            elif isinstance(value, list):
                for index, inner in enumerate(value):
                    walk(inner, path + (index,))

        walk(self.spec.raw.get("layers", []), ("layers",))
        for name, block in (self.spec.raw.get("blocks") or {}).items():
            walk(block.get("layers", []), ("blocks", name, "layers"))
        return found

    def raw_block_args(self, part: Part) -> dict:
        scope = next((s for s in part.nodes[0].scopes if s.path == part.path and s.kind == "block"), None)
        return self.item_args.get(scope.location, {}) if scope is not None else {}
