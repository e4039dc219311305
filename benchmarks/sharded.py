"""`strategy: fsdp` on 2 CPU processes (gloo): peak memory per process against ddp, and specc's training
step against a hand-written FSDP2 loop on the same model.

- memory: a GPT-2-shaped spec of about 300M parameters trains `steps` steps with AdamW under `ddp`, then
  under `fsdp`, each in 2 fresh processes; each process reports its peak RSS (`ru_maxrss`), the larger
  of the two is the row's figure. Target: fsdp ≤ 0.6 × ddp (weights, gradients and Adam's moments are
  halved; the data, the interpreter and torch's own memory are not).
- step time: in one 2-process group, specc's `train_step` on the session `specc train` builds, against
  `fully_shard` applied by hand to each block and the root of the same compiled model, with the same
  AdamW and loss; `steps` steps per turn, turns interleaved, median ratio. Target ≤ 1.05.

`--quick` (and `run(size="small")`) uses a 4-layer, 256-wide model: it checks the harness in seconds.
`python benchmarks/sharded.py 100M [--memory-only]` runs the rows on GPT-2 small's shape (about 110M parameters) for
machines with less than ~16 GB to spare (ddp holds ~6 GB per process at 300M).
"""
from __future__ import annotations

import copy
import resource
import time
from typing import Any

import torch
import yaml

from benchmarks.timing import SPECS, Result, Target, interleaved, median_ratio, medians

MEMORY_TARGET = Target("<=", 0.6)
STEP_TARGET = Target("<=", 1.05)
SIZES = {  # GPT-2 small's spec with these vars
    "300M": {"vocab_size": 32000, "block_size": 64, "dim": 1024, "n_layers": 22, "n_heads": 16},
    "100M": {"vocab_size": 32000, "block_size": 64, "dim": 768, "n_layers": 12, "n_heads": 12},
    "small": {"vocab_size": 1000, "block_size": 32, "dim": 256, "n_layers": 4, "n_heads": 4},
}
BATCH_SIZE = 2  # per process


def bench_spec(size: str, strategy: str) -> dict:
    """The benchmark's spec: GPT-2's layout at `size`, synthetic token data, AdamW, no validation."""
    spec = copy.deepcopy(yaml.safe_load((SPECS / "gpt2_small.yaml").read_text()))
    spec["name"] = f"fsdp_bench_{size}"
    spec["vars"].update(SIZES[size])
    spec["train"] = {"data": {"source": "synthetic:sequence", "args": {"samples": 64},
                              "split": {"val": 0.0, "test": 0.0}},
                     "batch_size": BATCH_SIZE, "epochs": 1, "loss": "CrossEntropyLoss", "threads": 1,
                     "optimizer": {"AdamW": {"lr": 0.0003}}, "strategy": strategy}
    return spec


def _session(spec: dict, run_dir: str):
    from pathlib import Path

    from specc.train.prepare import build_model, load_train_spec, open_session, prepare_data

    loaded = load_train_spec(spec)
    device = torch.device("cpu")
    compiled = build_model(loaded, device, loaded.train.seed)
    prepared = prepare_data(loaded, compiled)
    return open_session(loaded, compiled, prepared, prepared.splits[0], device, Path(run_dir)), compiled


def _batch(session) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    train = session.splits.train
    return tuple(x[:BATCH_SIZE] for x in train.inputs), train.target[:BATCH_SIZE]


def peak_memory(spec: dict, steps: int, run_dir: str) -> list[float]:
    """One process of the memory row: `steps` training steps, then every rank's peak RSS in MB."""
    import torch.distributed as dist

    from specc.train.loop import train_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        session, _ = _session(spec, run_dir)
        inputs, target = _batch(session)
        for _ in range(steps):
            train_step(session, inputs, target)
        peaks: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # kB -> MB
        return peaks
    finally:
        dist.destroy_process_group()


def step_times(spec: dict, steps: int, repeats: int, run_dir: str) -> dict[str, list[float]]:
    """One process of the step-time row: specc's step and the hand-written FSDP2 step, interleaved."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.fsdp import fully_shard

    from specc.build.compiler import compile as compile_spec
    from specc.build.units import block_units
    from specc.lang.spec import load
    from specc.train.loop import train_step
    from specc.train.sharding import fill_initial_values

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        session, _ = _session(spec, run_dir)
        inputs, target = _batch(session)
        compiled = compile_spec(load(spec), device="meta", symbolic=False)  # the hand-written side
        model = compiled.module
        for path in block_units(compiled):
            fully_shard(model.get_submodule(path))
        fully_shard(model)
        model.to_empty(device="cpu")
        fill_initial_values(model, compiled, 0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.0003)

        def hand_written() -> float:
            start = time.perf_counter()
            for _ in range(steps):
                logits = model(*inputs)                                     # (B, T, vocab)
                loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return time.perf_counter() - start

        def specc_steps() -> float:
            start = time.perf_counter()
            for _ in range(steps):
                train_step(session, inputs, target)
            return time.perf_counter() - start

        contestants = {"specc": specc_steps, "hand-written": hand_written}
        interleaved(contestants, 1)  # warm-up
        return interleaved(contestants, repeats)
    finally:
        dist.destroy_process_group()


def run(repeats: int = 5, steps: int = 3, size: str = "300M", timing: bool = True) -> list[Result]:
    """The fsdp rows: peak RSS per process fsdp / ddp, and (with `timing`) the step time specc / hand-written."""
    import os
    import tempfile

    from specc.train.launch import launch

    with tempfile.TemporaryDirectory() as run_dir:
        # glibc keeps freed blocks below its mmap threshold (raised up to 32 MB as it goes) in the
        # process, so RSS would show the allocator's high water rather than live tensors; a fixed
        # low threshold returns every large tensor's memory to the system, for ddp and fsdp alike
        previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        try:
            peaks = {strategy: launch(peak_memory, (bench_spec(size, strategy), steps, run_dir), 2)
                     for strategy in ("ddp", "fsdp")}
        finally:
            if previous is None:
                del os.environ["MALLOC_MMAP_THRESHOLD_"]
            else:
                os.environ["MALLOC_MMAP_THRESHOLD_"] = previous
        seconds = launch(step_times, (bench_spec(size, "fsdp"), steps, repeats, run_dir), 2) if timing else None
    parameters = _parameters(size)
    ddp, fsdp = max(peaks["ddp"]), max(peaks["fsdp"])
    memory = Result("fsdp", f"gpt {parameters / 1e6:.0f}M params, 2 processes: peak RSS per process, fsdp / ddp",
                    fsdp / ddp, MEMORY_TARGET, repeats=1, note=f"ddp {ddp:.0f} MB, fsdp {fsdp:.0f} MB per process "
                    f"(largest of 2), AdamW, batch {BATCH_SIZE} per process, {steps} steps")
    if seconds is None:
        return [memory]
    step = Result("fsdp", f"gpt {parameters / 1e6:.0f}M params, 2 processes: training step, specc / hand-written "
                  "fully_shard", median_ratio(seconds["specc"], seconds["hand-written"]), STEP_TARGET,
                  seconds=medians(seconds), repeats=repeats, note=f"{steps} steps per turn, interleaved, wall time")
    return [memory, step]


def _parameters(size: str) -> int:
    from specc.build.compiler import compile as compile_spec

    compiled = compile_spec(bench_spec(size, "fsdp"), device="meta", symbolic=False)
    return sum(p.numel() for p in compiled.module.parameters())


if __name__ == "__main__":
    import sys

    for row in run(size=sys.argv[1] if len(sys.argv) > 1 else "300M", timing="--memory-only" not in sys.argv):
        print(f"{row.case}: {row.value:.3f} (target {row.target}) {row.seconds or ''} {row.note}")
