"""Training data: read a source, shape it to the spec's inputs, split, normalize, batch on the device.

Everything is materialized once as tensors `(N, *shape)` and moved to the device; a batch is an
index into them (a permutation per epoch), so training never calls `Dataset.__getitem__` per sample.
Sources are listed in docs/train.md; `specc.train.sources` reads them into numpy arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from specc.lang.errors import Location, Problem, SpecError
from specc.train.columns import check_finite, materialize
from specc.train.sources import RawData, read_source
from specc.lang.train_config import DataConfig, SplitConfig

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16, "long": torch.long, "int64": torch.long, "int32": torch.int32,
                "bool": torch.bool}


@dataclass(frozen=True)
class Layout:
    """What the model consumes and produces, per example (no batch dim)."""

    inputs: dict[str, tuple[tuple[int, ...], torch.dtype]]  # spec input name -> (shape, dtype)
    output_shape: tuple[int, ...]                             # of the model's (first) output
    class_index: bool                                         # targets are class indices (long)

    @property
    def num_outputs(self) -> int:
        """Size of the output's last dim: the class count of a classifier."""
        return self.output_shape[-1] if self.output_shape else 1


@dataclass
class TensorData:
    """Examples as tensors: one `(N, *shape)` tensor per model input, plus the targets."""

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor

    def __len__(self) -> int:
        return self.target.shape[0]

    def subset(self, indices: np.ndarray | torch.Tensor) -> "TensorData":
        index = torch.as_tensor(indices, dtype=torch.long, device=self.target.device)
        return TensorData(tuple(x[index] for x in self.inputs), self.target[index])

    def to(self, device: torch.device | str) -> "TensorData":
        return TensorData(tuple(x.to(device) for x in self.inputs), self.target.to(device))

    @property
    def device(self) -> torch.device:
        return self.target.device

    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(self.target.shape[1:])

    @property
    def input_layout(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """(shape, dtype) per example of each input."""
        return [(tuple(x.shape[1:]), x.dtype) for x in self.inputs]

    def head(self, count: int) -> "TensorData":
        """The first `count` examples (the loss check before training runs on them)."""
        return TensorData(tuple(x[:count] for x in self.inputs), self.target[:count])


@dataclass
class Examples:
    """Every example of a source before splitting; `classes` names string labels (csv)."""

    data: TensorData
    classes: list[str] | None = None


@dataclass
class DataSplits:
    """One train/val/test partition (a holdout, or one fold of K)."""

    train: TensorData
    val: TensorData | None = None
    test: TensorData | None = None
    fold: int | None = None  # 0-based fold index under K-fold

    def named(self) -> dict[str, TensorData]:
        """The splits that exist, in train/val/test order."""
        return {name: data for name, data in (("train", self.train), ("val", self.val), ("test", self.test))
                if data is not None and len(data)}


def layout_of(spec: Any, input_shapes: dict[str, list[int]], output_shape: tuple[int, ...],
              class_index: bool) -> Layout:
    """The model's inputs (shapes with vars resolved, from the compiler) and its output shape."""
    inputs = {name: (tuple(input_shapes[name]), TORCH_DTYPES[entry.dtype]) for name, entry in spec.inputs.items()}
    return Layout(inputs, tuple(output_shape), class_index)


def load_examples(config: DataConfig, layout: Layout, *, base_dir: Path, where: Location | None,
                  seed: int = 0) -> Examples:
    """Read the configured source and shape it to the model's inputs and outputs.

    Args:
        config: the `train.data` section.
        layout: what the model consumes and produces.
        base_dir: the spec file's folder; relative paths are looked up there, then in the cwd.
        where: the spec position that data errors point at.
        seed: seed of synthetic data.

    Returns:
        The examples as CPU tensors.

    Raises:
        SpecError: DATA_ERROR when the source cannot be read or does not fit the model.
    """
    return examples_from_raw(read_source(config, layout, base_dir=base_dir, where=where, seed=seed), layout, where)


def examples_from_raw(raw: RawData, layout: Layout, where: Location | None) -> Examples:
    """Read every column whole (images are decoded once here), check and shape them as tensors.

    Raises:
        SpecError: DATA_ERROR for nan/inf inputs (naming the row), mismatched counts or shapes.
    """
    columns = raw.inputs if isinstance(raw.inputs, dict) else {None: raw.inputs}
    arrays = {name: materialize(column) for name, column in columns.items()}
    for name, array in arrays.items():
        check_finite(name or next(iter(layout.inputs)), array, None, where)
    inputs = shape_inputs(arrays if isinstance(raw.inputs, dict) else arrays[None], layout, where)
    target, classes = shape_target(raw.target, layout, where)
    if len({len(x) for x in inputs} | {len(target)}) != 1:
        _fail(f"the source has {[len(x) for x in inputs]} input examples but {len(target)} targets", where)
    return Examples(TensorData(inputs, target), classes)


def make_splits(examples: Examples, split: SplitConfig, class_index: bool) -> list[DataSplits]:
    """The holdout partition, or the K folds (each fold in turn validates), all sharing one test set.

    Stratification keeps class proportions when the target is one class index per example and
    every class has enough members; otherwise the split is plain random.
    """
    data = examples.data
    target = data.target  # None for a streamed Dataset: its targets are only read while training
    labels = target.numpy() if target is not None and class_index and target.dim() == 1 and split.stratify else None
    indices = np.arange(len(data))
    rest, test = _divide(indices, split.test, labels, split.seed)
    rest_labels = labels[rest] if labels is not None else None
    if split.kfold is None:
        fraction_of_rest = split.val / (1 - split.test)
        train, val = _divide(rest, fraction_of_rest, rest_labels, split.seed)
        return [DataSplits(data.subset(train), data.subset(val), data.subset(test))]
    return [DataSplits(data.subset(rest[train]), data.subset(rest[val]), data.subset(test), fold)
            for fold, (train, val) in enumerate(_folds(rest, split.kfold, rest_labels, split.seed, len(data)))]


class Normalizer:
    """Per-feature scaling of float inputs, fitted on the training split only (no leakage)."""

    def __init__(self, kind: str, stats: list[tuple[torch.Tensor, torch.Tensor] | None]):
        self.kind = kind
        self.stats = stats  # per input: (shift, scale), or None to leave it as is (tokens, kind none)

    @classmethod
    def fit(cls, kind: Any, train: Any) -> "Normalizer":
        """Fit on the training split; `kind` none/standard/minmax, or fixed `{mean, std}` per channel.

        A streamed split (specc.train.streaming) computes its statistics in one pass of batches."""
        if not isinstance(kind, str):
            return cls._per_channel(kind, train)
        if not isinstance(train, TensorData):
            return cls(kind, train.normalizer_stats(kind))
        stats = []
        for x in train.inputs:
            if kind == "none" or not x.is_floating_point():
                stats.append(None)
            elif kind == "standard":
                stats.append((x.mean(0), _nonzero(x.std(0, unbiased=False))))
            else:
                low = x.amin(0)
                stats.append((low, _nonzero(x.amax(0) - low)))
        return cls(kind, stats)

    @classmethod
    def _per_channel(cls, config: Any, train: Any) -> "Normalizer":
        """`normalize: {mean, std}`: every float input [C, ...] with C channels is scaled per channel."""
        stats = []
        for shape, dtype in train.input_layout:
            if not dtype.is_floating_point or not shape or shape[0] != len(config.mean):
                stats.append(None)
                continue
            view = (len(config.mean),) + (1,) * (len(shape) - 1)
            stats.append((torch.tensor(config.mean).reshape(view), torch.tensor(config.std).reshape(view)))
        return cls("image", stats)

    def __call__(self, data: Any) -> Any:
        if not isinstance(data, TensorData):
            return data.normalized(self)  # a streamed split scales each batch on the device
        return TensorData(self.inputs(data.inputs), data.target)

    def inputs(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(x if stat is None else (x - stat[0].to(x.device)) / stat[1].to(x.device)
                     for x, stat in zip(inputs, self.stats))

    def state_dict(self) -> dict:
        """Tensors, lists and strings only, so checkpoints load with weights_only=True."""
        return {"kind": self.kind, "stats": [None if s is None else [s[0].cpu(), s[1].cpu()] for s in self.stats]}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Normalizer":
        return cls(state["kind"], [None if s is None else (s[0], s[1]) for s in state["stats"]])


# Splits up to this size are shuffled with one gather per epoch (an extra copy of the split);
# larger ones gather batch by batch so the device never holds the split twice.
_GATHER_ONCE_BYTES = 256 * 2**20


def batches(data: TensorData, batch_size: int, *, generator: torch.Generator | None = None,
            drop_single: bool = False, rank: int = 0, world_size: int = 1, pad: bool = False
            ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Yield `(inputs, target)` batches; shuffled by `generator` when given, in order otherwise.

    Args:
        data: the split, already on the device.
        batch_size: examples per batch (per rank).
        generator: a CPU generator for the epoch's permutation (its state is checkpointed). Seeded
            alike on every rank, it gives all ranks the same permutation each epoch, and a new one
            the next epoch (what `DistributedSampler.set_epoch` does).
        drop_single: skip a trailing batch of one example (BatchNorm cannot train on it).
        rank, world_size: distributed training: each rank takes every world_size-th example.
        pad: give every rank the same number of examples (see `shard`); training needs it.
    """
    if not isinstance(data, TensorData):  # a streamed split: a DataLoader (specc.train.streaming)
        yield from data.batches(batch_size, generator=generator, drop_single=drop_single, rank=rank,
                                world_size=world_size, pad=pad)
        return
    count = len(data)
    if generator is None and world_size == 1:
        for start in range(0, count, batch_size):  # slices are views: no copy for evaluation
            yield tuple(x[start:start + batch_size] for x in data.inputs), data.target[start:start + batch_size]
        return
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    order = shard(order, rank, world_size, pad=pad).to(data.target.device)
    tensors, total = (*data.inputs, data.target), len(order)
    if sum(t.element_size() * t.numel() for t in tensors) <= _GATHER_ONCE_BYTES:
        # one gather per epoch, then batches are views: a small-batch epoch spends no time on
        # per-step index copies (the cost of a hand-written loop over pre-shuffled tensors)
        tensors, order = tuple(t[order] for t in tensors), None
    for start in range(0, total, batch_size):
        if order is None:
            batch = tuple(t[start:start + batch_size] for t in tensors)
        else:
            batch = tuple(t[order[start:start + batch_size]] for t in tensors)
        if drop_single and len(batch[-1]) == 1 and start > 0:
            return
        yield batch[:-1], batch[-1]


def shard(order: torch.Tensor, rank: int, world_size: int, *, pad: bool = False) -> torch.Tensor:
    """This rank's share of `order`: every world_size-th index, starting at `rank`.

    With `pad`, indices from the start of `order` are repeated until its length divides evenly,
    as `DistributedSampler` does: every rank then takes the same number of steps, which DDP needs
    (each step ends in a collective), at the cost of seeing up to world_size - 1 examples twice.
    """
    if pad and len(order) % world_size:
        total = shard_size(len(order), world_size) * world_size
        order = order.repeat(math.ceil(total / len(order)))[:total]
    return order[rank::world_size]


def shard_size(count: int, world_size: int) -> int:
    """Examples per rank of a padded shard (see `shard`)."""
    return math.ceil(count / world_size)


def shape_inputs(raw: dict[str, np.ndarray] | np.ndarray, layout: Layout, where) -> tuple[torch.Tensor, ...]:
    """One tensor per spec input, reshaped to its declared shape when the value count matches.

    Raises:
        SpecError: DATA_ERROR naming both shapes when the counts differ, or a missing input.
    """
    names = list(layout.inputs)
    if not isinstance(raw, dict):
        if len(names) != 1:
            _fail(f"the spec has inputs {', '.join(names)} but the source gives one feature array; "
                  f"use an npz file with one array per input name", where)
        raw = {names[0]: raw}
    missing = [name for name in names if name not in raw]
    if missing:
        _fail(f"the source has no data for input(s) {', '.join(missing)} (it has {', '.join(raw)})", where)
    return tuple(_reshape(name, np.asarray(raw[name]), *layout.inputs[name], where) for name in names)


def _reshape(name: str, array: np.ndarray, shape: tuple[int, ...], dtype: torch.dtype, where) -> torch.Tensor:
    per_example = array.shape[1:]
    if math.prod(per_example) != math.prod(shape):
        _fail(f"input {name} is {list(shape)} ({math.prod(shape)} values per example) but the data's examples "
              f"are {list(per_example)} ({math.prod(per_example)} values)", where)
    if dtype in (torch.long, torch.int32) and not _integral(array):
        _fail(f"input {name} has dtype long but the data are not whole numbers", where)
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # zero-copy table columns are read-only; torch wants writable memory
        array = array.copy()
    return torch.as_tensor(array).reshape(len(array), *shape).to(dtype)


def shape_target(target: np.ndarray, layout: Layout, where) -> tuple[torch.Tensor, list[str] | None]:
    classes = None
    if target.dtype.kind in "OUS":  # string labels (csv): encode them, keep the names for predictions
        if not layout.class_index:
            _fail("the targets are text, which needs a class-index loss such as CrossEntropyLoss", where)
        classes, target = np.unique(target.astype(str), return_inverse=True)
        classes = classes.tolist()
    if layout.class_index:
        if not _integral(target):
            _fail("the loss expects class indices but the targets are not whole numbers; "
                  "use a regression loss such as MSELoss", where)
        return torch.as_tensor(np.array(target)).long(), classes  # a copy: table columns are read-only
    tensor = torch.as_tensor(np.asarray(target, dtype=np.float32))
    if tensor.dim() == 1 or math.prod(tensor.shape[1:]) == math.prod(layout.output_shape):
        tensor = tensor.reshape(len(tensor), *layout.output_shape)  # (N,) -> (N, 1) for one output
    return tensor, classes


def _divide(indices: np.ndarray, fraction: float, labels: np.ndarray | None, seed: int):
    """Split `indices` into (kept, taken) with `fraction` taken, stratified when possible."""
    if fraction <= 0:
        return indices, indices[:0]
    from sklearn.model_selection import train_test_split

    try:
        kept, taken = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:  # a class too small to stratify: fall back to a plain random split
        kept, taken = train_test_split(indices, test_size=fraction, random_state=seed)
    return np.sort(kept), np.sort(taken)


def _folds(indices: np.ndarray, k: int, labels: np.ndarray | None, seed: int, total: int):
    from sklearn.model_selection import KFold, StratifiedKFold

    if len(indices) < k:
        raise SpecError(Problem(f"kfold {k} needs at least {k} examples, the data have {total}", None, "DATA_ERROR"))
    if labels is not None and np.unique(labels, return_counts=True)[1].min() >= k:
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(indices, labels))
    return list(KFold(k, shuffle=True, random_state=seed).split(indices))


def _integral(array: np.ndarray) -> bool:
    array = np.asarray(array)
    return array.dtype.kind in "iub" or (array.dtype.kind == "f" and bool(np.all(np.mod(array, 1) == 0)))


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    # constant features (e.g. digits' blank corner pixels) would divide by zero
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _fail(message: str, where: Location | None) -> None:
    raise SpecError(Problem(message, where, "DATA_ERROR"))
