"""Docs are tests, the Python too: every ```python block of README.md and docs/*.md runs as written,
in a fresh namespace, from a working folder that has the repository's specs/ and examples/ (and the
reference files at ../shared/reference, where the pages point), so whatever a block writes stays in
a temporary folder.

A block that cannot run alone says why in a comment just above it (`<!-- not run: reason -->`: it
reads what a command above it writes, or it is a piece of generated code), and a block with a
placeholder (`…`, `<run>`) is skipped; each skip names its reason.
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REFERENCE = ROOT.parent / "shared" / "reference"
PLACEHOLDER = re.compile(r"…|<(run|timestamp)>")


@dataclass
class Block:
    page: str
    line: int
    code: str
    not_run: str | None     # the page's reason, from `<!-- not run: ... -->` just above the block


BLOCK = re.compile(r"(?:<!-- not run: (.*?) -->\n)?```python\n(.*?)```", re.S)


def blocks_in(text: str, page: str) -> list[Block]:
    return [Block(page, text[:block.start(2)].count("\n") + 1, block.group(2), block.group(1))
            for block in BLOCK.finditer(text)]


def python_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks_in(page.read_text(), page.name)]


BLOCKS = python_blocks()


def test_the_pages_show_python_and_most_of_it_runs():
    runnable = [block for block in BLOCKS if skip_reason(block) is None]
    assert len(BLOCKS) >= 15 and len(runnable) >= 10


def skip_reason(block: Block) -> str | None:
    if block.not_run:
        return block.not_run
    if PLACEHOLDER.search(block.code):
        return "a placeholder for the reader's own run or file"
    if "../shared/reference" in block.code and not REFERENCE.is_dir():
        return "the reference files (../shared/reference) are not beside this checkout"
    return None


@pytest.fixture
def working_folder(tmp_path, monkeypatch) -> Path:
    """specs/ and examples/ as in the repository, ../shared beside it; anything written lands here."""
    folder = tmp_path / "checkout"
    folder.mkdir()
    for name in ("specs", "examples"):
        (folder / name).symlink_to(ROOT / name)
    if REFERENCE.is_dir():
        (tmp_path / "shared").symlink_to(REFERENCE.parent)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{block.page}:{block.line}" for block in BLOCKS])
def test_a_python_block_of_the_docs_runs_as_written(block, working_folder):
    reason = skip_reason(block)
    if reason:
        pytest.skip(reason)
    namespace = {"__name__": "docs_block"}   # not "__main__": a block's `if __name__ == "__main__"` is the reader's script
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block.code, f"{block.page}:{block.line}", "exec"), namespace)


def test_a_marked_block_is_skipped_with_the_pages_reason():
    marked = blocks_in("<!-- not run: it reads x.onnx, which the command above writes -->\n```python\nimport x\n```\n", "p.md")
    assert [block.not_run for block in marked] == ["it reads x.onnx, which the command above writes"]
    assert skip_reason(Block("p.md", 1, "specc.train('runs/<run>/best.pt')", None)) is not None
    assert skip_reason(Block("p.md", 1, "import specc", None)) is None

