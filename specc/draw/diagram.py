"""The picture of a compiled spec before it is drawn: boxes, arrows and nested clusters.

Both writers (graphviz in `specc.draw`, Mermaid in `specc.draw.mermaid`) draw the same `Diagram`, so
they agree on clusters, merges and edge shapes. Building it is where the drawing choices live:

- repeated items show their first repetition once, marked `×N` (unless `expand`);
- containers nested deeper than `depth` become one box each;
- a module reused through `share:` is drawn once, with one incoming edge per use;
- every edge carries the shape of the tensor it moves, batch dim written as `B`.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from specc.build.graph import Graph, Node, Scope

CONTAINERS = ("block", "parallel", "residual", "sequential")   # what `depth` counts
HIDDEN_SCOPES = ("body",)   # a residual's body needs no frame of its own: the residual's frame is it
# One colour per parallel branch (fill, border), so the branches read apart at a glance.
BRANCH_COLORS = [("#dae8fc", "#6c8ebf"), ("#d5e8d4", "#82b366"), ("#ffe6cc", "#d79b00"),
                 ("#e1d5e7", "#9673a6"), ("#fff2cc", "#d6b656"), ("#f8cecc", "#b85450")]


@dataclass
class Box:
    """One drawn node."""

    id: str
    kind: str                    # "input" | "output" | "module" | "function" | "merge" | "group"
    title: str                   # spec name, layer type, merge op ("cat dim=1") or container label
    subtitle: str = ""           # layer type when the title is a name; "block · 3 layers" for groups
    details: list[str] = field(default_factory=list)   # key arguments, one "key=value" each
    cluster: str | None = None   # innermost cluster id
    repeat: int | None = None    # drawn once for N repetitions
    tooltip: str = ""


@dataclass
class Arrow:
    """One drawn edge: a tensor of `shape` going from `source` to `target`."""

    source: str
    target: str
    shape: str
    skip: bool = False           # a residual's shortcut path


@dataclass
class Cluster:
    """A frame around boxes: a block use, a parallel item, one of its branches, a residual, a repeat."""

    id: str
    kind: str
    label: str
    parent: str | None
    branch_index: int = 0        # position among its parallel siblings (for the branch colour)
    count: int | None = None     # for "repeat": how many repetitions


@dataclass
class Diagram:
    name: str
    boxes: dict[str, Box]
    arrows: list[Arrow]
    clusters: dict[str, Cluster]

    def children(self, cluster_id: str | None) -> tuple[list[Box], list[Cluster]]:
        """Boxes and clusters directly inside `cluster_id` (None: the top level)."""
        boxes = [box for box in self.boxes.values() if box.cluster == cluster_id]
        return boxes, [cluster for cluster in self.clusters.values() if cluster.parent == cluster_id]


def build_diagram(graph: Graph, name: str, depth: int | None = None, expand: bool = False) -> Diagram:
    """Turn a compiled graph (shapes filled in) into boxes, arrows and clusters.

    Args:
        graph: `Compiled.graph`.
        name: the diagram's title (the spec name).
        depth: open containers (blocks, parallel, residual, sequential) this many levels deep;
            deeper ones are drawn as one box. None opens everything.
        expand: draw every repetition of a repeated item instead of one marked `×N`.

    Returns:
        The `Diagram`.
    """
    if depth is not None and depth < 0:
        raise ValueError(f"depth must be 0 or more, got {depth}")
    builder = _Builder(graph, depth, expand)
    for node in graph.nodes:
        builder.place(node)
    for node in graph.nodes:
        builder.connect(node)
    builder.add_outputs()
    diagram = Diagram(name, builder.boxes, builder.arrows, builder.clusters)
    if not expand:
        _fold_repeats(diagram)
    return diagram


def compiled_diagram(compiled, depth: int | None = None, expand: bool = False) -> Diagram:
    """The `Diagram` of a `Compiled` spec, with `tie:`d parameters noted on their boxes."""
    diagram = build_diagram(compiled.graph, compiled.spec.display_name, depth=depth, expand=expand)
    for target, source in compiled.spec.tie.items():   # `tie:` shares a parameter: say so on the box
        owner, _, parameter = target.rpartition(".")
        if owner in diagram.boxes:
            diagram.boxes[owner].details.append(f"{parameter} tied to {source}")
    return diagram


def shape_text(node: Node) -> str:
    """`B×12×32×32` (named dims shown by name: `B×seq×512`); "" when the value is not a tensor."""
    shape = node.meta.get("symbolic_shape") or (None if node.shape is None else ["B", *node.shape[1:]])
    if node.op == "function" and node.target in ("parameter", "buffer") and not node.args.get("batch"):
        shape = None if node.shape is None else list(node.shape)   # a model tensor: no batch dim, as written
    return "" if shape is None else "×".join(str(size) for size in shape)


def argument_texts(node: Node) -> list[str]:
    """The arguments written in the spec (not the ones the dry run inferred), as `key=value`."""
    return [f"{key}={value_text(value)}" for key, value in node.args.items() if key not in node.inferred]


def merge_text(node: Node) -> str:
    """`cat dim=1`, `add`, `stack dim=0` ..."""
    return " ".join([node.target, *(f"{key}={value_text(value)}" for key, value in node.args.items())])


def detail_lines(details: list[str], width: int = 40, most: int = 4) -> list[str]:
    """Pack `key=value` texts into a few short lines so boxes stay narrow."""
    lines = textwrap.wrap(" ".join(details), width=width, break_long_words=True, break_on_hyphens=False)
    return lines if len(lines) <= most else [*lines[:most - 1], lines[most - 1][:width - 1] + "…"]


def value_text(value) -> str:
    """Values as a person writes them: `[3, 3]`, and indexes as `[:, -1]` rather than `slice(None, ...)`."""
    if isinstance(value, slice):
        parts = ["" if part is None else str(part) for part in (value.start, value.stop, value.step)]
        return ":".join(parts[:2] if value.step is None else parts)
    if value is Ellipsis:
        return "..."
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(item) for item in value) + "]"
    return str(value)


class _Builder:
    """Maps graph nodes onto boxes (many nodes can share a box) and collects arrows and clusters."""

    def __init__(self, graph: Graph, depth: int | None, expand: bool):
        self.graph, self.depth, self.expand = graph, depth, expand
        self.nodes = {node.name: node for node in graph.nodes}   # Graph[name] scans; this is O(1)
        self.drawn: set[tuple[str, str, str]] = set()   # arrows made: (source box, target box, tensor)
        self.box_of: dict[str, str] = {}        # node name -> box id
        self.boxes: dict[str, Box] = {}
        self.arrows: list[Arrow] = []
        self.clusters: dict[str, Cluster] = {}
        self.uses: dict[str, int] = {}           # box id -> times a shared module is applied

    def place(self, node: Node) -> None:
        replacements = _repetition_replacements(node.scopes) if not self.expand else []
        canonical = _rename(node.name, replacements)
        if canonical != node.name and canonical in self.box_of:   # a later repetition: drawn by the first
            self.box_of[node.name] = self.box_of[canonical]
            return
        scopes, group = self._visible_scopes(node)
        if group is not None:
            box_id = "group:" + _rename(group.path, replacements)
            if box_id not in self.boxes:
                self.boxes[box_id] = _group_box(box_id, group, self.graph)
                self.boxes[box_id].cluster = self._cluster_chain(scopes, replacements)
        elif node.shared_with and node.shared_with in self.box_of:
            box_id = self.box_of[node.shared_with]
            self.uses[box_id] = self.uses.get(box_id, 1) + 1
            box = self.boxes[box_id]
            layer = box.subtitle.partition(" · shared")[0] or node.target
            box.subtitle = f"{layer} · shared, used {self.uses[box_id]}×"
        else:
            box_id = node.name
            self.boxes[box_id] = _node_box(node)
            self.boxes[box_id].cluster = self._cluster_chain(scopes, replacements)
        self.box_of[node.name] = box_id

    def connect(self, node: Node) -> None:
        target = self.box_of[node.name]
        for input_name in node.inputs:
            source, producer = self.box_of[input_name], self.nodes[input_name]
            # one arrow per tensor: repetitions folded onto one box send the same tensor again
            key = (source, target, _rename(input_name, _repetition_replacements(producer.scopes)))
            if source == target or key in self.drawn or (not self.expand and _crosses_repetitions(producer, node)):
                continue
            self.drawn.add(key)
            self.arrows.append(Arrow(source, target, shape_text(producer), skip=_is_skip(producer, node)))

    def add_outputs(self) -> None:
        several = len(self.graph.outputs) > 1
        for name in self.graph.outputs:
            box_id = f"output:{name}"
            title = f"output: {self.nodes[name].label}" if several else "output"
            self.boxes[box_id] = Box(box_id, "output", title, tooltip=name)
            self.arrows.append(Arrow(self.box_of[name], box_id, shape_text(self.nodes[name])))

    def _visible_scopes(self, node: Node) -> tuple[tuple[Scope, ...], Scope | None]:
        """The scopes drawn as clusters around the node, and the container it collapses into (if any)."""
        containers = [scope for scope in node.scopes if scope.kind in CONTAINERS]
        if self.depth is None or len(containers) <= self.depth:
            return node.scopes, None
        group = containers[self.depth]
        return node.scopes[:node.scopes.index(group)], group

    def _cluster_chain(self, scopes: tuple[Scope, ...], replacements: list) -> str | None:
        parent = None
        for scope in scopes:
            if scope.kind in HIDDEN_SCOPES:
                continue
            cluster_id = f"{scope.kind}:{_rename(scope.path, replacements)}"
            if cluster_id not in self.clusters:
                siblings = sum(1 for c in self.clusters.values() if c.parent == parent and c.kind == scope.kind)
                self.clusters[cluster_id] = Cluster(cluster_id, scope.kind, _cluster_label(scope), parent,
                                                    siblings, scope.count)
            parent = cluster_id
        return parent


def _node_box(node: Node) -> Box:
    tooltip = f"{node.name} ({node.location})" if node.location else node.name
    if node.op == "input":
        return Box(node.name, "input", node.name, "input", [node.dtype or "float32"], tooltip=tooltip)
    if node.op == "merge":
        return Box(node.name, "merge", merge_text(node), tooltip=tooltip)
    subtitle = node.target if node.label != node.target else ""
    return Box(node.name, node.op, node.label, subtitle, argument_texts(node), tooltip=tooltip)


def _group_box(box_id: str, scope: Scope, graph: Graph) -> Box:
    members = [node for node in graph.nodes if any(s.path == scope.path and s.kind == scope.kind for s in node.scopes)]
    layers = sum(1 for node in members if node.op == "module")
    words = [scope.kind] if scope.label != scope.kind else []   # "residual", not "residual residual"
    if scope.kind == "parallel":
        words.append(" | ".join(_branches(members, scope)))
    count = f"{layers} layer{'s' if layers != 1 else ''}"
    return Box(box_id, "group", scope.label, " · ".join(filter(None, [" ".join(words), count])), tooltip=scope.path)


def _branches(members: list[Node], scope: Scope) -> list[str]:
    merge = next((node for node in members if node.op == "merge" and node.scopes[-1] == scope), None)
    return merge.meta.get("branches", []) if merge is not None else []


def _cluster_label(scope: Scope) -> str:
    if scope.kind == "repeat":
        return f"repeat {scope.label}"
    if scope.kind == "branch":
        return f"branch {scope.label}"
    if scope.kind in ("parallel", "residual") and scope.label != scope.kind:
        return f"{scope.label} · {scope.kind}"   # a named parallel/residual: say what the frame is
    return scope.label


def _repetition_replacements(scopes: tuple[Scope, ...]) -> list[tuple[str, str]]:
    """Prefix renames that map a node of repetition k onto the same node of repetition 0."""
    replacements = []
    for scope in scopes:
        if scope.kind == "repeat" and scope.index:
            path = _rename(scope.path, replacements)
            replacements.append((f"{path}.{scope.index}", f"{path}.0"))
    return replacements


def _rename(name: str, replacements: list[tuple[str, str]]) -> str:
    for old, new in replacements:
        if name == old or name.startswith(old + "."):
            name = new + name[len(old):]
    return name


def _crosses_repetitions(source: Node, target: Node) -> bool:
    """True for the edge from repetition k to k+1 of the same repeat (folded away with the repetitions)."""
    for scope in target.scopes:
        if scope.kind != "repeat":
            continue
        for other in source.scopes:
            if other.kind == "repeat" and other.path == scope.path and other.index != scope.index:
                return True
    return False


def _is_skip(source: Node, target: Node) -> bool:
    """An edge into a residual's add that does not come out of the body: the skip connection."""
    if target.op != "merge" or not target.scopes or target.scopes[-1].kind != "residual":
        return False
    body_path = target.scopes[-1].path + ".body"
    return not any(scope.kind == "body" and scope.path == body_path for scope in source.scopes)


def _fold_repeats(diagram: Diagram) -> None:
    """A repeat frame around a single box becomes `×N` on the box; around a single frame, `×N` on its label."""
    for cluster in [c for c in diagram.clusters.values() if c.kind == "repeat"]:
        boxes, clusters = diagram.children(cluster.id)
        if len(boxes) == 1 and not clusters:
            boxes[0].repeat = cluster.count
            boxes[0].cluster = cluster.parent
        elif len(clusters) == 1 and not boxes:
            clusters[0].label = f"{clusters[0].label} ×{cluster.count}"
            clusters[0].parent = cluster.parent
        else:
            continue
        del diagram.clusters[cluster.id]
