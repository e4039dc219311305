"""specc in Jupyter: a real notebook executed by nbconvert on an ipykernel, its outputs checked by mime type."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbconvert")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]

CELLS = [
    "import specc\nfrom specc.summary.diff import diff as spec_diff\n"
    "summary = specc.summary({spec!r})\ndiff = spec_diff({spec!r}, {other!r})",
    "summary",                                         # 1: shown once, as HTML
    "print(str(summary))",                             # 2: the text table
    "print(repr(summary)); print(summary.render('table'))",  # 3
    "print(str(diff))",                                # 4
    "specc.draw({spec!r})",                            # 5: the viewer in an iframe
    "import pathlib\npathlib.Path('table.txt').write_text(str(summary))\nprint(len(pathlib.Path('table.txt').read_text()))",
]


def _run(tmp_path: Path) -> list[list[dict]]:
    from nbconvert.preprocessors import ExecutePreprocessor

    spec, other = str(ROOT / "specs/mnist_net.yaml"), str(ROOT / "specs/parallel_cnn.yaml")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code.format(spec=spec, other=other))
                                               for code in CELLS])
    ExecutePreprocessor(timeout=600, kernel_name="python3").preprocess(notebook, {"metadata": {"path": str(tmp_path)}})
    return [cell.outputs for cell in notebook.cells]


def test_a_notebook_shows_summaries_once_and_their_text_everywhere(tmp_path):
    outputs = _run(tmp_path)
    assert outputs[0] == []                              # building prints nothing into the notebook
    (shown,) = outputs[1]                               # once: no extra display_data from rich
    assert shown.output_type == "execute_result"
    assert "<table>" in shown.data["text/html"] and "conv1" in shown.data["text/html"]
    assert "Total params" in shown.data["text/plain"]   # the text form is the table, not ""
    for index in (2, 3, 4):
        assert [output.output_type for output in outputs[index]] == ["stream"], index
    table = outputs[2][0].text
    assert "conv1" in table and "Total params" in table
    assert outputs[3][0].text.count("Total params") == 2
    assert "→" in outputs[4][0].text and "Params" in outputs[4][0].text
    (drawing,) = outputs[5]
    frame = drawing.data["text/html"]
    srcdoc = re.fullmatch(r'<iframe srcdoc="([^"]*)"[^>]*></iframe>', frame).group(1)
    page = html.unescape(srcdoc)
    assert page.startswith("<!DOCTYPE html>") and "<script>" in page and "conv1" in page
    assert int(outputs[6][0].text) == len(table.rstrip("\n")) > 0
