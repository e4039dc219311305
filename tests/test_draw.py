"""`specc draw`: svg/png/pdf/dot/Mermaid output, clusters and merges, folding, autograd, missing `dot`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import graphviz
import pytest
import yaml
from typer.testing import CliRunner

from specc.cli import app
from specc.build.compiler import compile as compile_spec
from specc.draw.diagram import build_diagram
from specc.draw.drawing import GraphvizNotFound, draw, spec_diagram, write_drawing
from system_tools import require_tool
from specc.draw.mermaid import to_mermaid

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
SVG = "{http://www.w3.org/2000/svg}"

REPEATED_BLOCK = """
name: repeated
inputs: {x: {shape: [4]}}
blocks:
  mlp:
    args: {width: null}
    layers: [Linear: {out_features: $width}, ReLU]
layers:
  - mlp: {width: $(8 + i)}     # widths 8, 9, 10: the folded box must show the last one leaving
    repeat: 3
    name: stack
  - Tanh: {}
    repeat: 4
  - Linear: {out_features: 2}
    name: head
"""


def svg_parts(svg: str) -> dict[str, list]:
    """Nodes, clusters and edges of a graphviz svg, each as (title, all text inside, element)."""
    root = ElementTree.fromstring(svg)
    parts = {"node": [], "cluster": [], "edge": []}
    for group in root.iter(f"{SVG}g"):
        kind = group.get("class")
        if kind in parts:
            texts = " ".join(text.strip() for element in group.iter(f"{SVG}text") for text in element.itertext())
            parts[kind].append((group.findtext(f"{SVG}title"), texts, group))
    return parts


def first_repetition(node) -> bool:
    return all(scope.index in (None, 0) for scope in node.scopes)


def bounds(group) -> tuple[float, float, float, float]:
    """min x, max x, min y, max y of a cluster's frame."""
    path = next(element for element in group if element.tag in (f"{SVG}path", f"{SVG}polygon"))
    numbers = [float(value) for value in re.findall(r"-?\d+(?:\.\d+)?", path.get("d") or path.get("points"))]
    xs, ys = numbers[0::2], numbers[1::2]
    return min(xs), max(xs), min(ys), max(ys)


# ----- every example spec ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec_path", SPECS, ids=[path.stem for path in SPECS])
def test_every_example_spec_draws_as_svg(spec_path):
    graph = compile_spec(spec_path, device="meta").graph
    parts = svg_parts(draw(spec_path).pipe(format="svg").decode())
    node_text = " | ".join(text for _, text, _ in parts["node"])
    cluster_text = [text for _, text, _ in parts["cluster"]]
    for node in filter(first_repetition, graph.nodes):
        expected = node.target if node.op == "merge" else node.label
        assert expected in node_text, f"{node.name}: '{expected}' not drawn"
        if node.op == "merge":
            for branch in node.meta["branches"] if node.scopes[-1].kind == "parallel" else []:
                frames = [text for text in cluster_text if text.startswith(f"branch {branch}")]
                assert frames, f"no frame for branch {branch}"
    assert node_text.count("output") >= len(graph.outputs)
    residuals = {scope.path for node in filter(first_repetition, graph.nodes) for scope in node.scopes
                 if scope.kind == "residual"}
    dashed = [group for _, _, group in parts["edge"] if 'stroke-dasharray' in ElementTree.tostring(group, "unicode")]
    assert len(dashed) == len(residuals), "one dashed skip edge per residual"


def test_parallel_branches_are_side_by_side_frames_with_the_merge_below():
    parts = svg_parts(draw(ROOT / "specs/parallel_cnn.yaml").pipe(format="svg").decode())
    frames = {text.split()[1]: group for _, text, group in parts["cluster"] if text.startswith("branch ")}
    assert set(frames) == {"a", "b"}
    a, b = bounds(frames["a"]), bounds(frames["b"])
    assert a[1] < b[0] or b[1] < a[0], "branch frames overlap horizontally"
    assert a[2] < b[3] and b[2] < a[3], "branch frames are not on the same level"
    merge = next(group for _, text, group in parts["node"] if text == "cat dim=1")
    merge_y = float(next(merge.iter(f"{SVG}ellipse")).get("cy"))
    assert merge_y > max(a[3], b[3]), "the merge sits below both branches"   # svg y grows downwards
    edge_labels = [text for _, text, _ in parts["edge"]]
    assert edge_labels.count("B×3×32×32") == 2 and edge_labels.count("B×6×32×32") == 2
    assert "B×12×32×32" in edge_labels


# ----- what is drawn ---------------------------------------------------------------------------------
def test_repeats_fold_to_one_frame_or_box_marked_with_the_count():
    diagram = spec_diagram(REPEATED_BLOCK)
    assert [cluster.label for cluster in diagram.clusters.values()] == ["stack: mlp ×3"]
    tanh = next(box for box in diagram.boxes.values() if box.title == "Tanh")
    assert tanh.repeat == 4 and tanh.cluster is None
    shapes = [(diagram.boxes[a.source].title, diagram.boxes[a.target].title, a.shape) for a in diagram.arrows]
    assert ("x", "Linear", "B×4") in shapes
    assert ("ReLU", "Tanh", "B×10") in shapes   # the last repetition's output leaves the fold
    assert not any(a.target == "stack.0.0" and a.source != "x" for a in diagram.arrows), "no edge back into the fold"
    assert len([box for box in diagram.boxes.values() if box.kind == "module"]) == 4


def test_expand_draws_every_repetition():
    diagram = spec_diagram(REPEATED_BLOCK, expand=True)
    labels = sorted(cluster.label for cluster in diagram.clusters.values())
    assert labels == ["repeat ×3", "repeat ×4", "stack: mlp", "stack: mlp", "stack: mlp"]
    assert sum(box.title == "Tanh" for box in diagram.boxes.values()) == 4
    assert len(diagram.arrows) == len(diagram.boxes) - 1   # one chain


def test_depth_collapses_deeper_containers_into_one_box():
    graph = compile_spec(ROOT / "specs/resnet18.yaml", device="meta").graph
    top = build_diagram(graph, "resnet18", depth=0)
    titles = [box.title for box in top.boxes.values()]
    assert titles == ["image", "conv1", "bn1", "ReLU", "maxpool", "layer1: basic_block", "layer2", "layer3",
                      "layer4", "avgpool", "Flatten", "fc", "output"]
    assert top.boxes["group:layer1.0"].repeat == 2 and not top.clusters
    assert top.boxes["group:layer2"].subtitle == "sequential · 14 layers"
    one_level = build_diagram(graph, "resnet18", depth=1)
    frames = {cluster.label for cluster in one_level.clusters.values()}
    assert frames == {"layer1: basic_block ×2", "layer2", "layer3", "layer4"}
    assert not any(arrow.skip for arrow in one_level.arrows)   # residuals are closed boxes at this depth
    with pytest.raises(ValueError, match="depth"):
        build_diagram(graph, "resnet18", depth=-1)


def test_shared_module_is_drawn_once_with_an_edge_per_use():
    spec = """
inputs: {left: {shape: [8]}, right: {shape: [8]}}
layers:
  - Linear: [4]
    name: encoder
  - Linear: [4]
    share: encoder
    from: right
  - sub: {}
    from: [encoder, 1]
  - Linear: [4]
    share: encoder
    from: left
"""
    diagram = spec_diagram(spec)
    assert sum(box.kind == "module" for box in diagram.boxes.values()) == 1
    assert diagram.boxes["encoder"].subtitle == "Linear · shared, used 3×"
    into_encoder = sorted(a.source for a in diagram.arrows if a.target == "encoder")
    assert into_encoder == ["left", "right"]
    assert sum(a.source == "encoder" and a.target == "2" for a in diagram.arrows) == 2


def test_named_dims_show_on_edges():
    spec = "inputs: {tokens: {shape: [seq], dtype: long}}\nvars: {seq: 16}\n" \
           "layers: [Embedding: [100, 8], Linear: [4]]\n"
    assert [arrow.shape for arrow in spec_diagram(spec).arrows] == ["B×seq", "B×seq×8", "B×seq×4"]


def test_labels_show_indexes_as_written_and_tied_weights():
    spec = """
inputs: {tokens: {shape: [6], dtype: long}}
layers:
  - Embedding: [50, 8]
    name: embed
  - getitem: "[:, -1]"
  - Linear: {out_features: 50, bias: false}
    name: head
tie: {head.weight: embed.weight}
"""
    boxes = spec_diagram(spec).boxes
    assert boxes["1"].details == ["index=[:, -1]"]
    assert boxes["head"].details == ["out_features=50", "bias=False", "weight tied to embed.weight"]


def test_rankdir_and_labels():
    digraph = draw(ROOT / "specs/parallel_cnn.yaml", rankdir="lr")
    assert "rankdir=LR" in digraph.source and "out_channels=6 kernel_size=5 padding=2" in digraph.source
    with pytest.raises(ValueError, match="rankdir"):
        draw(ROOT / "specs/parallel_cnn.yaml", rankdir="sideways")


def test_thousand_item_spec_draws_every_item_and_folds_repeats(tmp_path):
    layers = [item for _ in range(500) for item in ({"Linear": {"out_features": 8}}, "ReLU")]
    long_spec = tmp_path / "long.yaml"
    long_spec.write_text(yaml.safe_dump({"name": "long", "inputs": {"x": {"shape": [8]}}, "layers": layers}))
    parts = svg_parts(draw(long_spec).pipe(format="svg").decode())
    assert len(parts["node"]) == 1002 and len(parts["edge"]) == 1001
    folded = {"name": "folded", "inputs": {"x": {"shape": [8]}},
              "blocks": {"mlp": {"layers": [{"Linear": {"out_features": 8}}, "ReLU"]}},
              "layers": [{"mlp": {}, "repeat": 500}]}
    parts = svg_parts(draw(folded).pipe(format="svg").decode())
    assert len(parts["node"]) == 4 and [text for _, text, _ in parts["cluster"]] == ["mlp ×500"]


# ----- output formats ------------------------------------------------------------------------------
def test_formats_follow_the_extension(tmp_path):
    spec = ROOT / "specs/parallel_cnn.yaml"
    assert write_drawing(spec, tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_drawing(spec, tmp_path / "m.pdf").read_bytes()[:5] == b"%PDF-"
    assert write_drawing(spec, tmp_path / "m.svg").read_text().lstrip().startswith("<?xml")
    assert write_drawing(spec, tmp_path / "m.dot").read_text().startswith("digraph parallel_cnn {")
    with pytest.raises(ValueError, match="format"):
        write_drawing(spec, tmp_path / "m.jpeg")


def test_default_output_is_the_spec_name_next_to_the_spec(tmp_path):
    (tmp_path / "spec.yaml").write_text((ROOT / "specs/parallel_cnn.yaml").read_text())
    assert write_drawing(tmp_path / "spec.yaml") == tmp_path / "parallel_cnn.svg"
    assert (tmp_path / "parallel_cnn.svg").exists()


def test_digraph_displays_inline_in_jupyter():
    digraph = draw(ROOT / "specs/parallel_cnn.yaml")
    bundle = digraph._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"] and "cat dim=1" in bundle["image/svg+xml"]
    assert "<svg" in digraph._repr_image_svg_xml()


def test_autograd_graph_names_parameters_from_the_spec():
    digraph = draw(ROOT / "specs/mnist_net.yaml", autograd=True)
    for name in ("conv1.weight", "conv2.bias", "fc1.weight", "fc2.bias"):
        assert name in digraph.source
    assert "ConvolutionBackward0" in digraph.source
    assert "<svg" in digraph.pipe(format="svg").decode()


# ----- Mermaid -----------------------------------------------------------------------------------------
def test_mermaid_has_the_same_frames_merges_and_edge_shapes_as_graphviz(tmp_path):
    spec = ROOT / "specs/resnet18.yaml"
    text = write_drawing(spec, tmp_path / "m.mmd").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:4] == ["---", "title: resnet18", "---", "flowchart TB"]
    assert sum(line.startswith("subgraph ") for line in lines) == lines.count("end")
    declared = {match for line in lines for match in re.findall(r"^(n\d+)[\[\(\{]", line)}
    edges = [re.match(r'^(n\d+) (-->|-\.->)\|"([^"]*)"\| (n\d+)$', line) for line in lines if "->" in line]
    assert all(edges) and {e[1] for e in edges} | {e[4] for e in edges} <= declared
    parts = svg_parts(draw(spec).pipe(format="svg").decode())
    mermaid_frames = sorted(re.findall(r'^\s*subgraph c\d+\["([^"]*)"\]$', text, re.MULTILINE))
    assert mermaid_frames == sorted(text for _, text, _ in parts["cluster"])
    assert sorted(e[3] for e in edges) == sorted(text for _, text, _ in parts["edge"])
    # eight residual blocks; layer1's two repetitions fold into one: seven skips and adds drawn
    assert sum(e[2] == "-.->" for e in edges) == 7 and text.count('{{"<b>add</b>"}}') == 7


def test_mermaid_marks_branches_and_escapes_labels():
    spec = """
inputs: {x: {shape: [4]}}
layers:
  - parallel: {"left": [Linear: [3]], "right": [Linear: [3]]}
    merge: {stack: {dim: 1}}
  - getitem: "[:, -1]"
"""
    text = to_mermaid(spec_diagram(spec), "LR")
    assert "flowchart LR" in text and 'subgraph c1["branch left"]' in text and 'subgraph c2["branch right"]' in text
    assert '{{"<b>stack dim=1</b>"}}' in text
    assert "style c1 fill:#dae8fc" in text and "style c2 fill:#d5e8d4" in text   # one colour per branch
    assert '"' not in re.search(r"index=([^<]*)", text).group(1)


# ----- CLI and missing graphviz -------------------------------------------------------------------------
def test_cli_draw_writes_the_file_and_reports_mistakes(tmp_path):
    require_tool("dot", "graphviz renders the svg")
    runner = CliRunner()
    spec = str(ROOT / "specs/parallel_cnn.yaml")
    result = runner.invoke(app, ["draw", spec, "-o", str(tmp_path / "m.svg"), "--set", "channels=4", "--rankdir", "LR"])
    assert result.exit_code == 0, result.output
    assert "B×8×32×32" in (tmp_path / "m.svg").read_text()   # 2 branches × 4 channels
    assert runner.invoke(app, ["draw", spec, "-o", str(tmp_path / "m.gif")]).exit_code == 2
    result = runner.invoke(app, ["draw", spec, "--autograd", "-o", str(tmp_path / "m.mmd")])
    assert result.exit_code == 2 and "Mermaid" in result.output
    (tmp_path / "bad.yaml").write_text("inputs: {x: {shape: [4]}}\nlayers: [Lineer: [3]]\n")
    result = runner.invoke(app, ["draw", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "bad.yaml:2" in result.output


def test_missing_dot_writes_the_source_and_says_how_to_install_it(tmp_path):
    bin_dir = tmp_path / "bin"   # a PATH with python only: no `dot`
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    result = subprocess.run([sys.executable, "-m", "specc", "draw", str(ROOT / "specs/parallel_cnn.yaml"),
                             "-o", str(tmp_path / "m.png")], capture_output=True, text=True,
                            env={**os.environ, "PATH": str(bin_dir)}, cwd=ROOT)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "apt-get install graphviz" in result.stderr and "brew install graphviz" in result.stderr
    assert (tmp_path / "m.dot").read_text().startswith("digraph parallel_cnn")
    assert not (tmp_path / "m.png").exists()


def test_missing_dot_in_python_raises_a_clear_error_and_mermaid_still_works(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = ROOT / "specs/parallel_cnn.yaml"
    with pytest.raises(GraphvizNotFound, match="install graphviz") as raised:
        write_drawing(spec, tmp_path / "m.svg")
    assert isinstance(raised.value, graphviz.ExecutableNotFound)
    assert raised.value.source_path == tmp_path / "m.dot" and raised.value.source_path.exists()
    assert "subgraph" in write_drawing(spec, tmp_path / "m.mmd").read_text()
