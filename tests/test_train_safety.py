"""A spec or checkpoint from a stranger: nothing in it runs code, writes outside --out or exhausts
the machine; interrupted, corrupted or refused runs lose nothing (issues 13 and 15)."""
from __future__ import annotations

import copy
import signal
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from specc.weights.checkpoint import load_checkpoint, save_checkpoint
from specc.cli import app
from specc.lang.errors import SpecError
from specc.lang.spec import load
from specc.train.training import evaluate, predict, train

from processes import signal_during_training

torch.set_num_threads(1)

IRIS = {
    "name": "iris_safety",
    "inputs": {"x": {"shape": [4]}},
    "layers": [{"Linear": {"out_features": 8}}, "ReLU", {"Linear": {"out_features": 3}}],
    "train": {"data": {"source": "sklearn:iris", "normalize": "standard"}, "epochs": 2, "batch_size": 16,
              "loss": "CrossEntropyLoss", "metrics": ["accuracy"], "device": "cpu",
              "optimizer": {"Adam": {"lr": 0.01}}},
}
HOSTILE_DATA = {"dataset": "subprocess.getoutput", "args": {"cmd": "touch CANARY"}}
# a module of the user's that is no Dataset: naming its function must not call it
NOT_A_DATASET = """\
from pathlib import Path

def run(cmd):
    Path("CANARY").touch()

class Loader:
    def __init__(self, cmd):
        Path("CANARY").touch()
"""


def iris(**train_keys) -> dict:
    spec = copy.deepcopy(IRIS)
    spec["train"].update(train_keys)
    return spec


def hostile(dataset: str = "subprocess.getoutput") -> dict:
    spec = iris()
    spec["train"]["data"] = {**HOSTILE_DATA, "dataset": dataset}
    return spec


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user_code.py").write_text(NOT_A_DATASET)
    return tmp_path


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    return train(iris(), out=tmp_path_factory.mktemp("runs"), verbose=False)


# --- code execution ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["subprocess.getoutput", "os.system", "builtins.eval"])
def test_a_standard_library_dataset_path_is_refused_at_load_without_running(workdir, dataset):
    with pytest.raises(SpecError) as error:
        train(hostile(dataset), out=workdir / "runs", verbose=False)
    assert "standard-library module" in error.value.first.message
    assert error.value.first.message.startswith("train.data.dataset:")
    assert not (workdir / "CANARY").exists() and not (workdir / "runs").exists()


def test_specc_check_reports_the_dataset_line(workdir):
    text = textwrap.dedent("""\
        inputs: {x: {shape: [4]}}
        layers: [Linear: {out_features: 3}]
        train:
          loss: CrossEntropyLoss
          data:
            dataset: subprocess.getoutput
            args: {cmd: touch CANARY}
        """)
    (workdir / "bad.yaml").write_text(text)
    result = invoke("check", workdir / "bad.yaml")
    assert result.exit_code == 2
    assert f"{workdir / 'bad.yaml'}:6:" in result.output and "standard-library module" in result.output
    assert not (workdir / "CANARY").exists()


@pytest.mark.parametrize("dataset, kind", [("user_code.run", "a function"), ("user_code.Loader", "a class")])
def test_a_dataset_that_is_no_dataset_subclass_is_never_called(workdir, dataset, kind):
    with pytest.raises(SpecError) as error:
        train(hostile(dataset), out=workdir / "runs", verbose=False)
    problem = error.value.first
    assert problem.code == "IMPORT_ERROR" and problem.location is not None
    assert f"dataset {dataset} is {kind}, not a subclass of torch.utils.data.Dataset" in problem.message
    assert not (workdir / "CANARY").exists()


def crafted_checkpoint(run, path: Path, spec: dict) -> Path:
    state = load_checkpoint(run.best_checkpoint)
    state["spec"] = spec
    del state["format"]
    save_checkpoint(state, path)
    return path


def test_a_checkpoint_with_a_hostile_spec_runs_nothing(workdir, iris_run, monkeypatch):
    checkpoint = crafted_checkpoint(iris_run, workdir / "evil.pt", hostile())
    (workdir / "x.csv").write_text("a,b,c,d\n1,2,3,4\n")
    attempts = (lambda: evaluate(None, checkpoint), lambda: predict(None, checkpoint, workdir / "x.csv"),
                lambda: train(None, resume=checkpoint, out=workdir / "runs", verbose=False))
    # a checkpoint's stored spec is loaded in safe mode: its dataset: is refused before anything is imported
    for attempt in attempts:
        with pytest.raises(SpecError, match="safe mode: `dataset: subprocess.getoutput` would import and run code"):
            attempt()
    result = invoke("train", "--resume", checkpoint, "--out", workdir / "runs")
    assert result.exit_code == 2 and "pass trust_code=True (or --trust-code)" in result.output
    # trusted, the dotted path is still checked before any import
    monkeypatch.setenv("SPECC_TRUST_CODE", "1")
    for attempt in attempts:
        with pytest.raises(SpecError, match="standard-library module"):
            attempt()
    result = invoke("train", "--resume", checkpoint, "--out", workdir / "runs")
    assert result.exit_code == 2 and "standard-library module" in result.output
    assert not (workdir / "CANARY").exists() and not (workdir / "x.predictions.csv").exists()
    user_class = crafted_checkpoint(iris_run, workdir / "evil2.pt", hostile("user_code.Loader"))
    with pytest.raises(SpecError, match="not a subclass of torch.utils.data.Dataset"):
        evaluate(None, user_class)
    assert not (workdir / "CANARY").exists()


@pytest.mark.parametrize("options, message", [
    ({"options": {"cpp.cxx": [None, "/usr/bin/bash"]}}, "compile has no option 'options'"),
    ({"trace.debug_dir": "/tmp/x"}, "compile has no option 'trace.debug_dir'"),
    ({"backend": "my_module.evil"}, "compile backend must be one of inductor, eager"),
    ({"mode": "max-autotun"}, "did you mean 'max-autotune'"),
    ({"fullgraph": "yes"}, "compile fullgraph must be true or false"),
])
def test_compile_accepts_only_the_allow_listed_options(tmp_path, options, message):
    path = tmp_path / "spec.yaml"
    text = yaml.safe_dump(iris(compile=options), sort_keys=False)
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        load(path)
    problem = error.value.first
    assert message in problem.message and problem.location.file == str(path)
    assert text.splitlines()[problem.location.line - 1].strip().startswith("compile:")


def test_safe_mode_refuses_datasets_and_compile_options(monkeypatch, workdir):
    monkeypatch.setenv("SPECC_SAFE", "1")
    with pytest.raises(SpecError, match="safe mode: `dataset: user_code.Loader`"):
        load(hostile("user_code.Loader"))
    with pytest.raises(SpecError, match="safe mode: compile options reach a compiler"):
        load(iris(compile={"backend": "eager"}))
    assert load(iris(compile=True)).train.compile is True
    assert not (workdir / "CANARY").exists()


# --- writing outside the output folder ------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escaped", "/tmp/elsewhere", "a/../../b"])
def test_a_run_directory_never_leaves_out(tmp_path, name):
    from specc.train.run_dir import new_run_dir

    with pytest.raises(SpecError, match="would write outside --out"):
        new_run_dir(tmp_path / "runs", name)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "b").exists()


def test_run_directories_created_at_once_are_all_different(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from specc.train.run_dir import new_run_dir

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: new_run_dir(tmp_path, "race"), range(40)))
    assert len(set(made)) == 40 and all(path.is_dir() and path.parent == tmp_path / "race" for path in made)


def test_a_second_writer_into_a_locked_run_is_refused_and_changes_nothing(iris_run):
    from specc.train.run_dir import lock_run_dir, unlock

    run_dir = iris_run.run_dir
    before = {name: (run_dir / name).read_bytes() for name in ("spec.yaml", "last.pt", "metrics.csv")}
    held = lock_run_dir(run_dir)  # another `specc train --resume` is writing here
    try:
        result = invoke("train", "--resume", run_dir / "last.pt", "--epochs", 3)
    finally:
        unlock(held)
    assert result.exit_code == 2 and f"{run_dir} is in use by another `specc train`" in result.output
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_a_refused_resume_writes_nothing(iris_run, tmp_path):
    run_dir = iris_run.run_dir
    before = (run_dir / "spec.yaml").read_bytes()
    wider = iris()
    wider["layers"][0] = {"Linear": {"out_features": 16}}
    with pytest.raises(SpecError, match="does not fit this spec's model"):
        train(wider, resume=iris_run.last_checkpoint, verbose=False)
    assert (run_dir / "spec.yaml").read_bytes() == before
    assert sorted(path.name for path in run_dir.iterdir() if not path.name.startswith("events")) == [
        ".lock", "best.pt", "curves.png", "last.pt", "metrics.csv", "spec.yaml", "summary.json", "tensorboard"]


# --- resource exhaustion ------------------------------------------------------------------------
def test_weights_that_do_not_fit_are_refused_before_allocating_and_meta_still_compiles(tmp_path):
    from specc.build.compiler import compile as compile_spec

    path = tmp_path / "huge.yaml"
    path.write_text("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 1000000000000}\n")
    assert compile_spec(path, device="meta").graph["0"].shape == (2, 10 ** 12)
    with pytest.raises(SpecError) as error:
        compile_spec(path, device="cpu")
    problem = error.value.first
    assert "the model's weights (the largest, 0: 20.0 TB) need 20.0 TB but cpu has" in problem.message
    assert (problem.location.line, problem.code) == (3, "LAYER_ERROR")
    result = invoke("train", path)
    assert result.exit_code == 2


def test_synthetic_data_that_does_not_fit_is_refused_before_generating(tmp_path):
    spec = iris(data={"source": "synthetic:classification", "args": {"samples": 10 ** 12}})
    with pytest.raises(SpecError) as error:
        train(spec, out=tmp_path, verbose=False)
    assert error.value.first.code == "DATA_ERROR"
    # 4 features + 3 class scores per sample, float64 then float32: 12 bytes a value
    assert "1,000,000,000,000 synthetic samples need 84.0 TB but cpu has" in error.value.first.message
    assert not (tmp_path / "iris_safety").exists()


# --- interrupts: the state saved as what it is ----------------------------------------------------
# dropout and BatchNorm: every random stream and running statistic matters for an exact resume
NOISY = {"layers": [{"Linear": {"out_features": 16}}, "BatchNorm1d", "ReLU", {"Dropout": {"p": 0.3}},
                    {"Linear": {"out_features": 3}}]}


def noisy_iris(**train_keys) -> dict:
    spec = iris(epochs=3, batch_size=8, scheduler={"OneCycleLR": {"max_lr": 0.05}}, **train_keys)
    spec.update(copy.deepcopy(NOISY))
    return spec


def test_an_interrupt_saves_interrupted_pt_and_resuming_it_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import specc.train.loop

    straight = train(noisy_iris(), out=tmp_path / "straight", verbose=False)
    original, calls = specc.train.loop.train_step, []

    def ctrl_c_during_step_16(session, *args):  # 13 steps per epoch: step 3 of epoch 2
        calls.append(1)
        if len(calls) == 16:
            session.stop_requested = True  # what the first Ctrl-C (or SIGTERM) does
        return original(session, *args)

    monkeypatch.setattr(specc.train.loop, "train_step", ctrl_c_during_step_16)
    stopped = train(noisy_iris(), out=tmp_path / "stopped", verbose=False)
    monkeypatch.setattr(specc.train.loop, "train_step", original)
    run_dir = stopped.run_dir
    assert stopped.status == "interrupted"
    assert stopped.message == (f"interrupted during epoch 2 after step 3: saved {run_dir / 'interrupted.pt'} "
                               f"(--resume it to continue exactly); last.pt keeps epoch 1")
    state = load_checkpoint(run_dir / "interrupted.pt")
    assert (state["epoch"], state["interrupted"]["epoch"], state["interrupted"]["step"]) == (1, 2, 3)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1  # the good end-of-epoch file is intact
    resumed = train(None, resume=run_dir / "interrupted.pt", verbose=False)
    assert resumed.ok and not (run_dir / "interrupted.pt").exists()
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    without_time = [[{k: v for k, v in record.items() if k != "seconds"} for record in run.history]
                    for run in (straight, resumed)]
    assert without_time[0] == without_time[1]
    assert resumed.metrics == straight.metrics


def test_sigterm_stops_like_ctrl_c_and_writes_summary_json(tmp_path):
    import json
    spec = iris(epochs=100000)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    process = signal_during_training(["train", "spec.yaml", "--out", "runs"], tmp_path, signal.SIGTERM)
    assert process.returncode == 130, process.stderr
    assert "interrupted during epoch" in process.stdout and "Traceback" not in process.stderr
    (run_dir,) = (tmp_path / "runs" / "iris_safety").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "interrupted during epoch" in summary["message"]
    assert (run_dir / "interrupted.pt").is_file() and load_checkpoint(run_dir / "last.pt")["epoch"] >= 1


# --- corrupted checkpoints ------------------------------------------------------------------------
def flip_tensor_bytes(source: Path, target: Path, count: int = 200) -> None:
    """Copy `source` with `count` bytes of its largest tensor record inverted (the zip stays valid)."""
    import zipfile

    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start, start + min(count, info.file_size)):
        data[offset] ^= 0xFF
    target.write_bytes(bytes(data))


def test_flipped_bytes_are_found_by_the_checksum(iris_run, tmp_path):
    broken = tmp_path / "flipped.pt"
    flip_tensor_bytes(iris_run.best_checkpoint, broken)
    torch.load(broken, weights_only=True)  # torch itself notices nothing
    with pytest.raises(SpecError, match=f"{broken}: the checkpoint is corrupted"):
        load_checkpoint(broken)
    result = invoke("evaluate", tmp_path / "none.yaml", "--checkpoint", broken)
    assert result.exit_code == 2


def test_a_text_file_or_an_incomplete_checkpoint_is_a_clear_error(tmp_path, iris_run):
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is text\n")
    with pytest.raises(SpecError) as error:
        load_checkpoint(text)
    message = str(error.value)
    assert message == f"{text}: not a checkpoint: a torch file is a zip archive, this file starts with b'hell'"
    incomplete = tmp_path / "incomplete.pt"
    save_checkpoint({"epoch": 1, "model": load_checkpoint(iris_run.best_checkpoint)["model"]}, incomplete)
    with pytest.raises(SpecError, match=f"{incomplete}: the checkpoint lacks normalizer, task, spec, which "
                                        "evaluate and predict need"):
        evaluate(None, incomplete)
    with pytest.raises(SpecError, match="the checkpoint lacks spec, optimizer, schedulers"):
        train(iris(), resume=incomplete, verbose=False)


def test_best_pt_is_read_back_when_written(tmp_path, monkeypatch):
    import specc.weights.checkpoint as checkpoint

    original_save = torch.save

    def bit_rot(obj, handle, *args, **kwargs):  # the disk returns other bytes than were written
        obj = {**obj, "epoch": obj["epoch"] + 1000}
        original_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", bit_rot)
    with pytest.raises(SpecError, match="best.pt: the checkpoint is corrupted"):
        checkpoint.save_checkpoint({"epoch": 1, "model": {"w": torch.ones(2)}}, tmp_path / "best.pt", verify=True)
    assert not list(tmp_path.iterdir())
