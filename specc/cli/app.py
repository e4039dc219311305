"""The `specc` command line's frame: the typer app, the options every command shares, and the
way user mistakes become one located line and exit code 2. The commands live beside it
(model.py, training.py, weights.py); `specc.cli` puts them together.

Heavy imports happen inside the commands so `specc --help` stays instant.
"""
from __future__ import annotations

import contextlib
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
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final table (and errors).")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Also print each stage before the first "
                                                                     "epoch as a line with its time.")]
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
    trust_code: Annotated[bool, typer.Option(
        "--trust-code", help="Let a spec stored in a .safetensors file or checkpoint import code (imports:, "
                             "dataset:); without it that spec is checked in safe mode. Same as SPECC_TRUST_CODE=1.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print specc's version and exit.")] = False,
) -> None:
    """Declarative model specs for PyTorch: check, summarize, draw, train, export."""
    # SPECC_SAFE reaches every stage and the torchrun workers; restored when the command ends
    if safe:
        previous = os.environ.get("SPECC_SAFE")
        os.environ["SPECC_SAFE"] = "1"
        ctx.call_on_close(lambda: _restore_environment("SPECC_SAFE", previous))
    if trust_code:
        previous_trust = os.environ.get("SPECC_TRUST_CODE")
        os.environ["SPECC_TRUST_CODE"] = "1"
        ctx.call_on_close(lambda: _restore_environment("SPECC_TRUST_CODE", previous_trust))


def _restore_environment(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def echo(text: str, err: bool = False, nl: bool = True) -> None:
    """Print a line as every command does: escape sequences in file names and spec text are shown,
    never obeyed (specc.lang.terminal.printable)."""
    from specc.lang.terminal import printable

    typer.echo(printable(text), err=err, nl=nl)


class UsageFailure(Exception):
    """A user-facing failure: print the message, exit with `code`, no traceback."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# optional packages -> the extra of pyproject.toml that installs them
OPTIONAL_MODULES = {"onnx": "export", "onnxscript": "export", "onnxruntime": "export", "safetensors": "export",
                    "PIL": "data", "pyarrow": "data", "tokenizers": "data", "torchao": "quantize"}


@contextmanager
def user_errors(output_format: str = "text") -> Iterator[None]:
    """Turn spec errors and other user mistakes into clear messages and exit code 2."""
    from specc.lang.errors import SpecError, spec_warnings_to

    try:
        with spec_warnings_to(lambda line: echo(line, err=True)):   # `warning: file:line:col: ...`
            yield
    except SpecError as error:
        if output_format == "json":
            echo(json.dumps({"ok": False, "errors": [p.to_dict() for p in error.problems]}, indent=2))
        else:
            for problem in error.problems:
                echo(f"error: {problem}", err=True)
        raise typer.Exit(2) from None
    except UsageFailure as error:
        echo(f"error: {error}", err=True)
        raise typer.Exit(error.code) from None
    except ModuleNotFoundError as error:
        extra = OPTIONAL_MODULES.get((error.name or "").partition(".")[0])
        if extra is None:   # not one of specc's extras: a bug, reported as one
            raise
        typer.echo(f"error: this needs the Python package '{error.name}', which is not installed: "
                   f"pip install 'specc[{extra}]'", err=True)
        raise typer.Exit(2) from None
    except FileNotFoundError as error:
        echo(f"error: file not found: {error.filename or error}", err=True)
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


CheckpointOption = Annotated[Path, typer.Option(help="A best.pt or last.pt written by `specc train`.",
                                                show_default=False)]
DeviceOption = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1 or mps (overrides train.device).")]


FAST_EXIT_COMMANDS = ("train", "evaluate")


def starting(command: str, quiet: bool) -> None:
    """A first line before the seconds of importing torch, torchmetrics and the rest (on stderr: stdout
    keeps the run's own lines)."""
    if not quiet:
        typer.echo(f"specc {command}: loading torch and the training modules ...", err=True)


def main() -> None:
    """Console-script entry point. A bug in specc prints one line (SPECC_DEBUG=1 shows the traceback)."""
    try:
        app()
    except SystemExit as done:
        command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
        if command in FAST_EXIT_COMMANDS and not isinstance(done.code, str):
            _exit_now(done.code)
        raise
    except Exception as error:  # noqa: BLE001 - user mistakes are handled per command; this is a bug
        if os.environ.get("SPECC_DEBUG"):
            raise
        echo(f"specc: internal error: {type(error).__name__}: {error} "
             "(please report it; SPECC_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)


def _exit_now(code: Any) -> None:
    """Leave without the interpreter's teardown of torch, scipy and matplotlib (seconds after the final
    table): every file of the run is written and closed by now. The exit handlers still run (a few
    milliseconds): those of the user's `imports:` modules, logging's, and multiprocessing's, which
    release what `--nproc` shared with its processes (else the resource tracker warns of leaks)."""
    import atexit

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's, what a normal exit calls
    if run_exit_handlers is not None:
        run_exit_handlers()
    else:   # another Python: at least the log files are flushed and closed
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0)
