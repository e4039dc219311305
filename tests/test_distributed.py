"""Training on two processes with DDP (gloo on the CPU), as torchrun runs it.

One launch through torchrun's Python API (`specc.train.launch.launch`) runs several trainings on
both ranks, sharing one process group; each rank saves its final weights for the comparisons.
`torchrun -m specc train` and `specc train --nproc 2` (with Ctrl-C) run as a user's subprocesses.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from typer.testing import CliRunner

from specc.train import launch as launcher
from specc.cli import app
from specc.train.data import shard
from specc.train.prepare import build_model
from specc.lang.spec import load

torch.set_num_threads(1)  # two pytest workers share two cores

# No dropout or BatchNorm: two ranks with 32 examples each then compute exactly what one process
# computes with 64. 1302 training examples (an even count, no trailing batch of one) and 225
# validation examples (an odd count: the ranks evaluate 113 and 112).
MLP = {
    "name": "ddp_mlp",
    "inputs": {"pixels": {"shape": [64]}},
    "layers": [{"Linear": {"out_features": 32}}, "ReLU", {"Linear": {"out_features": 10}, "name": "head"}],
    "train": {"data": {"source": "sklearn:digits", "split": {"val": 0.125, "test": 0.15}, "normalize": "standard"},
              "epochs": 2, "batch_size": 32, "loss": "CrossEntropyLoss", "metrics": ["accuracy", "f1"],
              "optimizer": {"AdamW": {"lr": 0.003}}, "checkpoint": {"monitor": "val_accuracy"}, "threads": 1},
}

# BatchNorm and Dropout: the ranks see different batches, so only shared buffers keep them equal.
# `min_delta: 100` makes every epoch after the first a bad one: patience 1 stops after epoch 2.
CNN = {
    "name": "ddp_cnn",
    "inputs": {"image": {"shape": [1, 8, 8]}},
    "layers": [{"Conv2d": {"out_channels": 8, "kernel_size": 3, "padding": 1}}, "BatchNorm2d", "ReLU",
               "Flatten", {"Dropout": {"p": 0.2}}, {"Linear": {"out_features": 10}, "name": "head"}],
    "train": {"data": {"source": "sklearn:digits", "normalize": "standard"}, "epochs": 4, "batch_size": 32,
              "loss": "CrossEntropyLoss", "metrics": ["accuracy"], "optimizer": {"AdamW": {"lr": 0.003}},
              "scheduler": {"StepLR": {"step_size": 1, "gamma": 0.8}}, "threads": 1,
              "early_stopping": {"monitor": "val_loss", "patience": 1, "min_delta": 100}},
}

# Dropout: every random stream must be restored for `--resume` to give the same weights.
DROPOUT_MLP = {**MLP, "name": "ddp_dropout",
               "layers": [{"Linear": {"out_features": 32}}, "ReLU", {"Dropout": {"p": 0.2}},
                          {"Linear": {"out_features": 10}}],
               "train": {**MLP["train"], "epochs": 3}}

# Two outputs, the loss on the first: `aux` gets no gradient, which DDP must expect.
TWO_HEADS = {
    "name": "ddp_two_heads",
    "inputs": {"pixels": {"shape": [64]}},
    "layers": [{"Linear": {"out_features": 16}, "name": "body"}, "ReLU",
               {"Linear": {"out_features": 10}, "name": "head"},
               {"Linear": {"out_features": 3}, "from": "body", "name": "aux"}],
    "outputs": ["head", "aux"],
    "train": {**MLP["train"], "epochs": 1, "metrics": [], "checkpoint": {"monitor": "val_loss"}},
}


def with_train(spec: dict, name: str | None = None, **train_keys) -> dict:
    spec = copy.deepcopy(spec)
    spec["name"] = name or spec["name"]
    spec["train"].update(train_keys)
    return spec


def saving_final_weights(fit, folder: Path):
    """Test only: `train` keeps its model to itself, so `fit` also saves each rank's final weights."""
    def fit_and_save(session, log):
        outcome = fit(session, log)
        torch.save(session.model.state_dict(), folder / f"{session.spec.display_name}-rank{session.rank}.pt")
        return outcome

    return fit_and_save


def rank_scenarios(out: str, weights: str) -> dict:
    """What each of the two ranks runs: several trainings in one process group (which `train`
    then leaves to its caller). Returns rank 0's results; each rank writes its statuses."""
    import specc.train.training
    from specc.train.training import train

    specc.train.training.fit = saving_final_weights(specc.train.training.fit, Path(weights))
    dist.init_process_group("gloo")
    try:
        results = {"mlp": train(MLP, out=out, verbose=False),
                   "diverged": train(with_train(MLP, "ddp_diverged", optimizer={"SGD": {"lr": 1.0e30}}),
                                     out=out, verbose=False),
                   "cnn": train(CNN, out=out, verbose=False),
                   "two_heads": train(TWO_HEADS, out=out, verbose=False)}
        results["resumed"] = train(CNN, out=out, verbose=False, resume=results["cnn"].last_checkpoint, epochs=3)
        results["straight"] = train(DROPOUT_MLP, out=out, verbose=False)
        halves = train(DROPOUT_MLP, out=out, verbose=False, epochs=2)
        results["halves"] = train(DROPOUT_MLP, out=out, verbose=False, resume=halves.last_checkpoint)
        seen = {name: [result.status, len(result.history)] for name, result in results.items()}
        (Path(weights) / f"statuses-rank{dist.get_rank()}.json").write_text(json.dumps(seen))
        return results
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[dict, Path, Path]:
    out, weights = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("weights")
    results = launcher.launch(rank_scenarios, (str(out), str(weights)), nproc=2)
    return results, out, weights


def weights_of(folder: Path, name: str, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(folder / f"{name}-rank{rank}.pt", weights_only=True)


def test_both_ranks_end_with_identical_weights(two_ranks):
    _, _, weights = two_ranks
    for name in ("ddp_mlp", "ddp_cnn", "ddp_two_heads"):
        rank0, rank1 = weights_of(weights, name, 0), weights_of(weights, name, 1)
        assert list(rank0) == list(rank1)
        assert "1.running_mean" in rank1 or name != "ddp_cnn"  # BatchNorm buffers too
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{name}: {key} differs between the ranks"


def test_two_ranks_of_32_train_like_one_process_with_batches_of_64(two_ranks, tmp_path, monkeypatch):
    import specc.train.training

    results, _, weights = two_ranks
    monkeypatch.setattr(specc.train.training, "fit", saving_final_weights(specc.train.training.fit, tmp_path))
    single = specc.train.training.train(with_train(MLP, "ddp_mlp_single", batch_size=64), out=tmp_path / "runs",
                                  verbose=False)
    ddp = results["mlp"]
    assert ddp.status == single.status == "completed"
    for together, alone in zip(ddp.history, single.history, strict=True):
        for key in ("train_loss", "train_accuracy", "train_f1", "val_loss", "val_accuracy", "val_f1"):
            assert together[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-5), key
    for split in ("train", "val", "test"):
        for key, value in single.metrics[split].items():
            assert ddp.metrics[split][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (split, key)
    alone = weights_of(tmp_path, "ddp_mlp_single", 0)
    for key, value in weights_of(weights, "ddp_mlp", 0).items():
        torch.testing.assert_close(value, alone[key], rtol=1e-4, atol=1e-5)


def test_rank_0_alone_writes_one_run_directory(two_ranks):
    results, out, weights = two_ranks
    (run_dir,) = (out / "ddp_mlp").iterdir()
    assert run_dir == results["mlp"].run_dir
    assert sorted(path.name for path in run_dir.iterdir() if not path.name.startswith("events.")) == [
        ".lock", "best.pt", "curves.png", "last.pt", "metrics.csv", "spec.yaml", "summary.json", "tensorboard"]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    last = torch.load(run_dir / "last.pt", weights_only=True)
    for key, value in weights_of(weights, "ddp_mlp", 0).items():
        assert torch.equal(last["model"][key], value)
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["val_loss"]) for row in rows] == pytest.approx(
        [record["val_loss"] for record in results["mlp"].history])
    assert sorted(path.name for path in out.iterdir()) == [
        "ddp_cnn", "ddp_diverged", "ddp_dropout", "ddp_mlp", "ddp_two_heads"]


def test_every_rank_stops_early_together_and_resumes_in_the_same_directory(two_ranks):
    results, out, weights = two_ranks
    statuses = [json.loads((weights / f"statuses-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert statuses[0] == statuses[1]
    assert statuses[0]["cnn"] == ["early_stopped", 2] and statuses[0]["resumed"] == ["early_stopped", 3]
    assert "stopped after epoch 2" in results["cnn"].message
    (run_dir,) = (out / "ddp_cnn").iterdir()
    assert results["resumed"].run_dir == run_dir
    with open(run_dir / "metrics.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3]


def test_resuming_two_ranks_gives_the_weights_of_an_uninterrupted_run(two_ranks):
    results, _, _ = two_ranks
    straight = torch.load(results["straight"].last_checkpoint, weights_only=True)
    resumed = torch.load(results["halves"].last_checkpoint, weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 3
    assert resumed["history"][2]["val_loss"] == straight["history"][2]["val_loss"]
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_a_diverging_loss_stops_every_rank_naming_the_step(two_ranks):
    results, _, weights = two_ranks
    for rank in (0, 1):
        assert json.loads((weights / f"statuses-rank{rank}.json").read_text())["diverged"] == ["diverged", 0]
    assert "the training loss became" in results["diverged"].message
    assert "at epoch 1, step" in results["diverged"].message


def test_parameters_outside_the_loss_stay_as_initialized(two_ranks):
    results, _, weights = two_ranks
    assert results["two_heads"].status == "completed"
    trained = weights_of(weights, "ddp_two_heads", 0)
    untrained = build_model(load(TWO_HEADS), torch.device("cpu"), seed=0).module.state_dict()
    assert torch.equal(trained["aux.weight"], untrained["aux.weight"])
    assert not torch.equal(trained["head.weight"], untrained["head.weight"])


def test_shards_are_disjoint_and_padded_to_equal_length():
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    padded = [shard(order, rank, 4, pad=True) for rank in range(4)]
    assert [len(part) for part in padded] == [3, 3, 3, 3]
    assert sorted(torch.cat(padded).tolist()) == sorted(order.tolist() + order[:1].tolist())
    exact = [shard(order, rank, 4) for rank in range(4)]
    assert sorted(torch.cat(exact).tolist()) == list(range(11))
    assert [shard(torch.arange(1), rank, 3, pad=True).tolist() for rank in range(3)] == [[0], [0], [0]]


def test_a_spec_error_is_reported_before_any_process_starts(tmp_path, monkeypatch):
    def launch(*args, **kwargs):
        raise AssertionError("processes were started for an invalid spec")

    monkeypatch.setattr(launcher, "launch", launch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_train(MLP, optimizer={"AdamW": {"lr": 0.003, "momentun": 0.9}})))
    result = CliRunner().invoke(app, ["train", str(path), "--nproc", "2", "--out", str(tmp_path / "never")])
    assert result.exit_code == 2
    assert "train.optimizer: optimizer AdamW has no argument 'momentun'" in result.output
    assert not (tmp_path / "never").exists()


def test_torchrun_runs_specc_train_on_two_processes(tmp_path):
    (tmp_path / "mlp.yaml").write_text(yaml.safe_dump(with_train(MLP, epochs=1)))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "specc", "train", "mlp.yaml", "--out", "runs"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("training ddp_mlp on 2 processes (cpu): 1302 train / 225 val / 270 test examples")
    assert sum(line.startswith("epoch 1/1") for line in lines) == 1  # rank 0 alone prints
    (run_dir,) = (tmp_path / "runs" / "ddp_mlp").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_ctrl_c_stops_both_processes_saves_last_pt_and_exits_130(tmp_path):
    (tmp_path / "mlp.yaml").write_text(yaml.safe_dump(with_train(MLP, epochs=100000)))
    process = subprocess.Popen([sys.executable, "-m", "specc", "train", "mlp.yaml", "--nproc", "2", "--out", "runs"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # a process group, as a terminal's Ctrl-C reaches
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch      2/"):
            os.killpg(process.pid, signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=120)
    lines += stdout.splitlines(keepends=True)
    assert process.returncode == 130, stderr
    assert sum(line.startswith("training ddp_mlp on 2 processes (cpu)") for line in lines) == 1  # rank 0 only
    assert "interrupted during epoch" in lines[-1]
    (run_dir,) = (tmp_path / "runs" / "ddp_mlp").iterdir()
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] >= 2


def test_bad_data_met_by_one_streaming_rank_ends_the_job_with_its_located_error(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for index in range(12):
            Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(tmp_path / "images" / name / f"{index}.png")
    (tmp_path / "images" / "b" / "broken.png").write_bytes(b"not a png at all")  # read by one rank only
    spec = {"name": "stream", "inputs": {"image": {"shape": [3, 8, 8]}},
            "layers": ["Flatten", {"Linear": {"out_features": 2}}],
            "train": {"data": {"source": "folder:images", "streaming": True, "num_workers": 0, "split": {"val": 0.2}},
                      "epochs": 2, "batch_size": 4, "loss": "CrossEntropyLoss", "threads": 1,
                      "optimizer": {"AdamW": {"lr": 0.01}}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # before the fix the healthy rank waited in its next collective for ever (gloo's 30-minute timeout)
    result = subprocess.run([sys.executable, "-m", "specc", "train", "spec.yaml", "--nproc", "2", "--out", "runs"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "spec.yaml:14:5: images/b/broken.png: cannot read the image" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    # and nothing else: not torch's "Terminating process ... via signal SIGTERM" for the healthy rank,
    # nor the resource tracker's leaked semaphores of a launcher that skipped multiprocessing's exit
    assert [line for line in result.stderr.splitlines() if not line.startswith("error: ")] == [
        "specc train: loading torch and the training modules ..."], result.stderr


def test_a_rank_reports_its_spec_error_before_it_leaves_the_group(tmp_path, monkeypatch):
    """The report must exist before the group is destroyed: that is when a peer loses its
    connection, and the peer then looks for the report (below) to know its error is a consequence."""
    from specc.lang.errors import Location, Problem, SpecError
    from specc.train import ranks

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setitem(ranks.FAILURES, "folder", tmp_path)
    monkeypatch.setattr(ranks.dist, "init_process_group", lambda backend: None)
    seen_at_destroy = []
    monkeypatch.setattr(ranks.dist, "destroy_process_group", lambda: seen_at_destroy.append(ranks.peer_failed()))
    problem = Problem("images/b/broken.png: cannot read the image", Location("spec.yaml", 14, 5), "DATA_ERROR")
    with pytest.raises(SpecError):
        with ranks.process_group(torch.device("cpu")):
            raise SpecError([problem])
    assert seen_at_destroy == [True]
    (report,) = json.loads((tmp_path / "rank1.json").read_text())
    assert (report["message"], report["line"], report["code"]) == (problem.message, 14, "DATA_ERROR")
    assert list(tmp_path.iterdir()) == [tmp_path / "rank1.json"]   # no temporary file left


def test_a_peer_whose_group_broke_after_a_spec_error_exits_2_quietly(tmp_path, monkeypatch):
    """Under load the healthy rank may see gloo's connection close before the agent stops it: its
    RuntimeError is not news, so it leaves with code 2 and no traceback; the same error with no
    peer's report is a real crash and propagates."""
    from specc.train import ranks, training

    def broken_group(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    def leave(code):   # the real one ends the process at once (os._exit): here, an exception to catch
        raise SystemExit(code)

    monkeypatch.setattr(training, "train", broken_group)
    monkeypatch.setattr(launcher, "_leave", leave)
    monkeypatch.setitem(ranks.FAILURES, "folder", None)
    with pytest.raises(RuntimeError, match="Connection closed"):
        launcher._train_process({}, "runs", None, False, str(tmp_path))
    (tmp_path / "rank1.json").write_text("[]")
    with pytest.raises(SystemExit) as exited:
        launcher._train_process({}, "runs", None, False, str(tmp_path))
    assert exited.value.code == 2
