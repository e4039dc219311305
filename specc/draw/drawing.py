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

from specc.draw.diagram import BRANCH_COLORS, Box, Cluster, Diagram, compiled_diagram, detail_lines

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


FORMATS = ("svg", "png", "pdf", "dot", "gv", "mmd", "html")


class Drawing(graphviz.Digraph):
    """The graphviz drawing of a spec (shown inline in Jupyter), which can also become the HTML viewer."""

    source_spec: Any = None          # what `to_html` compiles again: (spec, depth, expand, vars)

    def to_html(self) -> str:
        """The interactive viewer of the same spec as one self-contained HTML page (see docs/draw.md).

        Raises:
            ValueError: the drawing is not of a spec (an autograd graph has no viewer).
        """
        from specc.draw.html import spec_html

        if self.source_spec is None:
            raise ValueError("only a spec drawing has an HTML viewer (not the autograd graph)")
        spec, depth, expand, variables = self.source_spec
        across = self.graph_attr.get("rankdir") == "LR"   # the viewer lays out TB or LR
        return spec_html(spec, depth=depth, expand=expand, rankdir="LR" if across else "TB", **variables)

    def to_iframe(self, height: int = 600) -> str:
        """The viewer inside an `<iframe srcdoc>`: its page, script and styles stay in their own document,
        so embedding it in Jupyter or VS Code leaves the notebook page alone."""
        return (f'<iframe srcdoc="{escape(self.to_html(), quote=True)}" title="specc viewer" '
                f'style="width:100%;height:{int(height)}px;border:1px solid #ddd" '
                'sandbox="allow-scripts allow-downloads"></iframe>')

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict[str, str]:
        """Jupyter's display: the interactive viewer (the autograd graph keeps graphviz's SVG)."""
        if self.source_spec is None:
            return super()._repr_mimebundle_(include, exclude, **kwargs)
        return {"text/html": self.to_iframe(), "text/plain": f"<specc drawing of {self.name}>"}

    def _repr_html_(self) -> str:
        return self.to_iframe()


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
        A `Drawing` (a `graphviz.Digraph`): shown inline in Jupyter, `.render(...)` / `.pipe(...)` to
        save it, `.to_html()` for the interactive viewer. The autograd graph is a plain `Digraph`.

    Raises:
        SpecError: the spec does not compile.
        ValueError: an unknown rankdir or a negative depth.
    """
    rankdir = _check_rankdir(rankdir)
    if autograd:
        return draw_autograd(spec_or_path, rankdir=rankdir, **variables)
    drawing = to_graphviz(spec_diagram(spec_or_path, depth=depth, expand=expand, **variables), rankdir)
    drawing.source_spec = (spec_or_path, depth, expand, variables)
    return drawing


def spec_diagram(spec_or_path: Any, *, depth: int | None = None, expand: bool = False, **variables: Any) -> Diagram:
    """Compile on the meta device (no weights) and lay out the `Diagram` both writers draw."""
    from specc.build.compiler import compile as compile_spec

    compiled = compile_spec(spec_or_path, device="meta", train_mistakes="warn", **variables)
    return compiled_diagram(compiled, depth=depth, expand=expand)


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

    compiled = compile_spec(spec_or_path, train_mistakes="warn", **variables)
    module = compiled.module.train()
    output = module(*compiled.example_inputs(batch_size))
    with warnings.catch_warnings():   # torchviz still uses distutils' LooseVersion
        warnings.simplefilter("ignore", DeprecationWarning)
        digraph = make_dot(output, params=dict(module.named_parameters()))
    digraph.graph_attr.update(rankdir=_check_rankdir(rankdir), label=f"{compiled.spec.display_name} (autograd)",
                              labelloc="t", fontname="Helvetica")
    return digraph


def to_graphviz(diagram: Diagram, rankdir: str = "TB", marks: dict[str, dict] | None = None) -> Drawing:
    """Write a `Diagram` as a graphviz `Digraph` (clusters nested as in the spec).

    `marks` restyles some boxes and clusters (by id) with graphviz attributes (`specc diff --draw`).
    """
    digraph = Drawing(
        name=diagram.name,
        graph_attr=dict(rankdir=_check_rankdir(rankdir), label=f"<<b>{escape(diagram.name)}</b>>", labelloc="t",
                        fontname="Helvetica", fontsize="14", nodesep="0.3", ranksep="0.35", newrank="true"),
        node_attr=dict(fontname="Helvetica", fontsize="11", margin="0.12,0.05"),
        edge_attr=dict(fontname="Helvetica", fontsize="9", fontcolor="#444444", color="#555555", arrowsize="0.7"),
    )
    identifiers = {box_id: f"n{index}" for index, box_id in enumerate(diagram.boxes)}
    identifiers.update({cluster_id: f"cluster_{index}_{_dot_name(cluster_id)}"   # graphviz frames names cluster*
                        for index, cluster_id in enumerate(diagram.clusters)})
    _add_contents(digraph, diagram, None, identifiers, marks or {})
    for arrow in diagram.arrows:
        style = dict(style="dashed", color="#b85450", fontcolor="#b85450", penwidth="1.3") if arrow.skip else {}
        digraph.edge(identifiers[arrow.source], identifiers[arrow.target], label=f" {arrow.shape} ", **style)
    return digraph


def write_drawing(spec_or_path: Any, output: str | Path | None = None, *, depth: int | None = None,
                  expand: bool = False, rankdir: str = "TB", autograd: bool = False,
                  output_format: str | None = None, **variables: Any) -> Path:
    """Draw a spec into a file whose extension (or `output_format`) picks the format: one of FORMATS.

    Args:
        spec_or_path: YAML path or text, a parsed dict, or a `Spec`.
        output: where to write; default `default_output(...)`.
        depth, expand, rankdir, autograd, **variables: as for `draw`.
        output_format: svg, png, pdf, dot, gv, mmd (Mermaid) or html (the viewer); default: the
            extension of `output`, or svg.

    Returns:
        The path written.

    Raises:
        SpecError: the spec does not compile.
        ValueError: an unknown format, or Mermaid or HTML asked for the autograd graph.
        GraphvizNotFound: `dot` is missing; the `.dot` source was written next to `output`.
    """
    from specc.build.compiler import load_model_spec

    spec = load_model_spec(spec_or_path, variables, train_mistakes="warn")   # drawings never train
    suffix = output_format or (Path(output).suffix.lstrip(".").lower() if output is not None else "svg")
    path = Path(output) if output is not None else default_output(spec.file, spec.display_name, autograd, suffix)
    if suffix in ("mmd", "html") or suffix in SOURCE_FORMATS:
        atomic_write(path, drawing_bytes(spec, suffix, depth=depth, expand=expand, rankdir=rankdir, autograd=autograd))
        return path
    _check_format(suffix, path.name)
    save(draw(spec, depth=depth, expand=expand, rankdir=rankdir, autograd=autograd), path)
    return path


def drawing_bytes(spec_or_path: Any, output_format: str, *, depth: int | None = None, expand: bool = False,
                  rankdir: str = "TB", autograd: bool = False, **variables: Any) -> bytes:
    """The drawing in `output_format` (one of FORMATS) as bytes, for `-o -` (stdout).

    Raises:
        SpecError, ValueError, GraphvizNotFound: as for `write_drawing` (no source is written).
    """
    _check_format(output_format, f"--format {output_format}")
    if output_format in ("mmd", "html") and autograd:
        raise ValueError(f"{'Mermaid' if output_format == 'mmd' else 'HTML'} output draws the spec graph; "
                         "write the autograd graph as .svg, .png, .pdf or .dot")
    if output_format == "html":
        from specc.draw.html import spec_html

        return spec_html(spec_or_path, depth=depth, expand=expand, rankdir=_check_rankdir(rankdir), **variables).encode()
    if output_format == "mmd":
        from specc.draw.mermaid import to_mermaid

        return to_mermaid(spec_diagram(spec_or_path, depth=depth, expand=expand, **variables),
                          _check_rankdir(rankdir)).encode()
    digraph = draw(spec_or_path, depth=depth, expand=expand, rankdir=rankdir, autograd=autograd, **variables)
    if output_format in SOURCE_FORMATS:
        return digraph.source.encode()
    try:
        return _png_dpi(digraph, output_format).pipe(format=output_format, quiet=True)
    except graphviz.ExecutableNotFound:
        raise GraphvizNotFound(Path("-")) from None


def _check_format(output_format: str, what: str) -> None:
    if output_format not in FORMATS:
        raise ValueError(f"cannot tell the format from '{what}': use one of {', '.join(FORMATS)}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file beside `path`, so a failure never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def save(digraph: graphviz.Digraph, path: str | Path) -> Path:
    """Render `digraph` to `path` in the format its extension names (.dot/.gv: the source, no `dot` needed).

    Raises:
        GraphvizNotFound: `dot` is missing; the source went to `path` with a `.dot` extension.
    """
    path = Path(path)
    suffix = path.suffix.lstrip(".").lower()
    if suffix in SOURCE_FORMATS:
        atomic_write(path, digraph.source.encode())
        return path
    try:
        data = _png_dpi(digraph, suffix).pipe(format=suffix, quiet=True)
    except graphviz.ExecutableNotFound:
        source_path = path.with_suffix(".dot")
        source_path.write_text(digraph.source)
        raise GraphvizNotFound(source_path) from None
    atomic_write(path, data)
    return path


def _png_dpi(digraph: graphviz.Digraph, output_format: str) -> graphviz.Digraph:
    if output_format != "png" or "dpi" in digraph.graph_attr:
        return digraph
    digraph = digraph.copy()
    digraph.graph_attr["dpi"] = "144"   # graphviz's 96 dpi looks blurry in docs and slides
    return digraph


def default_output(spec_file: str, name: str, autograd: bool = False, output_format: str = "svg") -> Path:
    """`<spec name>.<format>` next to the spec file (in the working directory for specs given as text).

    When that folder is inside a git work tree, the drawing would land in the user's sources: it
    goes to the working directory instead if that is outside any git work tree, else to
    `~/.cache/specc/drawings/` (the command prints where).
    """
    folder = Path(spec_file).parent if spec_file != "<spec>" else Path.cwd()
    file_name = f"{name}{'_autograd' if autograd else ''}.{output_format}"
    repository = _git_root(folder)
    if repository is not None:
        folder = Path.cwd() if _git_root(Path.cwd()) is None else _cache_folder()
        folder.mkdir(parents=True, exist_ok=True)
    return folder / file_name


def _git_root(folder: Path) -> Path | None:
    for candidate in [folder.resolve(), *folder.resolve().parents]:
        if (candidate / ".git").exists():
            return candidate
    return None


def _cache_folder() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "specc" / "drawings"


def _check_rankdir(rankdir: str) -> str:
    if rankdir.upper() not in RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(RANKDIRS)}, got '{rankdir}'")
    return rankdir.upper()


def _add_contents(graph: graphviz.Digraph, diagram: Diagram, cluster_id: str | None, identifiers: dict,
                  marks: dict[str, dict]) -> None:
    """Add the boxes directly in `cluster_id`, then its child clusters, recursively."""
    boxes, clusters = diagram.children(cluster_id)
    for box in boxes:
        style = dict(BOX_STYLES[box.kind], peripheries="2") if box.repeat else BOX_STYLES[box.kind]
        graph.node(identifiers[box.id], label=box_label(box), tooltip=box.tooltip, **{**style, **marks.get(box.id, {})})
    for cluster in clusters:
        with graph.subgraph(name=identifiers[cluster.id]) as subgraph:
            subgraph.attr(label=f"<<b>{escape(cluster.label)}</b>>", labeljust="l", fontsize="11",
                          fontname="Helvetica", margin="10", **{**_cluster_style(cluster), **marks.get(cluster.id, {})})
            _add_contents(subgraph, diagram, cluster.id, identifiers, marks)


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
