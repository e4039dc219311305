"""The spec graph as a Mermaid flowchart (`specc draw spec.yaml -o model.mmd`).

Mermaid renders in GitHub/GitLab markdown (a ```mermaid fence) and many editors, with no graphviz
installed. It draws the same `Diagram` as the graphviz writer: frames become subgraphs, each
parallel branch gets its own colour, merges are hexagons, and every edge carries its tensor shape.
"""
from __future__ import annotations

import json
import re

from specc.draw.diagram import BRANCH_COLORS, Box, Diagram, detail_lines

# Mermaid node shapes: (opening, closing) around the quoted label.
SHAPES = {"input": ("([", "])"), "output": ("([", "])"), "module": ("[", "]"), "function": ("[/", "/]"),
          "merge": ("{{", "}}"), "group": ("[[", "]]")}
CLASSES = {
    "input": "fill:#d5e8d4,stroke:#82b366,stroke-width:2px",
    "output": "fill:#f8cecc,stroke:#b85450,stroke-width:2px",
    "module": "fill:#ffffff,stroke:#555555",
    "function": "fill:#fff2cc,stroke:#b09500",
    "merge": "fill:#ffe6cc,stroke:#d79b00,stroke-width:2px",
    "group": "fill:#eeeeee,stroke:#555555",
}
FRAME_STYLES = {"block": "fill:#f5f5f5,stroke:#aaaaaa", "residual": "fill:#fbfbfb,stroke:#888888",
                "shortcut": "fill:none,stroke:#b85450,stroke-dasharray:5 3",
                "parallel": "fill:none,stroke:#555555,stroke-dasharray:5 3",
                "repeat": "fill:none,stroke:#888888,stroke-dasharray:5 3"}


def to_mermaid(diagram: Diagram, rankdir: str = "TB") -> str:
    """Write a `Diagram` as Mermaid flowchart text.

    Args:
        diagram: from `specc.draw.diagram.build_diagram` (or `specc.draw.drawing.spec_diagram`).
        rankdir: "TB", "LR", "BT" or "RL" (Mermaid's flowchart directions).

    Returns:
        The flowchart, starting with a `title` header; paste it into a ```mermaid fence.
    """
    identifiers = {box_id: f"n{index}" for index, box_id in enumerate(diagram.boxes)}
    identifiers.update({cluster_id: f"c{index}" for index, cluster_id in enumerate(diagram.clusters)})
    lines = ["---", f"title: {_yaml_title(diagram.name)}", "---", f"flowchart {rankdir}"]
    _add_contents(lines, diagram, None, identifiers, indent=1)
    for arrow in diagram.arrows:
        link = "-.->" if arrow.skip else "-->"
        label = f'|"{_escape(arrow.shape)}"|' if arrow.shape else ""
        lines.append(f"    {identifiers[arrow.source]} {link}{label} {identifiers[arrow.target]}")
    lines += [f"    classDef {kind} {style}" for kind, style in CLASSES.items()]
    for kind in CLASSES:
        members = [identifiers[box.id] for box in diagram.boxes.values() if box.kind == kind]
        if members:
            lines.append(f"    class {','.join(members)} {kind}")
    lines += [f"    style {identifiers[cluster.id]} {_frame_style(cluster.kind, cluster.branch_index)}"
              for cluster in diagram.clusters.values()]
    return "\n".join(lines) + "\n"


def _add_contents(lines: list[str], diagram: Diagram, cluster_id: str | None, identifiers: dict, indent: int) -> None:
    pad = "    " * indent
    boxes, clusters = diagram.children(cluster_id)
    for box in boxes:
        opening, closing = SHAPES[box.kind]
        lines.append(f'{pad}{identifiers[box.id]}{opening}"{_label(box)}"{closing}')
    for cluster in clusters:
        lines.append(f'{pad}subgraph {identifiers[cluster.id]}["{_escape(cluster.label)}"]')
        _add_contents(lines, diagram, cluster.id, identifiers, indent + 1)
        lines.append(f"{pad}end")


def _label(box: Box) -> str:
    title = f"<b>{_escape(box.title)}</b>" + (f" {_escape(box.subtitle)}" if box.subtitle else "")
    lines = [title + (f" <b>×{box.repeat}</b>" if box.repeat else "")]
    lines += [f"<small>{_escape(line)}</small>" for line in detail_lines(box.details)]
    return "<br/>".join(lines)


def _frame_style(kind: str, branch_index: int) -> str:
    if kind == "branch":
        fill, border = BRANCH_COLORS[branch_index % len(BRANCH_COLORS)]
        return f"fill:{fill},stroke:{border},stroke-width:2px"
    return FRAME_STYLES.get(kind, "fill:none,stroke:#888888")


def _escape(text: str) -> str:
    """Mermaid's entity codes for the characters that end or confuse a quoted label; a line break
    (which would end the statement) as a space."""
    text = _one_line(text)
    return text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _yaml_title(name: str) -> str:
    """The name as a YAML value: plain when it is a plain word (resnet18, my-net v2), otherwise a
    double-quoted string, so no newline, `---` or `: ` in a name can end or break the front matter."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\- ]*", name) and not name.endswith(" "):
        return name
    return json.dumps(_one_line(name), ensure_ascii=False)


def _one_line(text: str) -> str:
    """Control characters and Unicode line separators as spaces."""
    return "".join(" " if ord(character) < 32 or 127 <= ord(character) < 160 or character in "\u2028\u2029"
                   else character for character in str(text))
