"""Issue 15: broken training data are located DATA_ERRORs at load (file, row, column), exit 2 —
never accepted (nan, complex) nor an internal error (non-UTF-8, text, empty archives)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from specc.cli import app
from specc.lang.errors import SpecError

torch.set_num_threads(1)

SPEC = """\
name: data_errors
inputs:
  x: {{shape: [2]}}
layers:
  - Linear: 3
train:
  data: {{source: "{source}"}}
  loss: {loss}
  epochs: 1
  batch_size: 2
"""


def train_output(tmp_path: Path, source: str, loss: str = "CrossEntropyLoss") -> tuple[int, str]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(source=source, loss=loss))
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("body, message", [
    (b"a,b,y\n1,2,0\n3,nan,1\n", "bad.csv:3: column 'b' is nan; clean or drop that row"),
    (b"a,b,y\n1,2,0\n-inf,4,1\n", "bad.csv:3: column 'a' is -inf; clean or drop that row"),
    (b"a,b,y\n1,2,0\n1,\xff,1\n", "bad.csv:3: not UTF-8 text (byte 0xff at offset 14); save the file as UTF-8"),
    (b"a,b,y\n", "bad.csv: needs a header row and at least one data row"),
    (b"a,b,y\n1,2,0\n3,4,7\n", "the targets are classes 0..7 but the model outputs 3 class scores"),
])
def test_csv_mistakes_are_located(tmp_path, body, message):
    (tmp_path / "bad.csv").write_bytes(body)
    code, output = train_output(tmp_path, "csv:bad.csv")
    assert code == 2
    assert f"spec.yaml:7:10: {tmp_path / 'bad.csv' if message.startswith('bad.csv') else ''}" \
           f"{message.removeprefix('bad.csv')}" in output.replace("\n", "")


def test_a_nan_regression_target_in_csv_is_located(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b,y\n1,2,0.5\n3,4,nan\n")
    code, output = train_output(tmp_path, "csv:bad.csv", loss="MSELoss")
    assert code == 2 and f"{tmp_path / 'bad.csv'}:3: target column 'y' is nan" in output.replace("\n", "")


def _x_with(value, at=(2, 1)):
    x = np.ones((4, 2))
    x[at] = value
    return x


@pytest.mark.parametrize("arrays, message", [
    ({}, "the archive holds no arrays; it needs x (the features) and y (the targets)"),
    ({"x": np.array([["a", "b"]] * 4), "y": np.zeros(4)}, "array x holds <U1 values, not numbers"),
    ({"x": np.ones((4, 2)) * (1 + 1j), "y": np.zeros(4)},
     "array x is complex (complex128); models train on real numbers: store the real and imaginary parts as "
     "separate features"),
    ({"x": _x_with(np.inf), "y": np.zeros(4)}, "array x is inf at row 2, column 1; clean or drop that example"),
    ({"x": _x_with(np.nan, (3, 0)), "y": np.zeros(4)}, "array x is nan at row 3, column 0"),
    ({"x": np.ones((4, 2)), "y": np.array([0, 1, np.nan, 2])}, "array y is nan at row 2"),
])
def test_npz_mistakes_are_located(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    code, output = train_output(tmp_path, "npz:bad.npz")
    assert code == 2
    assert f"spec.yaml:7:10: {tmp_path / 'bad.npz'}: {message}" in output.replace("\n", "")


def test_a_file_that_is_not_an_npz_archive(tmp_path):
    (tmp_path / "bad.npz").write_text("hello")
    code, output = train_output(tmp_path, "npz:bad.npz")
    assert code == 2 and "bad.npz: not an npz file (an npz is a zip archive written by numpy.savez)" in output
    assert "pickle" not in output


def test_text_class_labels_in_npz_still_work(tmp_path):
    from specc.train.columns import check_npz_array

    check_npz_array(tmp_path / "ok.npz", "y", np.array(["cat", "dog"]), None)   # labels may be text
    with pytest.raises(SpecError, match="array x holds <U3 values, not numbers"):
        check_npz_array(tmp_path / "ok.npz", "x", np.array(["cat", "dog"]), None)
