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
    assert page.count("<script") == 2 and page.count("</script>") == 2


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
