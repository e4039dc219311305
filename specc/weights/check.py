"""Checking loaded weights against a library's own outputs: every output, never just the first.

An io file is a `.safetensors` (or any file `read_weight_file` reads) holding the inputs and the
expected outputs of one run of the original model:

- inputs named after the spec's inputs (`input_ids`, `attention_mask`), or, for a one-input spec,
  the one tensor that is not an output;
- outputs named after the spec's outputs; a one-output spec may call it `output`, `outputs`,
  `logits`, `last_hidden_state` or `expected` instead. A spec with several outputs needs each by
  its own name (BERT: `last_hidden_state` and `pooler_output`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from specc.build.compiled import Compiled
from specc.lang.errors import Problem, SpecError

# names libraries give the expected output in an io file, when a one-output spec names it otherwise
OUTPUT_NAMES = ("output", "outputs", "logits", "last_hidden_state", "expected")


@dataclass
class OutputCheck:
    """One compared output: its name in the io file, its shape, the largest |difference|."""

    name: str
    shape: list[int]
    difference: float

    def __str__(self) -> str:
        return f"{self.name} {self.shape}"


def check_outputs(compiled: Compiled, io_path: str | Path) -> list[OutputCheck]:
    """Run the model (eval mode) on the io file's inputs and compare every output it returns.

    Returns:
        One `OutputCheck` per model output, in the model's order.

    Raises:
        SpecError: CHECKPOINT_ERROR when the io file lacks an input or an output, or shapes differ.
    """
    from specc.weights.files import read_weight_file

    tensors = read_weight_file(io_path).tensors
    inputs, expected_names = _split_io(compiled, tensors, str(io_path))
    model = compiled.module.eval()
    with torch.no_grad():
        produced = model(*inputs)
    produced = list(produced) if isinstance(produced, (tuple, list)) else [produced]
    checks = []
    for name, output in zip(expected_names, produced):
        expected = tensors[name]
        if tuple(output.shape) != tuple(expected.shape):
            raise SpecError(Problem(f"{io_path}: the model's output {list(output.shape)} and '{name}' "
                                    f"{list(expected.shape)} differ in shape", None, "CHECKPOINT_ERROR"))
        difference = (output.float() - expected.float()).abs().max().item() if output.numel() else 0.0
        checks.append(OutputCheck(name, list(expected.shape), difference))
    return checks


def require_close(checks: list[OutputCheck], tolerance: float, origin: str) -> None:
    """Raises:
        SpecError: CHECKPOINT_ERROR naming every output further from the io file than `tolerance`.
    """
    far = [f"{check} differs by {check.difference:.1e}" for check in checks if not check.difference <= tolerance]
    if far:
        raise SpecError(Problem(f"{origin}: the loaded model does not reproduce the expected outputs "
                                f"(tolerance {tolerance:.0e}): {'; '.join(far)}", None, "CHECKPOINT_ERROR"))


def _split_io(compiled: Compiled, tensors: dict, origin: str) -> tuple[list, list[str]]:
    outputs = list(compiled.graph.outputs)
    if all(name in tensors for name in outputs):
        expected = outputs
    elif len(outputs) == 1 and any(name in tensors for name in OUTPUT_NAMES):
        expected = [next(name for name in OUTPUT_NAMES if name in tensors)]
    else:
        missing = [name for name in outputs if name not in tensors]
        alias = f" (or one of {', '.join(OUTPUT_NAMES)})" if len(outputs) == 1 else ""
        raise SpecError(Problem(f"{origin}: no expected output named {', '.join(missing)}{alias}; every output of "
                                f"the spec is compared, so the io file needs each under the spec's output name",
                                None, "CHECKPOINT_ERROR"))
    input_names = compiled.input_names
    rest = [name for name in tensors if name not in expected and name not in OUTPUT_NAMES]
    if all(name in tensors for name in input_names):
        chosen = input_names
    elif len(input_names) == 1 and len(rest) == 1:
        chosen = rest
    else:
        raise SpecError(Problem(f"{origin}: name the inputs after the spec's ({', '.join(input_names)}); "
                                f"found {', '.join(rest)}", None, "CHECKPOINT_ERROR"))
    return [tensors[name] for name in chosen], expected
