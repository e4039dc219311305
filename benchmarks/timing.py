"""Shared pieces of the benchmarks: interleaved timing, results with targets, the machine.

Every comparison runs its contestants in the same run, taking turns (A B, then B A, ...), so a
slow spell on a shared machine hits both sides alike; a reported ratio is the median of the
per-repeat ratios, a reported time the median of the repeats.
"""
from __future__ import annotations

import operator
import os
import platform
import resource
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

# One repeat of one contestant: runs the work and returns the seconds it took.
Repeat = Callable[[], float]

_COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_SYMBOLS = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}


@dataclass(frozen=True)
class Target:
    """A limit a measured value must meet, e.g. `Target("<=", 1.03)` for a ratio."""

    op: str       # one of <=, <, >=, >
    limit: float
    unit: str = ""  # "" for ratios, "s", "MB"

    def met_by(self, value: float) -> bool:
        return _COMPARE[self.op](value, self.limit)

    def __str__(self) -> str:
        return f"{_SYMBOLS[self.op]} {self.limit:g}{' ' + self.unit if self.unit else ''}"


@dataclass
class Result:
    """One row of the report: a measured value, its target and the absolute times behind it."""

    family: str                 # forward, compile, cli, train, draw
    case: str                   # what was measured, e.g. "mlp: specc / hand-written"
    value: float                # the ratio, seconds or megabytes the target applies to
    target: Target | None       # None: reported, not judged
    unit: str = ""              # unit of `value` ("" for ratios)
    seconds: dict[str, float] = field(default_factory=dict)  # median seconds per contestant
    repeats: int = 0
    note: str = ""

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.target.met_by(self.value)

    def to_dict(self) -> dict:
        row = asdict(self)
        row["target"] = str(self.target) if self.target else None
        row["passed"] = self.passed
        return row


def interleaved(contestants: dict[str, Repeat], repeats: int) -> dict[str, list[float]]:
    """Run each contestant `repeats` times, alternating which goes first in each round.

    Args:
        contestants: name -> a callable that does one repeat and returns its seconds.
        repeats: rounds; each contestant runs once per round.

    Returns:
        name -> the seconds of each repeat, in round order.
    """
    names = list(contestants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]  # cancels any first-mover advantage
        for name in order:
            seconds[name].append(contestants[name]())
    return seconds


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-round ratios: robust to load that drifts during the run."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def medians(seconds: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in seconds.items()}


def interleaved_calls(functions: dict[str, Callable[[], object]], *, repeats: int, calls: int, turns: int = 50,
                      clock: Callable[[], float] = time.thread_time) -> dict[str, list[float]]:
    """Seconds per call of each function, with the functions taking turns many times per repeat.

    Each repeat gives every function `turns` turns of `calls` calls, alternating which goes
    first, and sums the time of its turns: a busy spell on the machine lasts longer than a turn,
    so it lands on both sides. The default clock is this thread's CPU time, which does not run
    while another process holds the core.

    Args:
        functions: name -> a callable to time.
        repeats: independent measurements per function.
        calls: calls per turn (enough that a turn lasts well over the clock's resolution).
        turns: turns per function per repeat.
        clock: seconds, e.g. `time.thread_time` or `time.perf_counter`.

    Returns:
        name -> seconds per call, one value per repeat.
    """
    names = list(functions)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        totals = dict.fromkeys(names, 0.0)
        for turn in range(turns):
            for name in names if turn % 2 == 0 else names[::-1]:
                function = functions[name]
                start = clock()
                for _ in range(calls):
                    function()
                totals[name] += clock() - start
        for name in names:
            seconds[name].append(totals[name] / (turns * calls))
    return seconds


def calls_lasting(function: Callable[[], object], seconds: float) -> int:
    """How many calls of `function` take about `seconds` (after a warm-up call), at least 1."""
    function()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < max(seconds, 0.01):
        function()
        count += 1
    per_call_seconds = (time.perf_counter() - start) / count
    return max(1, round(seconds / per_call_seconds))


def run_command(command: list[str], *, timeout: float = 300) -> tuple[float, str]:
    """Run a command from the repository root and time it (wall clock, start to exit)."""
    elapsed, _, stdout = run_timed(command, timeout=timeout)
    return elapsed, stdout


def run_timed(command: list[str], *, timeout: float = 300) -> tuple[float, float, str]:
    """`run_command`, also returning the CPU seconds (user + system) the process used: on a
    shared machine the wall time also counts waiting for a core, the CPU time does not."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... exited {finished.returncode}:\n{finished.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, finished.stdout


def machine() -> dict[str, str | int]:
    """The CPU, core count, Python and torch versions the numbers were measured on."""
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "load": " ".join(f"{load:.1f}" for load in os.getloadavg()),  # 1, 5, 15 min: others sharing the cores
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (no CUDA)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "system": f"{platform.system()} {platform.release()}",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_seconds(seconds: float) -> str:
    """1.2e-5 -> '12.0 µs', 0.0031 -> '3.10 ms', 2.5 -> '2.50 s', -1.2 -> '-1.20 s' (a time saved)."""
    if seconds < 0:
        return "-" + format_seconds(-seconds)
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def forward_against_hand_written(specc_model: Any, hand_model: Any, example: Any, repeats: int, turn_seconds: float,
                                 turns: int) -> tuple[dict[str, list[float]], float, int]:
    """Time both models' forward (no_grad), taking turns, with the hand-written one also against itself.

    Returns:
        `(seconds, noise, calls)`: seconds per call of "specc" and "hand-written" per repeat; the
        hand-written model's ratio to itself (the noise floor of this run); calls per turn.
    """
    import torch

    with torch.no_grad():
        calls = calls_lasting(lambda: hand_model(example), turn_seconds)
        seconds = interleaved_calls({
            "specc": lambda: specc_model(example),
            "hand-written": lambda: hand_model(example),
            "hand-written again": lambda: hand_model(example),   # A/A: the noise floor of this run
        }, repeats=repeats, calls=calls, turns=turns)
    noise = median_ratio(seconds.pop("hand-written again"), seconds["hand-written"])
    return seconds, noise, calls
