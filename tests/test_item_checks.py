"""Two mistakes found while writing published models in YAML (issue 20.9): a bare item with meta
keys on the next line (a YAML error, now explained at the item), and an item whose output nothing
uses (built and counted silently before; now a located UNUSED_ITEM warning, shown in summary)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import specc
from specc.cli import app
from specc.lang.errors import SpecError, SpecWarning

ROOT = Path(__file__).resolve().parent.parent


def yaml_problem(text: str):
    with pytest.raises(SpecError) as raised:
        specc.load(text)
    [problem] = raised.value.problems
    return problem


@pytest.mark.parametrize("text, line, column, name, key", [
    ("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: [4]\n  - ReLU\n    name: act\n", 4, 5, "ReLU", "name"),
    # a comment after the name and a blank line make YAML fail differently; same hint
    ("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: [4]\n  - ReLU   # act\n\n    repeat: 2\n", 4, 5, "ReLU", "repeat"),
    ("inputs: {x: {shape: [4]}}\nblocks:\n  b:\n    layers:\n      - log\n        name: l\nlayers: [b]\n", 5, 9, "log", "name"),
])
def test_a_bare_item_with_keys_below_says_how_to_write_it(text, line, column, name, key):
    problem = yaml_problem(text)
    assert (problem.location.line, problem.location.column, problem.code) == (line, column, "YAML_SYNTAX")
    assert problem.message == (f"YAML syntax error: the bare item `- {name}` cannot take `{key}:` on the next line; "
                               f"write `- {name}:` (or `- {name}: {{}}`) and put `{key}:` under it")


def test_other_yaml_errors_keep_their_message():
    problem = yaml_problem("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: [4]\n    name: a: b\n")
    assert problem.message == "YAML syntax error: mapping values are not allowed here"
    assert (problem.location.line, problem.location.column) == (4, 12)


UNUSED = """\
inputs: {x: {shape: [4]}}
layers:
  - Linear: [4]
  - Linear: [8]
    name: probe
  - ReLU:
    from: 0
"""


def test_an_item_nothing_uses_is_a_located_warning(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(UNUSED)
    with pytest.warns(SpecWarning) as caught:
        compiled = specc.compile(path)
    [problem] = compiled.warnings
    assert (problem.location.line, problem.location.column, problem.code) == (4, 5, "UNUSED_ITEM")
    assert problem.message.startswith("the output of 'probe' (Linear) is never used")
    assert [warning.message.problem for warning in caught] == [problem]
    assert sum(p.numel() for p in compiled.module.parameters()) == 20 + 40   # still built and counted


def test_a_chain_nothing_uses_is_warned_item_by_item():
    text = UNUSED.replace("  - ReLU:\n    from: 0\n", "  - ReLU\n  - Linear: [2]\n    from: 0\n")
    with pytest.warns(SpecWarning):
        compiled = specc.compile(text)
    assert [problem.message.split("'")[1] for problem in compiled.warnings] == ["probe", "2"]


def test_outputs_and_later_uses_are_not_unused():
    listed = UNUSED + "outputs: [\"2\", probe]\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        assert specc.compile(listed).warnings == []


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda path: path.stem)
def test_no_example_spec_has_an_unused_item(path: Path):
    """Nor any other warning, but the one a `char` tokenizer's guessed vocabulary gives (gpt_char)."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always", SpecWarning)
        compiled = specc.compile(path, device="meta", symbolic=False)
    expected = ["TOKENIZER_STAND_IN"] if path.stem == "gpt_char" else []
    assert [problem.code for problem in compiled.warnings] == expected
    assert len([warning for warning in shown if issubclass(warning.category, SpecWarning)]) == len(expected)


def test_check_prints_the_warning_and_passes_and_summary_marks_the_row(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(UNUSED)
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 0
    assert f"warning: {path}:4:5: the output of 'probe' (Linear) is never used" in result.output
    report = json.loads(CliRunner().invoke(app, ["check", str(path), "--format", "json"]).stdout)
    assert [(w["code"], w["line"], w["column"]) for w in report["warnings"]] == [("UNUSED_ITEM", 4, 5)]
    table = CliRunner().invoke(app, ["summary", str(path)]).stdout
    assert "Linear (unused)" in table and table.count("(unused)") == 1
