"""Streaming epochs: specc's DataLoader path against a hand-written DataLoader loop, and in memory.

The data are an `npy:` array written to a temporary folder (float32 features, two separable
classes); every contestant trains the same MLP (same initial weights, AdamW, CrossEntropyLoss) on
it for one epoch per turn, in batches of `batch_size`, shuffled each epoch:

- specc streamed: `specc.train.loop.run_epoch` on a session with `streaming: true` and
  `num_workers` workers (what `specc train` runs for data above `memory_budget`);
- hand-written: what a PyTorch user writes for a memory-mapped array: a map-style Dataset over
  `np.load(mmap_mode="r")` returning one example per index, `DataLoader(shuffle=True,
  num_workers, persistent_workers=True)` with the same workers and batch size;
- specc in memory: the same session with `streaming: false` (the data fit): no loader at all.

Times are wall-clock seconds per epoch (the loader's workers are other processes, which a CPU
clock of this process would not count), alternating who goes first, after one warm-up epoch.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.timing import Result, Target, interleaved, median_ratio, medians

HAND_TARGET = Target("<=", 1.05)       # specc streamed / hand-written DataLoader loop
IN_MEMORY_TARGET = Target(">", 1.0)    # streamed / in memory: in memory stays the faster one
FEATURES, CLASSES = 256, 10
LEARNING_RATE = 0.001

MLP = {"name": "stream_mlp", "inputs": {"features": {"shape": [FEATURES]}},
       "layers": [{"Linear": {"out_features": 64}}, "ReLU", {"Linear": {"out_features": CLASSES}}]}


def write_data(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, size=rows)
    x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    x[np.arange(rows), labels] += 3
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", labels)
    return folder / "x.npy"


class SpeccEpochs:
    """specc's `run_epoch` one epoch per call, streamed or in memory."""

    def __init__(self, path: Path, streaming: bool, workers: int, batch_size: int, run_dir: Path):
        from specc.train.prepare import build_model, load_train_spec, open_session, prepare_data
        from specc.train.run_log import RunLog

        train = {"data": {"source": f"npy:{path}", "split": {"val": 0, "test": 0}, "streaming": streaming,
                          "num_workers": workers},
                 "batch_size": batch_size, "epochs": 1000, "loss": "CrossEntropyLoss",
                 "optimizer": {"AdamW": {"lr": LEARNING_RATE}}, "device": "cpu", "seed": 0}
        spec = load_train_spec({**MLP, "train": train})
        self.compiled = build_model(spec, torch.device("cpu"), 0)
        prepared = prepare_data(spec, self.compiled)
        self.session = open_session(spec, self.compiled, prepared, prepared.splits[0], torch.device("cpu"), run_dir)
        self.log = RunLog(run_dir, epochs=1000, verbose=False)

    def __call__(self) -> float:
        from specc.train.loop import run_epoch

        start = time.perf_counter()
        record = run_epoch(self.session, self.session.epoch + 1, self.log)
        seconds = time.perf_counter() - start
        self.session.history.append(record)
        self.session.epoch += 1
        return seconds

    def close(self) -> None:
        self.log.finish()


class MappedRows(torch.utils.data.Dataset):
    """The usual hand-written Dataset over a memory-mapped .npy: one example per index."""

    def __init__(self, path: Path):
        self.path, self.x = path, None
        self.y = torch.from_numpy(np.load(path.with_name("y.npy")))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        if self.x is None:  # opened in each worker
            self.x = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self.x[index])), self.y[index]


class HandWrittenEpochs:
    """forward, loss, backward, step over a DataLoader with workers."""

    def __init__(self, model: nn.Module, path: Path, workers: int, batch_size: int):
        self.model, self.loss_fn = model.train(), nn.CrossEntropyLoss()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        self.loader = torch.utils.data.DataLoader(MappedRows(path), batch_size=batch_size, shuffle=True,
                                                  num_workers=workers, persistent_workers=workers > 0)

    def __call__(self) -> float:
        start = time.perf_counter()
        for inputs, target in self.loader:
            loss = self.loss_fn(self.model(inputs), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - start


def run(repeats: int = 7, rows: int = 100_000, workers: int | None = None, batch_size: int = 256) -> list[Result]:
    """Per-epoch wall time of specc streamed, the hand-written DataLoader loop and specc in memory.

    Returns:
        specc streamed / hand-written, and specc streamed / specc in memory.
    """
    from specc.train.streaming import default_workers

    workers = default_workers() if workers is None else workers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = write_data(Path(folder), rows)
            streamed = SpeccEpochs(path, True, workers, batch_size, Path(folder) / "streamed")
            in_memory = SpeccEpochs(path, False, workers, batch_size, Path(folder) / "memory")
            model = _same_model(streamed.compiled.module)
            contestants = {"specc streamed": streamed, "hand-written": HandWrittenEpochs(model, path, workers, batch_size),
                           "specc in memory": in_memory}
            try:
                interleaved(contestants, 1)  # warm-up: workers start, first-call costs
                seconds = interleaved(contestants, repeats)
            finally:
                streamed.close()
                in_memory.close()
    finally:
        torch.set_num_threads(threads)
    times = medians(seconds)
    note = (f"wall seconds per epoch, {rows:,} x {FEATURES} float32 npy, batch {batch_size}, {workers} workers, "
            f"{repeats} epochs each after a warm-up")
    own = seconds["specc streamed"]
    return [
        Result("stream", "specc streamed / hand-written DataLoader loop", median_ratio(own, seconds["hand-written"]),
               HAND_TARGET, seconds={"specc": times["specc streamed"], "hand-written": times["hand-written"]},
               repeats=repeats, note=note),
        Result("stream", "specc streamed / specc in memory (data that fit)", median_ratio(own, seconds["specc in memory"]),
               IN_MEMORY_TARGET, seconds={"streamed": times["specc streamed"], "in memory": times["specc in memory"]},
               repeats=repeats, note=note),
    ]


def _same_model(module: nn.Module) -> nn.Module:
    from specc.weights.building import build

    model = build(MLP)
    model.load_state_dict(module.state_dict())
    return model
