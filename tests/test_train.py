"""The training loop through the Python API: real models to real bars, run files, resume, faults."""
from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import specc.train.loop
from specc.weights.checkpoint import load_checkpoint, save_checkpoint
from specc.lang.errors import SpecError
from specc.lang.spec import load
from specc.train.training import evaluate, predict, train

torch.set_num_threads(1)  # two pytest workers share two cores

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

# A small digits model with dropout and BatchNorm: every random stream and running statistic
# matters for the exact-resume test.
SMALL_DIGITS = {
    "name": "small_digits",
    "inputs": {"image": {"shape": [1, 8, 8]}},
    "layers": [{"Conv2d": {"out_channels": 8, "kernel_size": 3, "padding": 1}}, "BatchNorm2d", "ReLU",
               "Flatten", {"Dropout": {"p": 0.2}}, {"Linear": {"out_features": 10}, "name": "head"}],
    "train": {"data": {"source": "sklearn:digits", "normalize": "standard"}, "epochs": 4, "batch_size": 64,
              "loss": "CrossEntropyLoss", "metrics": ["accuracy"],
              "optimizer": {"AdamW": {"lr": 0.003}}, "scheduler": {"StepLR": {"step_size": 1, "gamma": 0.8}},
              "early_stopping": {"monitor": "val_loss", "patience": 3}},
}


def small_digits(**train_keys):
    spec = copy.deepcopy(SMALL_DIGITS)
    spec["train"].update(train_keys)
    return spec


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return train(SPECS / "digits_cnn.yaml", out=out, epochs=4, verbose=False)


def test_digits_cnn_reaches_95_percent_validation_accuracy(digits_run):
    assert digits_run.status == "completed"
    assert digits_run.metrics["val"]["accuracy"] >= 0.95
    assert digits_run.metrics["test"]["accuracy"] >= 0.93
    assert max(record["val_accuracy"] for record in digits_run.history) == pytest.approx(
        digits_run.metrics["val"]["accuracy"])  # the table shows the best checkpoint


def test_run_directory_holds_checkpoints_csv_events_curves_and_spec(digits_run):
    run_dir = digits_run.run_dir
    assert run_dir.parent.name == "digits_cnn"
    assert {"best.pt", "last.pt", "metrics.csv", "curves.png", "spec.yaml", "summary.json"} <= {
        path.name for path in run_dir.iterdir()}
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "train_loss", "train_accuracy", "train_f1", "val_loss", "val_accuracy",
                             "val_f1", "lr", "seconds"]
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # cosine annealing
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = {name: EventAccumulator(str(run_dir / "tensorboard" / name if name else run_dir))
              for name in ("", "train", "val")}   # splits are sub-runs: one chart overlays train and val
    for accumulator in events.values():
        accumulator.Reload()
    assert "lr" in events[""].Tags()["scalars"]
    assert {"loss", "accuracy", "f1"} <= set(events["train"].Tags()["scalars"]) & set(events["val"].Tags()["scalars"])
    assert [event.step for event in events["val"].Scalars("loss")] == [1, 2, 3, 4]
    assert events["val"].Scalars("accuracy")[-1].value == pytest.approx(float(rows[-1]["val_accuracy"]))
    import matplotlib.image

    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(run_dir / "curves.png").shape[0] > 100
    assert load(run_dir / "spec.yaml").raw["train"]["epochs"] == 4  # the resolved spec, overrides applied
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["val"]["accuracy"] == pytest.approx(digits_run.metrics["val"]["accuracy"])


def test_checkpoints_load_with_weights_only_and_carry_the_spec(digits_run):
    state = torch.load(digits_run.best_checkpoint, weights_only=True)
    assert state["format"] == "specc-checkpoint/1"
    assert state["spec"]["name"] == "digits_cnn" and state["spec"]["train"]["epochs"] == 4
    assert load_checkpoint(digits_run.last_checkpoint)["epoch"] == 4
    assert not list(digits_run.run_dir.glob(".*.tmp"))


def test_evaluate_matches_the_final_table_and_predict_writes_classes(digits_run, tmp_path):
    metrics = evaluate(SPECS / "digits_cnn.yaml", digits_run.best_checkpoint, split="test")
    assert metrics["accuracy"] == pytest.approx(digits_run.metrics["test"]["accuracy"])
    assert metrics["loss"] == pytest.approx(digits_run.metrics["test"]["loss"], rel=1e-5)
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    np.savetxt(tmp_path / "digits.csv", features[:50], delimiter=",", comments="",
               header=",".join(f"p{i}" for i in range(64)))
    written = predict(None, digits_run.best_checkpoint, tmp_path / "digits.csv")  # spec from the checkpoint
    with open(written) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 50 and list(rows[0])[:2] == ["prediction", "probability_0"]
    assert np.mean([int(row["prediction"]) == label for row, label in zip(rows, labels[:50])]) >= 0.9
    assert sum(float(rows[0][f"probability_{i}"]) for i in range(10)) == pytest.approx(1.0, abs=1e-4)


def test_diabetes_regression_reports_rmse_and_mae(tmp_path):
    result = train(SPECS / "diabetes_mlp.yaml", out=tmp_path, epochs=40, verbose=False)
    assert result.ok
    for split in ("train", "val", "test"):
        values = result.metrics[split]
        assert {"rmse", "mae", "r2"} <= set(values)
        assert values["rmse"] == pytest.approx(math.sqrt(values["loss"]), rel=1e-3)  # MSE loss
        assert values["mae"] <= values["rmse"]
    assert result.metrics["val"]["rmse"] < 62  # predicting the mean gives about 77


def test_kfold_gives_one_result_per_fold_and_mean_std(tmp_path):
    result = train(SPECS / "iris_mlp.yaml", out=tmp_path, epochs=15, verbose=False)
    assert result.status == "completed" and len(result.folds) == 5
    assert [fold.run_dir.name for fold in result.folds] == [f"fold_{k}" for k in range(1, 6)]
    accuracies = [fold.metrics["val"]["accuracy"] for fold in result.folds]
    mean, std = result.summary["val_accuracy"]
    assert mean == pytest.approx(np.mean(accuracies)) and std == pytest.approx(np.std(accuracies))
    assert mean > 0.85
    assert json.loads((result.run_dir / "summary.json").read_text())["summary"]["val_accuracy"]["mean"] == mean


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = train(small_digits(), out=tmp_path, verbose=False)
    first = train(small_digits(epochs=2), out=tmp_path, verbose=False)
    resumed = train(small_digits(), out=tmp_path, resume=first.last_checkpoint, verbose=False)
    assert resumed.run_dir == first.run_dir and len(resumed.history) == 4
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert a["trackers"] == b["trackers"] and a["schedulers"] == b["schedulers"]
    assert [r["val_loss"] for r in straight.history] == [r["val_loss"] for r in resumed.history]


def test_a_diverging_loss_stops_naming_epoch_and_step_and_keeps_good_checkpoints(tmp_path):
    spec = {"name": "diverge", "inputs": {"x": {"shape": [10]}}, "layers": [{"Linear": {"out_features": 1}}],
            "train": {"data": {"source": "sklearn:diabetes", "normalize": "standard"}, "epochs": 8,
                      "loss": "MSELoss", "optimizer": {"SGD": {"lr": 0.01}},
                      "scheduler": {"ExponentialLR": {"gamma": 30}}}}   # the learning rate explodes
    result = train(spec, out=tmp_path, verbose=False)
    assert result.status == "diverged"
    assert "became inf at epoch 4, step 4" in result.message
    last = load_checkpoint(result.last_checkpoint)
    assert last["epoch"] == 3 and all(torch.isfinite(value).all() for value in last["model"].values())
    assert load_checkpoint(result.best_checkpoint)["epoch"] == 2
    assert len(result.history) == 3


def test_ctrl_c_saves_last_pt_and_the_run_resumes(tmp_path, monkeypatch):
    original, calls = specc.train.loop.train_step, []

    def interrupted_step(*args):
        calls.append(1)
        if len(calls) == 30:  # in the second epoch (20 steps per epoch)
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(specc.train.loop, "train_step", interrupted_step)
    result = train(small_digits(), out=tmp_path, verbose=False)
    assert result.status == "interrupted" and "epoch 2" in result.message
    assert load_checkpoint(result.last_checkpoint)["epoch"] == 1
    monkeypatch.setattr(specc.train.loop, "train_step", original)
    resumed = train(small_digits(), resume=result.last_checkpoint, verbose=False)
    assert resumed.ok and [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]


def test_a_corrupted_checkpoint_is_a_clear_error_and_no_file_is_lost(tmp_path):
    broken = tmp_path / "last.pt"
    broken.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(SpecError) as error:
        train(small_digits(), out=tmp_path / "runs", resume=broken, verbose=False)
    assert error.value.first.code == "CHECKPOINT_ERROR" and "cannot read the checkpoint" in str(error.value)
    assert broken.read_bytes() == b"PK\x03\x04 this is not a checkpoint"
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint({"epoch": 1, "model": {"w": torch.ones(2)}}, path)

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(SpecError, match=r"cannot write .*best.pt \(disk full\); the previous checkpoint is intact"):
        save_checkpoint({"epoch": 2, "model": {"w": torch.zeros(2)}}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_swa_amp_compile_clipping_groups_and_chained_schedulers(tmp_path):
    spec = small_digits(
        epochs=3, amp=True, grad_clip=0.5, compile={"backend": "eager"},
        swa={"start_epoch": 2, "lr": 0.001, "anneal_epochs": 1},
        optimizer={"SGD": {"lr": 0.05, "momentum": 0.9, "groups": [{"params": "head.*", "lr": 0.01}]}},
        scheduler=[{"LinearLR": {"start_factor": 0.5, "total_iters": 2}}, {"ExponentialLR": {"gamma": 0.9}}],
        early_stopping=None)
    result = train(spec, out=tmp_path, verbose=False)
    assert result.ok and result.metrics["val"]["accuracy"] > 0.8
    assert result.history[0]["lr"] == pytest.approx(0.025)  # LinearLR's start factor on the default group
    assert "SWA" in result.message
    last = load_checkpoint(result.last_checkpoint)
    assert [group["lr"] for group in last["optimizer"]["param_groups"]] == pytest.approx([0.001, 0.001])  # SWALR
    assert last["swa"]["model"]["n_averaged"].item() == 2


def test_reduce_on_plateau_watches_its_monitor(tmp_path):
    spec = small_digits(epochs=4, early_stopping=None, optimizer={"SGD": {"lr": 1e-9}},
                        scheduler={"ReduceLROnPlateau": {"monitor": "val_accuracy", "patience": 0, "factor": 0.5,
                                                      "eps": 1e-15}})
    spec["layers"] = ["Flatten", {"Linear": {"out_features": 10}, "name": "head"}]
    result = train(spec, out=tmp_path, verbose=False)
    # so small a rate changes nothing: epoch 1 sets the best, every later epoch halves the rate
    assert [record["lr"] for record in result.history] == pytest.approx([1e-9, 1e-9, 5e-10, 2.5e-10], rel=1e-6)


@pytest.mark.parametrize("key, value, message, suggestion", [
    ("loss", "CrossEntropyLos", "unknown loss 'CrossEntropyLos'", "CrossEntropyLoss"),
    ("optimizer", "{Adamw: {lr: 0.1}}", "unknown optimizer 'Adamw'", "AdamW"),
    ("optimizer", "{SGD: {lr: 0.1, momentun: 0.9}}", "has no argument 'momentun'", "momentum"),
    ("metrics", "[acuracy]", "unknown metric 'acuracy'", "accuracy"),
    ("scheduler", "{StepLR: {step_sise: 3}}", "has no argument 'step_sise'", "step_size"),
])
def test_a_wrong_name_or_argument_is_a_located_error_with_a_suggestion(tmp_path, key, value, message, suggestion):
    path = tmp_path / "bad.yaml"
    path.write_text(f"inputs: {{x: {{shape: [4]}}}}\nlayers: [Linear: {{out_features: 3}}]\ntrain:\n"
                    f"  data: {{source: 'sklearn:iris'}}\n  {'loss: CrossEntropyLoss' if key != 'loss' else ''}\n"
                    f"  {key}: {value}\n")
    with pytest.raises(SpecError) as error:
        train(path, out=tmp_path, verbose=False)
    problem = error.value.first
    assert message in problem.message and f"did you mean '{suggestion}'" in problem.message
    assert (problem.location.file, problem.location.line, problem.location.column) == (str(path), 6, 3)


def test_a_metric_that_does_not_fit_the_task_is_located(tmp_path):
    spec = small_digits(metrics=["accuracy", "rmse"])
    with pytest.raises(SpecError, match="metric rmse is a regression metric but the loss makes a multiclass task"):
        train(spec, out=tmp_path, verbose=False)
