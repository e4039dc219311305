"""Commands that look at a model: check, schema, draw, summary, diff."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from specc.cli.app import (SetOption, SpecPath, UsageFailure, VariantOption, app, echo, output_folder_exists,
                           overrides, user_errors)
from specc.lang.terminal import output_width


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
            echo(json.dumps({"ok": True, "params": params, "outputs": outputs, "errors": [], "warnings": warned},
                            indent=2))
        else:
            shapes = ", ".join(f"{name} {shape}" for name, shape in outputs.items())
            echo(f"OK {spec}: {params:,} parameters, output {shapes}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec format (for editors: yaml-language-server)."""
    from specc.build.schema import json_schema

    echo(json.dumps(json_schema(), indent=2))


@app.command()
def draw(
    spec: SpecPath,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="File to write (- for stdout); the extension picks the format: .svg .png .pdf "
                               ".dot .mmd (Mermaid) .html (interactive viewer). Default: <spec name>.svg next "
                               "to the spec, or outside it when the spec is in a git repository.")] = None,
    depth: Annotated[Optional[int], typer.Option(min=0, help="Open blocks/branches this many levels deep; deeper ones become one box.")] = None,
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
        echo(f"wrote {path}{where}")


@app.command()
def summary(
    spec: SpecPath,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1,
                                            help="Batch size of the example input; shapes and FLOPs include it.")] = 1,
    depth: Annotated[Optional[int], typer.Option(min=0, help="Show rows down to this nesting depth (0: top-level items only).")] = None,
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
    strategy: Annotated[Optional[str], typer.Option(
        help="Add the training memory per process under fsdp or ddp (see --nproc; nothing is started).",
        show_default=False)] = None,
    nproc: Annotated[int, typer.Option(min=1, help="Processes for the --strategy estimate.")] = 1,
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="Add the sparsity of these trained weights (zeros per weight tensor and in total): a best.pt, last.pt "
             "or .safetensors.", show_default=False)] = None,
) -> None:
    """Show the model at a glance: each item's output shape, parameters and FLOPs, totals and memory."""
    with user_errors("json" if output_format == "json" else "text"):
        from specc.summary.summarize import parse_input_shapes, summary as summarize
        from specc.summary.render import FORMATS, print_summary, render

        if output_format not in FORMATS:
            raise UsageFailure(f"--format {output_format}: choose one of {', '.join(FORMATS)}")
        try:
            result = summarize(spec, batch_size=batch_size, depth=depth, expand=expand, device=device,
                               input_shapes=parse_input_shapes(input_shape), backward=backward,
                               columns=[name.strip() for name in (columns or "").split(",") if name.strip()], units=units,
                               **overrides(set_, variant))
            estimate = None
            if strategy is not None:
                from specc.summary.sharded_memory import estimate_spec

                estimate = estimate_spec(spec, strategy, nproc, batch_size, result.activation_bytes,
                                         **overrides(set_, variant))
        except ValueError as error:
            raise UsageFailure(str(error)) from None
        weights = None
        if checkpoint is not None:
            from specc.summary.sparsity import sparsity

            weights = sparsity(checkpoint)
        if output_format == "json":   # one document: the summary, with the extras as keys of their own
            payload = json.loads(render(result, "json"))
            payload.update({key: value.to_dict() for key, value in
                            (("memory_per_process", estimate), ("sparsity", weights)) if value is not None})
            echo(json.dumps(payload, indent=2))
            return
        print_summary(result, output_format)
        if estimate is not None:
            from specc.summary.sharded_memory import render_estimate

            print(render_estimate(estimate))
        if weights is not None:
            _print_sparsity(weights)


def _print_sparsity(weights) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    console.print(weights.table())
    console.print("\n".join(weights.lines()), markup=False)


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
        echo(result.render(output_format, width=output_width()))
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
            echo(f"wrote {path}", err=output_format == "json")
