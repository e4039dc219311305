"""Issue 15: CLI usage mistakes exit 2 with a clear message (batch size, missing -o folder),
`predict -o -` writes to stdout, and safetensors exports get the usual file mode."""
from __future__ import annotations

import csv
import io
import os
import stat
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from specc.build.compiler import compile as compile_spec
from specc.cli import app

torch.set_num_threads(1)
SPECS = Path(__file__).resolve().parent.parent / "specs"

IRIS = """\
    name: iris_predict
    inputs: {x: {shape: [4]}}
    layers: [Linear: {out_features: 8}, ReLU, Linear: {out_features: 3}]
    train:
      data: {source: "sklearn:iris", split: {val: 0.2, test: 0.2}}
      epochs: 1
      batch_size: 32
      loss: CrossEntropyLoss
"""


def invoke(*args) -> "object":
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.mark.parametrize("size", ["0", "-3"])
def test_summary_batch_size_below_1_is_a_usage_error(size):
    result = invoke("summary", SPECS / "mlp.yaml", "--batch-size", size)
    assert result.exit_code == 2
    assert "Invalid value for '--batch-size'" in result.output and "Traceback" not in result.output


def test_the_python_api_refuses_a_batch_size_below_1():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        compile_spec(SPECS / "mlp.yaml", device="meta", batch_size=0)


@pytest.mark.parametrize("command, name", [
    (["draw", SPECS / "mlp.yaml"], "x.svg"),
    (["export", SPECS / "mlp.yaml"], "x.onnx"),
    (["predict", SPECS / "mlp.yaml", "--checkpoint", "last.pt", "--input", "x.csv"], "x.csv"),
])
def test_an_output_in_a_missing_folder_is_named(tmp_path, command, name):
    output = tmp_path / "missing_dir" / name
    result = invoke(*command, "-o", output)
    assert result.exit_code == 2
    assert f"error: -o {output}: the folder {output.parent} does not exist" in result.output.replace("\n", "")
    assert not output.parent.exists()


@pytest.fixture(scope="module")
def iris_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("predict")
    spec = folder / "iris.yaml"
    spec.write_text(textwrap.dedent(IRIS))
    result = invoke("train", spec, "--out", folder / "runs", "--device", "cpu")
    assert result.exit_code == 0, result.output
    (run,) = (folder / "runs" / "iris_predict").iterdir()
    return spec, run / "last.pt"


def test_predict_to_stdout(iris_checkpoint, tmp_path):
    spec, checkpoint = iris_checkpoint
    examples = tmp_path / "new.csv"
    examples.write_text("a,b,c,d\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n")
    result = invoke("predict", spec, "--checkpoint", checkpoint, "--input", examples, "-o", "-")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["prediction", "probability_0", "probability_1", "probability_2"]
    assert len(rows) == 3 and all(sum(float(p) for p in row[1:]) == pytest.approx(1, abs=1e-5) for row in rows[1:])
    assert "wrote" not in result.stdout
    assert not Path("-").exists()
    written = invoke("predict", spec, "--checkpoint", checkpoint, "--input", examples, "-o", tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text().replace("\r\n", "\n") == result.stdout.replace("\r\n", "\n")
    assert written.exit_code == 0


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_safetensors_exports_get_the_usual_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        result = invoke("export", SPECS / "mlp.yaml", "-o", tmp_path / "m.safetensors")
        other = invoke("export", SPECS / "mlp.yaml", "-o", tmp_path / "m.pt2", "--no-check")
    finally:
        os.umask(previous)
    assert result.exit_code == 0 and other.exit_code == 0, result.output + other.output
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "m.pt2").stat().st_mode) == mode
