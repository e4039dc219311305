"""CLI cost: wall time of `specc --help` and `specc summary specs/llama2_7b.yaml` in fresh processes.

Two reference processes run in the same rounds, so the numbers can be read against what any
Python tool pays on this machine: `python -c pass` (interpreter start) and
`python -c "import torch"` (the floor for any command that touches a model).
"""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.timing import SPECS, Result, Target, interleaved, medians, run_command

HELP_TARGET = Target("<=", 0.3, "s")
SUMMARY_TARGET = Target("<=", 3.0, "s")


def specc_command() -> list[str]:
    """The `specc` console script next to this interpreter, else `python -m specc`."""
    script = Path(sys.executable).with_name("specc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "specc"]


def commands(summary_spec: Path = SPECS / "llama2_7b.yaml", references: bool = True) -> dict[str, list[str]]:
    """name -> command line, in the order each round runs them."""
    specc = specc_command()
    measured = {
        "specc --help": [*specc, "--help"],
        f"specc summary {summary_spec.stem}": [*specc, "summary", str(summary_spec)],
    }
    if not references:
        return measured
    return {**measured, "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"]}


def run(repeats: int = 7, summary_spec: Path = SPECS / "llama2_7b.yaml", references: bool = True) -> list[Result]:
    """Time each command `repeats` times, interleaved.

    Args:
        repeats: processes per command.
        summary_spec: the spec `specc summary` shows (the target is for llama2_7b).
        references: also time `python -c pass` and `python -c "import torch"`.

    Returns:
        `specc --help` and `specc summary` wall seconds against their targets, and the two
        reference processes (no target).
    """
    def timed(command: list[str]):
        return lambda: run_command(command)[0]

    timed_commands = commands(summary_spec, references)
    seconds = medians(interleaved({name: timed(command) for name, command in timed_commands.items()}, repeats))
    targets = {"specc --help": HELP_TARGET, f"specc summary {summary_spec.stem}": SUMMARY_TARGET}
    reference = "fresh process"
    if references:
        start, torch_import = seconds["python -c pass"], seconds["python -c 'import torch'"]
        reference += f"; python start {start:.2f} s, python + import torch {torch_import:.2f} s"
    return [Result("cli", f"{name} (wall)", value, targets.get(name), unit="s", seconds={name: value},
                   repeats=repeats, note=reference if name in targets else "reference, not specc")
            for name, value in seconds.items()]
