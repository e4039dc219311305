"""The `specc` command line (typer). Each command is a thin layer over the Python API.

Heavy imports happen inside the commands so `specc --help` stays instant.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

app = typer.Typer(
    name="specc",
    help="Declarative model specs for PyTorch: check, summarize, draw, train, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SpecPath = Annotated[Path, typer.Argument(help="Path to the YAML spec.", show_default=False, metavar="SPEC")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a var (width=128) or a dotted spec key (train.epochs=5); repeatable.")]
VariantOption = Annotated[Optional[str], typer.Option(
    "--variant", metavar="NAME", help="Use one of the spec's `variants:` (its var overrides; --set applies after it).")]


def _flags_without_a_type() -> None:
    """typer 0.29 writes a value type after every option in --help, flags included (`--expand
    <bool>`, `--help <bool>`), as if they took a value; a flag takes none, so it shows none."""
    from typer.core import TyperOption

    shown_type = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag or self.count else shown_type(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flags_without_a_type()


def _print_version(value: bool) -> None:
    if value:
        from specc import __version__

        typer.echo(f"specc {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    ctx: typer.Context,
    safe: Annotated[bool, typer.Option(
        "--safe", help="Safe mode, for specs from strangers: refuse imports:, train.data.dataset: and "
                       "train.compile options (they run code). Same as SPECC_SAFE=1.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print specc's version and exit.")] = False,
) -> None:
    """Declarative model specs for PyTorch: check, summarize, draw, train, export."""
    # SPECC_SAFE reaches every stage and the torchrun workers; restored when the command ends
    if safe:
        previous = os.environ.get("SPECC_SAFE")
        os.environ["SPECC_SAFE"] = "1"
        ctx.call_on_close(lambda: _restore_environment("SPECC_SAFE", previous))


def _restore_environment(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class UsageFailure(Exception):
    """A user-facing failure: print the message, exit with `code`, no traceback."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@contextmanager
def user_errors(output_format: str = "text") -> Iterator[None]:
    """Turn spec errors and other user mistakes into clear messages and exit code 2."""
    from specc.lang.errors import SpecError, spec_warnings_to

    try:
        with spec_warnings_to(lambda line: typer.echo(line, err=True)):   # `warning: file:line:col: ...`
            yield
    except SpecError as error:
        if output_format == "json":
            typer.echo(json.dumps({"ok": False, "errors": [p.to_dict() for p in error.problems]}, indent=2))
        else:
            for problem in error.problems:
                typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2) from None
    except UsageFailure as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.code) from None
    except FileNotFoundError as error:
        typer.echo(f"error: file not found: {error.filename or error}", err=True)
        raise typer.Exit(2) from None


def output_folder_exists(output: Path | None) -> None:
    """`-o missing/x.svg` is a usage error naming the folder, before anything is computed."""
    if output is not None and str(output) != "-" and not output.parent.is_dir():
        raise UsageFailure(f"-o {output}: the folder {output.parent} does not exist")


def overrides(values: list[str] | None, variant: str | None = None) -> dict[str, Any]:
    """`["width=128", "train.epochs=5"]` -> `{"width": 128, "train.epochs": 5}`, plus the chosen
    `--variant` under the reserved key `variant` (which `load` reads)."""
    from specc.lang.spec import VARIANT, parse_override

    chosen = {VARIANT: variant} if variant is not None else {}
    return {**chosen, **dict(parse_override(value) for value in values or [])}


@app.command()
def check(
    spec: SpecPath,
    set_: SetOption = None,
    variant: VariantOption = None,
    output_format: Annotated[str, typer.Option("--format", help="text or json (machine-readable errors).")] = "text",
) -> None:
    """Validate and compile a spec (on the meta device); print OK with the parameter count."""
    with user_errors(output_format):
        from specc.lang.errors import SpecError
        from specc.lang.spec import load

        try:
            loaded = load(spec, overrides(set_, variant))  # YAML and schema mistakes are reported before torch loads
        except SpecError as error:
            if error.partial is None:
                raise
            from specc.build.compiler import with_model_problems

            raise with_model_problems(error) from None   # the model's own mistakes in the same pass
        from specc.build.compiler import compile as compile_spec
        from specc.build.expect import count_parameters

        compiled = compile_spec(loaded, device="meta")
        params = count_parameters(compiled.module)
        outputs = {name: list(compiled.graph[name].feature_shape or []) for name in compiled.graph.outputs}
        if output_format == "json":
            warned = [problem.to_dict() for problem in compiled.warnings]
            typer.echo(json.dumps({"ok": True, "params": params, "outputs": outputs, "errors": [], "warnings": warned},
                                  indent=2))
        else:
            shapes = ", ".join(f"{name} {shape}" for name, shape in outputs.items())
            typer.echo(f"OK {spec}: {params:,} parameters, output {shapes}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec format (for editors: yaml-language-server)."""
    from specc.build.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def draw(
    spec: SpecPath,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="File to write (- for stdout); the extension picks the format: .svg .png .pdf "
                               ".dot .mmd (Mermaid) .html (interactive viewer). Default: <spec name>.svg next "
                               "to the spec, or outside it when the spec is in a git repository.")] = None,
    depth: Annotated[Optional[int], typer.Option(help="Open blocks/branches this many levels deep; deeper ones become one box.")] = None,
    expand: Annotated[bool, typer.Option("--expand", help="Draw every repetition instead of one box marked ×N.")] = False,
    rankdir: Annotated[str, typer.Option(help="Direction: TB (top to bottom), LR, BT or RL.")] = "TB",
    autograd: Annotated[bool, typer.Option("--autograd", help="Draw the autograd graph of one forward pass (torchviz).")] = False,
    set_: SetOption = None,
    variant: VariantOption = None,
    output_format: Annotated[Optional[str], typer.Option(
        "--format", help="svg, png, pdf, dot, mmd or html; overrides the extension (needed with -o - "
                         "unless svg).")] = None,
) -> None:
    """Draw the model: one box per item, tensor shapes on the edges, branches side by side."""
    with user_errors():
        output_folder_exists(output)
        from specc.draw.drawing import GraphvizNotFound, drawing_bytes, write_drawing

        options = dict(depth=depth, expand=expand, rankdir=rankdir, autograd=autograd, **overrides(set_, variant))
        try:
            if output is not None and str(output) == "-":
                sys.stdout.buffer.write(drawing_bytes(spec, (output_format or "svg").lower(), **options))
                sys.stdout.flush()
                return
            path = write_drawing(spec, output, output_format=output_format and output_format.lower(), **options)
        except GraphvizNotFound as error:
            raise UsageFailure(str(error), code=1) from None
        except ValueError as error:
            raise UsageFailure(str(error)) from None
        where = "" if output is not None or path.parent.resolve() == spec.parent.resolve() else \
            " (outside the spec's git repository; -o chooses the file)"
        typer.echo(f"wrote {path}{where}")


CheckpointOption = Annotated[Path, typer.Option(help="A best.pt or last.pt written by `specc train`.",
                                                show_default=False)]
DeviceOption = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1 or mps (overrides train.device).")]


@app.command()
def train(
    spec: Annotated[Optional[Path], typer.Argument(
        help="Path to the YAML spec; leave it out with --resume to use the checkpoint's own spec.",
        show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override train.epochs.")] = None,
    device: DeviceOption = None,
    set_: SetOption = None,
    variant: VariantOption = None,
    out: Annotated[Path, typer.Option(help="Parent folder of the run directories.")] = Path("runs"),
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue from a last.pt or interrupted.pt exactly where it stopped (with its own spec, unless "
             "a spec or --set is given: the differences are printed and applied).")] = None,
    nproc: Annotated[int, typer.Option(min=1, help="Train on N processes of this machine (DDP through torchrun's "
                                                   "launcher; batch_size is per process). Several machines: "
                                                   "torchrun, see docs/distributed.md.")] = 1,
) -> None:
    """Train the model as the spec's `train:` section says; writes runs/<spec name>/<timestamp>/.

    Exit code 0 when training completes (or stops early), 1 when the loss became nan/inf,
    2 for spec, data or checkpoint errors, 130 when interrupted by Ctrl-C or SIGTERM (interrupted.pt
    is saved; last.pt keeps the last complete epoch).
    """
    try:
        with user_errors():
            keys = {key: value for key, value in (("epochs", epochs), ("device", device)) if value is not None}
            if nproc > 1:  # the launcher leaves torchmetrics & co to the processes it starts
                from specc.train.launch import LaunchError, launch_training

                try:
                    result = launch_training(spec, nproc, out=out, resume=resume, overrides=overrides(set_, variant), **keys)
                except LaunchError as error:
                    raise UsageFailure(str(error), code=1) from None
            else:
                from specc.train.training import train as run_training

                result = run_training(spec, out=out, resume=resume, overrides=overrides(set_, variant), **keys)
    except KeyboardInterrupt:  # before the loop started: nothing to save
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    if result.status == "diverged":
        raise typer.Exit(1)
    if result.status == "interrupted":
        raise typer.Exit(130)


@app.command()
def evaluate(
    spec: SpecPath,
    checkpoint: CheckpointOption,
    split: Annotated[str, typer.Option(help="train, val or test (rebuilt from the spec's data and split seed).")] = "test",
    device: DeviceOption = None,
    set_: SetOption = None,
    variant: VariantOption = None,
    output_format: Annotated[str, typer.Option("--format", help="text (a table) or json.")] = "text",
) -> None:
    """Print the loss and every configured metric of a checkpoint on one split of the spec's data."""
    with user_errors(output_format):
        from specc.train.evaluation import evaluate as run_evaluation

        metrics = run_evaluation(spec, checkpoint, split=split, device=device, overrides=overrides(set_, variant))
        if output_format == "json":
            typer.echo(json.dumps({"ok": True, "split": split, "metrics": metrics}, indent=2))
        else:
            from rich.console import Console

            from specc.train.run_log import print_metrics

            print_metrics(Console(highlight=False), f"{checkpoint}", {split: metrics})


@app.command()
def predict(
    spec: SpecPath,
    checkpoint: CheckpointOption,
    input_path: Annotated[Path, typer.Option("--input", help="A .csv (header row) or .npz (array x) of examples.",
                                             show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help=".csv or .npz to write (- for csv on stdout). Default: <input>.predictions.csv "
                               "(.npz for npz input).")] = None,
    device: DeviceOption = None,
    set_: SetOption = None,
    variant: VariantOption = None,
) -> None:
    """Run a checkpoint on new examples; write predicted classes and probabilities, or regression outputs."""
    with user_errors():
        output_folder_exists(output)
        from specc.train.evaluation import predict as run_prediction

        path = run_prediction(spec, checkpoint, input_path, output, device=device, overrides=overrides(set_, variant))
        if str(path) != "-":   # `-o -` printed the predictions themselves
            typer.echo(f"wrote {path}")


@app.command()
def summary(
    spec: SpecPath,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1,
                                            help="Batch size of the example input; shapes and FLOPs include it.")] = 1,
    depth: Annotated[Optional[int], typer.Option(help="Show rows down to this nesting depth (0: top-level items only).")] = None,
    expand: Annotated[bool, typer.Option("--expand", help="Show every repetition instead of one row marked ×N.")] = False,
    backward: Annotated[bool, typer.Option("--backward", help="Add backward FLOPs (estimated as 2x forward).")] = False,
    device: Annotated[str, typer.Option(help="meta (allocates nothing) or cpu for a real run.")] = "meta",
    input_shape: Annotated[Optional[list[str]], typer.Option(
        "--input-shape", metavar="NAME=SIZES", help="An input's shape without the batch dim: x=3,64,64 (or 3,64,64 for a "
                              "single input); repeatable.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, markdown, json or csv.")] = "table",
    columns: Annotated[Optional[str], typer.Option(
        help="Extra columns, comma-separated: input_shape, kernel_size, params_percent (or all).",
        show_default=False)] = None,
    units: Annotated[str, typer.Option(help="Memory in MiB (2**20 bytes, as torchsummary) or MB (10**6, as torchinfo).")] = "MiB",
    set_: SetOption = None,
    variant: VariantOption = None,
) -> None:
    """Show the model at a glance: each item's output shape, parameters and FLOPs, totals and memory."""
    with user_errors("json" if output_format == "json" else "text"):
        from specc.summary.summarize import parse_input_shapes, summary as summarize
        from specc.summary.render import FORMATS, print_summary

        if output_format not in FORMATS:
            raise UsageFailure(f"--format {output_format}: choose one of {', '.join(FORMATS)}")
        try:
            result = summarize(spec, batch_size=batch_size, depth=depth, expand=expand, device=device,
                               input_shapes=parse_input_shapes(input_shape), backward=backward,
                               columns=[name.strip() for name in (columns or "").split(",") if name.strip()], units=units,
                               **overrides(set_, variant))
        except ValueError as error:
            raise UsageFailure(str(error)) from None
        print_summary(result, output_format)


@app.command()
def diff(
    spec: SpecPath,
    other: Annotated[Optional[Path], typer.Argument(
        help="The spec to compare with; leave it out to compare SPEC with itself under --set.", show_default=False,
        metavar="OTHER")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE",
        help="Override a var of the second spec (of SPEC itself when OTHER is left out); repeatable.")] = None,
    set_a: Annotated[Optional[list[str]], typer.Option(
        "--set-a", metavar="KEY=VALUE", help="Override a var of SPEC; repeatable.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size of the example input.")] = 1,
    output_format: Annotated[str, typer.Option("--format", help="table, markdown or json.")] = "table",
    draw_path: Annotated[Optional[Path], typer.Option(
        "--draw", help="Also write one drawing of the second spec with the changes coloured (.svg .png .pdf .dot).",
        show_default=False)] = None,
) -> None:
    """Compare two specs item by item: added, removed and changed items, their shapes, params and FLOPs."""
    with user_errors("json" if output_format == "json" else "text"):
        from specc.summary.diff import FORMATS, diff as compare, side_spec

        if output_format not in FORMATS:
            raise UsageFailure(f"--format {output_format}: choose one of {', '.join(FORMATS)}")
        if other is None and not set_:
            raise UsageFailure("give a second spec, or --set to compare the spec with a variant of itself")
        b_variables = overrides(set_)
        result = compare(spec, other, a_variables=overrides(set_a), b_variables=b_variables, batch_size=batch_size)
        typer.echo(result.render(output_format))
        if draw_path is not None:
            from specc.draw.changes import changes_drawing, write_changes_drawing
            from specc.draw.drawing import GraphvizNotFound

            drawing = changes_drawing(side_spec(other or spec, b_variables), result.statuses(), result.removed(),
                                      f"{result.a_name} → {result.b_name}")
            try:
                path = write_changes_drawing(drawing, draw_path)
            except GraphvizNotFound as error:
                raise UsageFailure(str(error), code=1) from None
            except ValueError as error:
                raise UsageFailure(str(error)) from None
            typer.echo(f"wrote {path}", err=output_format == "json")


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
) -> None:
    """Export the model: ONNX (dynamic batch), a torch.export program (.pt2), or safetensors weights with the spec.

    Exit code 2 for spec or checkpoint errors and for an item the exporter cannot handle (the
    message names it), 1 when the written file's outputs differ from the model's.
    """
    with user_errors():
        output_folder_exists(output)
        from specc.export.exporter import check_export, prepare, write

        try:
            prepared = prepare(spec, checkpoint=checkpoint, **overrides(set_, variant))
            path = write(prepared, output)
        except ValueError as error:
            raise UsageFailure(str(error)) from None
        size = path.stat().st_size + sum(extra.stat().st_size for extra in path.parent.glob(f"{path.name}.data"))
        typer.echo(f"wrote {path} ({size / 1e6:.1f} MB)")
        if prepared.scaling:
            where = ("is not in a .safetensors file: scale inputs as in training" if path.suffix == ".safetensors"
                     else "is part of the exported graph: feed it raw inputs")
            typer.echo(f"note: the checkpoint's input scaling ({prepared.scaling}) {where}")
        if check_output:
            result = check_export(prepared, path)
            verdict = "matches" if result.ok else "DIFFERS FROM"
            typer.echo(f"checked: the exported file {verdict} the model at batch sizes "
                       f"{' and '.join(map(str, result.batch_sizes))} (max |difference| {result.max_difference:.1e})")
            if not result.ok:
                raise UsageFailure("the exported file does not reproduce the model", code=1)


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

        code = generate(spec, **overrides(set_, variant))
        if output is None:
            typer.echo(code, nl=False)
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(code, encoding="utf-8")
        typer.echo(f"wrote {output} ({code.count(chr(10))} lines)")


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
        "--check", help="A .safetensors of inputs and expected outputs: run the model and print the max difference.")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest |difference| --check accepts.")] = 1e-4,
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
                              allow_missing=allow_missing or (), check=check_io, **overrides(set_, variant))
        typer.echo(result.report.summary())
        typer.echo(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB)")
        if result.max_difference is not None:
            ok = result.max_difference <= tolerance
            typer.echo(f"checked: {result.checked} from {check_io.name} {'matches' if ok else 'DIFFERS'} "
                       f"(max |difference| {result.max_difference:.1e}, tolerance {tolerance:.0e})")
            if not ok:
                raise UsageFailure("the ported model does not reproduce the expected outputs", code=1)


@app.command("import")
def import_(
    target: Annotated[str, typer.Argument(help="module:callable returning an nn.Module, e.g. my_models:ResNet.",
                                          show_default=False)],
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
        if output is None:
            typer.echo(text, nl=False)
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output} ({text.count(chr(10))} lines)")


def _weights_map(value: str) -> Any:
    """`auto`, `strict`, or the rename rules in a YAML/JSON file."""
    if value in ("auto", "strict"):
        return value
    import yaml

    path = Path(value)
    if not path.is_file():
        raise UsageFailure(f"--map must be auto, strict or a rules file; {value} is none of them")
    rules = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(rules, dict):
        raise UsageFailure(f"{path}: the rules must be a mapping {{pattern: replacement}}")
    return rules


def main() -> None:
    """Console-script entry point. A bug in specc prints one line (SPECC_DEBUG=1 shows the traceback)."""
    try:
        app()
    except Exception as error:  # noqa: BLE001 - user mistakes are handled per command; this is a bug
        if os.environ.get("SPECC_DEBUG"):
            raise
        typer.echo(f"specc: internal error: {type(error).__name__}: {error} "
                   "(please report it; SPECC_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
