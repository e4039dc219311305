"""Reading an npz archive from a stranger: every member is checked against the archive before numpy
allocates anything, as `NpyFile` checks an npy file against its size.

An npy header states the array's shape; numpy allocates that much before reading the data, so a
400-byte member claiming 10^12 rows asks for terabytes. Each member's header must describe exactly
the bytes the archive holds for it (zipfile itself stops at, and checksums, the size the archive
declares), and the archive's arrays together must fit `SPECC_MAX_NPZ_BYTES` (default half the
machine's RAM): a zip bomb of zeros is refused before it is inflated.
"""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from specc.lang.errors import Location, Problem, SpecError
from specc.lang.limits import limit
from specc.train.columns import check_npz_array


def read_npz(path: Path, where: Location | None) -> dict[str, np.ndarray]:
    """The arrays of the npz file `path`, each checked (numbers only, finite: `check_npz_array`).

    Raises:
        SpecError: DATA_ERROR naming the file (and member) for anything but a sound archive;
            LIMIT_EXCEEDED when its arrays exceed `SPECC_MAX_NPZ_BYTES`.
    """
    if not zipfile.is_zipfile(path):   # np.load would try it as a pickle and say so
        _fail(f"{path}: not an npz file (an npz is a zip archive written by numpy.savez)", where)
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(_member_bytes(path, archive, member, where) for member in archive.infolist())
        bound = npz_byte_bound()
        if total > bound:
            raise SpecError(Problem(f"{path}: its arrays take {_size(total)} uncompressed, more than the bound of "
                                    f"{_size(bound)}; set SPECC_MAX_NPZ_BYTES to raise it, or use npy: files, which "
                                    f"are streamed", where, "LIMIT_EXCEEDED"))
        with np.load(path, allow_pickle=False) as loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as error:
        _fail(f"{path}: not a readable npz file ({error})", where)
    for key, array in arrays.items():
        check_npz_array(path, key, array, where)
    return arrays


def npz_byte_bound() -> int:
    """`SPECC_MAX_NPZ_BYTES` when set, else half the machine's RAM: an npz is read whole into memory."""
    if os.environ.get("SPECC_MAX_NPZ_BYTES", "").strip():
        return limit("MAX_NPZ_BYTES")
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _member_bytes(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo, where: Location | None) -> int:
    """The uncompressed size of one member, after checking that its npy header describes it."""
    if not member.filename.endswith(".npy"):
        return 0   # np.load lists only .npy members
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(stream)
        header_bytes = stream.tell()
    if dtype.hasobject:
        _fail(f"{path}: array {member.filename[:-4]} holds Python objects, not numbers", where)
    data_bytes = math.prod(shape) * dtype.itemsize
    if header_bytes + data_bytes != member.file_size:
        _fail(f"{path}: array {member.filename[:-4]}'s header says shape {tuple(shape)} of {dtype} "
              f"({_size(data_bytes)}), but the archive holds {_size(member.file_size - header_bytes)} of data "
              f"for it", where)
    return member.file_size


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return ""


def _fail(message: str, where: Location | None) -> None:
    raise SpecError(Problem(message, where, "DATA_ERROR"))
