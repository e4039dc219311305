"""`specc export -o model.onnx --quantize int8 | int8-static`: ONNX Runtime's own quantizer on the exported file.

`int8` is dynamic quantization (`quantize_dynamic`): int8 weights, activations quantized on the fly
per batch, no data needed. `int8-static` (`quantize_static`, QDQ format) also fixes the activations'
int8 ranges, from calibration batches of the spec's training data run through the float model.

A quantized model cannot match the float one to round-off, so its check is different from the
export check: both models run on the same inputs in onnxruntime/torch, and the check reports the
largest difference relative to the outputs' range and, for class scores, how often the top class
agrees. It fails below `MIN_AGREEMENT` or above `MAX_RELATIVE_DIFFERENCE`.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from specc.lang.errors import Problem, SpecError

ONNX_METHODS = ("int8", "int8-static")
MIN_AGREEMENT = 0.9              # top-class agreement with the float model, for class scores
MAX_RELATIVE_DIFFERENCE = 0.1    # largest |quantized - float| over the float outputs' largest magnitude


@dataclass
class QuantizedCheck:
    """How the quantized file compares with the float model on the same inputs."""

    examples: int
    max_difference: float
    scale: float
    agreement: float | None          # share of examples whose top class is the same (class scores only)

    @property
    def relative_difference(self) -> float:
        return self.max_difference / self.scale if self.scale else self.max_difference

    @property
    def ok(self) -> bool:
        agrees = self.agreement is None or self.agreement >= MIN_AGREEMENT
        return agrees and np.isfinite(self.max_difference) and self.relative_difference <= MAX_RELATIVE_DIFFERENCE


def quantize_onnx(float_path: Path, output: Path, method: str, input_names: Sequence[str],
                  calibration: Sequence[tuple[torch.Tensor, ...]] | None) -> None:
    """Write `output`, the ONNX Runtime quantization of the float model at `float_path`.

    Raises:
        SpecError: an unknown method, or `int8-static` without calibration data.
    """
    from onnxruntime import quantization

    if method not in ONNX_METHODS:
        raise SpecError(Problem(f"--quantize {method}: choose {' or '.join(ONNX_METHODS)}", None, "TYPE_ERROR"))
    with tempfile.TemporaryDirectory(dir=output.parent) as folder, _quiet():
        prepared = Path(folder) / "prepared.onnx"
        quantization.quant_pre_process(str(float_path), str(prepared))   # shapes inferred, graph optimised
        if method == "int8":
            quantization.quantize_dynamic(prepared, output, weight_type=quantization.QuantType.QInt8)
            return
        if not calibration:
            raise SpecError(Problem("--quantize int8-static needs calibration data: give a spec with a `train:` "
                                    "section whose data is readable, or use --quantize int8", None, "DATA_ERROR"))
        reader = _Batches([{name: tensor.numpy() for name, tensor in zip(input_names, batch)} for batch in calibration])
        quantization.quantize_static(prepared, output, reader, quant_format=quantization.QuantFormat.QDQ,
                                     per_channel=True)


class _Batches:
    """onnxruntime's CalibrationDataReader protocol: `get_next()` until None."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def check_quantized(module: torch.nn.Module, path: Path, batches: Sequence[tuple[torch.Tensor, ...]]) -> QuantizedCheck:
    """Run the quantized file in onnxruntime and `module` (the float model with the export's input
    scaling) on the same batches; compare their first outputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]
    difference = scale = 0.0
    agreeing = examples = 0
    classes = True
    with torch.no_grad():
        for batch in batches:
            want = module(*batch)
            want = (want[0] if isinstance(want, (tuple, list)) else want).double()
            got = torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, batch)})[0]).double()
            difference = max(difference, (want - got).abs().max().item())
            scale = max(scale, want.abs().max().item())
            examples += len(want)
            classes = classes and want.dim() == 2 and want.shape[1] > 1
            if classes:
                agreeing += int((want.argmax(1) == got.argmax(1)).sum())
    return QuantizedCheck(examples, difference, scale, agreeing / examples if classes and examples else None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs a warning per op it leaves alone and suggests pre-processing (done): noise."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
