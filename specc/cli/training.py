"""Commands that train and run a model: train, evaluate, predict."""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from specc.cli.app import (CheckpointOption, DeviceOption, SetOption, SpecPath, UsageFailure, VariantOption, app,
                           echo, output_folder_exists, overrides, user_errors)


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
        with user_errors(), _sigterm_interrupts():
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
        echo("interrupted", err=True)
        raise typer.Exit(130) from None
    if result.status == "diverged":
        raise typer.Exit(1)
    if result.status == "interrupted":
        raise typer.Exit(130)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C from the start of `specc train`, so a run stopped while it compiles or
    reads its data exits with 130, as a Ctrl-C does (the loop installs its own handler while it
    trains: stop after the current step, save interrupted.pt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
            echo(json.dumps({"ok": True, "split": split, "metrics": metrics}, indent=2))
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
            echo(f"wrote {path}")
