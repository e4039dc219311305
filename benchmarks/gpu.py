"""GPU training step: specc's loop against a hand-written loop, with `amp: true` and with `compile: true`.

Three models on synthetic data: digits_cnn (batch 64, 1×8×8), resnet18 (batch 128, 3×64×64) and
gpt2_small (batch 8, sequence 256). Both sides train the same compiled spec from the same initial
weights on the same batches already on the device, with AdamW and cross-entropy:

- specc: `specc.train.loop.run_epoch` on a session built as `specc train` builds it (`amp: true`:
  fp16 autocast + GradScaler on CUDA, bf16 autocast elsewhere; `compile: true`: torch.compile);
- hand-written: the same autocast and GradScaler (or torch.compile) in a plain loop.

Each repeat is one epoch of `steps` steps per side, taking turns, after a warm-up epoch (which
pays torch.compile's compilation); the clock is wall time between `torch.cuda.synchronize()`s.
Rows: the step-time ratio (target ≤ 1.05, as the CPU training loop), specc's images/s or tokens/s,
and both sides' peak memory (`torch.cuda.max_memory_allocated`). Without CUDA every row says
"skipped: no CUDA"; `device="cpu"` runs the same code on the CPU (the smoke test does, tiny).
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from benchmarks.timing import SPECS, Result, Target, interleaved, median_ratio

STEP_TARGET = Target("<=", 1.05)
MODES = ("amp", "compile")


@dataclass(frozen=True)
class Workload:
    """One model's spec file, the var overrides that size it, its synthetic data and batch size."""

    spec: str
    variables: dict = field(default_factory=dict)
    source: str = "synthetic:classification"
    batch_size: int = 64
    unit: str = "images"           # what a throughput row counts: images or tokens


WORKLOADS = {
    "digits_cnn": Workload("digits_cnn.yaml"),
    "resnet18": Workload("resnet18.yaml", {"image_size": 64}, batch_size=128),
    "gpt2_small": Workload("gpt2_small.yaml", {"block_size": 256}, "synthetic:sequence", 8, "tokens"),
}


def cuda_device_name() -> str | None:
    """The GPU `make bench` runs on, or None without CUDA."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run(repeats: int = 7, steps: int = 20, device: str | None = None, models: tuple[str, ...] = tuple(WORKLOADS),
        modes: tuple[str, ...] = MODES, workloads: dict[str, Workload] | None = None) -> list[Result]:
    """Time training steps of each model in each mode, specc and hand-written in turn.

    Args:
        repeats: epochs timed per side (after one warm-up epoch each).
        steps: training steps per epoch.
        device: "cuda" (the default when CUDA is present) or "cpu"; None without CUDA: skipped rows.
        models: names in `workloads`.
        modes: "amp" and/or "compile".
        workloads: model name -> Workload (default WORKLOADS; the smoke test passes tiny ones).
    """
    workloads = workloads or WORKLOADS
    device = device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        return [Result("gpu", f"{name} {mode}: training step, specc / hand-written", 0.0, None,
                       note="skipped: no CUDA") for name in models for mode in modes]
    results = []
    for name in models:
        for mode in modes:
            with tempfile.TemporaryDirectory() as run_dir:
                results += _run_case(name, workloads[name], mode, repeats, steps, torch.device(device), Path(run_dir))
    return results


def train_spec(workload: Workload, mode: str, steps: int, device: torch.device) -> dict:
    """The workload's spec (vars applied later) with a `train:` section for `mode`."""
    spec = yaml.safe_load((SPECS / workload.spec).read_text())
    spec["train"] = {
        "data": {"source": workload.source, "args": {"samples": workload.batch_size * steps},
                 "split": {"val": 0, "test": 0}},
        "batch_size": workload.batch_size, "epochs": 1000, "loss": "CrossEntropyLoss",
        "optimizer": {"AdamW": {"lr": 1e-4}}, "device": str(device), "seed": 0,
        "amp": mode == "amp", "compile": mode == "compile",
    }
    return spec


class SpeccSteps:
    """specc's loop, one epoch per call, on a session built the way `specc train` builds it."""

    def __init__(self, spec: dict, variables: dict, device: torch.device, run_dir: Path):
        from specc.train.prepare import build_model, load_train_spec, open_session, prepare_data
        from specc.train.run_log import RunLog

        loaded = load_train_spec(spec, variables)
        self.device = device
        self.compiled = build_model(loaded, device, loaded.train.seed)
        prepared = prepare_data(loaded, self.compiled)
        self.session = open_session(loaded, self.compiled, prepared, prepared.splits[0], device, run_dir)
        self.log = RunLog(run_dir, epochs=loaded.train.epochs, verbose=False)

    def __call__(self) -> float:
        from specc.train.loop import run_epoch

        with _timed(self.device) as elapsed:
            self.session.history.append(run_epoch(self.session, self.session.epoch + 1, self.log))
            self.session.epoch += 1
        return elapsed()

    def close(self) -> None:
        self.log.finish()


class HandSteps:
    """The plain loop with the same autocast / GradScaler / torch.compile as specc's `mode`."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, batch_size: int, mode: str,
                 device: torch.device):
        self.model, self.device, self.mode = model.train(), device, mode
        self.forward = torch.compile(model) if mode == "compile" else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.scaler = torch.amp.GradScaler("cuda") if mode == "amp" and device.type == "cuda" else None
        self.batches = [(inputs[start:start + batch_size], target[start:start + batch_size])
                        for start in range(0, len(target), batch_size)]
        self.loss_fn = nn.CrossEntropyLoss()

    def autocast(self):
        if self.mode != "amp":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16)

    def __call__(self) -> float:
        with _timed(self.device) as elapsed:
            for inputs, target in self.batches:
                with self.autocast():
                    output = self.forward(inputs)
                    loss = self.loss_fn(output.flatten(0, -2), target.flatten()) if output.dim() > 2 \
                        else self.loss_fn(output, target)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    self.optimizer.step()
        return elapsed()


@contextlib.contextmanager
def _timed(device: torch.device):
    """Wall seconds of the block, with the device's queued work finished at both ends."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start, box = time.perf_counter(), []
    yield lambda: box[0]
    synchronize()
    box.append(time.perf_counter() - start)


def _contestants(workload: Workload, mode: str, steps: int, device: torch.device, run_dir: Path) -> dict:
    from specc.weights.building import build

    spec = train_spec(workload, mode, steps, device)
    specc = SpeccSteps(spec, workload.variables, device, run_dir)
    train = specc.session.splits.train
    model = build({key: value for key, value in spec.items() if key != "train"}, device=device, **workload.variables)
    model.load_state_dict(specc.compiled.module.state_dict())  # the same initial weights
    return {"specc": specc, "hand-written": HandSteps(model, train.inputs[0], train.target, workload.batch_size,
                                                      mode, device)}


def _peak_memory(device: torch.device, run) -> float | None:
    """Peak bytes allocated on the GPU while `run` runs (None off CUDA)."""
    if device.type != "cuda":
        run()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    return torch.cuda.max_memory_allocated() / 2**20


def _run_case(name: str, workload: Workload, mode: str, repeats: int, steps: int, device: torch.device,
              run_dir: Path) -> list[Result]:
    contestants = _contestants(workload, mode, steps, device, run_dir)
    try:
        peaks = {who: _peak_memory(device, contestant) for who, contestant in contestants.items()}  # warm-up epoch
        seconds = interleaved(contestants, repeats)
    finally:
        contestants["specc"].close()
    per_step = {who: statistics.median(values) / steps for who, values in seconds.items()}
    label = f"{name} {mode}"
    where = cuda_device_name() if device.type == "cuda" else str(device)
    note = f"{where}; batch {workload.batch_size}, {steps} steps per epoch, {repeats} epochs each after a warm-up"
    per_item = workload.batch_size * (workload.variables.get("block_size", 1) if workload.unit == "tokens" else 1)
    rows = [
        Result("gpu", f"{label}: training step, specc / hand-written", median_ratio(seconds["specc"], seconds["hand-written"]),
               STEP_TARGET, seconds=per_step, repeats=repeats, note=note),
        Result("gpu", f"{label}: specc {workload.unit}/s", per_item / per_step["specc"], None, unit=f"{workload.unit}/s",
               seconds={"specc step": per_step["specc"]}, repeats=repeats,
               note=f"hand-written: {per_item / per_step['hand-written']:.0f} {workload.unit}/s"),
    ]
    if peaks["specc"] is not None:
        rows.append(Result("gpu", f"{label}: peak memory, specc", peaks["specc"], None, unit="MB", repeats=1,
                           note=f"torch.cuda.max_memory_allocated; hand-written: {peaks['hand-written']:.0f} MB"))
    return rows
