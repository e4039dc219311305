"""Data and data settings from a stranger (issue 25, part B): every one a located error (exit 2),
never a walk of the whole disk, a hang, a huge allocation or an internal error."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from specc.lang.errors import SpecError
from specc.train.prepare import build_model, load_train_spec, prepare_data

torch.set_num_threads(1)  # two pytest workers share two cores

IMAGE_SPEC = """
    name: images
    inputs: {{image: {{shape: [3, 8, 8]}}}}
    layers:
      - Flatten
      - Linear: {{out_features: 2}}
    train:
      data: {{source: "{source}", split: {{val: 0.25, test: 0.0}}}}
      loss: CrossEntropyLoss
      threads: 1
"""


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def prepared(path: Path):
    spec = load_train_spec(path)
    return prepare_data(spec, build_model(spec, torch.device("cpu"), seed=0))


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    from PIL import Image

    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(root / name / f"{index}.png")
    return root


def data_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as error:
        prepared(path)
    return error.value


# --- folder: sources never leave the data folder, and their walk is bounded ---------------------------

def test_a_class_folder_linked_out_of_the_data_folder_is_refused_without_walking_it(tmp_path):
    image_folder(tmp_path / "images", {"a": 2})
    image_folder(tmp_path / "elsewhere", {"b": 2})
    (tmp_path / "images" / "root").symlink_to("/")  # before the fix: the whole filesystem was walked
    (tmp_path / "images" / "b").symlink_to(tmp_path / "elsewhere" / "b")
    problem = data_error(write_spec(tmp_path, IMAGE_SPEC.format(source="folder:images"))).first
    assert problem.code == "DATA_ERROR" and problem.location.line == 8
    assert f"{tmp_path / 'images' / 'b'}: links to {tmp_path / 'elsewhere' / 'b'}, outside the data folder" \
        in problem.message


def test_an_image_linked_out_of_the_data_folder_is_refused(tmp_path):
    image_folder(tmp_path / "images", {"a": 2, "b": 2})
    secret = tmp_path / "secret.png"
    secret.write_bytes((tmp_path / "images" / "a" / "0.png").read_bytes())
    (tmp_path / "images" / "b" / "stolen.png").symlink_to(secret)
    problem = data_error(write_spec(tmp_path, IMAGE_SPEC.format(source="folder:images"))).first
    assert f"stolen.png: links to {secret}, outside the data folder" in problem.message


def test_links_inside_the_data_folder_are_followed_and_linked_subfolders_skipped(tmp_path):
    image_folder(tmp_path / "images", {"a": 3, "b": 2})
    (tmp_path / "images" / "b" / "also.png").symlink_to(tmp_path / "images" / "a" / "0.png")
    (tmp_path / "images" / "b" / "loop").symlink_to(tmp_path / "images")  # never descended into
    examples = prepared(write_spec(tmp_path, IMAGE_SPEC.format(source="folder:images"))).examples
    assert examples.classes == ["a", "b"]
    assert sorted(examples.data.target.tolist()) == [0, 0, 0, 1, 1, 1]


def test_the_folder_walk_is_bounded_in_entries_and_depth(tmp_path, monkeypatch):
    image_folder(tmp_path / "images", {"a": 5, "b": 5})
    path = write_spec(tmp_path, IMAGE_SPEC.format(source="folder:images"))
    monkeypatch.setenv("SPECC_MAX_FOLDER_ENTRIES", "8")
    problem = data_error(path).first
    assert problem.code == "LIMIT_EXCEEDED" and problem.location.line == 8
    assert "more than 8 files and folders; the limit is 8; set SPECC_MAX_FOLDER_ENTRIES to raise it" in problem.message
    monkeypatch.delenv("SPECC_MAX_FOLDER_ENTRIES")
    deep = tmp_path / "images" / "a" / "1" / "2" / "3"
    deep.mkdir(parents=True)
    monkeypatch.setenv("SPECC_MAX_FOLDER_DEPTH", "2")
    problem = data_error(path).first
    assert problem.code == "LIMIT_EXCEEDED"
    assert f"{deep}: folders nested more than 2 levels below the class folder" in problem.message


# --- data settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, message", [
    ("data: {source: 'sklearn:digits', num_workers: 10000}",
     "6:36: train.data.num_workers: 10,000 is more than 64 worker processes; set SPECC_MAX_DATA_WORKERS"),
    ("data: {source: 'sklearn:digits', prefetch_factor: 100000}",
     "6:36: train.data.prefetch_factor: 100,000 is more than 64 batches ahead per worker; set SPECC_MAX_PREFETCH"),
    ("threads: 100000", "6:3: train.threads: 100,000 is more than 1,024 threads; set SPECC_MAX_THREADS"),
])
def test_unbounded_data_settings_are_located_errors(tmp_path, setting, message):
    from typer.testing import CliRunner

    from specc.cli import app

    path = tmp_path / "spec.yaml"
    path.write_text(f"name: t\ninputs: {{x: {{shape: [64]}}}}\nlayers:\n  - Linear: {{out_features: 10}}\n"
                    f"train:\n  {setting}\n  loss: CrossEntropyLoss\n")
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:{message}" in result.output
