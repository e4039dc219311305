"""Language-model examples: `block_size` windows of a token file (specc.train.text_corpus).

An example starting at token i of a split is input = tokens[i:i+T], target = tokens[i+1:i+T+1],
with T the spec input's length. Windows never leave their split (splits are contiguous ranges of the
stream, so no window straddles two).

- Training draws an epoch's window starts uniformly from the split with the run's checkpointed
  generator (nanoGPT's `get_batch`), `samples_per_epoch` of them (default: as many as the split
  has whole windows, one pass over its tokens; `steps` sets it to steps × batch_size). The draw
  needs no memory per window, so a split of billions of tokens trains in bounded memory, and
  `--resume` from interrupted.pt draws the same starts again.
- Evaluation reads the split's windows side by side (stride T); when the split's last tokens do not
  fill a window, one more window ends exactly at the split's end, so every token of the split is
  predicted at least once and nothing past it is read.

Windows are read from the memory-mapped file one batch at a time, in the training process: a
gather costs microseconds, and a DataLoader's workers would only add latency.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch

from specc.train.data import TensorData, shard
from specc.train.text_corpus import TokenCorpus


class TokenWindows:
    """One split of a token stream as `block_size` windows; behaves like a `TensorData` for the loop."""

    streamed = False
    target = None   # targets are read with the windows (the loop's class checks look for a tensor here)

    def __init__(self, tokens: np.ndarray, start: int, end: int, block_size: int, samples: int,
                 units: dict[str, float], device: torch.device = torch.device("cpu")):
        self.tokens, self.start, self.end, self.block_size = tokens, start, end, block_size
        self.samples, self.units, self.device = samples, units, device

    @property
    def window_count(self) -> int:
        """Distinct window starts in the split (a window needs block_size + 1 tokens)."""
        return max(0, self.end - self.start - self.block_size)

    def __len__(self) -> int:
        return self.samples

    def evaluation_starts(self) -> np.ndarray:
        """Side-by-side window starts (stride T), plus one window ending at the split's end when the
        last tokens do not fill a window; relative to the split's start."""
        length, size = self.end - self.start, self.block_size
        if length < size + 1:
            return np.zeros(0, dtype=np.int64)
        starts = np.arange(0, length - size, size, dtype=np.int64)
        if starts[-1] + size + 1 < length:   # targets up to starts[-1] + size are covered
            starts = np.append(starts, length - size - 1)
        if len(starts) > self.samples:        # a split far larger than an epoch: evenly spread windows
            starts = starts[np.linspace(0, len(starts) - 1, self.samples).round().astype(np.int64)]
        return starts

    def to(self, device: torch.device | str) -> "TokenWindows":
        return TokenWindows(self.tokens, self.start, self.end, self.block_size, self.samples, self.units,
                            torch.device(device))

    def normalized(self, normalizer: Any) -> "TokenWindows":
        return self   # token ids are never scaled

    def normalizer_stats(self, kind: str) -> list[None]:
        return [None]

    @property
    def input_layout(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((self.block_size,), torch.long)]

    @property
    def target_shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    def head(self, count: int) -> TensorData:
        inputs, target = self.read(self.evaluation_starts()[:count])
        return TensorData(inputs, target)

    def read(self, starts: np.ndarray) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        """The windows at `starts` (relative to the split) as (inputs,), target on the device."""
        offsets = self.start + np.asarray(starts, dtype=np.int64)[:, None] + np.arange(self.block_size + 1)
        window = torch.from_numpy(self.tokens[offsets].astype(np.int64))   # (B, T + 1)
        if self.device.type != "cpu":
            window = window.to(self.device, non_blocking=True)
        return (window[:, :-1].contiguous(),), window[:, 1:].contiguous()

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None, drop_single: bool = False,
                rank: int = 0, world_size: int = 1, pad: bool = False
                ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """Training (a generator): `samples` random windows; evaluation: the side-by-side windows."""
        if generator is not None:
            starts = torch.randint(self.window_count, (self.samples,), generator=generator)
        else:
            starts = torch.from_numpy(self.evaluation_starts())
        starts = shard(starts, rank, world_size, pad=pad).numpy()
        for begin in range(0, len(starts), batch_size):
            chunk = starts[begin:begin + batch_size]
            if drop_single and len(chunk) == 1 and begin > 0:
                return
            yield self.read(chunk)


def split_windows(corpus: TokenCorpus, block_size: int, samples_per_epoch: int | None, steps: int | None,
                  batch_size: int, world_size: int = 1) -> dict[str, TokenWindows | None]:
    """train/val/test windows of a token corpus (None for a split without text).

    The training split's epoch is `samples_per_epoch` windows, or steps × batch_size (per process),
    or by default one pass over its tokens (its token count // block_size windows). Evaluated
    splits read all their side-by-side windows.
    """
    windows: dict[str, TokenWindows | None] = {}
    for name, (start, end) in corpus.bounds.items():
        counts = corpus.counts[name]
        if end - start < block_size + 1:
            windows[name] = None
            continue
        units = {"char": counts["tokens"] / max(counts["chars"], 1), "byte": counts["tokens"] / max(counts["bytes"], 1)}
        if name == "train":
            samples = samples_per_epoch or (steps * batch_size * world_size if steps else
                                            max(1, (end - start) // block_size))
        else:
            samples = math.ceil((end - start - 1) / block_size)   # every evaluation window
        windows[name] = TokenWindows(corpus.tokens, start, end, block_size, samples, units)
    return windows


def unigram_baseline(corpus: TokenCorpus, chunk: int = 1 << 24) -> dict[str, dict[str, float]]:
    """What a model that ignores the context scores: each split's cross-entropy under the training
    split's token frequencies (add-one smoothed), in nats per token and bits per character.

    Read in chunks of the memory-mapped file, so it costs one pass and bounded memory.
    """
    vocabulary = corpus.tokenizer.vocab_size

    def frequencies(start: int, end: int) -> np.ndarray:
        counts = np.zeros(vocabulary, dtype=np.int64)
        for low in range(start, end, chunk):
            counts += np.bincount(corpus.tokens[low:min(end, low + chunk)], minlength=vocabulary)[:vocabulary]
        return counts

    train = frequencies(*corpus.bounds["train"])
    log_probability = np.log((train + 1) / (train.sum() + vocabulary))
    baseline = {}
    for name, (start, end) in corpus.bounds.items():
        if end > start:
            nats = float(-(frequencies(start, end) * log_probability).sum() / (end - start))
            baseline[name] = {"loss": nats, "bits_per_char": nats / math.log(2) * (end - start)
                              / max(corpus.counts[name]["chars"], 1)}
    return baseline
