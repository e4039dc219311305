"""Faults while a run writes its files (issue 25, part B): a full disk during a checkpoint write, a
writer killed mid-write, a signal at the end of the run or during start-up."""
from __future__ import annotations

import errno
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from specc.cli import app
from specc.train import training

torch.set_num_threads(1)  # two pytest workers share two cores

SPEC = """name: tiny
inputs: {x: {shape: [64]}}
layers:
  - Linear: {out_features: 10}
train:
  data: {source: 'sklearn:digits'}
  loss: CrossEntropyLoss
  epochs: 2
  threads: 1
"""

# What torch's zip writer raises when a write to a full disk comes up short.
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def full_disk_after(monkeypatch, saves: int, error: BaseException, full: bool = True) -> None:
    """torch.save works `saves` times, then writes half a file and raises `error`; the disk reads as full."""
    real_save, real_statvfs, calls = torch.save, os.statvfs, []

    def save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) > saves:
            handle.write(b"PK\x03\x04 half a checkpoint")
            raise error
        return real_save(obj, handle, *args, **kwargs)

    def statvfs(path):
        usage = real_statvfs(path)
        return os.statvfs_result((*usage[:4], 0 if full else usage.f_bavail, *usage[5:]))

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "statvfs", statvfs)


@pytest.mark.parametrize("error", [RuntimeError(TORCH_SHORT_WRITE), OSError(errno.ENOSPC, "No space left on device")])
def test_a_full_disk_during_a_checkpoint_write_keeps_the_promise(tmp_path, monkeypatch, error):
    (tmp_path / "spec.yaml").write_text(SPEC)
    full_disk_after(monkeypatch, saves=2, error=error)  # epoch 1 writes best.pt and last.pt; epoch 2 fails
    result = CliRunner().invoke(app, ["train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert f"no space left while writing {run_dir / 'best.pt'}; the previous checkpoint is intact" in result.output
    assert "internal error" not in result.output
    monkeypatch.undo()
    for name in ("best.pt", "last.pt"):   # the previous checkpoints, whole
        assert training.load_checkpoint(run_dir / name)["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp"))


def test_a_short_write_on_a_disk_with_room_is_a_located_write_error(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    training.save_checkpoint({"epoch": 1}, path)
    full_disk_after(monkeypatch, saves=0, error=RuntimeError(TORCH_SHORT_WRITE), full=False)
    with pytest.raises(training.SpecError) as failure:
        training.save_checkpoint({"epoch": 2}, path)
    assert failure.value.first.code == "CHECKPOINT_ERROR"
    assert str(failure.value) == (f"cannot write {path} ([enforce fail at inline_container.cc:672] . unexpected pos "
                                  f"704 vs 598); the previous checkpoint is intact")
    monkeypatch.undo()
    assert training.load_checkpoint(path)["epoch"] == 1


def test_other_errors_while_saving_are_not_disguised_as_write_errors(tmp_path, monkeypatch):
    full_disk_after(monkeypatch, saves=0, error=RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        training.save_checkpoint({"epoch": 2}, tmp_path / "last.pt")


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_files_of_killed_writers_are_removed_at_the_next_start(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    first = training.train(tmp_path / "spec.yaml", out=tmp_path / "runs", verbose=False, epochs=1)
    stale = first.run_dir / f".last.pt.{dead_pid()}.tmp"   # what a kill -9 during a write leaves
    stale.write_bytes(b"PK\x03\x04 half")
    living = first.run_dir / f".notes.txt.{os.getpid()}.tmp"  # a live process's write is left alone
    living.write_bytes(b"PK\x03\x04 being written")
    training.train(tmp_path / "spec.yaml", out=tmp_path / "runs", verbose=False, epochs=2,
                   resume=first.last_checkpoint)
    assert not stale.exists()
    assert living.exists()


def signal_during(monkeypatch, owner, name: str, signum: int) -> None:
    """`owner.name` sends this process `signum` before it does its work: a signal at that moment."""
    real = getattr(owner, name)

    def with_signal(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, with_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_curves_png_is_drawn_after_the_last_epoch_keeps_the_final_files(tmp_path, monkeypatch, signum):
    from specc.train.run_log import RunLog

    (tmp_path / "spec.yaml").write_text(SPEC)
    signal_during(monkeypatch, RunLog, "close", signum)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 130, result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert (run_dir / "curves.png").stat().st_size > 1000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert "interrupted after the last epoch, while reporting the best checkpoint" in summary["message"]
    assert training.load_checkpoint(run_dir / "last.pt")["epoch"] == 2


def test_a_signal_while_the_best_checkpoint_is_evaluated_still_writes_summary_json(tmp_path, monkeypatch):
    (tmp_path / "spec.yaml").write_text(SPEC)
    signal_during(monkeypatch, training, "best_metrics", signal.SIGINT)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 130, result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert (run_dir / "curves.png").is_file()


SLOW_DATASET = '''
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset


class Slow(Dataset):
    """Announces that start-up has reached it, then takes a minute to load."""

    def __init__(self):
        Path("loading").write_text("now")
        time.sleep(60)

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.zeros(4), 0
'''


def test_sigterm_during_start_up_exits_130_as_help_promises(tmp_path):
    (tmp_path / "slow_data.py").write_text(SLOW_DATASET)
    (tmp_path / "spec.yaml").write_text("name: slow\ninputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 2}\n"
                                        "train:\n  data: {dataset: slow_data.Slow}\n  loss: CrossEntropyLoss\n")
    process = subprocess.Popen([sys.executable, "-m", "specc", "train", "spec.yaml", "--out", "runs"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "loading").exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (stdout, stderr)   # before the fix: -15, killed by the signal
    assert "interrupted" in stderr


# --- checkpoints and specs from strangers: located errors, never a KeyError or a traceback ---------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("trained")
    (folder / "spec.yaml").write_text(SPEC)
    result = training.train(folder / "spec.yaml", out=folder / "runs", verbose=False, epochs=1)
    return folder / "spec.yaml", result.best_checkpoint


@pytest.mark.parametrize("normalizer", [
    "standard", {"kind": "standard"}, {"kind": "standard", "stats": [[torch.zeros(64)]]},
    {"kind": "standard", "stats": [["a", "b"]]}, {"kind": 3, "stats": []},
    {"kind": "standard", "stats": [[torch.zeros(64), torch.ones(3)]]},
])
def test_a_checkpoint_with_a_malformed_normalizer_is_a_located_error(tmp_path, trained, normalizer):
    spec, checkpoint = trained
    state = training.load_checkpoint(checkpoint)
    state["normalizer"] = normalizer
    training.save_checkpoint(state, tmp_path / "bad.pt")
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    for command in (["evaluate", str(spec), "--checkpoint", str(tmp_path / "bad.pt")],
                    ["predict", str(spec), "--checkpoint", str(tmp_path / "bad.pt"), "--input", str(tmp_path / "in.csv")],
                    ["export", str(spec), "--checkpoint", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "m.pt2")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert f"{tmp_path / 'bad.pt'}: the checkpoint's `normalizer` is malformed" in result.output


def test_a_normalizer_for_other_inputs_is_a_located_error(tmp_path, trained):
    spec, checkpoint = trained
    state = training.load_checkpoint(checkpoint)
    state["normalizer"] = {"kind": "standard", "stats": [[torch.zeros(3), torch.ones(3)]]}
    training.save_checkpoint(state, tmp_path / "other.pt")
    result = CliRunner().invoke(app, ["evaluate", str(spec), "--checkpoint", str(tmp_path / "other.pt")])
    assert result.exit_code == 2, result.output
    assert "other.pt: the checkpoint's `normalizer` does not fit the model's inputs (The size of tensor a (64)" \
        in result.output


def test_build_with_weights_from_a_checkpoint_without_a_model_is_a_located_error(tmp_path, trained):
    import specc

    spec, checkpoint = trained
    state = training.load_checkpoint(checkpoint)
    del state["model"]
    training.save_checkpoint(state, tmp_path / "empty.pt")
    with pytest.raises(training.SpecError, match="empty.pt: the checkpoint lacks model, which loading its weights"):
        specc.build(spec, weights=tmp_path / "empty.pt")


def test_an_input_size_index_of_4301_digits_is_a_located_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: '$(in.shape[" + "9" * 4301 + "])'}\n")
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:3:5: Linear 'Linear': in.shape[999999999999… (4,301 characters)] is out of range" in result.output


@pytest.mark.parametrize("text, where", [
    ('vars: {"w\\ud800": 2}\n', "1:8"), ('vars: {w: "x\\ud800"}\n', "1:8"),
    ('inputs2: {"x\\ud800": 1}\n', "1:11"),
])
def test_a_lone_surrogate_in_a_spec_string_is_a_located_error(tmp_path, text, where):
    path = tmp_path / "spec.yaml"
    path.write_text(text + "inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 2}\n")
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:{where}: '" in result.output and "holds a lone surrogate" in result.output


def test_a_deep_dotted_set_key_is_a_located_error(tmp_path):
    (tmp_path / "spec.yaml").write_text("vars: {a: 1}\ninputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 2}\n")
    result = CliRunner().invoke(app, ["check", str(tmp_path / "spec.yaml"), "--set", "vars" + ".a" * 5000 + "=1"])
    assert result.exit_code == 2 and "internal error" not in result.output and "RecursionError" not in result.output


def test_a_run_writes_nothing_in_the_project_but_its_run_directory(tmp_path):
    home, temporary, project = tmp_path / "home", tmp_path / "tmp", tmp_path / "project"
    for folder in (home, temporary, project):
        folder.mkdir()
    (project / "spec.yaml").write_text(SPEC.replace("epochs: 2", "epochs: 1"))
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR")}
    environment.update(HOME=str(home), TMPDIR=str(temporary))
    result = subprocess.run([sys.executable, "-m", "specc", "train", "spec.yaml", "--out", "runs"], cwd=project,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in project.iterdir()) == ["runs", "spec.yaml"]
    # the libraries' own caches, as docs/train.md lists them: matplotlib's font list, torch's inductor folder
    written = {str(path.relative_to(tmp_path)) for path in [*home.rglob("*"), *temporary.rglob("*")]}
    assert written <= {"home/.cache", "home/.cache/matplotlib", "home/.config", "home/.config/matplotlib",
                       "tmp/torchinductor_" + getpass.getuser()} | \
        {name for name in written if name.startswith("home/.cache/matplotlib/fontlist")}, written
