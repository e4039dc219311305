"""`specc port`: another library's weights -> a spec's own `.safetensors` file, checked.

    specc port specs/gpt2_small.yaml --weights model.safetensors --map auto -o gpt2.safetensors \\
        --check io.safetensors

The weights are paired with the spec's tensors (`specc.weights.loading.load_into`), written with the
resolved spec in the metadata (so `specc.build("gpt2.safetensors")` rebuilds the model), and, with
`--check`, the model is run on the io file's inputs and compared with its expected outputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specc.build.compiled import Compiled
from specc.weights.report import WeightsReport
from specc.weights.loading import load_into, save_weights
from specc.lang.errors import Problem, SpecError

# names libraries give the expected output in an io file, when it is not named after a spec output
OUTPUT_NAMES = ("output", "outputs", "logits", "last_hidden_state", "expected")


@dataclass
class PortResult:
    """What `port` did: the load report, the file written and, with a check, the largest difference."""

    report: WeightsReport
    path: Path
    max_difference: float | None = None
    checked: str = ""          # "logits [2, 32, 1000]": what was compared


def port(spec_or_path: Any, weights: Any, output: str | Path, *, weights_map: Any = "auto",
         allow_missing: Any = (), check: str | Path | None = None, **variables: Any) -> PortResult:
    """Load `weights` into the spec's model and write them as `output` (.safetensors).

    Args:
        spec_or_path: the spec.
        weights: the other library's weight file (any format `load_into` reads).
        output: the `.safetensors` file to write (atomically).
        weights_map, allow_missing: as for `specc.build`.
        check: a safetensors file of inputs (named after the spec's inputs, or the one non-output
            tensor) and expected outputs (named after the spec's outputs, or output/logits/...).
        **variables: var overrides.

    Returns:
        A `PortResult`.

    Raises:
        SpecError: spec errors, unmatched weights (CHECKPOINT_ERROR), an unusable io file.
    """
    from specc.build.compiler import compile as compile_spec

    output = Path(output)
    if output.suffix != ".safetensors":
        raise SpecError(Problem(f"{output}: specc port writes a .safetensors file", None, "EXPORT_ERROR"))
    compiled = compile_spec(spec_or_path, symbolic=False, **variables)
    order = [node.name for node in compiled.graph.nodes if node.op == "module" and not node.shared_with]
    report = load_into(compiled.module, weights, weights_map, allow_missing, order)
    _write_atomically(compiled, output)
    result = PortResult(report, output)
    if check is not None:
        result.max_difference, result.checked = check_outputs(compiled, check)
    return result


def check_outputs(compiled: Compiled, io_path: str | Path) -> tuple[float, str]:
    """Run the model (eval mode) on the io file's inputs; the largest |difference| to its outputs.

    Returns:
        `(max abs difference, "name [shape]" of what was compared)`.
    """
    from specc.weights.files import read_weight_file

    tensors = read_weight_file(io_path).tensors
    inputs, expected_name = _split_io(compiled, tensors, str(io_path))
    model = compiled.module.eval()
    with torch.no_grad():
        produced = model(*inputs)
    if isinstance(produced, (tuple, list)):
        produced = produced[0]
    expected = tensors[expected_name]
    if tuple(produced.shape) != tuple(expected.shape):
        raise SpecError(Problem(f"{io_path}: the model's output {list(produced.shape)} and '{expected_name}' "
                                f"{list(expected.shape)} differ in shape", None, "CHECKPOINT_ERROR"))
    difference = (produced.float() - expected.float()).abs().max().item()
    return difference, f"{expected_name} {list(expected.shape)}"


def _split_io(compiled: Compiled, tensors: dict, origin: str) -> tuple[list, str]:
    output_names = [name for name in [*compiled.graph.outputs, *OUTPUT_NAMES] if name in tensors]
    if not output_names:
        raise SpecError(Problem(f"{origin}: no expected output (a tensor named {', '.join(OUTPUT_NAMES)} "
                                f"or after the spec's output)", None, "CHECKPOINT_ERROR"))
    input_names = compiled.input_names
    rest = [name for name in tensors if name not in output_names]
    if all(name in tensors for name in input_names):
        chosen = input_names
    elif len(input_names) == 1 and len(rest) == 1:
        chosen = rest
    else:
        raise SpecError(Problem(f"{origin}: name the inputs after the spec's ({', '.join(input_names)}); "
                                f"found {', '.join(rest)}", None, "CHECKPOINT_ERROR"))
    return [tensors[name] for name in chosen], output_names[0]


def _write_atomically(compiled: Compiled, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        save_weights(compiled, temporary)
        os.replace(temporary, output)
    finally:
        if temporary.exists():
            temporary.unlink()
