"""Streaming data through a DataLoader: same batches as in memory, resume, ranks, bounded memory."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from specc.weights.checkpoint import load_checkpoint
from specc.lang.errors import SpecError
from specc.train.data import Normalizer, TensorData
from specc.train.prepare import build_model, load_train_spec, prepare_data
from specc.train.streaming import StreamData
from specc.train.training import train

torch.set_num_threads(1)  # two pytest workers share two cores

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def npy_data(folder: Path, rows: int = 400, features: int = 8, seed: int = 0) -> Path:
    """Two separable classes as x.npy / y.npy."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=rows)
    x = (rng.normal(size=(rows, features)) + 2 * y[:, None]).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return folder / "x.npy"


def mlp_spec(source: str, **data) -> dict:
    return {"name": "stream", "inputs": {"features": {"shape": [8]}},
            "layers": [{"Linear": {"out_features": 16}}, "ReLU", {"Dropout": {"p": 0.1}}, {"Linear": {"out_features": 2}}],
            "train": {"data": {"source": source, "normalize": "standard", **data}, "epochs": 3, "batch_size": 16,
                      "loss": "CrossEntropyLoss", "metrics": ["accuracy"], "threads": 1, "seed": 3}}


def weights(checkpoint: Path) -> dict:
    return load_checkpoint(checkpoint)["model"]


def test_auto_streams_only_above_the_memory_budget(tmp_path):
    x = npy_data(tmp_path)
    for budget, kind in (("1MB", TensorData), (1000, StreamData)):  # 400 examples of 32 bytes
        spec = load_train_spec(mlp_spec(f"npy:{x}", memory_budget=budget))
        data = prepare_data(spec, build_model(spec, torch.device("cpu"), seed=0))
        assert isinstance(data.examples.data, kind)
        assert isinstance(data.splits[0].train, kind) and len(data.splits[0].train) == 279


def test_a_streamed_run_trains_exactly_like_the_same_run_in_memory(tmp_path):
    x = npy_data(tmp_path)
    memory = train(mlp_spec(f"npy:{x}", streaming=False, normalize="none"), out=tmp_path / "a", verbose=False)
    streamed = train(mlp_spec(f"npy:{x}", streaming=True, num_workers=1, normalize="none"), out=tmp_path / "b",
                     verbose=False)
    first, second = weights(memory.last_checkpoint), weights(streamed.last_checkpoint)
    assert all(torch.equal(first[key], second[key]) for key in first)  # same batches, same dropout masks
    assert streamed.metrics == memory.metrics
    with open(streamed.run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[-2:] == ["data_seconds", "seconds"] and float(rows[0]["data_seconds"]) >= 0


DATASET = """
    import os
    import time

    import numpy as np
    from torch.utils.data import Dataset

    class Blobs(Dataset):
        '''Two classes; every read is appended to reads_<rank>.txt when `log` is given.'''

        def __init__(self, count=300, delay=0.0, log=None, bad_label_at=None):
            rng = np.random.default_rng(0)
            self.y = rng.integers(0, 2, size=count)
            self.x = (rng.normal(size=(count, 8)) + 2 * self.y[:, None]).astype(np.float32)
            self.delay, self.log, self.bad = delay, log, bad_label_at

        def __len__(self):
            return len(self.y)

        def __getitem__(self, index):
            if self.delay:
                time.sleep(self.delay)
            if self.log:
                with open(f"{self.log}_{os.environ.get('RANK', '0')}.txt", "a") as handle:
                    handle.write(f"{index}\\n")
            return self.x[index], (7 if index == self.bad else int(self.y[index]))
"""


def dataset_spec(folder: Path, **args) -> dict:
    (folder / "blobs.py").write_text(textwrap.dedent(DATASET))
    spec = mlp_spec("unused")
    del spec["train"]["data"]["source"]
    spec["train"]["data"].update({"dataset": "blobs.Blobs", "args": args, "streaming": True, "num_workers": 1})
    return spec


def write(folder: Path, spec: dict) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_streamed_standardization_statistics_match_the_in_memory_ones(tmp_path):
    x = npy_data(tmp_path)
    fitted = []
    for streaming in (False, True):
        spec = load_train_spec(mlp_spec(f"npy:{x}", streaming=streaming, num_workers=0))
        data = prepare_data(spec, build_model(spec, torch.device("cpu"), seed=0))
        fitted.append(Normalizer.fit("standard", data.splits[0].train).stats[0])
    (mean, std), (streamed_mean, streamed_std) = fitted
    assert torch.allclose(mean, streamed_mean, atol=1e-6) and torch.allclose(std, streamed_std, atol=1e-6)
    assert float(std.max()) > 1  # the statistics are real ones, not ones and zeros


def test_a_dataset_class_is_streamed_not_read_into_memory(tmp_path):
    log = tmp_path / "reads"
    path = write(tmp_path, dataset_spec(tmp_path, log=str(log), count=100))
    spec = load_train_spec(path)
    data = prepare_data(spec, build_model(spec, torch.device("cpu"), seed=0))
    assert isinstance(data.examples.data, StreamData) and data.examples.data.target is None
    assert log.with_name("reads_0.txt").read_text().split() == ["0"]  # one item: the target's shape
    result = train(path, out=tmp_path / "runs", epochs=2, verbose=False)
    assert result.ok and result.metrics["test"]["accuracy"] > 0.8


def test_a_streamed_label_outside_the_outputs_names_the_row(tmp_path):
    path = write(tmp_path, dataset_spec(tmp_path, bad_label_at=5))
    with pytest.raises(SpecError, match="the target of row 5 is class 7 but the model outputs 2 class scores"):
        train(path, out=tmp_path / "runs", epochs=1, verbose=False)


def test_a_broken_image_read_in_a_worker_is_a_located_error(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(tmp_path / "images" / name / f"{index}.png")
    (tmp_path / "images" / "b" / "9.png").write_bytes(b"\x89PNG broken")
    spec = {"name": "img", "inputs": {"image": {"shape": [3, 8, 8]}}, "layers": ["Flatten", {"Linear": {"out_features": 2}}],
            "train": {"data": {"source": "folder:images", "streaming": True, "num_workers": 1,
                               "split": {"val": 0, "test": 0}}, "loss": "CrossEntropyLoss", "epochs": 1}}
    with pytest.raises(SpecError) as error:
        train(write(tmp_path, spec), out=tmp_path / "runs", verbose=False)
    assert f"{tmp_path / 'images' / 'b' / '9.png'}: cannot read the image" in error.value.first.message
    assert error.value.first.location.line > 0


def test_kill_9_during_a_streamed_run_then_resume_gives_the_uninterrupted_weights(tmp_path):
    spec = dataset_spec(tmp_path, delay=0.002)  # about 0.5 s per epoch
    spec["train"]["epochs"] = 3
    path = write(tmp_path, spec)
    straight = train(path, out=tmp_path / "straight", verbose=False)
    process = subprocess.Popen([sys.executable, "-m", "specc", "train", str(path), "--out", str(tmp_path / "runs")],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300  # a loaded shared machine can take minutes to start it
    while time.monotonic() < deadline and not list((tmp_path / "runs").rglob("last.pt")):
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    assert list((tmp_path / "runs").rglob("last.pt")), "no epoch finished within 300 s"
    time.sleep(0.3)  # into the next epoch
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its loader workers
    process.wait()
    (last,) = (tmp_path / "runs").rglob("last.pt")
    interrupted_at = load_checkpoint(last)["epoch"]
    assert 1 <= interrupted_at < 3
    resumed = subprocess.run([sys.executable, "-m", "specc", "train", str(path), "--resume", str(last)],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    first, second = weights(straight.last_checkpoint), weights(last)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert load_checkpoint(last)["history"][-1]["train_loss"] == straight.history[-1]["train_loss"]


def test_two_ranks_each_stream_their_own_shard(tmp_path):
    log = tmp_path / "reads"
    spec = dataset_spec(tmp_path, log=str(log), count=200)
    spec["train"]["data"].update({"split": {"val": 0, "test": 0}, "num_workers": 0, "normalize": "none"})
    spec["train"]["epochs"] = 1
    path = write(tmp_path, spec)
    done = subprocess.run([sys.executable, "-m", "specc", "train", str(path), "--nproc", "2", "--out",
                           str(tmp_path / "runs")], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reads = {rank: [int(line) for line in log.with_name(f"reads_{rank}.txt").read_text().split()] for rank in (0, 1)}
    # each rank: the target-shape probe (1 read), the loss check (2), its epoch shard (100), then its evaluation shard
    epoch = {rank: rows[3:103] for rank, rows in reads.items()}
    assert set(epoch[0]).isdisjoint(epoch[1]) and set(epoch[0]) | set(epoch[1]) == set(range(200))
    assert epoch[0] != sorted(epoch[0])  # shuffled
    evaluation = {rank: rows[103:] for rank, rows in reads.items()}
    assert evaluation == {0: list(range(0, 200, 2)), 1: list(range(1, 200, 2))}


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@pytest.mark.slow
def test_a_3_gb_npy_file_trains_one_epoch_in_under_1_5_gb_of_memory(tmp_path):
    if free_bytes(tmp_path) < 8 * 2**30:
        pytest.skip(f"needs 8 GB free disk in {tmp_path}, has {free_bytes(tmp_path) / 2**30:.1f} GB")
    rows, features = 750_000, 1024  # 4 KB per example, 3.07 GB
    labels = np.arange(rows) % 2
    with open(tmp_path / "x.npy", "wb") as handle:  # written, not mapped: this process stays small too
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (rows, features)})
        noise = np.random.default_rng(0).standard_normal((50_000, features), dtype=np.float32)
        for start in range(0, rows, len(noise)):  # the noise repeats, the 3 GB are read all the same
            chunk = noise[:rows - start].copy()
            chunk[:, 0] += 3 * labels[start:start + len(chunk)]
            chunk.tofile(handle)
    np.save(tmp_path / "y.npy", labels)
    spec = {"name": "big", "inputs": {"features": {"shape": [features]}}, "layers": [{"Linear": {"out_features": 2}}],
            "train": {"data": {"source": "npy:x.npy", "memory_budget": "1GB", "split": {"val": 0.01, "test": 0}},
                      "epochs": 1, "batch_size": 4096, "loss": "CrossEntropyLoss", "metrics": ["accuracy"],
                      "optimizer": {"Adam": {"lr": 0.01}}}}
    path = write(tmp_path, spec)
    # VmHWM is this process's own peak: ru_maxrss would start from the parent's peak (the
    # kernel keeps it across the vfork+exec that subprocess uses), not measure the trainer
    script = textwrap.dedent(f"""
        import re, resource, specc.train.training as t
        result = t.train({str(path)!r}, out={str(tmp_path / 'runs')!r}, verbose=False, threads=1)
        print(result.status, result.metrics["val"]["accuracy"])
        own = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
        print(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # the loader workers (forked)
    """)
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    status_line, memory_line = done.stdout.split("\n")[-3:-1]
    status, accuracy = status_line.split()
    assert status == "completed" and float(accuracy) > 0.9
    own, children = (int(value) * 1024 for value in memory_line.split())  # both in KB on Linux
    assert own < 1.5 * 2**30 and children < 1.5 * 2**30, (own, children)
