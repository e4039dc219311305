"""`specc train / evaluate / predict` as a user runs them: real subprocesses for each command and
for Ctrl-C; the error exit codes through typer's CliRunner (in-process, no start-up cost)."""
from __future__ import annotations

import csv
import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from specc.cli import app

from processes import signal_during_training

torch.set_num_threads(1)  # for the in-process CliRunner runs

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two pytest workers share two cores

IRIS = """\
    name: iris_cli
    inputs: {x: {shape: [4]}}
    layers: [Linear: {out_features: 16}, ReLU, Linear: {out_features: 3}]
    train:
      data: {source: "sklearn:iris", split: {val: 0.2, test: 0.2}, normalize: standard}
      epochs: 20
      batch_size: 16
      loss: CrossEntropyLoss
      optimizer: {Adam: {lr: 0.02}}
      metrics: [accuracy, confusion_matrix]
"""


def specc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specc", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    (path / "iris.yaml").write_text(textwrap.dedent(IRIS))
    return path


@pytest.fixture(scope="module")
def trained(workdir) -> Path:
    """Train once with --epochs/--device/--set/--out; later tests use the run directory."""
    result = specc("train", "iris.yaml", "--epochs", 12, "--device", "cpu", "--set", "train.batch_size=8",
                   "--out", "runs", cwd=workdir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("training iris_cli on cpu: 90 train / 30 val / 30 test examples")
    assert sum(line.startswith("epoch ") for line in lines) == 12  # plain lines: stdout is not a terminal
    assert "confusion_matrix (test), rows = true class:" in result.stdout
    (run_dir,) = (workdir / "runs" / "iris_cli").iterdir()
    assert load_yaml_epochs(run_dir) == (12, 8)
    return run_dir


def load_yaml_epochs(run_dir: Path) -> tuple[int, int]:
    import yaml

    train = yaml.safe_load((run_dir / "spec.yaml").read_text())["train"]
    return train["epochs"], train["batch_size"]


def test_train_writes_the_run_directory(trained):
    assert {"best.pt", "last.pt", "metrics.csv", "curves.png", "spec.yaml", "summary.json"} <= {
        path.name for path in trained.iterdir()}
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["metrics"]["val"]["accuracy"] >= 0.8


def test_evaluate_prints_the_checkpoint_metrics(workdir, trained):
    result = specc("evaluate", "iris.yaml", "--checkpoint", trained / "best.pt", "--split", "val", "--format", "json",
                   cwd=workdir)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    expected = json.loads((trained / "summary.json").read_text())["metrics"]["val"]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert np.array(metrics["confusion_matrix"]).sum() == 30


def test_evaluate_quiet_and_verbose(workdir, trained):
    """-v: each stage on its own line with its time, then the table; -q: the table alone; with
    --format json stdout stays one JSON document whatever the flags."""
    checkpoint = trained / "best.pt"
    loud = specc("evaluate", "iris.yaml", "--checkpoint", checkpoint, "-v", cwd=workdir)
    assert loud.returncode == 0, loud.stderr
    stages = [line for line in loud.stdout.splitlines() if re.fullmatch(r".+: \d+\.\d\d s", line)]
    assert [line.rsplit(":", 1)[0] for line in stages] == [
        "reading best.pt", "compiling the spec and loading the weights", "loading the test split",
        "evaluating 30 examples"]
    assert loud.stdout.index("evaluating 30 examples") < loud.stdout.index("accuracy")
    quiet = specc("evaluate", "iris.yaml", "--checkpoint", checkpoint, "-q", cwd=workdir)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert not any(line in quiet.stdout for line in stages) and "accuracy" in quiet.stdout
    plain = specc("evaluate", "iris.yaml", "--checkpoint", checkpoint, "-v", "--format", "json", cwd=workdir)
    assert json.loads(plain.stdout)["ok"] is True


def test_predict_writes_one_row_per_example(workdir, trained):
    from sklearn.datasets import load_iris

    features, labels = load_iris(return_X_y=True)
    rows = ["a,b,c,d"] + [",".join(map(str, row)) for row in features[::10]]
    (workdir / "flowers.csv").write_text("\n".join(rows) + "\n")
    result = specc("predict", "iris.yaml", "--checkpoint", trained / "best.pt", "--input", "flowers.csv",
                   "-o", "out.csv", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wrote out.csv"
    with open(workdir / "out.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert list(predictions[0]) == ["prediction", "probability_0", "probability_1", "probability_2"]
    assert np.mean([int(row["prediction"]) == label for row, label in zip(predictions, labels[::10])]) >= 0.8


def invoke(*args) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_a_wrong_loss_name_exits_2_with_the_location_and_a_suggestion(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text(textwrap.dedent(IRIS).replace("loss: CrossEntropyLoss", "loss: CrossEntropyLos"))
    result = invoke("train", bad, "--out", workdir / "never")
    assert result.exit_code == 2
    assert f"{bad}:8:3: train.loss: unknown loss 'CrossEntropyLos' (did you mean 'CrossEntropyLoss'?)" in result.output
    assert not (workdir / "never").exists()


def test_a_corrupted_checkpoint_exits_2_and_stays_untouched(workdir, trained):
    broken = workdir / "broken.pt"
    broken.write_bytes((trained / "best.pt").read_bytes()[:300])  # a truncated copy
    result = invoke("evaluate", workdir / "iris.yaml", "--checkpoint", broken)
    assert result.exit_code == 2
    assert "broken.pt: cannot read the checkpoint" in result.output
    assert broken.read_bytes() == (trained / "best.pt").read_bytes()[:300]
    resumed = invoke("train", workdir / "iris.yaml", "--resume", broken)
    assert resumed.exit_code == 2 and "cannot read the checkpoint" in resumed.output
    assert sorted(path.name for path in workdir.iterdir() if path.suffix == ".pt") == ["broken.pt"]


def test_a_diverging_run_exits_1_naming_epoch_and_step(workdir):
    result = invoke("train", workdir / "iris.yaml", "--out", workdir / "diverged",
                    "--set", "train.optimizer={SGD: {lr: 1.0e+30}}", "--set", "train.data.normalize=none")
    assert result.exit_code == 1
    assert "the training loss became" in result.output and "at epoch 1, step" in result.output


def test_ctrl_c_saves_last_pt_exits_130_and_resume_continues(workdir):
    process = signal_during_training(["train", "iris.yaml", "--epochs", "100000", "--out", "interrupted"], workdir)
    assert process.returncode == 130, process.stderr
    assert "interrupted during epoch" in process.stdout and "Traceback" not in process.stderr
    (run_dir,) = (workdir / "interrupted" / "iris_cli").iterdir()
    epochs_done = torch.load(run_dir / "last.pt", weights_only=True)["epoch"]
    resumed = specc("train", "iris.yaml", "--resume", run_dir / "last.pt", "--epochs", epochs_done + 2, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from epoch {epochs_done + 1}" in resumed.stdout
    with open(run_dir / "metrics.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(1, epochs_done + 3))


def test_a_first_line_before_the_imports_and_quiet_keeps_only_the_final_table(workdir):
    """The run says it started before torch & co are imported (stderr); --quiet prints the table alone,
    -v each stage with its time; the fast exit after the table leaves every file of the run complete."""
    kfold = IRIS.replace("split: {val: 0.2, test: 0.2}", "split: {kfold: 3}").replace("name: iris_cli", "name: iris_quiet")
    (workdir / "quiet.yaml").write_text(textwrap.dedent(kfold))
    quiet = specc("train", "quiet.yaml", "--epochs", 2, "--out", "quiet_runs", "--quiet", cwd=workdir)
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stdout.splitlines()
    assert lines[0].startswith("3-fold cross-validation: ") and "val_accuracy" in quiet.stdout
    assert not any(line.startswith(("fold ", "training ")) for line in lines) and len(lines) < 15
    assert "loading torch" not in quiet.stderr
    (run_dir,) = (workdir / "quiet_runs" / "iris_quiet").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert all((run_dir / f"fold_{index}" / "best.pt").exists() for index in (1, 2, 3))

    loud = specc("train", "iris.yaml", "--epochs", 1, "--out", "loud_runs", "-v", cwd=workdir)
    assert loud.returncode == 0, loud.stderr
    assert loud.stderr.splitlines()[0] == "specc train: loading torch and the training modules ..."
    assert any(line.startswith("compiling iris_cli: ") and line.endswith(" s") for line in loud.stdout.splitlines())
    (run_dir,) = (workdir / "loud_runs" / "iris_cli").iterdir()
    assert (run_dir / "curves.png").stat().st_size > 0 and list(run_dir.glob("events.out.tfevents.*"))


def test_the_fast_exit_after_the_table_still_runs_exit_handlers(workdir):
    """`specc train` skips the interpreter's slow teardown, not the exit handlers: one registered by a
    module the spec imports runs (and so do multiprocessing's, which `--nproc` needs)."""
    (workdir / "exit_probe.py").write_text(textwrap.dedent("""\
        import atexit
        from pathlib import Path
        from torch import nn

        class Probe(nn.Identity):
            pass

        atexit.register(lambda: Path(__file__).with_name("exit_handler_ran").write_text("yes"))
    """))
    spec = IRIS.replace("name: iris_cli", "name: iris_exit\n    imports: [exit_probe.Probe]")
    (workdir / "exit.yaml").write_text(textwrap.dedent(spec).replace("layers: [", "layers: [Probe, "))
    result = specc("train", "exit.yaml", "--epochs", 1, "--out", "exit_runs", "-q", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "exit_handler_ran").read_text() == "yes"


def test_training_a_spec_without_train_says_so_even_with_train_overrides():
    import specc
    from specc.lang.errors import SpecError

    spec = Path(__file__).resolve().parents[1] / "specs" / "mlp.yaml"
    for overrides in ({"hidden": 64, "train.data.split.seed": 1}, {"hidden": 64}):
        with pytest.raises(SpecError) as error:
            specc.train(str(spec), overrides=overrides, verbose=False)
        (problem,) = error.value.problems
        assert "has no `train:` section" in problem.message and problem.location.file.endswith("mlp.yaml")
