"""`specc quantize`: post-training quantization of a trained checkpoint with torchao, measured.

torchao's `quantize_` swaps the weights of `nn.Linear` layers for int8 (or int4) tensor subclasses
in place. The float and the quantized model are both evaluated on the spec's test split and timed
on the CPU at batch 1 and at the training batch size, so the trade-off (size, accuracy, latency) is
on one screen. Layers a method does not quantize keep float weights and are listed, never dropped
silently; a method this machine cannot run (int4 needs CUDA kernels) is refused before any work.

The written file is a specc checkpoint whose `model` holds the quantized tensors and whose
`quantization` names the method: `evaluate` and `predict` rebuild the float model, quantize it the
same way (which gives the same tensor layout), then load the stored tensors.
"""
from __future__ import annotations

import copy
import io
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.weights.checkpoint import load_checkpoint, save_checkpoint
from specc.lang.spec import Spec
from specc.train.evaluation import restore, score, split_data
from specc.train.quantized import apply_quantization, check_method, quantizable_layers



@dataclass
class Measurement:
    """One model's figures: serialized size, metrics on the split, median CPU latency per batch size."""

    bytes: int
    metrics: dict[str, Any]
    latency_ms: dict[int, float]


@dataclass
class QuantizeReport:
    """What `quantize` did and what it changed."""

    method: str
    split: str
    quantized: list[str]                   # module paths of the layers now quantized
    kept_float: list[str]                  # "path (Kind): why" of each layer with weights left in float
    before: Measurement
    after: Measurement
    output: Path | None = None
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(what, float, quantized, change) rows of the comparison table."""
        rows = [("size", _size(self.before.bytes), _size(self.after.bytes), f"{self.after.bytes / self.before.bytes:.2f}x")]
        for name, value in self.before.metrics.items():
            after = self.after.metrics.get(name)
            if isinstance(value, (int, float)) and isinstance(after, (int, float)):
                rows.append((f"{self.split} {name}", f"{value:.4f}", f"{after:.4f}", f"{after - value:+.4f}"))
        for batch, value in self.before.latency_ms.items():
            after = self.after.latency_ms[batch]
            rows.append((f"latency, batch {batch}", f"{value:.3f} ms", f"{after:.3f} ms", f"{after / value:.2f}x"))
        return rows


def quantize(spec_or_path: str | Path | dict | Spec | None, checkpoint: str | Path, *, method: str = "int8-dynamic",
             output: str | Path | None = None, split: str = "test",
             overrides: dict[str, Any] | None = None, repeats: int = 20) -> QuantizeReport:
    """Quantize a trained checkpoint's model with torchao and measure it against the float model.

    Args:
        spec_or_path: the spec; None = the spec stored in the checkpoint.
        checkpoint: a best.pt / last.pt written by `specc train`.
        method: int8-dynamic (int8 weights and activations), int8-weight (int8 weights, float
            activations) or int4-weight (int4 weights in groups of 128; needs CUDA).
        output: where to write the quantized checkpoint (a `.pt`); None writes nothing.
        split: the split both models are evaluated on (test by default; val or train if asked).
        overrides: vars or dotted keys, like `--set`.
        repeats: timed forward passes per batch size (the median is reported).

    Returns:
        A `QuantizeReport`.

    Raises:
        SpecError: an unknown method, one this machine cannot run, no layer it can quantize, torchao
            missing, or the usual checkpoint and data errors.
    """
    check_method(method)
    state = load_checkpoint(checkpoint)
    spec, compiled, cpu = restore(spec_or_path, state, checkpoint, "cpu", overrides)   # quantized kernels: CPU here
    data, task = split_data(spec, compiled, state, split, cpu, checkpoint)
    model = compiled.module.eval()
    quantized, kept = quantizable_layers(compiled, method)
    before = _measure(spec, model, data, task, cpu, repeats)
    quantized_model = copy.deepcopy(model)
    apply_quantization(quantized_model, method, set(quantized))
    after = _measure(spec, quantized_model, data, task, cpu, repeats)
    report = QuantizeReport(method, split, quantized, kept, before, after)
    if output is not None:
        report.output = Path(output)
        save_checkpoint({**{key: state[key] for key in ("spec", "normalizer", "task", "classes", "fold") if key in state},
                         "spec": spec.raw, "model": quantized_model.state_dict(),
                         "quantization": {"method": method, "layers": quantized}}, report.output, verify=True)
    return report


def serialized_bytes(module: nn.Module) -> int:
    """The size of `module`'s state_dict as `torch.save` writes it: what a checkpoint of it weighs."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def _measure(spec: Spec, module: nn.Module, data, task, device: torch.device, repeats: int) -> Measurement:
    metrics = score(spec, module, data, task, device)
    batch_sizes = sorted({1, min(spec.train.batch_size, len(data))})
    latency = {size: _latency(module, data, size, repeats) for size in batch_sizes}
    return Measurement(serialized_bytes(module), metrics, latency)


def _latency(module: nn.Module, data, batch_size: int, repeats: int) -> float:
    """Median milliseconds of one forward pass over the first `batch_size` examples (after 3 warm-up passes)."""
    inputs = tuple(x[:batch_size] for x in data.inputs)
    times = []
    with torch.inference_mode():
        for index in range(repeats + 3):
            started = time.perf_counter()
            module(*inputs)
            if index >= 3:
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _size(count: int) -> str:
    return f"{count / 2**10:.1f} KiB" if count < 2**20 else f"{count / 2**20:.2f} MiB"


def print_report(report: QuantizeReport) -> None:
    """The comparison table, the layers left in float, and where the file went."""
    from rich.console import Console
    from rich.table import Table
    from rich.markup import escape

    console = Console(highlight=False)
    table = Table(title=f"{report.method}: {len(report.quantized)} layers quantized")
    for column, justify in (("", "left"), ("float", "right"), (report.method, "right"), ("change", "right")):
        table.add_column(column, justify=justify)
    for row in report.rows():
        table.add_row(*map(escape, row))
    console.print(table)
    for layer in report.kept_float:
        console.print(f"kept in float: {escape(layer)}", soft_wrap=True)   # a path is never cut
    if report.output is not None:
        console.print(f"wrote {escape(str(report.output))}", soft_wrap=True)
