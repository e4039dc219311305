"""Issue 15: every independent error of a spec in one pass, sorted by line; a block's mistake once
with its use sites; `train:` mistakes warn in summary/draw but stop check/train; merge errors at
the `merge:` line with dims counted like the printed shapes; SpecError in Jupyter without a traceback."""
from __future__ import annotations

import re
import warnings

import pytest
from typer.testing import CliRunner

from specc.build.compiler import compile as compile_spec
from specc.cli import app
from specc.lang.errors import SpecError, SpecWarning
from specc.summary.summarize import summary

MANY_MISTAKES = """\
name: multi
inputs:
  x: {shape: [4]}
blocks:
  dense:
    layers:
      - Linear: {out_featurs: 8}
      - ReLU
layers:
  - dense
  - dense
  - dense
  - Conv2D: 3
expect: {params: "many"}
train:
  data: {source: "sklearn:iris"}
  loss: CrossEntropyLos
"""

TRAIN_MISTAKE = """\
name: train_mistake
inputs:
  x: {shape: [4]}
layers:
  - Linear: 3
train:
  data: {source: "sklearn:iris"}
  loss: CrossEntropyLos
"""


def problems_of(text: str) -> list:
    with pytest.raises(SpecError) as raised:
        compile_spec(text, device="meta")
    return raised.value.problems


def test_top_level_mistakes_do_not_hide_the_models_and_all_come_sorted_by_line():
    problems = problems_of(MANY_MISTAKES)
    assert [(p.location.line, p.location.column, p.code) for p in problems] == [
        (7, 18, "UNKNOWN_KWARG"), (13, 5, "UNKNOWN_LAYER"), (14, 10, "TYPE_ERROR"), (17, 3, "TYPE_ERROR")]
    assert problems[0].message == "Linear has no argument 'out_featurs'"
    assert problems[1].suggestion == "Conv2d"
    assert problems[2].message.startswith("expect.params: Input should be a valid integer")
    assert problems[3].message.startswith("train.loss: unknown loss 'CrossEntropyLos'")


def test_a_mistake_in_a_block_used_three_times_is_printed_once_with_its_use_sites():
    (problem, _, _, _) = problems_of(MANY_MISTAKES)
    assert problem.notes == ["in block 'dense' used at <spec>:10:5, <spec>:11:5, <spec>:12:5"]


def test_check_cli_prints_them_all_in_one_pass(tmp_path):
    path = tmp_path / "multi.yaml"
    path.write_text(MANY_MISTAKES)
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert [re.match(rf"error: {re.escape(str(path))}:(\d+):", line).group(1) for line in lines] == \
        ["7", "13", "14", "17"]
    assert result.output.count("out_featurs") == 1
    assert f"in block 'dense' used at {path}:10:5, {path}:11:5, {path}:12:5" in result.output


def test_a_train_mistake_warns_in_summary_and_draw_but_stops_check_and_train(tmp_path):
    with pytest.warns(SpecWarning, match=r"<spec>:8:3: train.loss: unknown loss 'CrossEntropyLos'"):
        result = summary(TRAIN_MISTAKE)
    assert result.total_params == 15
    path = tmp_path / "spec.yaml"
    path.write_text(TRAIN_MISTAKE)
    runner = CliRunner()
    for command in (["summary", str(path)], ["draw", str(path), "-o", str(tmp_path / "model.dot")]):
        done = runner.invoke(app, command)
        assert done.exit_code == 0, done.output
        assert f"warning: {path}:8:3: train.loss: unknown loss 'CrossEntropyLos'" in done.output
    assert (tmp_path / "model.dot").read_text().startswith("digraph")
    for command in (["check", str(path)], ["train", str(path), "--out", str(tmp_path / "runs")]):
        done = runner.invoke(app, command)
        assert done.exit_code == 2, done.output
        assert f"error: {path}:8:3: train.loss: unknown loss 'CrossEntropyLos'" in done.output
    assert not (tmp_path / "runs").exists()


def test_a_valid_spec_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        summary(TRAIN_MISTAKE.replace("CrossEntropyLos", "CrossEntropyLoss"))


PARALLEL = """\
inputs:
  x: {shape: [3, 32, 32]}
layers:
  - parallel:
      a: [Conv2d: {out_channels: 6, kernel_size: 5}]
      b: [Conv2d: {out_channels: 6, kernel_size: 3}]
"""


def test_a_cat_error_is_at_the_merge_line_when_there_is_one():
    (with_merge,) = problems_of(PARALLEL + "    merge: {cat: {dim: 1}}\n")
    assert (with_merge.location.line, with_merge.location.column) == (7, 5)
    (without,) = problems_of(PARALLEL)
    assert (without.location.line, without.location.column) == (4, 5)


def test_dim_n_counts_like_the_printed_shapes():
    (problem,) = problems_of(PARALLEL)
    found = re.search(r"a (\[[^\]]*\]) and b (\[[^\]]*\]): sizes differ in dim (\d+)", problem.message)
    left, right, dim = found.group(1)[1:-1].split(", "), found.group(2)[1:-1].split(", "), int(found.group(3))
    assert left == ["B", "6", "28", "28"] and right == ["B", "6", "30", "30"]
    assert left[dim] != right[dim] and left[:dim] == right[:dim]


def test_spec_error_in_ipython_shows_the_problems_not_a_traceback():
    with pytest.raises(SpecError) as raised:
        compile_spec(MANY_MISTAKES, device="meta")
    lines = raised.value._render_traceback_()
    assert lines[0] == "SpecError: 4 problems in the spec"
    assert lines[1] == "  <spec>:7:18: Linear has no argument 'out_featurs' (did you mean 'out_features'?)"
    assert lines[2] == "      in block 'dense' used at <spec>:10:5, <spec>:11:5, <spec>:12:5"
    assert len(lines) == 6 and not any("Traceback" in line for line in lines)
