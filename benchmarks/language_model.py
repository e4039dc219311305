"""The character GPT of specs/gpt_char.yaml on Python's documentation: specc's loop against a
hand-written nanoGPT-style loop, and generation with and without the key/value cache.

Training: both sides train the same model (the compiled spec, same initial weights) on the same
token file (specc tokenises specs/make_text.py's corpus; the loop reads specc's memory-mapped
tokens), on the same batches (window starts drawn with `torch.randint` from generators seeded
alike, as nanoGPT's `get_batch` draws them), with the same AdamW, per-step cosine schedule and
gradient clipping, on one torch thread. An epoch is `steps` steps; the contestants take turns, one
epoch each, and the ratio is the median of the per-turn ratios of CPU seconds. After the last turn
both models are scored on the same validation windows: their losses must agree (same steps).

Generation: the spec at block_size 256 with its initial weights, a one-character prompt and 255
new tokens, greedy, with and without the cache (specc.train.kv_cache); tokens per CPU second.
"""
from __future__ import annotations


import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from benchmarks.timing import SPECS, Result, Target, interleaved, median_ratio, medians

STEP_TARGET = Target("<=", 1.05)
LOSS_TARGET = Target("<=", 0.01)
CACHE_TARGET = Target(">=", 2.0)
BLOCK_FOR_GENERATION = 256


def bench_spec(corpus: Path, steps: int) -> dict:
    """specs/gpt_char.yaml reading `corpus`, `steps` steps per epoch, no metrics (the loop alone)."""
    spec = yaml.safe_load((SPECS / "gpt_char.yaml").read_text())
    train = spec["train"]
    train["data"].update(source=f"text:{corpus}", steps=steps)
    train.update(metrics=[], epochs=10_000, device="cpu", log_every=10_000)
    train["optimizer"]["AdamW"].pop("groups")   # one parameter group, as the hand-written loop has
    return spec


class SpeccEpochs:
    """specc's `train_epoch` (what `specc train` runs per epoch, before validation), one per call."""

    def __init__(self, spec: dict, out: Path):
        from specc.train.prepare import build_model, load_train_spec, open_session, prepare_data
        from specc.train.run_log import RunLog
        from specc.train.text_data import read_text_data

        loaded, corpus = read_text_data(load_train_spec(spec), out / ".tokens")
        self.compiled = build_model(loaded, torch.device("cpu"), loaded.train.seed)
        self.initial = {key: value.clone() for key, value in self.compiled.module.state_dict().items()}
        prepared = prepare_data(loaded, self.compiled, corpus)
        self.session = open_session(loaded, self.compiled, prepared, prepared.splits[0], torch.device("cpu"), out)
        self.log, self.epoch = RunLog(out, epochs=loaded.train.epochs, verbose=False), 0

    def __call__(self) -> float:
        from specc.train.loop import train_epoch

        self.epoch += 1
        start = time.process_time()
        train_epoch(self.session, self.epoch, self.log)   # the schedule steps per batch, inside
        return time.process_time() - start

    def val_loss(self) -> float:
        return self.session.evaluate(self.session.model, self.session.splits.val, _no_metrics())["loss"]


class HandWrittenEpochs:
    """nanoGPT's loop: random window starts, a stacked batch from the token file, forward, loss,
    backward, clip, AdamW step, per-step cosine schedule."""

    def __init__(self, model: nn.Module, specc: SpeccEpochs, steps: int):
        config, train = specc.session.config, specc.session.splits.train
        self.model, self.steps, self.batch_size = model.train(), steps, config.batch_size
        self.tokens, self.start, self.block = train.tokens, train.start, train.block_size
        self.count = train.window_count
        self.generator = torch.Generator().manual_seed(config.seed)   # as specc's batch-order generator
        arguments = config.optimizer.kwargs
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=arguments["lr"], betas=tuple(arguments["betas"]),
                                           weight_decay=arguments["weight_decay"])
        cosine = config.scheduler.kwargs
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cosine["T_max"],
                                                                    eta_min=cosine["eta_min"])
        self.clip = config.grad_clip

    def batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([torch.from_numpy(self.tokens[self.start + i:self.start + i + self.block].astype(np.int64))
                         for i in starts.tolist()])
        y = torch.stack([torch.from_numpy(self.tokens[self.start + i + 1:self.start + i + 1 + self.block]
                                          .astype(np.int64)) for i in starts.tolist()])
        return x, y

    def __call__(self) -> float:
        start = time.process_time()
        starts = torch.randint(self.count, (self.steps * self.batch_size,), generator=self.generator)
        for step in range(self.steps):
            x, y = self.batch(starts[step * self.batch_size:(step + 1) * self.batch_size])
            logits = self.model(x)
            loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.scheduler.step()
        return time.process_time() - start


def _no_metrics():
    from specc.train.metrics import MetricSet, Task

    return MetricSet({}, Task("multiclass"))


def run(repeats: int = 5, steps: int = 40, generation_repeats: int = 3, new_tokens: int = BLOCK_FOR_GENERATION - 1
        ) -> list[Result]:
    """Per-step time and val loss of specc against the hand-written loop; tokens/s with and without the cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            return _training(Path(folder), repeats, steps) + _generation(generation_repeats, new_tokens)
    finally:
        torch.set_num_threads(threads)


def _training(folder: Path, repeats: int, steps: int) -> list[Result]:
    import importlib.util

    maker = importlib.util.spec_from_file_location("make_text", SPECS / "make_text.py")
    module = importlib.util.module_from_spec(maker)
    maker.loader.exec_module(module)
    corpus = module.write_text(folder / "pydoc_topics.txt")
    specc = SpeccEpochs(bench_spec(corpus, steps), folder)
    from specc.weights.building import build

    model = build(specc.session.spec)
    model.load_state_dict(specc.initial)
    hand = HandWrittenEpochs(model, specc, steps)
    contestants = {"specc": specc, "hand-written": hand}
    interleaved(contestants, 1)   # warm-up epoch: first-call costs (allocator, lazy imports)
    seconds = interleaved(contestants, repeats)
    times = medians(seconds)
    note = (f"CPU seconds per epoch of {steps} steps (batch 12 x 64 characters), {repeats} epochs each after a "
            f"warm-up, 1 thread")
    specc_loss = specc.val_loss()
    hand_loss = specc.session.evaluate(model, specc.session.splits.val, _no_metrics())["loss"]
    difference = abs(specc_loss - hand_loss) / hand_loss
    return [
        Result("lm", "gpt_char: specc / hand-written nanoGPT loop, time per step", median_ratio(
            seconds["specc"], seconds["hand-written"]), STEP_TARGET,
            seconds={"specc": times["specc"] / steps, "hand-written": times["hand-written"] / steps},
            repeats=repeats, note=note),
        Result("lm", f"gpt_char: val loss after {(repeats + 1) * steps} steps, |specc - hand| / hand", difference,
               LOSS_TARGET, unit="difference", repeats=1,
               note=f"val loss specc {specc_loss:.4f}, hand-written {hand_loss:.4f}"),
    ]


def _generation(repeats: int, new_tokens: int) -> list[Result]:
    from specc.train.generation import Sampler, sample
    from specc.weights.building import build

    spec = yaml.safe_load((SPECS / "gpt_char.yaml").read_text())
    spec["vars"].update(block_size=BLOCK_FOR_GENERATION, vocab_size=96)
    torch.manual_seed(0)
    model = build(spec).eval()
    context = torch.zeros(1, 1, dtype=torch.long)

    def timed(cached: bool):
        def one() -> float:
            start = time.process_time()
            tokens = sample(model, context, new_tokens, BLOCK_FOR_GENERATION, Sampler(96, 0.0, None, 0, context.device),
                            cached)
            outputs[cached] = tokens
            return time.process_time() - start
        return one

    outputs: dict[bool, list[int]] = {}
    seconds = interleaved({"cache": timed(True), "no cache": timed(False)}, repeats)
    times = medians(seconds)
    same = outputs[True] == outputs[False]
    return [Result("lm", f"gpt_char generation, {new_tokens} tokens at block_size {BLOCK_FOR_GENERATION}: "
                         f"tokens/s with / without the KV cache", median_ratio(seconds["no cache"], seconds["cache"]),
                   CACHE_TARGET, seconds=times, repeats=repeats,
                   note=f"{new_tokens / times['cache']:.0f} tokens/s with the cache, "
                        f"{new_tokens / times['no cache']:.0f} without; same tokens: {same}")]
