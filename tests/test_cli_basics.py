"""CLI basics: --version, every command's --help shows flags as flags (no `<bool>` value), and a
drawing's default path keeps out of the user's git work tree and says where it went."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import specc
from specc.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
COMMANDS = sorted(command.name or command.callback.__name__ for command in app.registered_commands)


def help_text(*command: str) -> str:
    done = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert done.exit_code == 0, done.output
    return done.output


def test_version():
    done = runner.invoke(app, ["--version"])
    assert done.exit_code == 0 and done.output == f"specc {specc.__version__}\n"
    assert "--version" in help_text()


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_flags_without_a_value(command):
    text = help_text(*([command] if command else []))
    assert "<bool>" not in text and "BOOLEAN" not in text
    assert re.search(r"--help\s+Show this message", text)
    assert "<list[str]>" not in text  # repeatable options name what they take (KEY=VALUE, GLOB, ...)


def test_every_command_is_checked():
    assert {"check", "draw", "train", "summary", "diff", "export", "evaluate", "predict", "codegen", "port",
            "schema"} <= set(COMMANDS)


def test_named_flags_and_values_in_help():
    draw = help_text("draw")
    assert re.search(r"--expand\s+Draw every repetition", draw) and re.search(r"--set\s+KEY=VALUE", draw)
    export = help_text("export")
    assert re.search(r"--check\s+--no-check\s+Run the written file", export)


def test_draw_default_path_leaves_a_git_work_tree_and_says_where(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "spec.yaml").write_text((ROOT / "specs" / "parallel_cnn.yaml").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = runner.invoke(app, ["draw", str(project / "spec.yaml"), "--format", "dot"])
    assert done.exit_code == 0, done.output
    assert done.output == f"wrote {elsewhere / 'parallel_cnn.dot'} (outside the spec's git repository; -o chooses the file)\n"
    assert (elsewhere / "parallel_cnn.dot").exists() and not (project / "parallel_cnn.dot").exists()
    # from inside the work tree, it goes to the cache folder
    monkeypatch.chdir(project)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    done = runner.invoke(app, ["draw", "spec.yaml", "--format", "dot"])
    assert done.exit_code == 0, done.output
    cached = tmp_path / "cache" / "specc" / "drawings" / "parallel_cnn.dot"
    assert cached.exists() and str(cached) in done.output and not (project / "parallel_cnn.dot").exists()


def test_usage_lines_name_every_argument_the_same_way():
    """Upper-case names, `{X}` when required and `[X]` when optional (click's marks), on every command."""
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        output = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output
        (usage,) = [line.strip() for line in output.splitlines() if "Usage:" in line]
        assert re.fullmatch(rf"Usage: specc {name} \[OPTIONS\]( \{{[A-Z]+\}}| \[[A-Z]+\])*", usage), usage


@pytest.mark.parametrize("command", ["summary", "draw"])
def test_a_negative_depth_is_refused(command):
    result = CliRunner().invoke(app, [command, str(ROOT / "specs/mlp.yaml"), "--depth", "-3"])
    assert result.exit_code == 2 and "--depth" in result.output and "greater than or equal to 0" in result.output
