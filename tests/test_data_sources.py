"""The image-folder, parquet, arrow and npy sources, and bad data as located errors."""
from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from specc.weights.checkpoint import load_checkpoint
from specc.lang.errors import SpecError
from specc.train.prepare import build_model, load_train_spec, prepare_data
from specc.train.training import train
from spec_helpers import prepared, write_spec

torch.set_num_threads(1)  # two pytest workers share two cores

ROOT = Path(__file__).resolve().parents[1]


def shapes_module():
    spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "specs" / "make_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IMAGE_CNN = """
    name: shapes
    inputs: {{image: {{shape: [3, 16, 16]}}}}
    layers:
      - Conv2d: {{out_channels: 8, kernel_size: 3, padding: 1}}
      - ReLU
      - MaxPool2d: {{kernel_size: 2}}
      - Flatten
      - Linear: {{out_features: {classes}}}
    train:
      data: {{source: "{source}", split: {{val: 0.2, test: 0.2, seed: 0}}}}
      batch_size: 32
      epochs: 6
      loss: CrossEntropyLoss
      metrics: [accuracy]
      optimizer: {{AdamW: {{lr: 0.01}}}}
      threads: 1
"""


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    # 32x32 images, resized to the spec's 16x16 on reading
    return shapes_module().write_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=100, size=32)


def test_an_image_folder_trains_well_above_chance_and_keeps_class_names(shapes_folder, tmp_path):
    path = write_spec(tmp_path, IMAGE_CNN.format(source=f"folder:{shapes_folder}", classes=3))
    result = train(path, out=tmp_path / "runs", verbose=False)
    assert result.ok
    assert result.metrics["test"]["accuracy"] >= 0.9  # chance is 1/3
    assert load_checkpoint(result.best_checkpoint)["classes"] == ["circle", "square", "triangle"]


def test_folder_classes_are_numbered_in_sorted_order_and_images_resized(shapes_folder, tmp_path):
    from PIL import Image

    data = prepared(write_spec(tmp_path, IMAGE_CNN.format(source=f"folder:{shapes_folder}", classes=3)))
    examples = data.examples
    assert examples.classes == ["circle", "square", "triangle"]
    assert examples.data.inputs[0].shape == (300, 3, 16, 16)
    assert examples.data.target.tolist() == [0] * 100 + [1] * 100 + [2] * 100
    first = Image.open(shapes_folder / "circle" / "0000.png").convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
    expected = torch.tensor(np.asarray(first, dtype=np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(examples.data.inputs[0][0], expected)


def small_folder(root: Path, classes: dict[str, int]) -> Path:
    from PIL import Image

    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(root / name / f"{index}.png")
    return root


def test_an_unreadable_image_names_the_file_at_the_source_line(tmp_path):
    folder = small_folder(tmp_path / "images", {"a": 3, "b": 3})
    (folder / "b" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(SpecError) as error:
        prepared(write_spec(tmp_path, IMAGE_CNN.format(source="folder:images", classes=2)))
    problem = error.value.first
    assert problem.code == "DATA_ERROR" and "broken.png: cannot read the image" in problem.message
    assert str(folder / "b" / "broken.png") in problem.message
    assert problem.location.line == 11  # the `data: {source: ...}` line


@pytest.mark.parametrize("classes, message", [
    ({"only": 4}, "has one class folder (only); a folder source needs one subfolder per class, at least two"),
    ({"a": 3, "empty": 0}, "the class folder 'empty' has no png or jpg images"),
])
def test_a_folder_with_one_class_or_an_empty_class_says_so(tmp_path, classes, message):
    small_folder(tmp_path / "images", classes)
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepared(write_spec(tmp_path, IMAGE_CNN.format(source="folder:images", classes=2)))


MLP = """
    name: tab
    inputs: {{features: {{shape: [3]}}}}
    layers: [Linear: {{out_features: {classes}}}]
    train:
      data: {data}
      loss: CrossEntropyLoss
"""


def table(rows: int = 40):
    import pyarrow as pa

    rng = np.random.default_rng(0)
    return pa.table({"a": rng.normal(size=rows), "b": rng.normal(size=rows), "c": rng.normal(size=rows),
                     "label": np.arange(rows) % 2})


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_parquet_and_arrow_columns_become_the_input_and_the_target(tmp_path, kind):
    import pyarrow.feather
    import pyarrow.parquet

    data = table()
    if kind == "parquet":
        pyarrow.parquet.write_table(data, tmp_path / "t.parquet")
    else:
        pyarrow.feather.write_feather(data, tmp_path / "t.arrow")
    suffix = "parquet" if kind == "parquet" else "arrow"
    spec = MLP.format(classes=2, data=f'{{source: "{kind}:t.{suffix}", target: label}}')
    examples = prepared(write_spec(tmp_path, spec)).examples.data
    expected = np.stack([data.column(name).to_numpy() for name in "abc"], axis=1).astype(np.float32)
    assert torch.equal(examples.inputs[0], torch.tensor(expected))
    assert examples.target.tolist() == (np.arange(40) % 2).tolist()


def test_a_missing_parquet_column_names_the_columns_that_exist(tmp_path):
    import pyarrow.parquet

    pyarrow.parquet.write_table(table(), tmp_path / "t.parquet")
    spec = MLP.format(classes=2, data='{source: "parquet:t.parquet", target: labels}')
    with pytest.raises(SpecError, match=r"no column named 'labels' \(the target\); the columns are a, b, c, label"):
        prepared(write_spec(tmp_path, spec))
    spec = MLP.format(classes=2, data='{source: "parquet:t.parquet", target: label, inputs: {features: pixels}}')
    with pytest.raises(SpecError, match=r"no column named 'pixels' \(for input features\); the columns are a, b, c"):
        prepared(write_spec(tmp_path, spec))


def test_images_stored_as_bytes_in_a_parquet_column_are_decoded(shapes_folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet

    files = sorted(shapes_folder.rglob("*.png"))
    labels = [path.parent.name for path in files]
    pyarrow.parquet.write_table(pa.table({"image": [path.read_bytes() for path in files], "label": labels}),
                                tmp_path / "images.parquet")
    from_table = prepared(write_spec(tmp_path, IMAGE_CNN.format(source="parquet:images.parquet", classes=3)))
    (tmp_path / "f").mkdir()
    from_folder = prepared(write_spec(tmp_path / "f", IMAGE_CNN.format(source=f"folder:{shapes_folder}", classes=3)))
    assert from_table.examples.classes == ["circle", "square", "triangle"]
    assert torch.equal(from_table.examples.data.inputs[0], from_folder.examples.data.inputs[0])
    assert torch.equal(from_table.examples.data.target, from_folder.examples.data.target)


def test_npy_files_one_per_input_with_the_targets_beside_them(tmp_path):
    rng = np.random.default_rng(0)
    left, right, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 2)), np.arange(30) % 3
    (tmp_path / "arrays").mkdir()
    for name, array in {"left": left, "right": right, "y": y}.items():
        np.save(tmp_path / "arrays" / f"{name}.npy", array)
    spec = write_spec(tmp_path, """
        name: pair
        inputs: {left: {shape: [4]}, right: {shape: [2]}}
        layers:
          - cat: {dim: 1}
            from: [left, right]
          - Linear: {out_features: 3}
        train:
          data: {source: "npy:arrays"}
          loss: CrossEntropyLoss
    """)
    examples = prepared(spec).examples.data
    assert torch.equal(examples.inputs[0], torch.tensor(left, dtype=torch.float32))
    assert torch.equal(examples.inputs[1], torch.tensor(right, dtype=torch.float32))
    assert examples.target.tolist() == y.tolist()


def test_an_npy_input_with_nan_names_the_row(tmp_path):
    x = np.ones((20, 3), dtype=np.float32)
    x[7, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros(20, dtype=np.int64))
    with pytest.raises(SpecError, match="input features has nan values at row 7 of the source"):
        prepared(write_spec(tmp_path, MLP.format(classes=2, data='{source: "npy:x.npy"}')))


def test_npy_labels_outside_the_model_outputs_are_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((20, 3), dtype=np.float32))
    np.save(tmp_path / "labels.npy", np.arange(20) % 5)
    with pytest.raises(SpecError, match="classes 0..4 but the model outputs 3 class scores"):
        prepared(write_spec(tmp_path, MLP.format(classes=3, data='{source: "npy:x.npy", target: labels.npy}')))


SYNTHETIC_CNN = """\
    name: synthetic_cnn
    inputs:
      image: {shape: [3, 32, 32]}
    layers:
      - Conv2d: {out_channels: 16, kernel_size: 3, padding: 1}
      - ReLU
      - MaxPool2d: {kernel_size: 2}
      - Conv2d: {out_channels: 32, kernel_size: 3, padding: 1}
      - ReLU
      - AdaptiveAvgPool2d: {output_size: 1}
      - Flatten
      - Linear: {out_features: 10}
    train:
      data: {source: "synthetic:classification", args: {samples: 800}, split: {val: 0.25}}
      epochs: 4
      batch_size: 32
      loss: CrossEntropyLoss
      optimizer: {Adam: {lr: 0.01}}
      metrics: [accuracy]
"""


def test_synthetic_images_are_learnable_by_a_small_cnn(tmp_path):
    """10 classes of 3x32x32 images: chance is 0.1; the old generator (10 informative values among
    3,072 pixels) left this CNN there."""
    torch.manual_seed(0)
    result = train(textwrap.dedent(SYNTHETIC_CNN), out=tmp_path, verbose=False)
    assert result.ok
    assert result.metrics["test"]["accuracy"] > 0.6 and result.metrics["val"]["accuracy"] > 0.6


def test_synthetic_images_are_images_and_vectors_stay_as_they_were():
    from specc.train.sources import is_image

    spec = load_train_spec(textwrap.dedent(SYNTHETIC_CNN), {})
    data = prepare_data(spec, build_model(spec, torch.device("cpu"), 0)).examples.data
    (images,), labels = data.inputs, data.target
    assert images.shape == (800, 3, 32, 32) and set(labels.tolist()) == set(range(10))
    # a class's stripes run one way: the horizontal and vertical differences tell two classes apart
    steepness = [(images[labels == label].diff(dim=-1).abs().mean().item(),
                  images[labels == label].diff(dim=-2).abs().mean().item()) for label in (0, 5)]
    assert steepness[0][0] > 1.3 * steepness[0][1] and steepness[1][1] > 1.3 * steepness[1][0]
    assert is_image([3, 32, 32]) and is_image([1, 8, 8]) and not is_image([3072]) and not is_image([16, 128])


def test_predict_reads_an_image_or_a_folder_of_images_as_the_folder_source_does(shapes_folder, tmp_path):
    import csv as csv_module

    from specc.train.evaluation import predict

    path = write_spec(tmp_path, IMAGE_CNN.format(source=f"folder:{shapes_folder}", classes=3))
    result = train(path, out=tmp_path / "runs", verbose=False)
    new = tmp_path / "new"
    (new / "more").mkdir(parents=True)
    picks = {"circle": shapes_folder / "circle", "square": shapes_folder / "square", "triangle": shapes_folder / "triangle"}
    for name, folder in picks.items():
        for index, image in enumerate(sorted(folder.iterdir())[-3:]):   # 32x32 files, resized like in training
            (new / ("more" if index == 2 else ".") / f"{name}_{index}.png").write_bytes(image.read_bytes())
    written = predict(path, result.best_checkpoint, new)
    with open(written, newline="") as handle:
        rows = list(csv_module.DictReader(handle))
    assert written == tmp_path / "new.predictions.csv" and len(rows) == 9
    assert rows[0].keys() == {"file", "prediction", "probability_circle", "probability_square", "probability_triangle"}
    assert {row["file"] for row in rows} >= {"circle_0.png", "more/triangle_2.png"}
    right = sum(row["prediction"] == Path(row["file"]).name.split("_")[0] for row in rows)
    assert right >= 7
    one = predict(path, result.best_checkpoint, new / "square_0.png", tmp_path / "one.csv")
    (row,) = list(csv_module.DictReader(open(one, newline="")))
    assert row["file"] == "square_0.png" and row["prediction"] in picks
    with pytest.raises(SpecError, match="has no png or jpg images"):
        (tmp_path / "empty").mkdir()
        predict(path, result.best_checkpoint, tmp_path / "empty")
