"""Data and data settings from a stranger (issue 25, part B): every one a located error (exit 2),
never a walk of the whole disk, a hang, a huge allocation or an internal error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from specc.lang.errors import SpecError
from spec_helpers import prepared, write_spec

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


# --- bad data: each a located DATA_ERROR at the source line, never an internal error -------------------

def png_claiming(width: int, height: int) -> bytes:
    """A tiny png whose header claims `width` x `height` pixels (Pillow's decompression-bomb check fires)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


TABLE_SPEC = """
    name: table
    inputs: {{x: {{shape: {shape}}}}}
    layers:
      - Flatten
      - Linear: {{out_features: 2}}
    train:
      data: {{source: "{source}", split: {{val: 0.3, test: 0.0}}}}
      loss: CrossEntropyLoss
      threads: 1
"""


def test_a_30000_by_30000_png_in_a_folder_is_a_located_error(tmp_path):
    image_folder(tmp_path / "images", {"a": 2, "b": 2})
    (tmp_path / "images" / "b" / "bomb.png").write_bytes(png_claiming(30000, 30000))
    problem = data_error(write_spec(tmp_path, IMAGE_SPEC.format(source="folder:images"))).first
    assert problem.code == "DATA_ERROR" and problem.location.line == 8
    assert "bomb.png: cannot read the image (Image size (900000000 pixels) exceeds limit" in problem.message


def write_table(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def test_a_30000_by_30000_png_in_a_parquet_column_is_a_located_error(tmp_path):
    import io

    from PIL import Image

    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, "PNG")
    write_table(tmp_path / "images.parquet", {"x": [small.getvalue()] * 3 + [png_claiming(30000, 30000)],
                                              "label": [0, 1, 0, 1]})
    problem = data_error(write_spec(tmp_path, TABLE_SPEC.format(source="parquet:images.parquet",
                                                                shape="[3, 8, 8]"))).first
    assert "images.parquet column 'x' row 3: cannot read the image (Image size (900000000 pixels)" in problem.message


@pytest.mark.parametrize("columns, shape, message", [
    ({"x": ["1.0", "2.0", "3", "4"], "label": [0, 1, 0, 1]}, "[1]",
     "t.parquet: column 'x' (input x) holds text ('1.0', ...), not numbers; store it as numbers"),
    ({"a": [1.0, 2.0, 3.0, 4.0], "b": ["1", "2", "3", "4"], "label": [0, 1, 0, 1]}, "[2]",
     "t.parquet: column 'b' (input x) holds text ('1', ...), not numbers"),
    ({"x": [[1.0, 2.0], [1.0, None], [3.0, 4.0], [1.0, 2.0]], "label": [0, 1, 0, 1]}, "[2]",
     "t.parquet: column 'x' holds a null (missing) value in row 1; clean or drop that row"),
    ({"x": [[1.0, 2.0], None, [3.0, 4.0], [1.0, 2.0]], "label": [0, 1, 0, 1]}, "[2]",
     "t.parquet: column 'x' is null (missing) at row 1; clean or drop that row"),
    ({"x": [1, 2, 3, 4], "label": [0, None, 0, 1]}, "[1]",
     "t.parquet: column 'label' is null (missing) at row 1"),
])
def test_bad_parquet_columns_are_located_errors(tmp_path, columns, shape, message):
    write_table(tmp_path / "t.parquet", columns)
    problem = data_error(write_spec(tmp_path, TABLE_SPEC.format(source="parquet:t.parquet", shape=shape))).first
    assert problem.code == "DATA_ERROR" and problem.location.line == 8
    assert message in problem.message


def test_a_parquet_table_with_no_rows_is_a_located_error(tmp_path):
    import pyarrow as pa

    write_table(tmp_path / "t.parquet", {"x": pa.array([], pa.float32()), "label": pa.array([], pa.int64())})
    problem = data_error(write_spec(tmp_path, TABLE_SPEC.format(source="parquet:t.parquet", shape="[1]"))).first
    assert "t.parquet: the table has no rows" in problem.message


def test_a_csv_field_over_the_csv_module_limit_is_a_located_error(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,0\n1," + "2" * 140_000 + ",1\n")
    problem = data_error(write_spec(tmp_path, TABLE_SPEC.format(source="csv:t.csv", shape="[2]"))).first
    assert problem.code == "DATA_ERROR" and problem.location.line == 8
    assert "t.csv:3: not a readable csv row (field larger than field limit (131072))" in problem.message


def npy_member(shape: tuple, data: bytes) -> bytes:
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return header.getvalue() + data


def lying_npz(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:  # 10^12 rows claimed, 2 stored: 7.3 TiB for np.load
        archive.writestr("x.npy", npy_member((10**12, 2), bytes(16)))
        archive.writestr("y.npy", npy_member((2,), bytes(8)))
    return path


def zip_bomb_npz(path: Path, rows: int) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:  # zeros: ~1,000 times smaller zipped
        archive.writestr("x.npy", npy_member((rows, 2), bytes(rows * 8)))
        archive.writestr("y.npy", npy_member((rows,), bytes(rows * 4)))
    return path


def test_an_npz_member_whose_header_lies_is_refused_before_any_allocation(tmp_path):
    lying_npz(tmp_path / "t.npz")
    problem = data_error(write_spec(tmp_path, TABLE_SPEC.format(source="npz:t.npz", shape="[2]"))).first
    assert problem.code == "DATA_ERROR" and problem.location.line == 8
    assert ("t.npz: array x's header says shape (1000000000000, 2) of float32 (7.3 TiB), but the archive holds "
            "16 bytes of data for it") in problem.message


def test_an_npz_zip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    zip_bomb_npz(tmp_path / "t.npz", rows=1_000_000)  # 12 MB of arrays in ~12 KB
    assert (tmp_path / "t.npz").stat().st_size < 100_000
    monkeypatch.setenv("SPECC_MAX_NPZ_BYTES", "1000000")
    problem = data_error(write_spec(tmp_path, TABLE_SPEC.format(source="npz:t.npz", shape="[2]"))).first
    assert problem.code == "LIMIT_EXCEEDED" and problem.location.line == 8
    assert ("t.npz: its arrays take 11.4 MiB uncompressed, more than the bound of 976.6 KiB; "
            "set SPECC_MAX_NPZ_BYTES to raise it") in problem.message


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    from specc.train.training import train

    folder = tmp_path_factory.mktemp("run")
    spec = folder / "spec.yaml"
    spec.write_text("name: tiny\ninputs: {x: {shape: [64]}}\nlayers:\n  - Linear: {out_features: 10}\n"
                    "train:\n  data: {source: 'sklearn:digits'}\n  loss: CrossEntropyLoss\n  epochs: 1\n"
                    "  threads: 1\n")
    return spec, train(spec, out=folder / "runs", verbose=False).best_checkpoint


@pytest.mark.parametrize("make, message", [
    (lying_npz, "array x's header says shape (1000000000000, 2) of float32 (7.3 TiB)"),
    (lambda path: zip_bomb_npz(path, rows=1_000_000), "its arrays take 11.4 MiB uncompressed, more than the bound"),
])
def test_predict_refuses_the_same_npz_inputs(tmp_path, monkeypatch, digits_checkpoint, make, message):
    from typer.testing import CliRunner

    from specc.cli import app

    monkeypatch.setenv("SPECC_MAX_NPZ_BYTES", "1000000")
    make(tmp_path / "in.npz")
    spec, checkpoint = digits_checkpoint
    result = CliRunner().invoke(app, ["predict", str(spec), "--checkpoint", str(checkpoint),
                                      "--input", str(tmp_path / "in.npz")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "internal error" not in result.output
