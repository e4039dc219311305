"""Item lists for `specc.from_module`: one list per module path, structures where the calls form one.

Items are placed so that their paths are the module's: a named attribute is an item `name:`, a
numbered one (nn.Sequential's `0`, `1`, …) the item at that position of its list. The dataflow is
the default chain where a call takes the previous result, and `from:` elsewhere.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml
from torch import fx, nn

from specc.build.registry import FUNCTION_AS_LAYER, FUNCTIONS, STRUCTURES
from specc.export.import_tensors import batch_expanded


RESERVED = {*STRUCTURES, *FUNCTIONS, *FUNCTION_AS_LAYER}
_MERGES = {operator.add: "add", operator.iadd: "add", torch.add: "add", torch.cat: "cat", torch.stack: "stack",
           operator.mul: "mul", operator.imul: "mul", torch.mul: "mul"}


@dataclass
class Group:
    """The calls made under one module path, in order: op nodes and nested groups."""

    path: str
    entries: list = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]


class ListWriter:
    """Writes the items of the importer's groups, remembering each value's spec name."""

    def __init__(self, importer):
        self.importer = importer
        self.names: dict[fx.Node, str] = {}      # value -> the qualified spec name that yields it
        self.blocks: dict[str, dict] = {}
        self._candidates: list[tuple[dict, str, str]] = []   # (item, class, its layers as YAML)
        self._local: list[dict] = []              # per list being written: value -> its key there
        self._named: list[bool] = []              # per list being written: name every item

    def reference_of(self, node: fx.Node) -> str:
        node = self.importer.value_node(node)
        return self.names[node] if node.op != "placeholder" else node.name

    # ----- one list -------------------------------------------------------------------------------
    def items(self, group, prefix: str, current: fx.Node, entries: list | None = None) -> tuple[list, fx.Node]:
        """The items of `group` (or of `entries`) under `prefix`, the chain starting at `current`.

        A numbered layer (`self["3"]`) whose position earlier items already fill is placed by
        writing the list again with every item named, the items before it gathered into a
        `flat: true` sequential (no path level) so that it is the list's item 3."""
        entries = list(group.entries if entries is None else entries)
        state = (dict(self.importer.first_call), len(self._candidates), len(self.importer.imports))
        try:
            return self._write(entries, prefix, current, named=False)
        except _Crowded:
            first_call, candidates, imports = state
            self.importer.first_call.clear()
            self.importer.first_call.update(first_call)
            del self._candidates[candidates:], self.importer.imports[imports:]
            return self._write(entries, prefix, current, named=True)

    def _write(self, entries: list, prefix: str, current: fx.Node, named: bool) -> tuple[list, fx.Node]:
        items: list = []
        self._local.append({})
        self._named.append(named)
        try:
            index = 0
            while index < len(entries):
                item, output, key, used = self._entry(entries, index, prefix, current, len(items))
                self._place(items, item, key, prefix)
                self._local[-1][output] = str(len(items) - 1) if key is None else key
                current, index = output, index + used
        finally:
            self._local.pop()
            self._named.pop()
        return items, current

    def _place(self, items: list, item: Any, key: str | None, prefix: str) -> None:
        """Put the item at the position its path needs (`0`, `1`, …): a number past the items before
        it is written as its `name:` (an unnamed item is numbered by the items built before it)."""
        if key is not None and key.isdigit() and len(items) < int(key):
            item = {item: {}} if isinstance(item, str) else item
            item["name"] = key
        elif key is not None and key.isdigit():
            if len(items) > int(key):
                if not self._named[-1]:
                    raise _Crowded()
                moved = self._gather(items, int(key), prefix)
                sources = item.get("from") if isinstance(item, dict) else None
                if sources is not None:     # the item's own references were written before the gathering
                    item["from"] = ([prefix + name if name in moved else name for name in sources]
                                    if isinstance(sources, list) else prefix + sources if sources in moved else sources)
        elif key is not None:
            item = {item: {}} if isinstance(item, str) else item
            item["name"] = key
        items.append(item)

    def _gather(self, items: list, position: int, prefix: str) -> set[str]:
        """Fold the items after the last numbered one into a flat sequential, leaving `position`
        items; what they are referred to by becomes their full name (they are one list down)."""
        numbered = [index for index, item in enumerate(items) if not (isinstance(item, dict) and "name" in item)]
        start = numbered[-1] + 1 if numbered else 0
        count = len(items) - position + 1
        if start > position - 1:
            raise self.importer.cannot(prefix.rstrip("."), f"{prefix}{position}: its position is taken by earlier calls")
        gathered = items[start:start + count]
        items[start:start + count] = [{"sequential": gathered, "flat": True}]
        moved = {item["name"] for item in gathered}
        local = self._local[-1]
        for node, key in local.items():
            if key in moved:
                local[node] = prefix + key
        return moved

    def _entry(self, entries: list, index: int, prefix: str, current: fx.Node, position: int):
        """`(item, output value, key, entries used)` for the entry at `index`."""
        entry = entries[index]
        following = entries[index + 1] if index + 1 < len(entries) else None
        structure = None
        if isinstance(entry, Group):
            structure = (self._structure_at_parent(entry, following, prefix, current)
                         or self._structure_inside(entry, prefix, current))
        if structure is None:
            structure = self._flat_residual(entries[index:], prefix, current, position)
        if structure is None and isinstance(entry, fx.Node) and entry.op == "get_attr":
            structure = self._batched_free_tensor(entry, following, prefix)
        if structure is not None:
            return structure
        if isinstance(entry, Group):
            return (*self._sequential(entry, prefix, current), 1)
        return (*self._call(entry, prefix, current, position), 1)

    # ----- calls ----------------------------------------------------------------------------------
    def _call(self, node: fx.Node, prefix: str, current: fx.Node, position: int) -> tuple[Any, fx.Node, str | None]:
        importer = self.importer
        if node.op == "call_module":
            if set(node.kwargs) - {"need_weights"} or any(not isinstance(arg, fx.Node) for arg in node.args):
                raise importer.cannot(importer.container_of[node], f"{node.target} is called with non-tensor arguments")
            # every argument in order (`attention(q, k, k)`); `mha(h, h, h)` is the spec's one-input form
            inputs = [importer.value_node(arg) for arg in node.args]
            if len(set(inputs)) == 1 and isinstance(importer.module.get_submodule(node.target), nn.MultiheadAttention):
                inputs = inputs[:1]
            key = node.target.rpartition(".")[2]
            first = importer.first_call.get(node.target)
            layer, kwargs = importer.layer(node)
            item: dict = {layer: kwargs or {}}
            if first is not None:       # called again: the same weights, or a fresh copy of a stateless layer
                submodule = importer.module.get_submodule(node.target)
                if any(True for _ in submodule.parameters()) or any(True for _ in submodule.buffers()):
                    item["share"] = first
                key = self._own_name(node)
            else:
                importer.first_call[node.target] = prefix + key
        elif node.op == "get_attr":     # a tensor of the module: a free tensor under its attribute name
            item, inputs, key = importer.free_tensor(node), [], node.target.rpartition(".")[2]
        else:
            item, inputs = importer.function(node)
            item = item if isinstance(item, dict) else {item: None}
            key = self._own_name(node)
        if inputs and [importer.value_node(value) for value in inputs] != [current]:
            item["from"] = [self._reference(value) for value in inputs]
            if len(item["from"]) == 1:
                item["from"] = item["from"][0]
        self.names[node] = prefix + (key if key is not None else str(position))
        return _compact(item), node, key

    def _own_name(self, node: fx.Node) -> str | None:
        """An unnamed item's name: none (its index) unless the list names every item."""
        return node.name if self._named[-1] else None

    def _batched_free_tensor(self, node: fx.Node, following, prefix: str):
        """`token.expand(x.shape[0], -1, -1)` right after `token`: one item with `batch: true`."""
        source = batch_expanded(following, node, self.importer.shape_of) if isinstance(following, fx.Node) else None
        if source is None or len(node.users) != 1:
            return None
        (op, args), = self.importer.free_tensor(node).items()
        key = node.target.rpartition(".")[2]
        item = {op: {**args, "batch": True}, "from": self._reference(source)}
        self.names[node] = self.names[following] = prefix + key
        return item, following, key, 2

    def _reference(self, node: fx.Node) -> str:
        node = self.importer.value_node(node)
        for local in reversed(self._local[-1:]):
            if node in local:
                return local[node]
        return self.reference_of(node)

    # ----- containers -------------------------------------------------------------------------------
    def _sequential(self, group, prefix: str, current: fx.Node) -> tuple[dict, fx.Node, str]:
        inner, last = self.items(group, f"{prefix}{group.key}.", current)
        item = {"sequential": inner}
        submodule = self.importer.module.get_submodule(group.path)
        self._candidates.append((item, type(submodule).__name__, yaml.safe_dump(inner, sort_keys=False)))
        return item, last, group.key

    def _structure_at_parent(self, group, following, prefix: str, current: fx.Node):
        """`x + G(x)` / `cat([G.a(x), G.b(x)])` where the add or cat follows the group's calls."""
        if not isinstance(following, fx.Node) or _merge_op(following) is None:
            return None
        parts = group.entries
        if not parts or not all(isinstance(part, Group) for part in parts):
            return None
        operands = self.importer.tensor_inputs(following)
        outputs = [self._last(part) for part in parts]
        op = _merge_op(following)
        if op == "add" and len(parts) == 1 and set(operands) == {outputs[0], current}:
            return self._residual(group, parts[0], None, prefix, current, following)
        if op == "add" and len(parts) == 2 and set(operands) == set(outputs) and self._first_input(parts[1]) == current:
            return self._residual(group, parts[0], parts[1], prefix, current, following)
        if len(parts) >= 2 and operands == outputs and all(self._first_input(part) == current for part in parts):
            return self._parallel(group, parts, prefix, current, following, used=2)
        return None

    def _structure_inside(self, group, prefix: str, current: fx.Node):
        """A group whose calls end with the add/cat of its parts: a residual with a shortcut, a parallel."""
        *parts, merge = group.entries or [None]
        if not isinstance(merge, fx.Node) or _merge_op(merge) is None or not parts:
            return None
        if not all(isinstance(part, Group) for part in parts):
            return None
        operands = self.importer.tensor_inputs(merge)
        outputs = [self._last(part) for part in parts]
        if not all(self._first_input(part) == current for part in parts) or set(operands) != set(outputs):
            return None
        if _merge_op(merge) == "add" and len(parts) == 2:
            return self._residual(group, parts[0], parts[1], prefix, current, merge, used=1)
        if operands == outputs and len(parts) >= 2:
            return self._parallel(group, parts, prefix, current, merge, used=1)
        return None

    def _residual(self, group, body, shortcut, prefix, current, add, used=2):
        qualified = f"{prefix}{group.key}"
        item: dict = {"residual": self.items(body, f"{qualified}.{body.key}.", current)[0]}
        names = {"body": body.key} if body.key != "body" else {}
        if shortcut is not None:
            item["shortcut"] = self.items(shortcut, f"{qualified}.{shortcut.key}.", current)[0]
            if shortcut.key != "shortcut":
                names["shortcut"] = shortcut.key
        if names:
            item["names"] = names
        self.names[add] = f"{qualified}.add"
        return item, add, group.key, used

    def _parallel(self, group, parts, prefix, current, merge, used):
        qualified = f"{prefix}{group.key}"
        branches = {part.key: self.items(part, f"{qualified}.{part.key}.", current)[0] for part in parts}
        op = _merge_op(merge)
        item: dict = {"parallel": branches}
        if op in ("cat", "stack"):
            dim = merge.kwargs.get("dim", merge.args[1] if len(merge.args) > 1 else 0)
            item["merge"] = {op: {"dim": dim}}
        else:
            item["merge"] = op
        self.names[merge] = f"{qualified}.merge"
        return item, merge, group.key, used

    def _flat_residual(self, entries: list, prefix: str, current: fx.Node, position: int):
        """`out = body(x) (+ shortcut(x)); out + x` in a module's forward (torchvision's BasicBlock,
        MobileNet's inverted residual, a transformer block): a residual adding no path level."""
        for end, entry in enumerate(entries):
            if isinstance(entry, fx.Node) and _merge_op(entry) == "add" and end >= 1:
                break
        else:
            return None
        before = entries[:end]
        shortcuts = [part for part in before if isinstance(part, Group) and self._first_input(part) == current
                     and part is not before[0]]
        shortcut = shortcuts[-1] if shortcuts else None
        body = [part for part in before if part is not shortcut]
        operands = set(self.importer.tensor_inputs(entries[end]))
        skip = self._last(shortcut) if shortcut is not None else current
        if operands != {self._last_of(body), skip} or self._first_of(body) != current:
            return None
        if shortcut is None and len(body) == 1 and isinstance(body[0], Group) and body[0].key.isdigit():
            return self._numbered_residual(body[0], entries[end], prefix, current, end + 1)
        item: dict = {"residual": self.items(None, prefix, current, entries=body)[0], "flat": True}
        names = {"body": ""}
        if shortcut is not None:
            item["shortcut"] = self.items(shortcut, f"{prefix}{shortcut.key}.", current)[0]
            names["shortcut"] = shortcut.key
        item["names"] = names
        key = self._own_name(entries[end])
        self.names[entries[end]] = f"{prefix}{key or position}.add"
        return item, entries[end], key, end + 1

    def _numbered_residual(self, group, add: fx.Node, prefix: str, current: fx.Node, used: int):
        """`x = x + self.layer["1"](x)` written out in the caller: the residual is item `1` itself,
        its body adding no level (a flat residual would put item 1 at index 0 of its own list)."""
        item = {"residual": self.items(group, f"{prefix}{group.key}.", current)[0], "names": {"body": ""}}
        self.names[add] = f"{prefix}{group.key}.add"
        return item, add, group.key, used

    # ----- values of groups -------------------------------------------------------------------------
    def _last(self, group) -> fx.Node:
        last = group.entries[-1]
        return self._last(last) if isinstance(last, Group) else self.importer.value_node(last)

    def _last_of(self, entries: list) -> fx.Node:
        last = entries[-1]
        return self._last(last) if isinstance(last, Group) else self.importer.value_node(last)

    def _first_input(self, group) -> fx.Node | None:
        return self._first_of(group.entries)

    def _first_of(self, entries: list) -> fx.Node | None:
        first = entries[0]
        if isinstance(first, Group):
            return self._first_of(first.entries)
        inputs = self.importer.tensor_inputs(first)
        return inputs[0] if inputs else None

    # ----- blocks -----------------------------------------------------------------------------------
    def make_blocks(self) -> None:
        """Identical submodules (same class, same items, no reference outside themselves) used
        more than once become one block; a sequential of nothing but uses of one block, a repeat."""
        counts: dict[tuple, list[dict]] = {}
        for item, cls, text in self._candidates:
            if "from:" not in text and "share:" not in text:
                counts.setdefault((cls, text), []).append(item)
        taken: dict[str, int] = {}
        for (cls, _), uses in counts.items():
            if len(uses) < 2:
                continue
            base = _snake(cls)
            base = f"{base}_block" if base in RESERVED else base
            taken[base] = taken.get(base, 0) + 1
            block = base if taken[base] == 1 else f"{base}_{taken[base]}"
            self.blocks[block] = {"layers": uses[0]["sequential"]}
            for use in uses:
                layers = use.pop("sequential")
                del layers
                name = use.pop("name", None)
                use[block] = {}
                if name is not None:
                    use["name"] = name
        for item, _, _ in self._candidates:
            inner = item.get("sequential")
            if inner and all(isinstance(part, dict) and len(part) == 1 and next(iter(part)) in self.blocks
                             and next(iter(part.values())) == {} for part in inner):
                uses = {next(iter(part)) for part in inner}
                if len(uses) == 1 and len(inner) >= 2:
                    name = item.pop("name", None)
                    item.pop("sequential")
                    item[uses.pop()] = {}
                    item["repeat"] = len(inner)
                    if name is not None:
                        item["name"] = name


class _Crowded(Exception):
    """A numbered layer's position is taken: the list is written again with every item named."""


def _merge_op(node: fx.Node) -> str | None:
    if node.op == "call_function" and node.target in _MERGES:
        return _MERGES[node.target]
    if node.op == "call_method" and node.target in ("add", "add_", "mul", "mul_"):
        return node.target.rstrip("_")
    return None


def _compact(item: dict) -> Any:
    """`{"relu": None}` -> `"relu"`; `{"ReLU": {}}` -> `"ReLU"` when nothing else is said."""
    if len(item) == 1:
        (op, args), = item.items()
        if args is None or args == {}:
            return op
    return {op: ({} if args is None and len(item) > 1 else args) for op, args in item.items()}


def _snake(name: str) -> str:
    import re

    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
