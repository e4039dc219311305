"""Running `specc` in a child process and signalling it mid-training, as a terminal or a scheduler would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two pytest workers share two cores


def signal_during_training(args: list[str], cwd: Path, signum: int = signal.SIGINT,
                           timeout: float = 60) -> subprocess.CompletedProcess:
    """Start `python -m specc *args`, send `signum` once an epoch line is printed, wait for the exit."""
    process = subprocess.Popen([sys.executable, "-m", "specc", *args], cwd=cwd, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("epoch"):  # training is under way
                break
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
