"""An epoch in progress, and interrupted.pt: the state after a step, to continue mid-epoch exactly.

A Ctrl-C (or SIGTERM) stops after the current step. interrupted.pt then holds the weights,
optimizer, schedulers and RNG states of that moment, plus what the epoch had so far: its step
count, the batch-order generator before the epoch's permutation (so the same batches follow),
the step losses and the running metric states. last.pt keeps the last complete epoch.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from specc.train.metrics import MetricSet

INTERRUPTED = "interrupted.pt"


class NonFiniteLoss(RuntimeError):
    """The training loss, or a validation number that decides something, became nan or inf."""


def check_finite(record: dict[str, Any], names: set, epoch: int) -> None:
    """Raise NonFiniteLoss when one of `names` in the epoch's record is nan or inf.

    Raises:
        NonFiniteLoss: naming the first such value (sorted by name) and the epoch.
    """
    for name in sorted(name for name in names if name in record):
        if not math.isfinite(record[name]):
            raise NonFiniteLoss(f"{name} became {record[name]} at epoch {epoch}; stopped")


@dataclass
class EpochProgress:
    """The epoch being trained: steps done and what its train loss and metrics have so far."""

    epoch: int
    generator: torch.Tensor                # the batch-order generator before this epoch's permutation
    lr: float                              # the learning rate the epoch started with (its record's lr)
    losses: list[torch.Tensor] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    step: int = 0                          # steps completed
    in_step: bool = False                  # a hard interrupt inside a step leaves no exact state

    def state_dict(self, metrics: MetricSet) -> dict[str, Any]:
        """What interrupted.pt stores under `interrupted`."""
        losses = torch.stack(self.losses[:self.step]).cpu() if self.step else torch.zeros(0)
        return {"epoch": self.epoch, "step": self.step, "generator": self.generator, "lr": self.lr, "losses": losses,
                "sizes": self.sizes[:self.step], "metrics": metrics.state_dict()}


def epoch_progress(epoch: int, point: dict[str, Any] | None, generator: torch.Generator, metrics: MetricSet,
                   device: torch.device, lr: float) -> EpochProgress:
    """A fresh epoch, or the one `point` (interrupted.pt's `interrupted`) stopped in.

    Resuming draws the epoch's permutation again from the saved generator state and restores the
    losses and metric states; the dropout RNG came back with the checkpoint's `rng`.
    """
    if point is None or point["epoch"] != epoch:
        return EpochProgress(epoch, generator.get_state(), lr)
    generator.set_state(point["generator"])
    metrics.load_state_dict(point["metrics"])
    losses = list(point["losses"].to(device).unbind()) if point["step"] else []
    return EpochProgress(epoch, point["generator"], point["lr"], losses, list(point["sizes"]), point["step"])


@contextlib.contextmanager
def deferred_signals(*, interrupt_after: bool = True) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the block writes a run's final files (curves.png, summary.json),
    so a signal in the second after the last epoch cannot lose them; then, with `interrupt_after`,
    act on a held signal as a KeyboardInterrupt. Outside the main thread signals cannot be handled
    and the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: held.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if held and interrupt_after:
        raise KeyboardInterrupt
