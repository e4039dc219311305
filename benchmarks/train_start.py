"""How `specc train` feels at its ends, on the digits demo (specs/digits_cnn.yaml, one epoch):
how soon the first line appears, against `python -c "import torch"` of the same round, and how long
the process runs on after its final table (teardown).

Each line of the child's stdout and stderr is stamped as it arrives (a pipe, so nothing waits on a
terminal); the figures are medians over interleaved rounds.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.cli_cost import specc_command
from benchmarks.timing import ROOT, SPECS, Result, Target

FIRST_LINE_TARGET = Target("<=", 0.5, "s")   # first line beyond `import torch`
EXIT_TARGET = Target("<=", 0.3, "s")         # exit after the final table
DEMO = SPECS / "digits_cnn.yaml"


def stamped_run(command: list[str]) -> tuple[float, float, float]:
    """(first line, last line, exit) seconds after the start of `command`."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "COLUMNS": "120"})
    stamps: list[float] = []

    def read(stream) -> None:
        for _ in stream:
            stamps.append(time.perf_counter() - start)

    readers = [threading.Thread(target=read, args=(stream,)) for stream in (process.stdout, process.stderr)]
    for reader in readers:
        reader.start()
    code = process.wait()
    ended = time.perf_counter() - start
    for reader in readers:
        reader.join()
    if code != 0 or not stamps:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {code} with {len(stamps)} lines")
    return min(stamps), max(stamps), ended


def run(repeats: int = 5, epochs: int = 1) -> list[Result]:
    """Time `specc train digits_cnn --epochs N` and `python -c "import torch"`, interleaved.

    Returns:
        The first line beyond `import torch` and the exit after the last line, against their targets.
    """
    first, tail, torch_seconds, total = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        train = [*specc_command(), "train", str(DEMO), "--epochs", str(epochs), "--out", str(Path(folder))]
        for index in range(repeats):
            order = [0, 1] if index % 2 == 0 else [1, 0]
            for which in order:
                if which == 0:
                    started = time.perf_counter()
                    subprocess.run([sys.executable, "-c", "import torch"], check=True)
                    torch_seconds.append(time.perf_counter() - started)
                else:
                    first_line, last_line, ended = stamped_run(train)
                    first.append(first_line)
                    tail.append(ended - last_line)
                    total.append(ended)
    beyond = statistics.median(a - b for a, b in zip(first, torch_seconds))
    note = (f"digits_cnn, {epochs} epoch(s), fresh processes; python + import torch "
            f"{statistics.median(torch_seconds):.2f} s, whole run {statistics.median(total):.2f} s")
    return [Result("train_start", "specc train: first line beyond `python -c 'import torch'`", beyond,
                   FIRST_LINE_TARGET, unit="s", seconds={"first line": statistics.median(first),
                                                          "import torch": statistics.median(torch_seconds)},
                   repeats=repeats, note=note + "; median of per-round differences"),
            Result("train_start", "specc train: exit after the final table", statistics.median(tail), EXIT_TARGET,
                   unit="s", seconds={"exit": statistics.median(total)}, repeats=repeats, note=note)]
