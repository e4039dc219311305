"""CLI cost: wall time of `specc --help`, `specc summary specs/llama2_7b.yaml` and of `specc check`,
`summary` and `draw` of a small spec (specs/mlp.yaml) in fresh processes.

Two reference processes run in the same rounds, so the numbers can be read against what any
Python tool pays on this machine: `python -c pass` (interpreter start) and
`python -c "import torch"` (the floor for any command that touches a model). The small-spec
commands are judged by what they cost beyond that floor: the median over rounds of
(command - `import torch`) of the same round.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import SPECS, Result, Target, interleaved, medians, run_timed

HELP_TARGET = Target("<=", 0.3, "s")
SUMMARY_TARGET = Target("<=", 3.0, "s")
BEYOND_TORCH_TARGET = Target("<=", 0.5, "s")  # a small spec's check/summary/draw beyond `import torch`
SMALL_SPEC = SPECS / "mlp.yaml"


def specc_command() -> list[str]:
    """The `specc` console script next to this interpreter, else `python -m specc`."""
    script = Path(sys.executable).with_name("specc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "specc"]


def commands(summary_spec: Path = SPECS / "llama2_7b.yaml", references: bool = True,
             drawing: Path | None = None) -> dict[str, list[str]]:
    """name -> command line, in the order each round runs them."""
    specc = specc_command()
    measured = {
        "specc --help": [*specc, "--help"],
        f"specc summary {summary_spec.stem}": [*specc, "summary", str(summary_spec)],
    }
    if not references:
        return measured
    small = SMALL_SPEC.stem
    return {**measured, "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            f"specc check {small}": [*specc, "check", str(SMALL_SPEC)],
            f"specc summary {small}": [*specc, "summary", str(SMALL_SPEC)],
            f"specc draw {small}": [*specc, "draw", str(SMALL_SPEC), "-o", str(drawing or Path(os.devnull))]}


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
    cpu: dict[str, list[float]] = {}

    def timed(name: str, command: list[str]):
        def one() -> float:
            wall, cpu_seconds, _ = run_timed(command)
            cpu.setdefault(name, []).append(cpu_seconds)
            return wall
        return one

    with tempfile.TemporaryDirectory() as folder:
        timed_commands = commands(summary_spec, references, Path(folder) / f"{SMALL_SPEC.stem}.svg")
        rounds = interleaved({name: timed(name, command) for name, command in timed_commands.items()}, repeats)
    seconds = medians(rounds)
    targets = {"specc --help": HELP_TARGET, f"specc summary {summary_spec.stem}": SUMMARY_TARGET}
    reference = "fresh process"
    if references:
        start, torch_import = seconds["python -c pass"], seconds["python -c 'import torch'"]
        reference += f"; python start {start:.2f} s, python + import torch {torch_import:.2f} s"
    results = [Result("cli", f"{name} (wall)", value, targets.get(name), unit="s", seconds={name: value},
                      repeats=repeats, note=(reference if name in targets else "reference, not specc")
                      + f"; CPU {statistics.median(cpu[name]):.2f} s")
               for name, value in seconds.items() if name in targets or "specc" not in name]
    if references:
        results += [_beyond_torch(name, rounds, cpu) for name in rounds if name.endswith(f" {SMALL_SPEC.stem}")
                    and name != f"specc summary {summary_spec.stem}"]
    return results


def _beyond_torch(name: str, rounds: dict[str, list[float]], cpu: dict[str, list[float]]) -> Result:
    """`name`'s wall time minus `import torch` of the same round, median over rounds (and the same
    for CPU time, in the note)."""
    floor = "python -c 'import torch'"
    extra = statistics.median(a - b for a, b in zip(rounds[name], rounds[floor]))
    extra_cpu = statistics.median(a - b for a, b in zip(cpu[name], cpu[floor]))
    return Result("cli", f"{name} (wall) beyond `python -c 'import torch'`", extra, BEYOND_TORCH_TARGET, unit="s",
                  seconds={name: statistics.median(rounds[name]), "import torch": statistics.median(rounds[floor])},
                  repeats=len(rounds[floor]),
                  note=f"fresh processes, same rounds; median of per-round differences; CPU time beyond: {extra_cpu:.2f} s")
