"""`specc draw`: the model as a picture — the spec graph (graphviz or Mermaid) or the autograd graph.

    import specc
    specc.draw("specs/parallel_cnn.yaml")                      # displays inline in Jupyter
    specc.draw("specs/resnet18.yaml", depth=1).render("resnet18", format="png")

The spec graph is built from the compiled graph (on the meta device: no weights are allocated, so
the 7B spec draws in about a second); `specc.draw.diagram` decides what is drawn, this module how.
"""
from __future__ import annotations

import warnings
from html import escape
from pathlib import Path
from typing import Any

import graphviz

from specc.draw.diagram import BRANCH_COLORS, Box, Cluster, Diagram, build_diagram, detail_lines

RANKDIRS = ("TB", "LR", "BT", "RL")
RENDERED_FORMATS = ("svg", "png", "pdf")
SOURCE_FORMATS = ("dot", "gv")
INSTALL_HINT = ("install graphviz (apt-get install graphviz, brew install graphviz "
                "or conda install -c conda-forge graphviz)")

BOX_STYLES = {
    "input": dict(shape="box", style="rounded,filled", fillcolor="#d5e8d4", color="#82b366", penwidth="1.5"),
    "output": dict(shape="box", style="rounded,filled", fillcolor="#f8cecc", color="#b85450", penwidth="1.5"),
    "module": dict(shape="box", style="rounded,filled", fillcolor="#ffffff", color="#555555"),
    "function": dict(shape="box", style="filled", fillcolor="#fff2cc", color="#b09500"),
    "merge": dict(shape="ellipse", style="filled", fillcolor="#ffe6cc", color="#d79b00", penwidth="1.5"),
    "group": dict(shape="box3d", style="filled", fillcolor="#eeeeee", color="#555555"),
}
CLUSTER_STYLES = {
    "block": dict(style="rounded,filled", fillcolor="#f5f5f5", color="#aaaaaa"),
    "sequential": dict(style="rounded", color="#888888"),
    "parallel": dict(style="rounded,dashed", color="#555555"),
    "residual": dict(style="rounded,filled", fillcolor="#fbfbfb", color="#888888"),
    "shortcut": dict(style="rounded,dashed", color="#b85450", fontcolor="#b85450"),
    "repeat": dict(style="rounded,dashed", color="#888888"),
}


class GraphvizNotFound(graphviz.ExecutableNotFound):
    """graphviz's `dot` program is missing; the `.dot` source was written to `source_path` instead."""

    def __init__(self, source_path: Path):
        RuntimeError.__init__(self, f"graphviz's `dot` program was not found, so only the source was written "
                                    f"to {source_path}; to render it, {INSTALL_HINT}")
        self.source_path = source_path


def draw(spec_or_path: Any, *, depth: int | None = None, expand: bool = False, rankdir: str = "TB",
         autograd: bool = False, **variables: Any) -> graphviz.Digraph:
    """Draw a spec: one box per item, the tensor shape on every edge, blocks and branches as frames.

    Args:
        spec_or_path: YAML path or text, a parsed dict, or a `Spec`.
        depth: open containers this many levels deep; deeper ones become one box (None: all).
        expand: draw every repetition of repeated items instead of one box marked `×N`.
        rankdir: "TB" (top to bottom, the default), "LR", "BT" or "RL".
        autograd: draw torchviz's autograd graph of one forward pass instead (see `draw_autograd`).
        **variables: overrides of the spec's vars (`width=128`).

    Returns:
        A `graphviz.Digraph`: shown inline in Jupyter, `.render(...)` / `.pipe(...)` to save it.

    Raises:
        SpecError: the spec does not compile.
        ValueError: an unknown rankdir or a negative depth.
    """
    rankdir = _check_rankdir(rankdir)
    if autograd:
        return draw_autograd(spec_or_path, rankdir=rankdir, **variables)
    return to_graphviz(spec_diagram(spec_or_path, depth=depth, expand=expand, **variables), rankdir)


def spec_diagram(spec_or_path: Any, *, depth: int | None = None, expand: bool = False, **variables: Any) -> Diagram:
    """Compile on the meta device (no weights) and lay out the `Diagram` both writers draw."""
    from specc.build.compiler import compile as compile_spec

    compiled = compile_spec(spec_or_path, device="meta", **variables)
    diagram = build_diagram(compiled.graph, compiled.spec.display_name, depth=depth, expand=expand)
    for target, source in compiled.spec.tie.items():   # `tie:` shares a parameter: say so on the box
        owner, _, parameter = target.rpartition(".")
        if owner in diagram.boxes:
            diagram.boxes[owner].details.append(f"{parameter} tied to {source}")
    return diagram


def draw_autograd(spec_or_path: Any, *, rankdir: str = "TB", batch_size: int = 2, **variables: Any) -> graphviz.Digraph:
    """torchviz's `make_dot` of one training-mode forward pass, parameters named by their spec paths.

    Args:
        spec_or_path: YAML path or text, a parsed dict, or a `Spec`.
        rankdir: graph direction ("TB", "LR", "BT", "RL").
        batch_size: batch size of the random input (2, so batch norm can run in training mode).
        **variables: overrides of the spec's vars; shrink big models here, the weights are real.

    Returns:
        A `graphviz.Digraph` of the backward graph.

    Raises:
        SpecError: the spec does not compile.
    """
    from torchviz import make_dot

    from specc.build.compiler import compile as compile_spec

    compiled = compile_spec(spec_or_path, **variables)
    module = compiled.module.train()
    output = module(*compiled.example_inputs(batch_size))
    with warnings.catch_warnings():   # torchviz still uses distutils' LooseVersion
        warnings.simplefilter("ignore", DeprecationWarning)
        digraph = make_dot(output, params=dict(module.named_parameters()))
    digraph.graph_attr.update(rankdir=_check_rankdir(rankdir), label=f"{compiled.spec.display_name} (autograd)",
                              labelloc="t", fontname="Helvetica")
    return digraph


def to_graphviz(diagram: Diagram, rankdir: str = "TB") -> graphviz.Digraph:
    """Write a `Diagram` as a graphviz `Digraph` (clusters nested as in the spec)."""
    digraph = graphviz.Digraph(
        name=diagram.name,
        graph_attr=dict(rankdir=_check_rankdir(rankdir), label=f"<<b>{escape(diagram.name)}</b>>", labelloc="t",
                        fontname="Helvetica", fontsize="14", nodesep="0.3", ranksep="0.35", newrank="true"),
        node_attr=dict(fontname="Helvetica", fontsize="11", margin="0.12,0.05"),
        edge_attr=dict(fontname="Helvetica", fontsize="9", fontcolor="#444444", color="#555555", arrowsize="0.7"),
    )
    identifiers = {box_id: f"n{index}" for index, box_id in enumerate(diagram.boxes)}
    identifiers.update({cluster_id: f"cluster_{index}_{_dot_name(cluster_id)}"   # graphviz frames names cluster*
                        for index, cluster_id in enumerate(diagram.clusters)})
    _add_contents(digraph, diagram, None, identifiers)
    for arrow in diagram.arrows:
        style = dict(style="dashed", color="#b85450", fontcolor="#b85450", penwidth="1.3") if arrow.skip else {}
        digraph.edge(identifiers[arrow.source], identifiers[arrow.target], label=f" {arrow.shape} ", **style)
    return digraph


def write_drawing(spec_or_path: Any, output: str | Path | None = None, *, depth: int | None = None,
                  expand: bool = False, rankdir: str = "TB", autograd: bool = False, **variables: Any) -> Path:
    """Draw a spec into a file whose extension picks the format: .svg .png .pdf .dot .gv or .mmd (Mermaid).

    Args:
        spec_or_path: YAML path or text, a parsed dict, or a `Spec`.
        output: where to write; default `<spec name>.svg` (`<spec name>_autograd.svg`) next to the spec.
        depth, expand, rankdir, autograd, **variables: as for `draw`.

    Returns:
        The path written.

    Raises:
        SpecError: the spec does not compile.
        ValueError: an unknown extension, or Mermaid asked for the autograd graph.
        GraphvizNotFound: `dot` is missing; the `.dot` source was written next to `output`.
    """
    from specc.draw.mermaid import to_mermaid
    from specc.lang.spec import load

    spec = load(spec_or_path, variables)
    path = Path(output) if output is not None else default_output(spec.file, spec.display_name, autograd)
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in (*RENDERED_FORMATS, *SOURCE_FORMATS, "mmd"):
        raise ValueError(f"cannot tell the format from '{path.name}': use .svg, .png, .pdf, .dot or .mmd")
    if suffix == "mmd":
        if autograd:
            raise ValueError("Mermaid output draws the spec graph; "
                             "write the autograd graph as .svg, .png, .pdf or .dot")
        path.write_text(to_mermaid(spec_diagram(spec, depth=depth, expand=expand), _check_rankdir(rankdir)))
        return path
    digraph = draw(spec, depth=depth, expand=expand, rankdir=rankdir, autograd=autograd)
    save(digraph, path)
    return path


def save(digraph: graphviz.Digraph, path: str | Path) -> Path:
    """Render `digraph` to `path` in the format its extension names (.dot/.gv: the source, no `dot` needed).

    Raises:
        GraphvizNotFound: `dot` is missing; the source went to `path` with a `.dot` extension.
    """
    path = Path(path)
    suffix = path.suffix.lstrip(".").lower()
    if suffix in SOURCE_FORMATS:
        path.write_text(digraph.source)
        return path
    if suffix == "png" and "dpi" not in digraph.graph_attr:
        digraph = digraph.copy()
        digraph.graph_attr["dpi"] = "144"   # graphviz's 96 dpi looks blurry in docs and slides
    try:
        data = digraph.pipe(format=suffix, quiet=True)
    except graphviz.ExecutableNotFound:
        source_path = path.with_suffix(".dot")
        source_path.write_text(digraph.source)
        raise GraphvizNotFound(source_path) from None
    path.write_bytes(data)
    return path


def default_output(spec_file: str, name: str, autograd: bool = False) -> Path:
    """`<spec name>.svg` next to the spec file (in the working directory for specs given as text)."""
    folder = Path(spec_file).parent if spec_file != "<spec>" else Path.cwd()
    return folder / f"{name}{'_autograd' if autograd else ''}.svg"


def _check_rankdir(rankdir: str) -> str:
    if rankdir.upper() not in RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(RANKDIRS)}, got '{rankdir}'")
    return rankdir.upper()


def _add_contents(graph: graphviz.Digraph, diagram: Diagram, cluster_id: str | None, identifiers: dict) -> None:
    """Add the boxes directly in `cluster_id`, then its child clusters, recursively."""
    boxes, clusters = diagram.children(cluster_id)
    for box in boxes:
        style = dict(BOX_STYLES[box.kind], peripheries="2") if box.repeat else BOX_STYLES[box.kind]
        graph.node(identifiers[box.id], label=box_label(box), tooltip=box.tooltip, **style)
    for cluster in clusters:
        with graph.subgraph(name=identifiers[cluster.id]) as subgraph:
            subgraph.attr(label=f"<<b>{escape(cluster.label)}</b>>", labeljust="l", fontsize="11",
                          fontname="Helvetica", margin="10", **_cluster_style(cluster))
            _add_contents(subgraph, diagram, cluster.id, identifiers)


def box_label(box: Box) -> str:
    """An HTML-like graphviz label: bold name, layer type and `×N` on one line, then the key arguments."""
    title = f"<b>{escape(box.title)}</b>"
    if box.subtitle:
        title += f"  {escape(box.subtitle)}"
    if box.repeat:
        title += f'  <font color="#b85450"><b>×{box.repeat}</b></font>'
    lines = [title]
    lines += [f'<font point-size="9" color="#444444">{escape(line)}</font>' for line in detail_lines(box.details)]
    return "<" + "<br/>".join(lines) + ">"


def _cluster_style(cluster: Cluster) -> dict:
    if cluster.kind == "branch":
        fill, border = BRANCH_COLORS[cluster.branch_index % len(BRANCH_COLORS)]
        return dict(style="rounded,filled", fillcolor=fill, color=border, penwidth="1.5")
    return CLUSTER_STYLES.get(cluster.kind, CLUSTER_STYLES["sequential"])


def _dot_name(text: str) -> str:
    return "".join(character if character.isalnum() else "_" for character in text)
