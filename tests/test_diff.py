"""`specc diff`: items aligned by path, what changed in each, the totals, the three formats, the
drawing with the changes coloured, and the command's errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specc.cli import app
from specc.draw.changes import CHANGE_STYLES, changes_drawing
from specc.summary.diff import diff, side_spec
from system_tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
RESNET, GPT2, MNIST = SPECS / "resnet18.yaml", SPECS / "gpt2_small.yaml", SPECS / "mnist_net.yaml"
runner = CliRunner()


def mnist_text() -> str:
    """specs/mnist_net.yaml without its `expect:` lines (the last section), which a variant breaks."""
    return MNIST.read_text().split("\nexpect:")[0]


def test_a_var_override_changes_one_layer():
    result = diff(RESNET, b_variables={"n_classes": 10})
    [change] = result.changes
    assert (change.path, change.status, change.args) == ("fc", "changed", {"out_features": (1000, 10)})
    assert (change.a.params, change.b.params) == (513_000, 5_130) and change.b.shape == [1, 10]
    assert result.params == (11_689_512, 11_689_512 - 512 * 990 - 990)
    assert result.flops[0] - result.flops[1] == 2 * 512 * 990
    assert result.to_dict()["counts"] == {"added": 0, "removed": 0, "changed": 1, "same": len(result.items) - 1}


def test_a_removed_repetition_is_one_row_for_everything_inside_it():
    result = diff(GPT2, b_variables={"n_layers": 11})
    removed = [item for item in result.changes if item.status == "removed"]
    assert [item.path for item in removed] == ["h.11"]
    assert removed[0].a.params == 7_087_872
    assert result.params[0] - result.params[1] == 7_087_872
    assert result.removed() == [("h.11", "transformer_block")]


def test_changed_arguments_and_the_figures_that_follow(tmp_path):
    wider = tmp_path / "wider.yaml"
    wider.write_text(mnist_text().replace("out_channels: 64", "out_channels: 96"))
    result = diff(MNIST, wider)
    changes = {item.path: item for item in result.changes}
    assert set(changes) == {"conv2", "3", "4", "dropout1", "6", "fc1"}  # conv2 and everything its width reaches
    assert changes["conv2"].args == {"out_channels": (64, 96)}
    assert changes["fc1"].args == {"in_features": (9216, 13824)}  # inferred by the dry run
    assert changes["3"].args == {} and changes["3"].b.shape == [1, 96, 24, 24]
    assert changes["fc1"].b.params - changes["fc1"].a.params == 4608 * 128


def test_an_unnamed_item_of_another_type_is_removed_and_added(tmp_path):
    other = tmp_path / "gelu.yaml"
    other.write_text(mnist_text().replace("  - ReLU\n  - MaxPool2d", "  - GELU\n  - MaxPool2d"))
    statuses = [(item.path, item.status, (item.a or item.b).type) for item in diff(MNIST, other).changes]
    assert statuses == [("3", "removed", "ReLU"), ("3", "added", "GELU")]


def test_identical_specs_have_no_changes():
    result = diff(MNIST, MNIST)
    assert result.changes == [] and "no item differs" in result.render()


def test_formats():
    result = diff(RESNET, b_variables={"n_classes": 10})
    table = result.render("table")
    assert "out_features 1000 → 10" in table and "513,000 → 5,130 (-507,870)" in table
    assert "Total params: 11,689,512 → 11,181,642 (-507,870, -4.3%)" in table
    markdown = result.render("markdown").splitlines()
    assert "|  | Item | Type | Changed | Output shape | Params | FLOPs |" in markdown
    assert "| ~ | fc | Linear | out_features 1000 → 10 | [1, 1000] → [1, 10] | 513,000 → 5,130 (-507,870) | 1.02 M → 10.24 K |" in markdown
    data = json.loads(result.render("json"))
    assert data["totals"] == {"params": [11_689_512, 11_181_642], "flops": list(result.flops)}
    assert data["changes"][0]["args"] == {"out_features": [1000, 10]}
    assert data["changes"][0]["a"]["params"] == 513_000 and data["changes"][0]["b"]["output_shape"] == [1, 10]
    with pytest.raises(ValueError, match="unknown format"):
        result.render("csv")


def test_the_drawing_colours_added_changed_and_removed_items():
    result = diff(GPT2, a_variables={"n_layers": 2}, b_variables={"n_layers": 1, "n_heads": 8})
    drawing = changes_drawing(side_spec(GPT2, {"n_layers": 1, "n_heads": 8}), result.statuses(), result.removed(), "t")
    source = drawing.source
    changed = CHANGE_STYLES["changed"]["fillcolor"]
    assert result.statuses() == {"h.0.attention.body.attn": "changed"}
    attention_line = next(line for line in source.splitlines() if "<b>attn</b>" in line)
    assert changed in attention_line
    assert source.count(changed) == 1 and "removed (only in A)" in source and "<b>h.1</b>  transformer_block" in source
    grown = diff(GPT2, a_variables={"n_layers": 1}, b_variables={"n_layers": 2})
    assert grown.statuses() == {"h.1": "added"}
    drawing = changes_drawing(side_spec(GPT2, {"n_layers": 2}), grown.statuses(), [], "t").source
    added = CHANGE_STYLES["added"]["fillcolor"]
    # every box inside the added repetition is green (norm, attn, add, norm, mlp, add), none of the
    # first one's, and its frame has the green border
    assert drawing.count(added) == 6
    assert sum('color="#2e8b57"' in line and "transformer_block" in line for line in drawing.splitlines()) == 1
    first_attention = [line for line in drawing.splitlines() if "<b>attn</b>" in line]
    assert len(first_attention) == 2 and sum(added in line for line in first_attention) == 1


def test_cli_table_and_drawing(tmp_path):
    require_tool("dot", "graphviz renders the svg")
    out = tmp_path / "changes.svg"
    done = runner.invoke(app, ["diff", str(RESNET), "--set", "n_classes=10", "--draw", str(out)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "out_features 1000 → 10" in done.output and f"wrote {out}" in done.output
    svg = out.read_text()
    assert svg.startswith("<?xml") and CHANGE_STYLES["changed"]["fillcolor"] in svg


def test_cli_two_files_as_json(tmp_path):
    wider = tmp_path / "wider.yaml"
    wider.write_text(mnist_text().replace("out_channels: 64", "out_channels: 96"))
    done = runner.invoke(app, ["diff", str(MNIST), str(wider), "--format", "json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["counts"]["changed"] == 6


def test_cli_errors(tmp_path):
    done = runner.invoke(app, ["diff", str(MNIST)])
    assert done.exit_code == 2 and "give a second spec" in done.output
    done = runner.invoke(app, ["diff", str(MNIST), str(MNIST), "--format", "csv"])
    assert done.exit_code == 2 and "--format csv" in done.output
    done = runner.invoke(app, ["diff", str(MNIST), "--set", "n_classes=5", "--draw", str(tmp_path / "a.txt")])
    assert done.exit_code == 2 and "write the changes as .svg" in done.output
    broken = tmp_path / "broken.yaml"
    broken.write_text(mnist_text().replace("Linear: {out_features: $n_classes}", "Linear: {out_feature: $n_classes}"))
    done = runner.invoke(app, ["diff", str(MNIST), str(broken)])
    assert done.exit_code == 2 and f"{broken}:" in done.output and "Traceback" not in done.output


@pytest.mark.parametrize("columns", [80, 60])
def test_the_table_fits_a_narrow_terminal_without_cutting_a_word(columns):
    """As the summary's table gives way (docs/summary.md): compact shapes, no margins, cells wrapped
    between words, then FLOPs, Output shape and Type leave, named under the table; Item, Changed and
    Params stay, and every word of theirs is there whole."""
    result = diff(GPT2, b_variables={"n_layers": 11, "n_heads": 8})
    wide, narrow = result.render("table"), result.render("table", width=columns)
    assert max(map(len, wide.splitlines())) > 100 and max(map(len, narrow.splitlines())) <= columns
    assert "…" not in narrow
    for item in result.changes:
        assert item.path in narrow
    assert narrow.count("n_heads 12 → 8") == 11 and narrow.count("2,362,368") == 11 and "7,087,872" in narrow
    left_out = {80: "Output shape, FLOPs", 60: "Type, Output shape, FLOPs"}[columns]
    assert f"left out to fit {columns} columns: {left_out};" in " ".join(narrow.split())
    assert wide.splitlines()[-3:] == narrow.splitlines()[-3:] or columns < 70   # the totals, unless they wrap


def test_the_cli_table_takes_the_width_of_columns_or_the_terminal(tmp_path):
    narrow = runner.invoke(app, ["diff", str(RESNET), "--set", "n_classes=10"], env={"COLUMNS": "80"})
    wide = runner.invoke(app, ["diff", str(RESNET), "--set", "n_classes=10"], env={"COLUMNS": "300"})
    assert narrow.exit_code == wide.exit_code == 0
    assert max(map(len, narrow.output.splitlines())) <= 80 < max(map(len, wide.output.splitlines()))
    assert "1×1000 →" in narrow.output and "[1, 1000] → [1, 10]" in wide.output   # compact shapes when narrow
    for word in ("fc", "Linear", "out_features", "513,000", "5,130", "(-507,870)", "1.02", "10.24"):
        assert word in narrow.output.split() and word in wide.output.split()
