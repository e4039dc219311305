"""Issue 15, landed behaviour now tested: a nan validation loss stops the run without calling that
epoch good; `--resume` with a changed spec or `--set` prints the differences and trains with them."""
from __future__ import annotations

import math

import pytest
import torch

from specc.weights.checkpoint import load_checkpoint
from specc.train.training import train

torch.set_num_threads(1)

NAN_IN_EVAL = '''
import torch
from torch import nn


class NanInEvalFrom(nn.Module):
    """Passes x on while training; from its `start`-th evaluation on, gives nan (a model broken in eval mode)."""

    def __init__(self, start: int = 2):
        super().__init__()
        self.start, self.evaluations = start, 0

    def forward(self, x):
        if self.training or x.is_meta or torch.jit.is_tracing():
            return x
        self.evaluations += 1
        return x * float("nan") if self.evaluations >= self.start else x
'''


def iris_spec(**train_keys) -> dict:
    train_section = {"data": {"source": "sklearn:iris", "split": {"val": 0.2, "test": 0.2}, "normalize": "standard"},
                     "epochs": 2, "batch_size": 16, "loss": "CrossEntropyLoss", "optimizer": {"SGD": {"lr": 0.01}},
                     "threads": 1, **train_keys}
    return {"name": "iris_rel", "inputs": {"x": {"shape": [4]}},
            "layers": [{"Linear": {"out_features": 8}}, "ReLU", {"Linear": {"out_features": 3}}],
            "train": train_section}


def test_a_nan_validation_loss_stops_the_run_and_keeps_the_last_good_epoch(tmp_path, monkeypatch):
    (tmp_path / "nan_layers.py").write_text(NAN_IN_EVAL)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = iris_spec(epochs=5)
    spec["imports"] = ["nan_layers.NanInEvalFrom"]
    # evaluations: a 2-example check of the model before training, TensorBoard's add_graph checking its
    # trace, epoch 1's validation (fine), epoch 2's (nan)
    spec["layers"].append({"NanInEvalFrom": {"start": 4}})
    result = train(spec, out=tmp_path / "runs", verbose=False)
    assert result.status == "diverged" and not result.ok
    assert result.message == "val_loss became nan at epoch 2; stopped; last.pt keeps epoch 1, best.pt epoch 1"
    assert [record["epoch"] for record in result.history] == [1]
    for path in (result.last_checkpoint, result.best_checkpoint):
        state = load_checkpoint(path)
        assert state["epoch"] == 1
        assert all(math.isfinite(record["val_loss"]) for record in state["history"])
        assert all(torch.isfinite(value).all() for value in state["model"].values())


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    result = train(iris_spec(), out=out, verbose=False)
    assert result.status == "completed"
    assert load_checkpoint(result.last_checkpoint)["optimizer"]["param_groups"][0]["lr"] == 0.01
    return result


def _copy_of_last(two_epochs, folder):
    """A copy of the run (each test resumes from the same epoch 2; a resume writes into its run dir)."""
    import shutil

    run = folder / "run"
    shutil.copytree(two_epochs.run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    return run / "last.pt"


def test_resume_with_set_prints_the_changes_and_trains_at_the_new_lr(two_epochs, capsys, tmp_path):
    resumed = train(None, resume=_copy_of_last(two_epochs, tmp_path), verbose=True,
                    overrides={"train.optimizer.SGD.lr": 0.05, "train.epochs": 3})
    printed = capsys.readouterr().out
    assert "resume: train.optimizer.SGD.lr: 0.01 -> 0.05" in printed
    assert "resume: train.epochs: 2 -> 3" in printed
    assert resumed.status == "completed"
    state = load_checkpoint(resumed.last_checkpoint)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.05
    assert [record["lr"] for record in state["history"]] == [0.01, 0.01, 0.05]   # epoch 3 trained at 0.05


def test_resume_with_a_changed_spec_file_applies_it(two_epochs, capsys, tmp_path):
    import yaml

    spec_path = tmp_path / "iris.yaml"
    spec_path.write_text(yaml.safe_dump(iris_spec(epochs=3, optimizer={"SGD": {"lr": 0.2, "momentum": 0.5}})))
    resumed = train(spec_path, resume=_copy_of_last(two_epochs, tmp_path), verbose=True)
    printed = capsys.readouterr().out
    assert "resume: train.optimizer.SGD.lr: 0.01 -> 0.2" in printed
    assert "resume: train.optimizer.SGD.momentum: (none) -> 0.5" in printed
    state = load_checkpoint(resumed.last_checkpoint)
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"]) == (0.2, 0.5)
    assert [record["lr"] for record in state["history"]] == [0.01, 0.01, 0.2]
