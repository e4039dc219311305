"""The training console at 80 columns: epoch lines wrap between metrics, the progress bar shows
steps/s and an ETA, the best epoch is named, start-up says what it is doing; curves.png marks
the best epoch and plots the learning rate."""
from __future__ import annotations

import io
import math
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml
from rich.console import Console

from specc.train.run_log import RunLog, _progress, curves_figure, record_parts, wrap_parts

ROOT = Path(__file__).resolve().parent.parent
RECORD = {"epoch": 3, "train_loss": 1.066, "train_accuracy": 0.7279, "train_f1": 0.7287, "val_loss": 0.6032,
          "val_accuracy": 0.9296, "val_f1": 0.9271, "lr": 0.003, "seconds": 0.8}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def test_epoch_lines_wrap_between_metrics_at_80_columns():
    parts = record_parts(RECORD)
    lines = wrap_parts("epoch  3/10", parts, 80)
    assert lines == ["epoch  3/10  train_loss 1.0660  train_accuracy 0.7279  train_f1 0.7287",
                     "             val_loss 0.6032  val_accuracy 0.9296  val_f1 0.9271  lr 3.00e-03",
                     "             0.8s"]
    assert wrap_parts("epoch  3/10", parts, 200) == ["epoch  3/10  " + "  ".join(parts)]
    assert wrap_parts("epoch 1/1", ["a_very_long_metric_name 0.1234"], 10) == ["epoch 1/1  a_very_long_metric_name 0.1234"]


def fake_session(best_epoch):
    return SimpleNamespace(best=SimpleNamespace(best_epoch=best_epoch, monitor="val_accuracy"),
                           config=SimpleNamespace(log_histograms=False), model=None)


def test_progress_bar_shows_steps_per_second_and_eta_and_the_best_epoch(tmp_path):
    log = RunLog(tmp_path, epochs=10, verbose=True, session=fake_session(3))
    screen = io.StringIO()
    log.console = Console(file=screen, force_terminal=True, width=80, color_system=None, highlight=False)
    log.interactive, log.progress = True, _progress(log.console)
    log.epoch_started(3, 40, 0.003)
    for step in range(20):
        log.step(0.5 if step % 5 == 4 else None)
    log.progress.refresh()
    bar = ANSI.sub("", screen.getvalue()).replace("\r", "\n").splitlines()
    live = [line for line in bar if "20/40" in line][-1]
    assert re.search(r"20/40 +0:00:\d\d +eta \d:\d\d:\d\d +\d+\.\d steps/s +loss 0\.5000", live), live
    assert len(live.rstrip()) <= 80
    log.epoch_finished(RECORD, [RECORD])
    log.close([RECORD])
    text = ANSI.sub("", screen.getvalue())
    assert "epoch  3/10  0.8s  train_loss 1.0660  train_accuracy 0.7279  train_f1 0.7287\n" \
           "             val_loss 0.6032  val_accuracy 0.9296  val_f1 0.9271  lr 3.00e-03\n" \
           "             (best)\n" in text
    log.finish()


def test_curves_mark_the_best_epoch_and_plot_the_learning_rate():
    history = [{**RECORD, "epoch": epoch, "lr": 0.003 / epoch} for epoch in (1, 2, 3, 4)]
    figure = curves_figure(history, best_epoch=2)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["loss", "accuracy", "f1", "learning rate"]
    for axes in figure.axes:
        marks = [line for line in axes.lines if line.get_label() == "best (epoch 2)"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]
    lr_line = figure.axes[-1].lines[0]
    assert list(lr_line.get_ydata()) == [0.003 / epoch for epoch in (1, 2, 3, 4)]
    assert figure.axes[-1].get_yscale() == "log"


def test_a_learning_rate_that_reaches_zero_is_plotted_on_a_linear_scale_without_a_warning():
    import warnings

    history = [{**RECORD, "epoch": epoch, "lr": rate} for epoch, rate in ((1, 0.003), (2, 0.0015), (3, 0.0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # matplotlib warns that a log scale cannot show 0
        figure = curves_figure(history)
        figure.canvas.draw()
    assert figure.axes[-1].get_yscale() == "linear"
    assert list(figure.axes[-1].lines[0].get_ydata()) == [0.003, 0.0015, 0.0]


def test_a_quantity_without_a_number_yet_gets_an_empty_panel_without_a_warning():
    """An epoch interrupted before its validation: its val numbers are nan, and a panel may have no line."""
    import warnings

    history = [{"epoch": 1, "train_loss": 0.5, "val_loss": math.nan, "train_accuracy": math.nan,
                "val_accuracy": math.nan}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # matplotlib warns of a legend with no labelled line
        figure = curves_figure(history)
    loss, accuracy = figure.axes
    assert [line.get_label() for line in loss.lines] == ["train"] and loss.get_legend() is not None
    assert len(accuracy.lines) == 0 and accuracy.get_legend() is None


def run_in_terminal(arguments: list[str], cwd: Path, columns: int = 80) -> str:
    """Run a command with a pseudo-terminal of `columns` columns as stdout; everything it drew."""
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    environment = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(arguments, cwd=cwd, stdout=follower, stderr=follower, env=environment)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=300)
    os.close(leader)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_real_run_in_an_80_column_terminal(tmp_path):
    # digits in batches of 4: ~270 steps an epoch, long enough for the bar to be redrawn with its rate
    spec = {"name": "digits_console", "inputs": {"measurements": {"shape": [64]}},
            "layers": [{"Linear": {"out_features": 16}}, "ReLU", {"Linear": {"out_features": 10}}],
            "train": {"data": {"source": "sklearn:digits", "split": {"val": 0.2, "test": 0.2, "seed": 0}},
                      "batch_size": 4, "epochs": 3, "loss": "CrossEntropyLoss", "metrics": ["accuracy", "f1"],
                      "threads": 1, "log_every": 1}}
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump(spec))
    screen = run_in_terminal([sys.executable, "-m", "specc", "train", "digits.yaml", "--out", "runs"], tmp_path)
    text = ANSI.sub("", screen)
    assert "compiling digits_console" in text and "loading data (sklearn:digits)" in text
    assert "steps/s" in text and "eta " in text
    lines = [line for chunk in text.split("\n") for line in chunk.split("\r")]
    assert all(len(line.rstrip()) <= 80 for line in lines), max(lines, key=len)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line[:9] for line in epoch_lines if "train_loss" in line] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    best = re.search(r"best checkpoint: epoch (\d) \(val_loss (\d\.\d{4})\)", text)
    assert best, text[-2000:]
    assert "(best)" in text


def test_off_a_terminal_an_epoch_is_one_line_unless_columns_is_set(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    log = RunLog(tmp_path, epochs=10, verbose=True)
    log.interactive = False
    log.epoch_finished(RECORD, [RECORD])
    assert capsys.readouterr().out.count("\n") == 1
    monkeypatch.setenv("COLUMNS", "80")
    log.epoch_finished(RECORD, [RECORD])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
    log.finish()


def test_a_narrow_terminal_never_elides_a_digit_of_the_final_tables():
    import io

    from rich.console import Console

    from specc.train.run_log import print_folds, print_metrics

    metrics = {split: {"loss": 12345.678901, "accuracy": 0.987654, "balanced_accuracy": 0.912345}
               for split in ("train", "val", "test")}
    folds = [{"val_balanced_accuracy": 0.9 + index / 100} for index in range(5)]
    for width in (24, 40):
        screen = io.StringIO()
        console = Console(file=screen, width=width, force_terminal=False, force_jupyter=False)
        print_metrics(console, "best", metrics)
        print_folds(console, "folds", folds, {"val_balanced_accuracy": (0.92, 0.0141)})
        text = screen.getvalue()
        assert "…" not in text
        for number in ("12345.6789", "0.9877", "0.9123", "0.9400", "0.9200 ± 0.0141", "balanced_accuracy"):
            assert number in text, (width, number)


def test_curves_of_many_metrics_are_a_grid_not_a_strip():
    names = ["loss", "accuracy", "f1", "precision", "recall", "auroc", "balanced_accuracy"]
    history = [{"epoch": epoch, **{f"{split}_{name}": 1 / epoch for split in ("train", "val") for name in names},
                "lr": 0.01} for epoch in (1, 2)]
    figure = curves_figure(history)
    width, height = (round(inches * 100) for inches in figure.get_size_inches())
    assert len(figure.axes) == 8 and (width, height) == (1350, 1020)   # 3 columns, 3 rows at 100 dpi
    positions = {(round(axes.get_position().x0, 2), round(axes.get_position().y0, 2)) for axes in figure.axes}
    assert len({x for x, _ in positions}) == 3 and len({y for _, y in positions}) == 3
