"""What a run reports: progress on the console, metrics.csv, TensorBoard events and curves.png.

On a terminal each epoch gets a rich progress bar with loss, metrics and lr; otherwise (CI logs,
pipes) one plain line per epoch. The files are rewritten after every epoch, so an interrupted or
diverged run still leaves readable logs.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.table import Table

from specc.lang.terminal import console_text, printable
from specc.train.run_dir import write_atomic
from specc.train.tensorboard import TensorBoard, histograms_due

# The training session (specc.train.loop.Session) is used through its attributes: loop imports this module.
Session = Any

NOT_PLOTTED = ("epoch", "seconds", "data_seconds", "lr")
CURVE_COLUMNS = 3   # curves.png panels per row


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

    def epoch_started(self, epoch: int, steps: int, learning_rate: float) -> None:
        if self.progress is not None:
            # the bar leaves the lr to the epoch line: steps/s and the ETA take its room at 80 columns
            self.task = self.progress.add_task(self._epoch_label(epoch), total=steps, info="")

    def step(self, loss: float | None = None) -> None:
        """One batch done; `loss` (the epoch's running mean) is shown when given."""
        if self.progress is not None:
            info = {} if loss is None else {"info": f"loss {loss:.4f}"}
            self.progress.update(self.task, advance=1, **info)

    def epoch_finished(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Show the epoch's numbers and append them to metrics.csv and TensorBoard."""
        best = self.session is not None and self.session.best.best_epoch == record["epoch"]
        # the epoch's time first: then the train figures fill the first line, val and lr the second
        timing = record_parts({key: record[key] for key in ("seconds", "data_seconds") if key in record})
        figures = record_parts({key: value for key, value in record.items() if key not in ("seconds", "data_seconds")})
        parts = timing + figures + (["(best)"] if best else [])
        line = "\n".join(wrap_parts(self._epoch_label(record["epoch"]), parts, self._width()))
        if self.progress is not None:  # the finished bar gives way to the full line
            self.progress.remove_task(self.task)
            self.progress.console.print(line, crop=False)
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
            self.console.print(printable(text), markup=False)

    def wrapped_message(self, text: str) -> None:
        """A message wrapped between words to the width, never inside a number or a path."""
        if self.verbose:
            self.console.print(_wrapped(printable(text), self._width()), crop=False, markup=False)

    def _width(self) -> int:
        return line_width(self.console if self.interactive else None)

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
        self.tensorboard.flush()
        if history:
            best = self.session.best.best_epoch if self.session is not None else None
            plot_curves(history, self.run_dir / "curves.png", best)

    def finish(self) -> None:
        self.tensorboard.close()


STAGE_LINES = {"on": False}   # `-v`: every stage also as a line with its time, on a terminal or not


def show_stage_lines(on: bool = True) -> None:
    """`specc train -v`: print each stage before the first epoch as a line, with the seconds it took."""
    STAGE_LINES["on"] = on


@contextlib.contextmanager
def stage(text: str, verbose: bool = True) -> Iterator[None]:
    """What the run is doing before its first epoch (compiling, loading data), as a spinner on a
    terminal that gives way to the next stage; nothing off a terminal, where logs stay as they were
    (with `-v`, a line per stage and its time)."""
    console = status_console()
    if verbose and STAGE_LINES["on"]:
        started = time.perf_counter()
        yield
        print(f"{text}: {time.perf_counter() - started:.2f} s", flush=True)
        return
    if not verbose or not console.is_terminal:
        yield
        return
    with console.status(f"{console_text(text)} ...", spinner="dots"):
        yield


def status_console() -> Console:
    return Console(highlight=False)


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

    def wrapped_message(self, text: str) -> None:
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
    """`epoch  3/10 ━━━━━━━━━━━━  23/47 0:00:02 eta 0:00:02 11.2 steps/s loss 0.1234`: under 80 columns."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
                        TimeElapsedColumn(), _Remaining(), _StepRate(), TextColumn("{task.fields[info]}"),
                        console=console)
    progress.start()
    return progress


def _step_rate(speed: float | None) -> str:
    return "" if not speed else f"{speed:.1f} steps/s" if speed >= 1 else f"{1 / speed:.1f} s/step"


def _remaining(seconds: float | None) -> str:
    if seconds is None:
        return "eta -:--:--"
    minutes, second = divmod(int(round(seconds)), 60)
    return f"eta {minutes // 60}:{minutes % 60:02d}:{second:02d}"


def _column(render):
    """A rich progress column drawing `render(task)` as plain text."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Column(ProgressColumn):
        def render(self, task):
            return Text(render(task))
    return Column


_StepRate = _column(lambda task: _step_rate(task.speed))
_Remaining = _column(lambda task: _remaining(task.time_remaining))


def format_record(record: dict[str, Any]) -> str:
    """`train_loss 0.1234  val_accuracy 0.9800  lr 1.00e-03  0.8s`."""
    return "  ".join(record_parts(record))


def wrap_parts(label: str, parts: list[str], width: int) -> list[str]:
    """`label  part  part ...` in lines of at most `width` characters, broken only between parts
    (a metric keeps its name and number together); later lines are indented under the first part."""
    indent = " " * (len(label) + 2)
    lines, line, on_line = [], label, 0
    for part in parts:
        if on_line and len(line) + 2 + len(part) > width:
            lines.append(line)
            line, on_line = indent + part, 1
        else:
            line, on_line = f"{line}  {part}", on_line + 1
    return lines + [line]


def record_parts(record: dict[str, Any]) -> list[str]:
    """The epoch's figures as separate parts: `train_loss 0.1234`, `lr 1.00e-03`, `0.8s`."""
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
    return parts


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


def plot_curves(history: list[dict[str, Any]], path: Path, best_epoch: int | None = None) -> None:
    """curves.png: see `curves_figure`."""
    figure = curves_figure(history, best_epoch)
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))


def curves_figure(history: list[dict[str, Any]], best_epoch: int | None = None):
    """One panel per quantity (loss, then each metric), train and val over epochs, the best epoch
    marked by a dashed line; then the learning rate when it was recorded (log scale unless it reaches 0)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(key.partition("_")[2] for key in history[0] if key not in NOT_PLOTTED))
    with_lr = any(isinstance(record.get("lr"), (int, float)) for record in history)
    panels = len(names) + with_lr
    # a grid, at most CURVE_COLUMNS wide: 7 panels in one row made a 4050 px wide strip
    columns = min(panels, CURVE_COLUMNS)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(4.5 * columns, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    epochs = [record["epoch"] for record in history]
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        for split in ("train", "val"):
            values = [record.get(f"{split}_{name}", math.nan) for record in history]
            if any(not math.isnan(value) for value in values):
                axes.plot(epochs, values, marker="o", markersize=3, label=split)
        _mark_best(axes, best_epoch)
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:   # a quantity with no number yet (all nan) has no line
            axes.legend()
    if with_lr:
        axes = figure.add_subplot(rows, columns, panels)
        rates = [record.get("lr", math.nan) for record in history]
        axes.plot(epochs, rates, marker="o", markersize=3, color="#7f7f7f", label="lr")
        if all(rate > 0 for rate in rates if not math.isnan(rate)):   # a schedule that reaches 0 has no log
            axes.set_yscale("log")
        _mark_best(axes, best_epoch)
        axes.set(title="learning rate", xlabel="epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def _mark_best(axes, best_epoch: int | None) -> None:
    if best_epoch is not None:
        axes.axvline(best_epoch, color="#b85450", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")


def print_metrics(console: Console, title: str, metrics: dict[str, dict[str, Any]]) -> None:
    """A table with one row per metric and one column per split; matrices printed below it."""
    splits = list(metrics)
    names = list(dict.fromkeys(name for values in metrics.values() for name in values))
    table = Table()
    table.add_column("metric", no_wrap=True)
    for split in splits:
        table.add_column(split, justify="right", no_wrap=True)
    matrices = []
    for name in names:
        cells = [metrics[split].get(name) for split in splits]
        if any(isinstance(cell, list) for cell in cells):
            matrices.append(name)
            continue
        table.add_row(name, *("" if cell is None else f"{cell:.4f}" for cell in cells))
    console.print(_wrapped(printable(title), line_width(console if console.is_terminal else None)), crop=False,
                  markup=False)
    print_whole(console, table)
    for name in matrices:
        for split in splits:
            if isinstance(metrics[split].get(name), list):
                console.print(f"{name} ({split}), rows = true class:")
                for row in metrics[split][name]:
                    console.print("  " + " ".join(f"{value:>5}" for value in _flat(row)))


def print_folds(console: Console, title: str, folds: list[dict[str, float]], summary: dict[str, tuple]) -> None:
    """K-fold results: one column per fold, then mean ± std."""
    table = Table()
    table.add_column("metric", no_wrap=True)
    for index in range(len(folds)):
        table.add_column(f"fold {index + 1}", justify="right", no_wrap=True)
    table.add_column("mean ± std", justify="right", no_wrap=True)
    for name, (mean, std) in summary.items():
        table.add_row(name, *(f"{fold.get(name, math.nan):.4f}" for fold in folds), f"{mean:.4f} ± {std:.4f}")
    console.print(printable(title), markup=False)
    print_whole(console, table)


def print_whole(console: Console, table: Table) -> None:
    """The table at its natural width even on a narrower terminal: longer lines (the terminal wraps
    them), never a number cut to "…"."""
    width = console.width
    console.width = max(width, console.measure(table, options=console.options.update(width=10 ** 4)).maximum)
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def line_width(terminal: Console | None) -> int:
    """How wide lines may be: a terminal's width; off a terminal COLUMNS when it is set, else no
    limit, so a log keeps one line per epoch for grep."""
    if terminal is not None:
        return terminal.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() else 10 ** 6


def _wrapped(text: str, width: int) -> str:
    """Wrapped between words (never inside a number or a path), later lines indented."""
    return "\n".join(textwrap.wrap(text, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False))


def _flat(row: Any) -> list:
    return row if isinstance(row, list) else [row]
