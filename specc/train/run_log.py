"""What a run reports: progress on the console, metrics.csv, TensorBoard events and curves.png.

On a terminal each epoch gets a rich progress bar with loss, metrics and lr; otherwise (CI logs,
pipes) one plain line per epoch. The files are rewritten after every epoch, so an interrupted or
diverged run still leaves readable logs.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from specc.train.run_dir import write_atomic
from specc.train.tensorboard import TensorBoard, histograms_due

# The training session (specc.train.loop.Session) is used through its attributes: loop imports this module.
Session = Any

NOT_PLOTTED = ("epoch", "seconds", "data_seconds", "lr")


class RunLog:
    """Console progress plus the run directory's log files (only on the main process)."""

    def __init__(self, run_dir: Path, *, epochs: int, verbose: bool = True, label: str = "",
                 session: Session | None = None):
        self.run_dir = run_dir
        self.epochs = epochs
        self.verbose = verbose
        self.label = f"{label} " if label else ""
        self.console = Console(highlight=False, soft_wrap=True)
        self.interactive = verbose and sys.stdout.isatty()
        self.tensorboard = TensorBoard(run_dir)
        self.session = session  # for the histograms of `log_histograms:`
        self.progress = _progress(self.console) if self.interactive else None
        self.task = None
        self.learning_rate = ""

    def epoch_started(self, epoch: int, steps: int, learning_rate: float) -> None:
        if self.progress is not None:
            self.learning_rate = f"lr {learning_rate:.2e}"
            self.task = self.progress.add_task(self._epoch_label(epoch), total=steps, info=self.learning_rate)

    def step(self, loss: float | None = None) -> None:
        """One batch done; `loss` (the epoch's running mean) is shown when given."""
        if self.progress is not None:
            info = {} if loss is None else {"info": f"loss {loss:.4f}  {self.learning_rate}"}
            self.progress.update(self.task, advance=1, **info)

    def epoch_finished(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Show the epoch's numbers and append them to metrics.csv and TensorBoard."""
        line = f"{self._epoch_label(record['epoch'])}  {format_record(record)}"
        if self.progress is not None:  # the finished bar gives way to the full line
            self.progress.remove_task(self.task)
            self.progress.console.print(line)
        elif self.verbose:
            print(line, flush=True)
        write_csv(self.run_dir / "metrics.csv", history)
        self.tensorboard.scalars(record, record["epoch"])
        if self.session is not None and histograms_due(self.session.config.log_histograms, record["epoch"]):
            self.tensorboard.histograms(self.session.model, record["epoch"])

    def _epoch_label(self, epoch: int) -> str:
        return f"{self.label}epoch {epoch:>{len(str(self.epochs))}}/{self.epochs}"

    def message(self, text: str) -> None:
        if self.verbose:
            self.console.print(text)

    def model_started(self, session: Session) -> None:
        """The model graph and the resolved spec, in TensorBoard, before the first epoch."""
        note = self.tensorboard.model(session)
        if note:
            self.message(note)

    def final_metrics(self, session: Session, metrics: dict[str, dict[str, Any]], epoch: int) -> None:
        """The best checkpoint's metrics (test split, hparams, confusion matrices) into TensorBoard."""
        self.tensorboard.final(session, metrics, epoch)

    def close(self, history: list[dict[str, Any]]) -> None:
        """Stop the progress display and draw curves.png; the events file stays open for final_metrics."""
        if self.progress is not None:
            self.progress.stop()
        self.tensorboard.writer.flush()
        if history:
            plot_curves(history, self.run_dir / "curves.png")

    def finish(self) -> None:
        self.tensorboard.close()


class SilentLog:
    """The log of ranks other than 0 under torchrun: the same calls, nothing printed or written."""

    def __init__(self):
        self.console = Console(quiet=True)

    def epoch_started(self, epoch: int, steps: int, learning_rate: float) -> None:
        pass

    def step(self, loss: float | None = None) -> None:
        pass

    def epoch_finished(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def model_started(self, session: Any) -> None:
        pass

    def final_metrics(self, session: Any, metrics: dict[str, dict[str, Any]], epoch: int) -> None:
        pass

    def close(self, history: list[dict[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


def _progress(console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console)
    progress.start()
    return progress


def format_record(record: dict[str, Any]) -> str:
    """`train_loss 0.1234  val_accuracy 0.9800  lr 1.00e-03  0.8s`."""
    parts = []
    for key, value in record.items():
        if key == "epoch":
            continue
        if key == "lr":
            parts.append(f"lr {value:.2e}")
        elif key == "seconds":
            parts.append(f"{value:.1f}s")
        elif key == "data_seconds":  # streamed data: the part of the epoch spent waiting for batches
            parts.append(f"data {value:.1f}s")
        else:
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)


def write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv, rewritten atomically (a full disk leaves the previous one)."""
    if not history:
        return

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)

    write_atomic(path, write)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """One panel per quantity (loss, then each metric), train and val curves over epochs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(key.partition("_")[2] for key in history[0] if key not in NOT_PLOTTED))
    figure = Figure(figsize=(4.5 * len(names), 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    epochs = [record["epoch"] for record in history]
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        for split in ("train", "val"):
            values = [record.get(f"{split}_{name}", math.nan) for record in history]
            if any(not math.isnan(value) for value in values):
                axes.plot(epochs, values, marker="o", markersize=3, label=split)
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))


def print_metrics(console: Console, title: str, metrics: dict[str, dict[str, Any]]) -> None:
    """A table with one row per metric and one column per split; matrices printed below it."""
    splits = list(metrics)
    names = list(dict.fromkeys(name for values in metrics.values() for name in values))
    table = Table()
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    matrices = []
    for name in names:
        cells = [metrics[split].get(name) for split in splits]
        if any(isinstance(cell, list) for cell in cells):
            matrices.append(name)
            continue
        table.add_row(name, *("" if cell is None else f"{cell:.4f}" for cell in cells))
    console.print(title)
    console.print(table)
    for name in matrices:
        for split in splits:
            if isinstance(metrics[split].get(name), list):
                console.print(f"{name} ({split}), rows = true class:")
                for row in metrics[split][name]:
                    console.print("  " + " ".join(f"{value:>5}" for value in _flat(row)))


def print_folds(console: Console, title: str, folds: list[dict[str, float]], summary: dict[str, tuple]) -> None:
    """K-fold results: one column per fold, then mean ± std."""
    table = Table()
    table.add_column("metric")
    for index in range(len(folds)):
        table.add_column(f"fold {index + 1}", justify="right")
    table.add_column("mean ± std", justify="right")
    for name, (mean, std) in summary.items():
        table.add_row(name, *(f"{fold.get(name, math.nan):.4f}" for fold in folds), f"{mean:.4f} ± {std:.4f}")
    console.print(title)
    console.print(table)


def _flat(row: Any) -> list:
    return row if isinstance(row, list) else [row]
