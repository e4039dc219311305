"""Export a spec's model where PyTorch models go: ONNX, a torch.export program, or weights.

    specc export specs/mlp.yaml -o mlp.onnx                              # onnxruntime, any batch size
    specc export specs/mlp.yaml -o mlp.pt2                               # torch.export.load(...)
    specc export specs/mlp.yaml --checkpoint runs/mlp/best.pt -o mlp.safetensors

The format follows the file's extension. ONNX and .pt2 keep the batch dim dynamic and name the
graph's inputs and outputs after the spec's. A .safetensors file stores the resolved spec in its
metadata, so `specc.build("mlp.safetensors")` rebuilds the trained model from that file alone.
When an item cannot be exported, the error names that item at its line in the spec.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from specc.lang.errors import Problem, SpecError
from specc.weights.loading import apply_weights, load_weights, read_weights, save_weights

if TYPE_CHECKING:
    from specc.build.compiled import Compiled
    from specc.build.graph import Node

__all__ = ["export", "prepare", "write", "check_export", "load_weights", "apply_weights"]

FORMATS = (".onnx", ".pt2", ".safetensors")
ONNX_SIZE_LIMIT = 2**31 - 2**26          # protobuf's 2 GB cap, less room for the graph itself


def export(spec_or_path: Any, output: str | Path, *, checkpoint: str | Path | None = None,
           input_shapes: dict[str, list[int]] | None = None, **variables: Any) -> Path:
    """Write the spec's model to `output`, in the format its extension names.

    Args:
        spec_or_path: YAML path or text, a dict or a `Spec`.
        output: a `.onnx`, `.pt2` or `.safetensors` path.
        checkpoint: weights to export: a `best.pt` / `last.pt` from `specc train`, or a
            `.safetensors` file; default: the freshly initialised model. A training
            checkpoint's input scaling becomes part of ONNX and .pt2 graphs.
        input_shapes: input shapes without the batch dim, by input name (overrides the spec's).
        **variables: overrides of the spec's vars (`width=128`), like `--set`.

    Returns:
        The path written.

    Raises:
        ValueError: `output` has an extension other than .onnx, .pt2 or .safetensors.
        SpecError: the spec does not compile; the checkpoint does not fit (CHECKPOINT_ERROR);
            an item cannot be exported (EXPORT_ERROR, located at that item).
    """
    _check_format(Path(output))
    prepared = prepare(spec_or_path, checkpoint=checkpoint, input_shapes=input_shapes, **variables)
    return write(prepared, output)


class ScaledInputs(nn.Module):
    """The model behind the input scaling its training used: `(x - shift) / scale` per input."""

    def __init__(self, model: nn.Module, stats: list):
        super().__init__()
        self.model = model
        self.scaled = [stat is not None for stat in stats]
        for index, stat in enumerate(stats):
            if stat is not None:
                self.register_buffer(f"shift_{index}", torch.as_tensor(stat[0]))
                self.register_buffer(f"scale_{index}", torch.as_tensor(stat[1]))

    def forward(self, *inputs: torch.Tensor):
        scaled = [(x - getattr(self, f"shift_{index}")) / getattr(self, f"scale_{index}") if self.scaled[index] else x
                  for index, x in enumerate(inputs)]
        return self.model(*scaled)


@dataclass
class Prepared:
    """A compiled spec with its weights loaded: what the exporters write."""

    compiled: "Compiled"
    scaling: str | None = None           # a training checkpoint's input normalisation ("standard"), if any
    input_shapes: dict | None = None
    module: nn.Module = field(init=False)   # what ONNX and .pt2 files compute

    def __post_init__(self) -> None:
        self.module = self.compiled.module.eval()

    def scale_inputs(self, normalizer: dict | None) -> None:
        """Put a training checkpoint's input scaling in front of the model (ONNX and .pt2)."""
        if normalizer and normalizer.get("kind") != "none" and any(normalizer.get("stats") or []):
            self.module = ScaledInputs(self.compiled.module, normalizer["stats"]).eval()
            self.scaling = normalizer["kind"]


def prepare(spec_or_path: Any, *, checkpoint: Any = None, input_shapes: dict[str, list[int]] | None = None,
            **variables: Any) -> Prepared:
    """Compile the spec on the CPU, load the checkpoint's weights, switch to eval mode."""
    from specc.build.compiler import compile
    from specc.weights.loading import load_state

    compiled = compile(spec_or_path, input_shapes=input_shapes, symbolic=False, **variables)
    prepared = Prepared(compiled, input_shapes=input_shapes)
    if checkpoint is not None:
        state, normalizer = read_weights(checkpoint)
        load_state(compiled.module, state, checkpoint if not isinstance(checkpoint, dict) else "weights")
        prepared.scale_inputs(normalizer)
    return prepared


def write(prepared: Prepared, output: str | Path) -> Path:
    """Write a prepared model; the format follows the extension. Returns the path."""
    output = Path(output)
    _check_format(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".safetensors":
        save_weights(prepared.compiled, output, prepared.input_shapes)
    elif output.suffix == ".pt2":
        torch.export.save(exported_program(prepared), output)
    else:
        write_onnx(prepared, output)
    return output


def _check_format(output: Path) -> None:
    if output.suffix not in FORMATS:
        raise ValueError(f"cannot export to '{output.name}': the extension must be one of {', '.join(FORMATS)}")


# ----- torch.export and ONNX ----------------------------------------------------------------------

def exported_program(prepared: Prepared) -> torch.export.ExportedProgram:
    """`torch.export` of the prepared model, with a dynamic batch dim on every input.

    Raises:
        SpecError: EXPORT_ERROR at the item that torch.export cannot trace.
    """
    compiled = prepared.compiled
    batch = torch.export.Dim("batch", min=1)
    dims = tuple({0: batch} for _ in compiled.input_names)
    dynamic = (dims,) if isinstance(prepared.module, ScaledInputs) else dims   # forward(*inputs) vs named
    try:
        with _quiet():
            return torch.export.export(prepared.module, compiled.example_inputs(compiled.batch_size),
                                       dynamic_shapes=dynamic)
    except Exception as error:  # noqa: BLE001 - every tracing failure becomes a located spec error
        node = _failing_module(compiled)
        raise SpecError(_export_problem(compiled, node, "torch.export", _reason(error))) from None


def write_onnx(prepared: Prepared, path: Path) -> None:
    """An ONNX file whose inputs and outputs carry the spec's names, with a dynamic `batch` dim.

    Raises:
        SpecError: EXPORT_ERROR at the item whose operation has no ONNX translation.
    """
    compiled = prepared.compiled
    program = exported_program(prepared)
    size = sum(t.numel() * t.element_size() for t in compiled.module.state_dict().values())
    try:
        with _quiet():
            torch.onnx.export(program, f=path, dynamo=True, input_names=compiled.input_names,
                              output_names=list(compiled.graph.outputs), external_data=size > ONNX_SIZE_LIMIT)
    except Exception as error:  # noqa: BLE001
        node = _onnx_failing_node(compiled, program, error)
        raise SpecError(_export_problem(compiled, node, "ONNX", _reason(error))) from None
    _name_batch_dim(path)


def _name_batch_dim(path: Path) -> None:
    """The exporter calls the dynamic dim `s97`; onnxruntime users see `batch` instead."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    symbol = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not symbol:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "batch"
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and warnings meant for their developers; the CLI prints one line."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _failing_module(compiled: "Compiled") -> "Node | None":
    """The first layer that torch.export cannot trace on its own (with a dynamic batch dim)."""
    from specc.build.infer import DTYPES, call_inputs

    batch = torch.export.Dim("batch", min=1)
    for node in compiled.graph.nodes:
        if node.op != "module" or node.shared_with:
            continue
        sources = [compiled.graph[name] for name in node.inputs]
        if any(source.shape is None for source in sources):
            continue                     # a tuple input: cannot be probed alone
        inputs = [_example(source.shape, DTYPES[source.dtype]) for source in sources]
        args, kwargs = call_inputs(node, inputs)
        probe = _Call(compiled.module.get_submodule(node.name), kwargs)
        dynamic = tuple({0: batch} if arg.shape[0] == compiled.batch_size else None for arg in args)
        try:
            with _quiet():
                torch.export.export(probe, tuple(args), dynamic_shapes=(dynamic,))
        except Exception:  # noqa: BLE001
            return node
    return None


def _example(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)


class _Call(nn.Module):
    """One layer called the way the compiled forward calls it (MultiheadAttention's kwargs)."""

    def __init__(self, layer: nn.Module, kwargs: dict):
        super().__init__()
        self.layer, self.kwargs = layer, kwargs

    def forward(self, *inputs):
        return self.layer(*inputs, **self.kwargs)


def _onnx_failing_node(compiled: "Compiled", program, error: Exception) -> "Node | None":
    """Map the exporter's failing aten node back to the spec item whose module holds it."""
    match = re.search(r"translating node %(\w+)", _full_text(error))
    if match is None:
        return None
    fx_node = next((node for node in program.graph.nodes if node.name == match.group(1)), None)
    stack = (fx_node.meta.get("nn_module_stack") or {}) if fx_node is not None else {}
    names = {node.name for node in compiled.graph.nodes if node.op == "module"}
    for path, _ in reversed(list(stack.values())):
        if path in names:
            return compiled.graph[path]
    return None


def _full_text(error: BaseException) -> str:
    texts = []
    while error is not None and len(texts) < 10:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


def _reason(error: Exception) -> str:
    """One readable line from the exporters' long messages."""
    text = _full_text(error)
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)'", text)
    if missing:
        return f"the ONNX exporter has no translation for {missing.group(1)}; export to .pt2 or use another layer"
    if "specialized it to be a constant" in text:
        return "its code fixes the batch size, but an exported model must take any batch size"
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _export_problem(compiled: "Compiled", node: "Node | None", exporter: str, reason: str) -> Problem:
    if node is None:
        return Problem(f"{compiled.spec.display_name} cannot be exported with {exporter}: {reason}",
                       compiled.spec.source.locate(()), "EXPORT_ERROR")
    what = node.target if node.label == node.target else f"{node.target} '{node.label}'"
    return Problem(f"{what} cannot be exported with {exporter}: {reason}", node.location, "EXPORT_ERROR",
                   notes=node.meta.get("via", []))


# ----- checking an exported file ------------------------------------------------------------------

@dataclass
class ExportCheck:
    """How closely an exported file reproduces the model it came from."""

    batch_sizes: tuple[int, ...]
    max_difference: float            # largest |exported - model| over every output element
    scale: float                     # largest |model output|, for the tolerance

    @property
    def ok(self) -> bool:
        """Within float32 round-off: 1e-4 absolute, plus 1e-5 of the outputs' magnitude."""
        return self.max_difference <= 1e-4 + 1e-5 * self.scale


def check_export(prepared: Prepared, path: str | Path, batch_sizes: tuple[int, ...] = (1, 3)) -> ExportCheck:
    """Run the exported file next to the model on the same random inputs and compare.

    ONNX files run in onnxruntime, .pt2 files through `torch.export.load`, .safetensors files
    are rebuilt with `build_from_safetensors`. Each batch size is a separate run, so a batch
    dim that is not really dynamic shows up here.
    """
    path = Path(path)
    compiled, run = prepared.compiled, _runner(Path(path))
    # a .safetensors file holds the network's weights only: the input scaling is not in it
    model = compiled.module.eval() if path.suffix == ".safetensors" else prepared.module
    difference = scale = 0.0
    with torch.no_grad():
        for batch_size in batch_sizes:
            inputs = compiled.example_inputs(batch_size, device="cpu")
            for want, got in zip(_tensors(model(*inputs)), run(inputs), strict=True):
                difference = max(difference, (want.double() - got.double()).abs().max().item())
                scale = max(scale, want.double().abs().max().item())
    return ExportCheck(tuple(batch_sizes), difference, scale)


def _runner(path: Path):
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [item.name for item in session.get_inputs()]
        return lambda inputs: [torch.from_numpy(array) for array in
                               session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})]
    if path.suffix == ".pt2":
        program = torch.export.load(path).module()
        return lambda inputs: _tensors(program(*inputs))
    from specc.weights.building import build_from_safetensors

    rebuilt = build_from_safetensors(path, trust_code=True)   # the file just written from this spec
    return lambda inputs: _tensors(rebuilt(*inputs))


def _tensors(output: Any) -> list:
    return list(output) if isinstance(output, (tuple, list)) else [output]

