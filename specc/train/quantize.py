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

import contextlib
import copy
import io
import logging
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from specc.build.checkpoint import import_torchao, load_checkpoint, load_model_state, save_checkpoint
from specc.lang.errors import Problem, SpecError
from specc.lang.spec import Spec
from specc.train.evaluation import restore, score, split_data

METHODS = ("int8-dynamic", "int8-weight", "int4-weight")
QUANTIZED_LAYERS = (nn.Linear,)   # what torchao's int8/int4 configs rewrite
INT4_GROUP_SIZE = 128             # torchao's default group of int4 weights sharing a scale


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
    _check_method(method)
    state = load_checkpoint(checkpoint)
    spec, compiled, cpu = restore(spec_or_path, state, checkpoint, "cpu", overrides)   # quantized kernels: CPU here
    data, task = split_data(spec, compiled, state, split, cpu)
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


def quantizable_layers(compiled, method: str) -> tuple[list[str], list[str]]:
    """(paths of the layers `method` quantizes, "path (Kind): why" of the layers with weights it leaves in float).

    Raises:
        SpecError: no layer of the model can be quantized by `method`.
    """
    quantized, kept = [], []
    for name, module in compiled.module.named_modules():
        kind = type(module).__name__
        if isinstance(module, QUANTIZED_LAYERS):
            reason = _int4_misfit(module) if method == "int4-weight" else None
            if reason:
                kept.append(f"{name} ({kind}): {reason}")
            else:
                quantized.append(name)
        elif any(parameter.dim() >= 2 for parameter in module.parameters(recurse=False)):
            kept.append(f"{name} ({kind}): torchao's {method} quantizes nn.Linear only")
    if not quantized:
        raise SpecError(Problem(f"{method} quantizes nn.Linear layers, and this model has none it can take; "
                                f"left in float: {'; '.join(kept) or 'every layer'}", None, "TYPE_ERROR"))
    return quantized, kept


def _int4_misfit(layer: nn.Linear) -> str | None:
    if layer.in_features % INT4_GROUP_SIZE:
        return f"int4 groups of {INT4_GROUP_SIZE} need in_features divisible by {INT4_GROUP_SIZE}, not {layer.in_features}"
    return None


def apply_quantization(module: nn.Module, method: str, layers: set[str]) -> None:
    """Quantize the named layers of `module` in place with torchao's config for `method`."""
    torchao = _import_torchao()
    configs = {"int8-dynamic": torchao.quantization.Int8DynamicActivationInt8WeightConfig,
               "int8-weight": torchao.quantization.Int8WeightOnlyConfig}
    config = configs[method]() if method in configs else \
        torchao.quantization.Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    with _quiet():
        torchao.quantization.quantize_(module, config, filter_fn=lambda layer, name: name in layers)


def load_quantized(compiled, state: dict[str, Any], checkpoint: str | Path) -> None:
    """Quantize a freshly built float model as the checkpoint's method did, then load its tensors."""
    quantization = state["quantization"]
    method = quantization.get("method")
    if method not in METHODS:
        raise SpecError(Problem(f"{checkpoint}: unknown quantization method {method!r}", None, "CHECKPOINT_ERROR"))
    _check_method(method)
    apply_quantization(compiled.module, method, set(quantization.get("layers") or ()))
    load_model_state(compiled.module, state, checkpoint, assign=True)
    compiled.module.eval()


def _check_method(method: str) -> None:
    if method not in METHODS:
        from specc.lang.errors import did_you_mean

        raise SpecError(Problem(f"unknown quantization method '{method}'; choose {', '.join(METHODS)}", None,
                                "TYPE_ERROR", did_you_mean(method, METHODS)))
    _import_torchao()
    if method == "int4-weight" and not torch.cuda.is_available():
        raise SpecError(Problem("int4-weight needs torchao's int4 kernels, which run on CUDA GPUs; this machine has "
                                "none: use int8-weight (the same idea at 8 bits) or int8-dynamic", None, "TYPE_ERROR"))


def _import_torchao():
    try:
        with _quiet():
            import_torchao()
    except ImportError:
        raise SpecError(Problem("quantization needs torchao: pip install 'specc[quantize]' (or pip install torchao)",
                                None, "MISSING_KEY")) from None
    return sys.modules["torchao"]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchao logs and warns about torch internals while it quantizes: noise about no user's model."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _measure(spec: Spec, module: nn.Module, data, task, device: torch.device, repeats: int) -> Measurement:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    metrics = score(spec, module, data, task, device)
    batch_sizes = sorted({1, min(spec.train.batch_size, len(data))})
    return Measurement(buffer.tell(), metrics, {size: _latency(module, data, size, repeats) for size in batch_sizes})


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
        console.print(f"kept in float: {escape(layer)}")
    if report.output is not None:
        console.print(f"wrote {escape(str(report.output))}")
