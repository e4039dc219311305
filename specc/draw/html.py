"""The interactive HTML viewer: one self-contained file (`specc draw spec.yaml -o model.html`).

The page carries the drawing as JSON plus a small viewer of our own (specc/draw/viewer/viewer.js
and viewer.css, inlined): it lays the boxes out itself, so frames can collapse and expand in the
browser with no server, no network and no graphviz. See docs/draw.md.
"""
from __future__ import annotations

import json
from html import escape
from importlib import resources
from typing import Any

from specc.build.graph import Graph, Node
from specc.draw.diagram import (BRANCH_COLORS, CONTAINERS, Diagram, argument_texts, compiled_diagram, detail_lines,
                                 shape_text, value_text)



def spec_html(spec_or_path: Any, *, depth: int | None = None, expand: bool = False,
              changes: dict[str, str] | None = None, removed: list[str] | None = None, rankdir: str = "TB",
              **variables: Any) -> str:
    """Compile a spec on the meta device and return the viewer page for it.

    Args:
        spec_or_path: YAML path or text, a parsed dict, or a `Spec`.
        depth, expand: which frames start collapsed (see `html_document`).
        changes, removed: diff colouring (see `html_document`).
        rankdir: "TB" (top to bottom) or "LR" (left to right).
        **variables: overrides of the spec's vars.

    Returns:
        The HTML text.

    Raises:
        SpecError: the spec does not compile.
    """
    from specc.build.compiler import compile as compile_spec
    from specc.draw.figures import node_figures

    compiled = compile_spec(spec_or_path, device="meta", batch_size=1, train_mistakes="warn", **variables)
    diagram = compiled_diagram(compiled, expand=True)
    figures = node_figures(compiled.graph, compiled.module)
    for node in compiled.graph.nodes:   # every weight of the layer, for the details panel
        if node.op == "module" and node.name in figures:
            layer = compiled.module.get_submodule(node.shared_with or node.name)
            figures[node.name]["weights"] = weight_list(layer)
            figures[node.name]["inside"] = submodule_list(layer)
    return html_document(diagram, compiled.graph, figures, depth=depth, expand=expand, changes=changes,
                         removed=removed, rankdir=rankdir)


def html_document(diagram: Diagram, graph: Graph, figures: dict[str, dict[str, int]], *,
                  depth: int | None = None, expand: bool = False, changes: dict[str, str] | None = None,
                  removed: list[str] | None = None, title: str | None = None, rankdir: str = "TB") -> str:
    """The whole page, with the viewer's JS and CSS inline.

    Args:
        diagram: built with `expand=True` and no depth (the browser folds frames itself).
        graph: the compiled graph the diagram was built from (kwargs, locations).
        figures: per-node params and FLOPs (`specc.draw.figures.node_figures`).
        depth: frames nested deeper than this start collapsed (None: all open).
        expand: start with every repetition open; otherwise each `repeat` frame starts collapsed.
        changes: `{box or cluster id: "added" | "changed"}` to colour (`specc diff --draw`).
        removed: item paths that are gone, listed beside the drawing.
        title: the page title (default: the diagram's name).
        rankdir: "TB" or "LR" (the viewer lays ranks out as rows or as columns).

    Returns:
        The HTML text.

    Raises:
        ValueError: another rankdir (BT and RL have no viewer layout).
    """
    if rankdir not in ("TB", "LR"):
        raise ValueError(f"the HTML viewer lays out TB or LR, not {rankdir}")
    data = viewer_data(diagram, graph, figures, depth=depth, expand=expand)
    data["changes"] = changes or {}
    data["removed"] = removed or []
    data["rankdir"] = rankdir
    payload = script_json(data)
    page = title or diagram.name
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(page)} · specc</title>\n<style>{_asset('viewer.css')}</style></head>\n<body>\n"
            f"<script type=\"application/json\" id=\"specc-data\">{payload}</script>\n"
            + "".join(f"<script>{_asset(name)}</script>\n" for name in ("viewer_edges.js", "viewer.js", "viewer_tools.js"))
            + "</body></html>\n")


def viewer_data(diagram: Diagram, graph: Graph, figures: dict[str, dict[str, int]], *,
                depth: int | None = None, expand: bool = False) -> dict[str, Any]:
    """The JSON the viewer draws: boxes, frames, arrows and which frames start collapsed."""
    nodes = {node.name: node for node in graph.nodes}
    boxes = [_box_record(box, nodes.get(box.id), figures.get(box.id, {})) for box in diagram.boxes.values()]
    clusters = [{"id": cluster.id, "kind": cluster.kind, "label": cluster.label, "parent": cluster.parent,
                 "count": cluster.count, "color": _branch_color(cluster)} for cluster in diagram.clusters.values()]
    _add_cluster_figures(clusters, boxes, diagram, graph)
    arrows = [{"s": arrow.source, "t": arrow.target, "shape": arrow.shape, "skip": arrow.skip}
              for arrow in diagram.arrows]
    return {"name": diagram.name, "boxes": boxes, "clusters": clusters, "arrows": arrows,
            "collapsed": _initially_collapsed(diagram, depth, expand)}


def weight_list(layer: Any) -> list[list[str]]:
    """`[[name, "64×3×7×7", "float32"], ...]`: the layer's parameters and buffers (at most 64: the
    page stays small for a layer that holds many)."""
    tensors = [*layer.named_parameters(), *layer.named_buffers()]
    return [[name, "×".join(map(str, tensor.shape)) or "scalar", str(tensor.dtype).removeprefix("torch.")]
            for name, tensor in tensors[:64]]


def submodule_list(layer: Any) -> list[list[str]]:
    """`[["c_attn", "Linear", "weight 2304×768, bias 2304"], ...]`: what a layer holds inside (a specc
    layer such as CausalSelfAttention, SwiGLU or MoE), every submodule with its own weights' shapes, so
    the details panel can open it as torchview does; at most 64 rows, empty for a leaf layer."""
    rows = []
    for name, module in list(layer.named_modules())[1:65]:
        shapes = ", ".join(f"{weight} {'×'.join(map(str, tensor.shape)) or 'scalar'}"
                           for weight, tensor in module.named_parameters(recurse=False))
        rows.append([name, type(module).__name__, shapes])
    return rows


def _box_record(box, node: Node | None, figures: dict[str, int]) -> dict[str, Any]:
    record = {"id": box.id, "kind": box.kind, "title": box.title, "subtitle": box.subtitle,
              "details": detail_lines(box.details), "cluster": box.cluster, "tooltip": box.tooltip}
    if node is None:
        return record
    record.update(type=node.target, path=node.name, shape=shape_text(node), dtype=node.dtype,
                  location=str(node.location) if node.location else "",
                  kwargs={key: value_text(value) for key, value in node.args.items()},
                  inferred=list(node.inferred), written=argument_texts(node),
                  params=figures.get("params", 0), shared_params=figures.get("shared_params", 0),
                  flops=figures.get("flops", 0), shared_with=node.shared_with or "",
                  inputs=list(node.inputs), weights=figures.get("weights", []),
                  inside=figures.get("inside", []))
    return record


def _add_cluster_figures(clusters: list[dict], boxes: list[dict], diagram: Diagram, graph: Graph) -> None:
    """A frame's params, FLOPs, layer count and spec location: the sums over what is inside it."""
    by_id = {cluster["id"]: cluster for cluster in clusters}
    for cluster in clusters:
        cluster.update(params=0, flops=0, layers=0, location="")
    for box in boxes:
        parent = box["cluster"]
        while parent is not None:
            cluster = by_id[parent]
            cluster["params"] += box.get("params", 0)
            cluster["flops"] += box.get("flops", 0)
            cluster["layers"] += box["kind"] == "module"
            parent = cluster["parent"]
    scopes = {f"{scope.kind}:{scope.path}": scope for node in graph.nodes for scope in node.scopes}
    for cluster in clusters:
        scope = scopes.get(cluster["id"])
        if scope is not None:
            cluster["path"] = scope.path
            if scope.kind == "repeat":   # "h ×12" says which repeat a closed frame is
                cluster["label"] = f"{scope.path.rpartition('.')[2]} {scope.label}"
            elif scope.kind == "block" and scope.path.rpartition(".")[2].isdigit():   # one repetition: "h.3"
                cluster["label"] = f"{scope.path}: {scope.label.rpartition(': ')[2]}"
            cluster["location"] = str(scope.location) if scope.location else ""


def _initially_collapsed(diagram: Diagram, depth: int | None, expand: bool) -> list[str]:
    """Frames deeper than `depth` (containers counted as `--depth` counts them) and, unless `expand`,
    every repeat frame; a frame inside a collapsed one needs no entry."""
    collapsed = []
    for cluster in diagram.clusters.values():
        level, parent = 0, cluster.parent
        while parent is not None:
            level += diagram.clusters[parent].kind in CONTAINERS
            parent = diagram.clusters[parent].parent
        if (not expand and cluster.kind == "repeat") or (
                depth is not None and cluster.kind in CONTAINERS and level >= depth):
            collapsed.append(cluster.id)
    return collapsed


def _branch_color(cluster) -> list[str] | None:
    return list(BRANCH_COLORS[cluster.branch_index % len(BRANCH_COLORS)]) if cluster.kind == "branch" else None


def _asset(name: str) -> str:
    return resources.files("specc.draw").joinpath("viewer", name).read_text(encoding="utf-8")


def script_json(data: Any) -> str:
    """`data` as JSON to embed in a <script> element: every `<`, `>` and `&` as a \\u escape (the
    same string to JSON.parse), so no text from a spec can close the element (`</script>`) or
    open an HTML comment (`<!--<script>`, which swallows the rest of the page)."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
