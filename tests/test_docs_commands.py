"""Docs are tests: every `specc ...` command shown in README.md and docs/*.md (console, bash and text
blocks) runs as written, from the repository root, and prints what the page shows after it: every
line, in order (spacing aside; a `...` line stands for lines the page leaves out). A `COLUMNS=80`
before the command is the terminal width it runs at; otherwise a wide one, as the pages show.

Commands run in-process (typer's CliRunner); files they write go to a temporary folder. Commands
that need a trained run, several processes, or files the page only names (`spec.yaml`,
`runs/<timestamp>/...`) are listed with the reason they are skipped.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specc.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FAST = {"check", "summary", "draw", "diff", "export", "codegen", "import", "schema", "port", "--version"}
INPUT_OPTIONS = {"--weights", "--config", "--check", "--checkpoint"}
OUTPUT_OPTIONS = {"-o", "--output", "--draw"}


@dataclass
class Shown:
    page: str
    line: int
    command: str
    output: list[str]
    env: dict[str, str]


def shown_commands() -> list[Shown]:
    """Every `specc` command of the pages' code blocks with the lines the page shows after it."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.finditer(r"```(console|bash|shell|text)\n(.*?)```", text, re.S):
            first_line = text[:block.start(2)].count("\n") + 1
            current, continued = None, False
            for offset, raw in enumerate(block.group(2).splitlines()):
                line = raw.strip()
                if continued:   # `\` at the end: the command goes on
                    current.command = current.command[:-1] + " " + line
                    continued = line.endswith("\\")
                    continue
                prompt = line.startswith("$ ")
                command = line[2:] if prompt else line
                env = dict(re.findall(r"([A-Z_]+)=(\S+) ", re.match(r"(?:[A-Z_]+=\S+ )*", command).group()))
                command = re.sub(r"^(?:[A-Z_]+=\S+ )*", "", command)
                if command.startswith("specc ") and (prompt or block.group(1) != "console"):
                    current = Shown(page.name, first_line + offset, command, [], env)
                    found.append(current)
                    continued = command.endswith("\\")
                elif prompt or block.group(1) == "bash":
                    current = None
                elif current is not None:
                    current.output.append(raw)
    return found


def skip_reason(arguments: list[str]) -> str | None:
    command = arguments[1] if arguments[0] == "--safe" else arguments[0]
    if command not in FAST:
        return f"`specc {command}` trains or needs a trained run (tests/test_train*.py, test_weights_port.py run it)"
    if any(mark in " ".join(arguments) for mark in ("<", ">", "|")):
        return "a placeholder or a shell redirection"
    if "--checkpoint" in arguments or "--nproc" in arguments or "--strategy" in arguments:
        return "needs a trained run or several processes"
    for index, argument in enumerate(arguments[1:], 1):
        if arguments[index - 1] in INPUT_OPTIONS and not (ROOT / argument).exists():
            return f"{argument} is a file or folder the page only names"
        if arguments[index - 1] in OUTPUT_OPTIONS or argument.startswith("-") or "=" in argument:
            continue
        if argument.endswith((".yaml", ".yml")) and not (ROOT / argument).exists():
            return f"{argument} is a name the page uses, not a file of the repository"
    return None


def with_outputs_in(arguments: list[str], folder: Path) -> list[str]:
    """`-o x.svg` -> `-o <folder>/x.svg`: the docs' commands must not write into the checkout."""
    return [str(folder / Path(argument).name) if index and arguments[index - 1] in OUTPUT_OPTIONS and argument != "-"
            else argument for index, argument in enumerate(arguments)]


COMMANDS = shown_commands()


def test_the_pages_show_commands():
    runnable = [c for c in COMMANDS if skip_reason(shlex.split(c.command, comments=True)[1:]) is None]
    assert len(COMMANDS) > 50 and len(runnable) > 25
    assert sum(any(line.strip() for line in c.output) for c in runnable) >= 15   # and what they print


@pytest.mark.parametrize("shown", COMMANDS, ids=[f"{c.page}:{c.line}" for c in COMMANDS])
def test_a_documented_command_runs_and_prints_what_the_page_shows(shown, tmp_path, monkeypatch):
    arguments = shlex.split(shown.command, comments=True)[1:]
    reason = skip_reason(arguments)
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = {path for path in ROOT.iterdir()}
    result = CliRunner().invoke(app, with_outputs_in(arguments, tmp_path), env={"COLUMNS": "200", **shown.env})
    expected = [line for line in shown.output if line.strip() and "runs/" not in line]
    failing = any(line.lstrip().startswith(("error:", "Error")) for line in expected)
    assert result.exit_code == (2 if failing else 0), f"{shown.page}:{shown.line}: {shown.command}\n{result.output}"
    missing = lines_not_printed(expected, result.output)
    assert not missing, f"{shown.page}:{shown.line}: {shown.command}\nshown but not printed: {missing}\n{result.output}"
    assert {path for path in ROOT.iterdir()} == before   # nothing left in the repository root


def lines_not_printed(shown: list[str], printed: str) -> list[str]:
    """The page's lines that the output lacks, matched in order, spacing aside; `...` skips any number."""
    got = [" ".join(line.split()) for line in printed.splitlines()]
    missing, at = [], 0
    for line in (" ".join(line.split()) for line in shown):
        if line in ("...", "…"):
            continue
        found = next((index for index in range(at, len(got)) if got[index] == line), None)
        if found is None:
            missing.append(line)
        else:
            at = found + 1
    return missing


def test_a_page_line_the_command_does_not_print_is_caught():
    printed = "model\n  a   1\n  b   2\n"
    assert lines_not_printed(["a 1", "...", "b 2"], printed) == []
    assert lines_not_printed(["b 2", "a 1"], printed) == ["a 1"]    # out of order
    assert lines_not_printed(["a  1", "c 3"], printed) == ["c 3"]
