"""Commands that train and run a model: train, evaluate, predict, generate."""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from specc.cli.app import (CheckpointOption, DeviceOption, QuietOption, SetOption, SpecPath, UsageFailure,
                           VariantOption, VerboseOption, app, echo, output_folder_exists, overrides, starting,
                           user_errors)


@app.command()
def train(
    spec: Annotated[Optional[Path], typer.Argument(
        help="Path to the YAML spec; leave it out with --resume to use the checkpoint's own spec.",
        show_default=False, metavar="SPEC")] = None,
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
    strategy: Annotated[Optional[str], typer.Option(
        help="Override train.strategy: ddp (every process holds the model) or fsdp (each holds a shard; "
             "docs/distributed.md).", show_default=False)] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train the model as the spec's `train:` section says; writes runs/<spec name>/<timestamp>/.

    Exit code 0 when training completes (or stops early), 1 when the loss became nan/inf,
    2 for spec, data or checkpoint errors, 130 when interrupted by Ctrl-C or SIGTERM (interrupted.pt
    is saved; last.pt keeps the last complete epoch).
    """
    starting("train", quiet)
    try:
        with user_errors(), _sigterm_interrupts():
            keys = {key: value for key, value in (("epochs", epochs), ("device", device),
                                                               ("strategy", strategy)) if value is not None}
            if nproc > 1:  # the launcher leaves torchmetrics & co to the processes it starts
                from specc.train.launch import LaunchError, launch_training

                try:
                    result = launch_training(spec, nproc, out=out, resume=resume, overrides=overrides(set_, variant), **keys)
                except LaunchError as error:
                    raise UsageFailure(str(error), code=1) from None
            else:
                from specc.train.run_log import show_stage_lines
                from specc.train.training import train as run_training

                show_stage_lines(verbose)
                result = run_training(spec, out=out, resume=resume, overrides=overrides(set_, variant), quiet=quiet,
                                      **keys)
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
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Print the loss and every configured metric of a checkpoint on one split of the spec's data."""
    plain = output_format == "json"   # stdout is the JSON document alone
    starting("evaluate", quiet or plain)
    with user_errors(output_format):
        from specc.train.evaluation import evaluate as run_evaluation
        from specc.train.run_log import show_stage_lines

        show_stage_lines(verbose and not plain)
        metrics = run_evaluation(spec, checkpoint, split=split, device=device, overrides=overrides(set_, variant),
                                 quiet=quiet or plain)
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
    input_path: Annotated[Path, typer.Option("--input", help="A .csv (header row) or .npz (array x) of examples; "
                                             "for an image model also a png/jpg or a folder of them.",
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


@app.command()
def generate(
    spec: SpecPath,
    checkpoint: CheckpointOption,
    prompt: Annotated[str, typer.Option(help="The text to continue (default: a newline, as nanoGPT starts).",
                                        show_default=False)] = "\n",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to sample.")] = 200,
    temperature: Annotated[float, typer.Option(help="Divides the scores: < 1 sharper, > 1 flatter, 0 greedy.")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k likeliest tokens only.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the sampling: the same seed gives the same text.")] = 0,
    cache: Annotated[bool, typer.Option(help="Use the key/value cache (same tokens, linear time).")] = True,
    device: DeviceOption = None,
    set_: SetOption = None,
    variant: VariantOption = None,
) -> None:
    """Sample text from a checkpoint trained on text, decoded with its saved tokenizer."""
    with user_errors():
        from specc.train.generation import generate as run_generation

        result = run_generation(spec, checkpoint, prompt=prompt, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, seed=seed, device=device, cache=cache,
                                overrides=overrides(set_, variant))
        echo(result.text)


@app.command()
def quantize(
    spec: SpecPath,
    checkpoint: CheckpointOption,
    method: Annotated[str, typer.Option(help="int8-dynamic (int8 weights and activations), int8-weight (int8 weights) "
                                             "or int4-weight (needs CUDA).")] = "int8-dynamic",
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Write the quantized checkpoint here (.pt); evaluate and predict read it.",
        show_default=False)] = None,
    split: Annotated[str, typer.Option(help="The split both models are evaluated on.")] = "test",
    set_: SetOption = None,
    variant: VariantOption = None,
    output_format: Annotated[str, typer.Option("--format", help="text (a table) or json.")] = "text",
) -> None:
    """Quantize a trained checkpoint with torchao; compare size, metrics and CPU latency with the float model."""
    with user_errors(output_format):
        output_folder_exists(output)
        from specc.train.quantize import quantize as run_quantization

        report = run_quantization(spec, checkpoint, method=method, output=output, split=split,
                                  overrides=overrides(set_, variant))
        if output_format == "json":
            echo(json.dumps({"ok": True, "method": report.method, "split": report.split,
                             "quantized": report.quantized, "kept_float": report.kept_float,
                             "rows": report.rows(), "output": str(report.output) if report.output else None}, indent=2))
            return
        from specc.train.quantize import print_report

        print_report(report)
