"""Training loop cost per epoch on scikit-learn's digits: specc's loop against three other loops.

All four train the same model (the compiled spec, same initial weights) on the same 1,797
standardized images in batches of 64, reshuffled every epoch, with the same AdamW and loss, on
one torch thread (so the loops, not the thread pool, decide the time):

- specc: `specc.train.loop.run_epoch`, the function `specc train` calls once per epoch, on a session
  built as `specc train` builds it, with no validation split and no metrics (the work the others
  do). Writing last.pt, metrics.csv and TensorBoard after the epoch is timed separately;
- hand-written: the minimal loop over in-memory tensors, a fresh permutation per epoch;
- Lightning: `lightning.Trainer` on the same batches (see benchmarks/lightning_baseline.py);
- naive: `TensorDataset` + `DataLoader(shuffle=True)`, which collates every batch sample by sample.

Every contestant advances one epoch per turn, in alternating order, after one warm-up epoch each.
Times are CPU seconds of this process (`time.process_time`): on a shared machine wall time also
counts the moments another process holds the core.
"""
from __future__ import annotations

import importlib.util
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import yaml
from torch import nn

from benchmarks.timing import SPECS, Result, Target, interleaved, median_ratio, medians

HAND_TARGET = Target("<=", 1.05)
LIGHTNING_TARGET = Target("<", 1.0)
NAIVE_SPEEDUP_TARGET = Target(">=", 1.3)
BATCH_SIZE = 64
LEARNING_RATE, WEIGHT_DECAY = 0.003, 0.01

# A small MLP on the 64 pixels: the per-step work is tiny, so any loop overhead shows.
DIGITS_MLP = """
name: digits_mlp
inputs:
  pixels: {shape: [64]}
layers:
  - Linear: {out_features: 64}
  - ReLU
  - Linear: {out_features: 64}
  - ReLU
  - Linear: {out_features: 10}
    name: head
"""


def bench_train_section() -> dict:
    """The `train:` section specc runs with: all 1,797 images for training, nothing else per epoch."""
    return {
        "data": {"source": "sklearn:digits", "split": {"val": 0, "test": 0}, "normalize": "standard"},
        "batch_size": BATCH_SIZE, "epochs": 1000, "loss": "CrossEntropyLoss",
        "optimizer": {"AdamW": {"lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY}},
        "device": "cpu", "seed": 0,
    }


def model_specs() -> dict[str, dict]:
    """name -> spec (a dict, without a `train:` section): the small MLP and the demo CNN."""
    cnn = yaml.safe_load((SPECS / "digits_cnn.yaml").read_text())
    cnn.pop("train")
    return {"mlp": yaml.safe_load(DIGITS_MLP), "digits_cnn": cnn}


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)


class ShuffledBatches:
    """In-memory batches in a fresh random order each epoch: no Dataset, no per-sample collate."""

    def __init__(self, inputs: torch.Tensor, target: torch.Tensor, batch_size: int, seed: int = 0):
        self.inputs, self.target, self.batch_size = inputs, target, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.target) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.target), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.inputs[index], self.target[index]


class LoopEpochs:
    """The plain PyTorch loop, one epoch per call: forward, loss, backward, step."""

    def __init__(self, model: nn.Module, batches: Iterable):
        self.model, self.batches = model.train(), batches
        self.optimizer, self.loss_fn = adamw(model), nn.CrossEntropyLoss()

    def __call__(self) -> float:
        start = time.process_time()
        for inputs, target in self.batches:
            loss = self.loss_fn(self.model(inputs), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return time.process_time() - start


class SpeccEpochs:
    """specc's loop one epoch per call, on a session built the way `specc train` builds it."""

    def __init__(self, spec: dict, run_dir: Path):
        from specc.train.prepare import build_model, load_train_spec, open_session, prepare_data
        from specc.train.run_log import RunLog

        loaded = load_train_spec({**spec, "train": bench_train_section()})
        device = torch.device("cpu")
        self.compiled = build_model(loaded, device, loaded.train.seed)
        prepared = prepare_data(loaded, self.compiled)
        self.session = open_session(loaded, self.compiled, prepared, prepared.splits[0], device, run_dir)
        self.log = RunLog(run_dir, epochs=loaded.train.epochs, verbose=False)
        self.file_seconds: list[float] = []  # last.pt + metrics.csv + TensorBoard, after each epoch

    def __call__(self) -> float:
        from specc.weights.checkpoint import save_checkpoint
        from specc.train.loop import run_epoch

        session = self.session
        start = time.process_time()
        record = run_epoch(session, session.epoch + 1, self.log)
        seconds = time.process_time() - start
        session.history.append(record)
        session.epoch += 1
        start = time.process_time()
        save_checkpoint(session.checkpoint_state(), session.run_dir / "last.pt")  # as `fit` does every epoch
        self.log.epoch_finished(record, session.history)
        self.file_seconds.append(time.process_time() - start)
        return seconds

    def close(self) -> None:
        self.log.finish()

    @property
    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """specc's own standardized training tensors, so every contestant sees the same examples."""
        train = self.session.splits.train
        return train.inputs[0], train.target


def run(repeats: int = 9, models: tuple[str, ...] = ("mlp", "digits_cnn")) -> list[Result]:
    """Per-epoch training time of specc and the three baselines, for the MLP and the demo CNN.

    Args:
        repeats: epochs timed per contestant (after one warm-up epoch each).
        models: which of `model_specs()` to train.

    Returns:
        Per model: specc / hand-written, specc / Lightning, naive / specc, and specc's per-epoch
        file writes.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results, specs = [], model_specs()
        for name in models:
            with tempfile.TemporaryDirectory() as run_dir:
                results += _run_model(name, specs[name], repeats, Path(run_dir))
        return results
    finally:
        torch.set_num_threads(threads)


def lightning_installed() -> bool:
    """Lightning is a bench-only extra (`make bench` installs it); `make test` runs without it."""
    return importlib.util.find_spec("lightning") is not None


def _contestants(spec: dict, run_dir: Path) -> dict[str, Callable[[], float]]:
    specc = SpeccEpochs(spec, run_dir)
    inputs, target = specc.data
    initial = {key: value.clone() for key, value in specc.compiled.module.state_dict().items()}

    def fresh_model() -> nn.Module:
        from specc.weights.building import build

        model = build(spec)
        model.load_state_dict(initial)
        return model

    dataset = torch.utils.data.TensorDataset(inputs, target)
    contestants = {
        "specc": specc,
        "hand-written": LoopEpochs(fresh_model(), ShuffledBatches(inputs, target, BATCH_SIZE)),
        "naive DataLoader": LoopEpochs(
            fresh_model(), torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)),
    }
    if lightning_installed():
        from benchmarks.lightning_baseline import LightningEpochs

        contestants["lightning"] = LightningEpochs(fresh_model(), ShuffledBatches(inputs, target, BATCH_SIZE), adamw)
    return contestants


def _lightning_result(name, specc, seconds, pair, repeats, note) -> Result:
    case = f"{name}: specc / Lightning Trainer"
    if "lightning" not in seconds:
        return Result("train", case, math.nan, None, note="not run: lightning is not installed (make bench installs it)")
    return Result("train", case, median_ratio(specc, seconds["lightning"]), LIGHTNING_TARGET,
                  seconds=pair("lightning"), repeats=repeats, note=note)


def _run_model(name: str, spec: dict, repeats: int, run_dir: Path) -> list[Result]:
    contestants = _contestants(spec, run_dir)
    try:
        interleaved(contestants, 1)  # warm-up epoch: first-call costs (allocator, lazy imports)
        seconds = interleaved(contestants, repeats)
    finally:
        contestants["specc"].close()
    times = medians(seconds)
    note = f"CPU seconds per epoch, {repeats} epochs each after a warm-up, 1 thread"
    specc = seconds["specc"]

    def pair(other: str) -> dict[str, float]:
        return {"specc": times["specc"], other: times[other]}

    files = statistics.median(contestants["specc"].file_seconds[1:] or [math.nan])
    return [
        Result("train", f"{name}: specc / hand-written loop", median_ratio(specc, seconds["hand-written"]),
               HAND_TARGET, seconds=pair("hand-written"), repeats=repeats, note=note),
        _lightning_result(name, specc, seconds, pair, repeats, note),
        Result("train", f"{name}: naive DataLoader / specc (speed-up)", median_ratio(seconds["naive DataLoader"], specc),
               NAIVE_SPEEDUP_TARGET if name == "mlp" else None, seconds=pair("naive DataLoader"), repeats=repeats,
               note=note),
        Result("train", f"{name}: specc's files after each epoch / its epoch", files / times["specc"], None,
               seconds={"files": files, "specc": times["specc"]}, repeats=repeats,
               note="last.pt + metrics.csv + TensorBoard, written by `fit` after the timed epoch"),
    ]

