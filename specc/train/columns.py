"""Columns read on demand: image files, image bytes in a table, and the checks every batch gets.

A column is anything with `len()`, `.shape` (examples first), `.dtype` and `column[indices]` -> a
numpy array: a numpy array or `np.memmap` is one already. `ImageFiles` and `ImageBytes` decode only
the rows asked for, so the streaming path (specc.train.streaming) never holds a whole image set,
and the in-memory path decodes each image once.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from specc.lang.errors import Location, Problem, SpecError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Image decoding gathers this many examples per read when a column is materialized whole.
_CHUNK = 4096


def image_geometry(shape: tuple[int, ...], name: str, where: Location | None) -> tuple[str, int, int]:
    """(Pillow mode, height, width) for an input declared [C, H, W] (C = 1, 3 or 4) or [H, W]."""
    if len(shape) == 2:
        return "L", shape[0], shape[1]
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if len(shape) == 3 and shape[0] in modes:
        return modes[shape[0]], shape[1], shape[2]
    raise SpecError(Problem(f"input {name} is {list(shape)}; images need [channels, height, width] with 1, 3 or 4 "
                            f"channels, or [height, width]", where, "DATA_ERROR"))


class _Images:
    """Decoded images as float32 in [0, 1], shaped [C, H, W] (the input's shape), resized as needed."""

    def __init__(self, count: int, shape: tuple[int, ...], name: str, where: Location | None):
        self.mode, self.height, self.width = image_geometry(shape, name, where)
        self.count, self.example_shape, self.where = count, tuple(shape), where

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.example_shape)

    dtype = np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.count * math.prod(self.example_shape) * 4

    def __getitem__(self, indices: Any) -> np.ndarray:
        rows = np.arange(self.count)[indices]
        out = np.empty((len(rows), *self.example_shape), dtype=np.float32)
        for position, row in enumerate(rows):
            out[position] = self._decode(int(row)).reshape(self.example_shape)
        return out

    def _decode(self, row: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self._open(row)) as image:
                image = image.convert(self.mode)
                if image.size != (self.width, self.height):
                    image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise SpecError(Problem(f"{self._describe(row)}: cannot read the image ({error})", self.where,
                                    "DATA_ERROR")) from None
        return pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels

    def _open(self, row: int):
        raise NotImplementedError

    def _describe(self, row: int) -> str:
        raise NotImplementedError


class ImageFiles(_Images):
    """One image file per example (a `folder:` source)."""

    def __init__(self, paths: Sequence[Path], shape: tuple[int, ...], name: str, where: Location | None):
        super().__init__(len(paths), shape, name, where)
        self.paths = list(paths)

    def _open(self, row: int):
        return self.paths[row]

    def _describe(self, row: int) -> str:
        return str(self.paths[row])


class ImageBytes(_Images):
    """Encoded images (png/jpg bytes) in a parquet or arrow column."""

    def __init__(self, values: Any, shape: tuple[int, ...], name: str, label: str, where: Location | None):
        super().__init__(len(values), shape, name, where)
        self.values, self.label = values, label  # a pyarrow binary array: stays in Arrow's memory

    def _open(self, row: int):
        value = self.values[row].as_py()
        if isinstance(value, dict):  # Hugging Face style {"bytes": ..., "path": ...}
            value = value.get("bytes")
        if value is None:
            raise SpecError(Problem(f"{self._describe(row)}: the image is missing (null)", self.where, "DATA_ERROR"))
        return io.BytesIO(value)

    def _describe(self, row: int) -> str:
        return f"{self.label} row {row}"


class NpyFile:
    """A .npy array read row by row with `os.pread`: nothing is mapped, so reading a file far larger
    than RAM leaves the process's resident memory at the size of one batch (the page cache is the
    kernel's, not the process's, as a memmap's touched pages would be)."""

    def __init__(self, path: Path):
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header; touches no data
        if not isinstance(mapped, np.memmap) or not mapped.flags.c_contiguous:
            raise ValueError("needs a C-ordered array of numbers")
        shape, dtype, self.offset = mapped.shape, mapped.dtype, mapped.offset
        del mapped
        self.path, self.shape, self.dtype = path, tuple(shape), dtype
        self.row_bytes = math.prod(self.shape[1:]) * dtype.itemsize
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def __getstate__(self) -> dict:  # a worker process opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __getitem__(self, indices: Any) -> np.ndarray:
        rows = np.arange(len(self))[indices]
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        view = out.reshape(len(rows), -1).view(np.uint8)
        start = 0
        while start < len(rows):  # one read per run of consecutive rows
            end = start + 1
            while end < len(rows) and rows[end] == rows[end - 1] + 1:
                end += 1
            wanted = (end - start) * self.row_bytes
            data = os.pread(self._fd, wanted, self.offset + int(rows[start]) * self.row_bytes)
            if len(data) != wanted:
                raise OSError(f"{self.path}: the file is shorter than its header says")
            view[start:end] = np.frombuffer(data, dtype=np.uint8).reshape(end - start, -1)
            start = end
        return out


def materialize(column: Any) -> np.ndarray:
    """The whole column as a numpy array (a memmap or array is returned as is)."""
    if isinstance(column, np.ndarray):
        return column
    parts = [column[start:start + _CHUNK] for start in range(0, len(column), _CHUNK)]
    return np.concatenate(parts) if parts else np.empty(column.shape, column.dtype)


def check_finite(name: str, array: np.ndarray, rows: np.ndarray | None, where: Location | None) -> None:
    """Raise naming the first example (its row in the source) whose values are nan or inf."""
    if array.dtype.kind != "f":
        return
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        position = int(np.argmax(bad))
        row = position if rows is None else int(rows[position])
        value = array.reshape(len(array), -1)[position]
        kind = "nan" if np.isnan(value).any() else "inf"
        raise SpecError(Problem(f"input {name} has {kind} values at row {row} of the source; "
                                f"clean or drop that example", where, "DATA_ERROR"))


def check_npz_array(path: Path, key: str, array: np.ndarray, where: Location | None) -> None:
    """Numbers only (text only as class labels in y), never complex, every value finite, located to the entry."""
    if array.dtype.kind == "c":
        _data_error(f"{path}: array {key} is complex ({array.dtype}); models train on real numbers: "
              f"store the real and imaginary parts as separate features", where)
    if array.dtype.kind in "OSUV" and key != "y" or array.dtype.kind in "OV":
        _data_error(f"{path}: array {key} holds {array.dtype} values, not numbers", where)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        value = array[index]
        kind = "nan" if np.isnan(value) else "inf" if value > 0 else "-inf"
        where_in = f"row {index[0]}" + (f", column {index[1]}" if len(index) == 2 else
                                        f", index {list(index[1:])}" if len(index) > 2 else "")
        _data_error(f"{path}: array {key} is {kind} at {where_in}; clean or drop that example", where)


def _data_error(message: str, where: Location | None) -> None:
    raise SpecError(Problem(message, where, "DATA_ERROR"))
