"""Text from a spec (its file name, its strings) shown in the viewer page, a markdown summary, a
Mermaid file or the terminal is shown as text: it can run nothing and break nothing (issue 25, part B)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from specc.cli import app
from specc.draw.drawing import write_drawing
from specc.draw.html import spec_html

SPEC = "inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 2}\n"


def spec_named(folder: Path, stem: str) -> Path:
    """A spec without `name:`, so its file name is its display name."""
    path = folder / f"{stem}.yaml"
    path.write_text(SPEC)
    return path


def test_an_html_comment_opener_in_the_viewer_data_cannot_blank_the_page(tmp_path):
    page = spec_html(spec_named(tmp_path, "<!--<script>"))
    assert "<!--" not in page   # before the fix: the comment swallowed the viewer's script
    (payload,) = re.findall(r'<script type="application/json" id="specc-data">(.*?)</script>', page, re.S)
    assert json.loads(payload)["name"] == "<!--<script>"
    # the spec's text adds no script: the page holds exactly the script tags a harmless name gives
    (tmp_path / "plain").mkdir()
    plain = spec_html(spec_named(tmp_path / "plain", "net"))
    assert page.count("<script") == page.count("</script>") == plain.count("<script") == plain.count("</script>")


def test_the_markdown_summary_shows_a_file_name_holding_html_as_text(tmp_path):
    path = spec_named(tmp_path, "<img src=x onerror=alert(1)>")
    result = CliRunner().invoke(app, ["summary", str(path), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "<img" not in result.output
    assert result.output.startswith("### &lt;img src=x onerror=alert(1)&gt;\n")


def test_a_newline_in_the_title_cannot_split_the_mermaid_front_matter(tmp_path):
    path = spec_named(tmp_path, "net\n---\nflowchart LR\n  evil")
    text = write_drawing(path, tmp_path / "m.mmd").read_text()
    lines = text.splitlines()
    assert lines[:4] == ["---", 'title: "net --- flowchart LR   evil"', "---", "flowchart TB"]
    assert yaml.safe_load("\n".join(lines[1:2])) == {"title": "net --- flowchart LR   evil"}


TITLE_SEQUENCE = "\x1b]0;pwned\x07"   # sets a terminal's window title


def test_escape_sequences_in_a_file_name_are_shown_not_obeyed(tmp_path):
    path = spec_named(tmp_path, f"net{TITLE_SEQUENCE}")
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "net\\x1b]0;pwned\\x07.yaml" in result.output


def test_escape_sequences_in_an_error_message_are_shown_not_obeyed(tmp_path):
    path = tmp_path / "spec.yaml"
    # YAML's double-quoted escapes: \e is ESC, \a is BEL
    path.write_text(SPEC + 'train:\n  data: {source: "csv:\\e]0;pwned\\a.csv"}\n  loss: MSELoss\n')
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "\x1b" not in result.output
    assert "data file not found: \\x1b]0;pwned\\x07.csv" in result.output


def test_rich_markup_in_a_file_name_is_printed_as_written(tmp_path):
    path = spec_named(tmp_path, "[red]net[bold]")
    result = CliRunner().invoke(app, ["summary", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("[red]net[bold]  input x [1, 4] float32")   # before: "net  input ..."


def test_printable_keeps_layout_and_text_and_escapes_control_characters():
    from specc.lang.terminal import console_text, printable

    assert printable("a\tb\nc é 中") == "a\tb\nc é 中"
    assert printable("x\x1b[2Jy\x9bz\u202e") == "x\\x1b[2Jy\\x9bz\\u202e"
    assert console_text("[link=http://example.com]x[/link]") == "\\[link=http://example.com]x\\[/link]"
