"""The `specc` command line (typer). Each command is a thin layer over the Python API.

Heavy imports happen inside the commands so `specc --help` stays instant.
"""
from __future__ import annotations

import json
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

SpecPath = Annotated[Path, typer.Argument(help="Path to the YAML spec.", show_default=False)]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a var (width=128) or a dotted spec key (train.epochs=5); repeatable.")]


class UsageFailure(Exception):
    """A user-facing failure: print the message, exit with `code`, no traceback."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@contextmanager
def user_errors(output_format: str = "text") -> Iterator[None]:
    """Turn spec errors and other user mistakes into clear messages and exit code 2."""
    from specc.errors import SpecError

    try:
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


def overrides(values: list[str] | None) -> dict[str, Any]:
    """`["width=128", "train.epochs=5"]` -> `{"width": 128, "train.epochs": 5}`."""
    from specc.spec import parse_override

    return dict(parse_override(value) for value in values or [])


@app.command()
def check(
    spec: SpecPath,
    set_: SetOption = None,
    output_format: Annotated[str, typer.Option("--format", help="text or json (machine-readable errors).")] = "text",
) -> None:
    """Validate and compile a spec (on the meta device); print OK with the parameter count."""
    with user_errors(output_format):
        from specc.compile import compile as compile_spec
        from specc.expect import count_parameters

        compiled = compile_spec(spec, device="meta", **overrides(set_))
        params = count_parameters(compiled.module)
        outputs = {name: list(compiled.graph[name].feature_shape or []) for name in compiled.graph.outputs}
        if output_format == "json":
            typer.echo(json.dumps({"ok": True, "params": params, "outputs": outputs, "errors": []}, indent=2))
        else:
            shapes = ", ".join(f"{name} {shape}" for name, shape in outputs.items())
            typer.echo(f"OK {spec}: {params:,} parameters, output {shapes}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec format (for editors: yaml-language-server)."""
    from specc.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
