"""The drawing of `specc diff --draw`: spec B with every repetition drawn, its added items in
green, its changed items in orange, and A's removed items as red dashed boxes in a frame of
their own (they have no place in B's graph).

The statuses come from `specc.summary.diff` (the command joins the two stages); this module only
colours a drawing by item path.
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from specc.draw.diagram import compiled_diagram
from specc.draw.drawing import Drawing, atomic_write, save, to_graphviz

CHANGE_STYLES = {
    "added": dict(style="rounded,filled", fillcolor="#c9f2c9", color="#2e8b57", penwidth="2.5"),
    "changed": dict(style="rounded,filled", fillcolor="#ffd8a8", color="#d97900", penwidth="2.5"),
    "removed": dict(shape="box", style="rounded,dashed,filled", fillcolor="#fde2e2", color="#c0392b",
                    fontcolor="#c0392b", penwidth="2"),
}
FRAME_STYLES = {"added": dict(color="#2e8b57", penwidth="2.5"), "changed": dict(color="#d97900", penwidth="2.5")}
LEGEND = ('<font color="#2e8b57"><b>added</b></font>   <font color="#d97900"><b>changed</b></font>   '
          '<font color="#c0392b"><b>removed</b></font>')


def changes_drawing(spec: Any, statuses: dict[str, str], removed: list[tuple[str, str]], title: str,
                    rankdir: str = "TB") -> Drawing:
    """Draw `spec` (B) with its items coloured by `statuses` ({item path: "added" | "changed"}) and
    the `removed` items of A ([(path, type)]) in a red frame.

    Raises:
        SpecError: the spec does not compile.
    """
    from specc.build.compiler import compile as compile_spec

    diagram = compiled_diagram(compile_spec(spec, device="meta"), expand=True)
    marks = {box_id: CHANGE_STYLES[_status(box_id, statuses)] for box_id in diagram.boxes
             if _status(box_id, statuses) in FRAME_STYLES}
    for cluster_id in diagram.clusters:
        status = statuses.get(cluster_id.partition(":")[2])
        if status in FRAME_STYLES:
            marks[cluster_id] = FRAME_STYLES[status]
    drawing = to_graphviz(diagram, rankdir, marks)
    drawing.graph_attr["label"] = f"<<b>{escape(title)}</b><br/>{LEGEND}>"
    if removed:
        with drawing.subgraph(name="cluster_removed") as frame:
            frame.attr(label="<<b>removed (only in A)</b>>", labeljust="l", fontname="Helvetica", fontsize="11",
                       style="rounded,dashed", color="#c0392b", fontcolor="#c0392b")
            for index, (path, kind) in enumerate(removed):
                frame.node(f"removed_{index}", label=f"<<b>{escape(path)}</b>  {escape(kind)}>",
                           **CHANGE_STYLES["removed"])
    return drawing


def _status(path: str, statuses: dict[str, str]) -> str | None:
    """The item's own status, else "added" when it is inside an added container."""
    if path in statuses:
        return statuses[path]
    inside = [prefix for prefix, status in statuses.items() if status == "added" and path.startswith(prefix + ".")]
    return "added" if inside else None


def write_changes_drawing(drawing: Drawing, path: str | Path) -> Path:
    """Write the drawing as its extension says: .svg, .png, .pdf or .dot/.gv (the source).

    Raises:
        ValueError: another extension.
        GraphvizNotFound: `dot` is missing (the source was written beside `path`).
    """
    path = Path(path)
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in ("svg", "png", "pdf", "dot", "gv"):
        raise ValueError(f"--draw {path.name}: write the changes as .svg, .png, .pdf or .dot")
    if suffix in ("dot", "gv"):
        atomic_write(path, drawing.source.encode())
        return path
    return save(drawing, path)
