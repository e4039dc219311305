"""Commands that move a model or its weights in and out: export, codegen, port, import."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from specc.cli.app import (SetOption, SpecPath, UsageFailure, VariantOption, app, echo, output_folder_exists,
                           overrides, user_errors)


@app.command()
def export(
    spec: SpecPath,
    output: Annotated[Path, typer.Option("--output", "-o", show_default=False,
                                         help="The file to write: .onnx, .pt2 or .safetensors.")],
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="Trained weights: a best.pt / last.pt from `specc train`, or a .safetensors file.")] = None,
    set_: SetOption = None,
    variant: VariantOption = None,
    check_output: Annotated[bool, typer.Option(
        "--check/--no-check", help="Run the written file at batch sizes 1 and 3 and compare with the model.")] = True,
    quantize: Annotated[Optional[str], typer.Option(
        help="ONNX only: int8 (onnxruntime dynamic quantization) or int8-static (activation ranges calibrated on "
             "the spec's training data).", show_default=False)] = None,
) -> None:
    """Export the model: ONNX (dynamic batch), a torch.export program (.pt2), or safetensors weights with the spec.

    Exit code 2 for spec or checkpoint errors and for an item the exporter cannot handle (the
    message names it), 1 when the written file's outputs differ from the model's.
    """
    with user_errors():
        output_folder_exists(output)
        from specc.export.exporter import check_export, prepare, require, write

        if output.suffix == ".onnx":   # before the model is built: a missing package is told first
            require("onnx", "onnxscript", *(["onnxruntime"] if check_output or quantize else []))

        if quantize is not None and output.suffix != ".onnx":
            raise UsageFailure(f"--quantize writes an ONNX model: give -o with .onnx, not {output.suffix or 'no suffix'}")
        try:
            prepared = prepare(spec, checkpoint=checkpoint, **overrides(set_, variant))
            if quantize is not None:
                _export_quantized(spec, prepared, output, quantize, overrides(set_, variant), check_output)
                return
            path = write(prepared, output)
        except ValueError as error:
            raise UsageFailure(str(error)) from None
        size = path.stat().st_size + sum(extra.stat().st_size for extra in path.parent.glob(f"{path.name}.data"))
        echo(f"wrote {path} ({size / 1e6:.1f} MB)")
        if prepared.scaling:
            where = ("is not in a .safetensors file: scale inputs as in training" if path.suffix == ".safetensors"
                     else "is part of the exported graph: feed it raw inputs")
            echo(f"note: the checkpoint's input scaling ({prepared.scaling}) {where}")
        if check_output:
            result = check_export(prepared, path)
            verdict = "matches" if result.ok else "DIFFERS FROM"
            echo(f"checked: the exported file {verdict} the model at batch sizes "
                 f"{' and '.join(map(str, result.batch_sizes))} (max |difference| {result.max_difference:.1e})")
            if not result.ok:
                raise UsageFailure("the exported file does not reproduce the model", code=1)


def _export_quantized(spec: Path, prepared: Any, output: Path, method: str, keys: dict, check: bool) -> None:
    """Export float ONNX to a temporary file, quantize it with onnxruntime into `output`, compare the two."""
    import tempfile

    from specc.export.exporter import write
    from specc.export.onnx_quantize import check_quantized, quantize_onnx

    batches = _data_batches(spec, prepared, keys)
    names = list(prepared.compiled.spec.inputs)
    with tempfile.TemporaryDirectory(dir=output.parent) as folder:
        float_path = write(prepared, Path(folder) / "float.onnx")
        float_size = float_path.stat().st_size
        quantize_onnx(float_path, output, method, names, batches)
    echo(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB, {method}; "
         f"float: {float_size / 1e6:.2f} MB, {output.stat().st_size / float_size:.2f}x)")
    if not check:
        return
    examples = batches or [prepared.compiled.example_inputs(size, device="cpu") for size in (1, 3)]
    result = check_quantized(prepared.module, output, examples)
    agreement = "" if result.agreement is None else f", top class agrees on {result.agreement:.1%}"
    where = "the spec's data" if batches else "random inputs"
    echo(f"checked on {result.examples} examples of {where}: max |difference| {result.max_difference:.2e} "
         f"({result.relative_difference:.1%} of the outputs' range){agreement}")
    if not result.ok:
        raise UsageFailure("the quantized model strays too far from the float model (see docs/export.md)", code=1)


def _data_batches(spec: Path, prepared: Any, keys: dict, batch_size: int = 32, count: int = 8) -> list | None:
    """Up to `count` batches of raw training examples of the spec's data (the exported graph scales its
    own inputs), or None for a spec without a `train:` section."""
    from specc.train.prepare import load_train_spec, prepare_data
    from specc.lang.errors import SpecError

    try:
        train_spec = load_train_spec(spec, keys)
    except SpecError:
        return None
    examples = prepare_data(train_spec, prepared.compiled).splits[0].train
    return [tuple(x[start:start + batch_size] for x in examples.inputs)   # already in the spec's input dtypes
            for start in range(0, min(len(examples), batch_size * count), batch_size)]


@app.command()
def codegen(
    spec: SpecPath,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the code here (default: print it).", show_default=False)] = None,
    set_: SetOption = None,
    variant: VariantOption = None,
) -> None:
    """Write the model as standalone PyTorch code: one class named after the spec, every size written out.

    The generated module needs only torch, and loads the compiled spec's state_dict as it is.
    """
    with user_errors():
        from specc.export.eject import codegen as generate

        _print_or_write(generate(spec, **overrides(set_, variant)), output)


@app.command()
def port(
    spec: SpecPath,
    weights: Annotated[Path, typer.Option(help="The weights to bring in: .safetensors, model.safetensors.index.json "
                                               "(or its folder), .pt/.pth/.bin/.ckpt.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file to write.", show_default=False)],
    map_: Annotated[str, typer.Option("--map", help="auto (names, then structure), strict (names), or a YAML/JSON "
                                                    "file of rename rules {pattern: replacement}.")] = "auto",
    allow_missing: Annotated[Optional[list[str]], typer.Option(
        "--allow-missing", metavar="GLOB", help="A glob of tensors that may stay unmatched (reported); repeatable.")] = None,
    check_io: Annotated[Optional[Path], typer.Option(
        "--check", help="A .safetensors of inputs and expected outputs (named after the spec's; docs/weights.md): "
                "run the model and compare every output.")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest |difference| --check accepts.")] = 1e-4,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="A Hugging Face config.json (or its folder): sets the spec's vars it names (dim, n_layers, "
                         "n_heads, ...); --set still wins.")] = None,
    set_: SetOption = None,
    variant: VariantOption = None,
) -> None:
    """Port another library's weights into the spec: pair the tensors, write them as .safetensors, check.

    Prints what was matched by name, by structure, transposed or fused. Exit code 2 when a tensor
    stays unmatched, 1 when --check finds outputs further apart than --tolerance.
    """
    with user_errors():
        from specc.export.port import port as port_weights

        result = port_weights(spec, weights, output, weights_map=_weights_map(map_),
                              allow_missing=allow_missing or (), check=check_io, config=config,
                              **overrides(set_, variant))
        echo(result.report.summary())
        echo(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB)")
        for check in result.checks:   # every output of the model, each against its own expected tensor
            ok = check.difference <= tolerance
            echo(f"checked: {check} from {check_io.name} {'matches' if ok else 'DIFFERS'} "
                 f"(max |difference| {check.difference:.1e}, tolerance {tolerance:.0e})")
        if any(not check.difference <= tolerance for check in result.checks):
            raise UsageFailure("the ported model does not reproduce the expected outputs", code=1)


@app.command("import")
def import_(
    target: Annotated[str, typer.Argument(help="module:callable returning an nn.Module, e.g. my_models:ResNet.",
                                          show_default=False, metavar="TARGET")],
    input_shape: Annotated[list[str], typer.Option(
        "--input-shape", metavar="SIZES", help="An input's shape without the batch dim (3,32,32); once per input.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the spec here (default: print it).", show_default=False)] = None,
    args: Annotated[Optional[str], typer.Option(help="The callable's args as JSON: [..] or {..}.")] = None,
    dtype: Annotated[str, typer.Option(help="The inputs' dtype (long for token ids).")] = "float32",
) -> None:
    """Write an existing nn.Module as a spec: its hierarchy as items, torch.nn layers by name.

    What has no spec form stays as an import of the module's own class, never dropped.
    """
    with user_errors():
        from specc.export.importer import import_target

        try:
            text = import_target(target, args, input_shape, dtype)
        except (ValueError, TypeError) as error:
            raise UsageFailure(str(error)) from None
        _print_or_write(text, output)


def _print_or_write(text: str, output: Path | None) -> None:
    """Generated source (Python or YAML) to stdout, or to `output` with a line saying so."""
    if output is None:
        echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    echo(f"wrote {output} ({text.count(chr(10))} lines)")


def _weights_map(value: str) -> Any:
    """`auto`, `strict`, or the rename rules in a YAML/JSON file."""
    if value in ("auto", "strict"):
        return value
    from specc.lang.source import load_yaml, read_spec_text

    path = Path(value)
    if not path.is_file():
        raise UsageFailure(f"--map must be auto, strict or a rules file; {value} is none of them")
    rules, _ = load_yaml(*read_spec_text(path))   # the spec loader's bounds: size, nesting, aliases, no tags
    if not isinstance(rules, dict):
        raise UsageFailure(f"{path}: the rules must be a mapping {{pattern: replacement}}")
    return rules
