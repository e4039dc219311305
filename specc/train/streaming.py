"""Streaming data: examples read batch by batch through a `torch.utils.data.DataLoader`.

`load_data` decides: `train.data.streaming: auto` streams when the examples would take more than
`memory_budget` (default a quarter of the RAM) as tensors; otherwise everything is read once into
tensors (specc.train.data, the fast path). A streamed split (`StreamData`) behaves like a
`TensorData` for the loop: `len`, `subset`, `to(device)`, normalization and `batches(...)`.

The batch order is drawn in the main process exactly as for tensors in memory (a permutation from
the run's checkpointed generator, sharded per rank as DistributedSampler does), and the loader's
batch sampler replays it: so `--resume` continues with the same batches, and a streamed run trains
like the same run in memory. Workers fetch whole batches (`__getitems__`: one read per batch, no
per-example collation); the batch is moved to the device (pinned memory on CUDA), then scaled.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from specc.lang.errors import Location, Problem, SpecError
from specc.lang.train_config import DataConfig
from specc.train.columns import check_finite
from specc.train.data import Examples, Layout, TensorData, examples_from_raw, shape_inputs, shape_target, shard
from specc.train.sources import RawData, dataset_items, open_dataset, read_source

# Statistics passes (normalize: standard/minmax) read this many examples per batch.
_STATS_BATCH = 4096


@dataclass(frozen=True)
class LoaderSettings:
    """How batches are read: worker processes, batches prefetched per worker, pinned memory."""

    num_workers: int
    prefetch_factor: int


def load_data(config: DataConfig, layout: Layout, *, base_dir: Path, where: Location | None,
              seed: int = 0) -> Examples:
    """Read the configured source: whole into tensors, or as a stream when `streaming` says so.

    Returns:
        `Examples` whose `data` is a `TensorData`, or a `StreamData` for a streamed source.

    Raises:
        SpecError: DATA_ERROR when the source cannot be read or does not fit the model.
    """
    settings = LoaderSettings(default_workers() if config.num_workers is None else config.num_workers,
                              config.prefetch_factor)
    if config.kind == "dataset":
        dataset = open_dataset(config, base_dir, where)
        if _should_stream(config, len(dataset), layout):
            source = DatasetSource(dataset, config.dataset, layout, where)
            target = None
            return Examples(StreamData(source, np.arange(len(dataset)), target, settings))
        try:
            items = [dataset[index] for index in range(len(dataset))]
        except Exception as error:  # the user's code: report any failure at the spec line
            raise SpecError(Problem(f"{config.dataset}({config.args}) failed: {type(error).__name__}: {error}",
                                    where, "DATA_ERROR")) from None
        return examples_from_raw(dataset_items(items, config.dataset, list(layout.inputs), where), layout, where)
    raw = read_source(config, layout, base_dir=base_dir, where=where, seed=seed)
    if not _should_stream(config, len(raw.target), layout):
        return examples_from_raw(raw, layout, where)
    target, classes = shape_target(raw.target, layout, where)
    source = ColumnSource(raw, target, layout, where)
    return Examples(StreamData(source, np.arange(len(target)), target, settings), classes)


def default_workers() -> int:
    """Loader processes: one per core but one (the training process's), at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1))


def memory_budget(config: DataConfig) -> int:
    """`memory_budget` in bytes; default a quarter of the machine's RAM."""
    if config.memory_budget is not None:
        return int(config.memory_budget)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def example_bytes(layout: Layout) -> int:
    """Bytes of one example's inputs as tensors."""
    return sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size() for shape, dtype in layout.inputs.values())


def _should_stream(config: DataConfig, count: int, layout: Layout) -> bool:
    if config.streaming == "auto":
        return count * example_bytes(layout) > memory_budget(config)
    return bool(config.streaming)


class ColumnSource:
    """Rows of a source's columns (arrays, memory-mapped files or decoded-on-demand images)."""

    def __init__(self, raw: RawData, target: torch.Tensor, layout: Layout, where: Location | None):
        names = list(layout.inputs)
        self.columns = raw.inputs if isinstance(raw.inputs, dict) else {names[0]: raw.inputs}
        self.target, self.layout, self.where = target, layout, where
        shape_inputs({name: _empty_like(column) for name, column in self.columns.items()}, layout, where)

    def fetch(self, rows: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        arrays = {}
        for name, column in self.columns.items():
            arrays[name] = np.asarray(column[rows])
            check_finite(name, arrays[name], rows, self.where)
        return shape_inputs(arrays, self.layout, self.where), self.target[torch.from_numpy(rows)]

    def target_shape(self) -> tuple[int, ...]:
        return tuple(self.target.shape[1:])


class DatasetSource:
    """Items of a user Dataset, read in the loader's workers, a batch at a time."""

    def __init__(self, dataset: Any, name: str, layout: Layout, where: Location | None):
        self.dataset, self.name, self.layout, self.where = dataset, name, layout, where

    def fetch(self, rows: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        try:
            items = [self.dataset[int(row)] for row in rows]
        except Exception as error:  # the user's code
            raise SpecError(Problem(f"{self.name}[{int(rows[0])}...] failed: {type(error).__name__}: {error}",
                                    self.where, "DATA_ERROR")) from None
        raw = dataset_items(items, self.name, list(self.layout.inputs), self.where)
        for name, array in raw.inputs.items():
            check_finite(name, array, rows, self.where)
        if raw.target.dtype.kind in "OUS":
            raise SpecError(Problem(f"{self.name}: a streamed Dataset must give class indices, not text labels",
                                    self.where, "DATA_ERROR"))
        target, _ = shape_target(raw.target, self.layout, self.where)
        _check_class_range(target, rows, self.layout, self.where)
        return shape_inputs(raw.inputs, self.layout, self.where), target

    def target_shape(self) -> tuple[int, ...]:
        return tuple(self.fetch(np.zeros(1, dtype=np.int64))[1].shape[1:])


def _check_class_range(target: torch.Tensor, rows: np.ndarray, layout: Layout, where) -> None:
    if not layout.class_index or not target.numel():
        return
    bad = (target < 0) | (target >= layout.num_outputs)
    if bool(bad.any()):
        position = int(bad.reshape(len(target), -1).any(1).nonzero()[0, 0])
        raise SpecError(Problem(f"the target of row {int(rows[position])} is class "
                                f"{int(target[position].reshape(-1)[0])} but the model outputs "
                                f"{layout.num_outputs} class scores", where, "DATA_ERROR"))


class _Failure:
    """A data error raised in a loader worker, carried back whole to be raised in the main process."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems


class _Rows(Dataset):
    """The map-style Dataset the DataLoader sees: a batch of source rows per fetch."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        raise TypeError("batches come from the batch sampler")

    def __getitems__(self, rows: list[int]) -> Any:
        try:
            return self.source.fetch(np.asarray(rows, dtype=np.int64))
        except SpecError as error:
            return _Failure(error.problems)

    def __getitem__(self, row: int) -> Any:
        return self.__getitems__([row])


class _PlannedBatches(Sampler):
    """Replays the batches planned for the epoch (lists of source rows)."""

    def __init__(self):
        self.planned: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.planned)

    def __len__(self) -> int:
        return len(self.planned)


def _whole(batch: Any) -> Any:
    return batch


class StreamData:
    """One split of a streamed source: its rows, how batches are read, where they go, how they are scaled."""

    def __init__(self, source: Any, rows: np.ndarray, target: torch.Tensor | None, settings: LoaderSettings,
                 device: torch.device = torch.device("cpu"), normalizer: Any = None):
        self.source, self.rows, self.target, self.settings = source, rows, target, settings
        self.device, self.normalizer = device, normalizer
        self.load_seconds = 0.0  # time spent waiting for batches, read (and reset) by the loop
        self._loader: DataLoader | None = None
        self._sampler = _PlannedBatches()

    streamed = True

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def input_layout(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return list(self.source.layout.inputs.values())

    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(self.target.shape[1:]) if self.target is not None else self.source.target_shape()

    def subset(self, indices: Any) -> "StreamData":
        index = np.asarray(indices, dtype=np.int64)
        target = None if self.target is None else self.target[torch.from_numpy(index)]
        return StreamData(self.source, self.rows[index], target, self.settings, self.device, self.normalizer)

    def to(self, device: torch.device | str) -> "StreamData":
        return StreamData(self.source, self.rows, self.target, self.settings, torch.device(device), self.normalizer)

    def normalized(self, normalizer: Any) -> "StreamData":
        return StreamData(self.source, self.rows, self.target, self.settings, self.device, normalizer)

    def head(self, count: int) -> TensorData:
        inputs, target = self.source.fetch(self.rows[:count])
        return self._on_device(inputs, target)

    def normalizer_stats(self, kind: str) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per-feature statistics over this split in one pass (float64 sums), as `Normalizer.fit` needs."""
        layout = self.input_layout
        if kind == "none":
            return [None] * len(layout)
        sums: list[Any] = [None] * len(layout)
        for inputs, _ in self.batches(_STATS_BATCH, scaled=False):
            for index, x in enumerate(inputs):
                if x.is_floating_point():
                    sums[index] = _accumulate(sums[index], x.double())
        return [None if total is None else _finish(total, kind) for total in sums]

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None, drop_single: bool = False,
                rank: int = 0, world_size: int = 1, pad: bool = False, scaled: bool = True
                ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """The same batches `specc.train.data.batches` would give for these examples in memory."""
        count = len(self.rows)
        order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
        order = shard(order, rank, world_size, pad=pad).numpy()
        planned = [self.rows[order[start:start + batch_size]].tolist() for start in range(0, len(order), batch_size)]
        if drop_single and len(planned) > 1 and len(planned[-1]) == 1:
            planned.pop()
        self._sampler.planned = planned
        loader = self._loader_for(training=generator is not None)
        iterator, waited = iter(loader), time.perf_counter()
        for batch in iterator:
            if isinstance(batch, _Failure):
                raise SpecError(batch.problems)
            data = self._on_device(*batch, scaled=scaled)
            now = time.perf_counter()
            self.load_seconds += now - waited
            yield data.inputs, data.target
            waited = time.perf_counter()

    def _on_device(self, inputs: tuple[torch.Tensor, ...], target: torch.Tensor, scaled: bool = True) -> TensorData:
        blocking = self.device.type != "cuda"
        inputs = tuple(x.to(self.device, non_blocking=not blocking) for x in inputs)
        if scaled and self.normalizer is not None:
            inputs = self.normalizer.inputs(inputs)
        return TensorData(inputs, target.to(self.device, non_blocking=not blocking))

    def _loader_for(self, training: bool) -> DataLoader:
        """One loader per split, kept with its workers (`persistent_workers`) across epochs."""
        if self._loader is not None:
            return self._loader
        workers = self.settings.num_workers
        loader = DataLoader(_Rows(self.source), batch_sampler=self._sampler, collate_fn=_whole,
                            num_workers=workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=workers > 0 and training,
                            prefetch_factor=self.settings.prefetch_factor if workers else None,
                            generator=torch.Generator())  # its worker seeds must not draw from the
        # global generator, which dropout uses: a streamed run then matches the same run in memory
        if training:
            self._loader = loader
        return loader


def _accumulate(total: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    batch = {"count": torch.tensor(float(len(x)), dtype=torch.float64), "sum": x.sum(0), "squares": (x * x).sum(0),
             "low": x.amin(0), "high": x.amax(0)}
    if total is None:
        return batch
    return {"count": total["count"] + batch["count"], "sum": total["sum"] + batch["sum"],
            "squares": total["squares"] + batch["squares"], "low": torch.minimum(total["low"], batch["low"]),
            "high": torch.maximum(total["high"], batch["high"])}


def _finish(total: dict[str, torch.Tensor], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "standard":
        mean = total["sum"] / total["count"]
        std = (total["squares"] / total["count"] - mean * mean).clamp(min=0).sqrt()
        shift, scale = mean, std
    else:
        shift, scale = total["low"], total["high"] - total["low"]
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return shift.float().cpu(), scale.float().cpu()


def _empty_like(column: Any) -> np.ndarray:
    """A zero-example array of the column's per-example shape, to check shapes before any read."""
    return np.empty((0, *column.shape[1:]), dtype=column.dtype)
