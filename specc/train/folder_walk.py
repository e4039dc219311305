"""Listing the images of a `folder:` source without leaving it: a data folder from a stranger may
hold a class folder linked to `/`, a link to a private file, or millions of nested folders.

A link (to a class folder or an image) is followed only when it points inside the data folder;
links to folders below a class folder are not followed at all, as `Path.rglob` does (so no link
can make the walk go round in circles). The walk is iterative and bounded: at most
`SPECC_MAX_FOLDER_ENTRIES` entries listed, `SPECC_MAX_FOLDER_DEPTH` levels below a class folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from specc.lang.errors import Location, Problem, SpecError
from specc.lang.limits import limit, raise_hint


def class_folders(root: Path, where: Location | None) -> list[str]:
    """The class subfolders of `root` (hidden ones skipped), sorted; a linked one must stay inside."""
    inside = root.resolve()
    names = []
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink():
            _check_inside(Path(entry.path), inside, where)
        names.append(entry.name)
    return names


def image_files(root: Path, name: str, suffixes: tuple[str, ...], where: Location | None,
                listed: list[int]) -> list[Path]:
    """The image files under the class folder `root / name` (subfolders too), sorted.

    Args:
        root: the data folder.
        name: the class folder's name.
        suffixes: the image file endings (lower case).
        where: the spec position errors point at.
        listed: a one-item counter of entries listed so far, shared by the class folders.

    Raises:
        SpecError: DATA_ERROR for a link out of the data folder; LIMIT_EXCEEDED past a bound.
    """
    inside, most, deepest = root.resolve(), limit("MAX_FOLDER_ENTRIES"), limit("MAX_FOLDER_DEPTH")
    files, pending = [], [(root / name, 0)]
    while pending:
        folder, depth = pending.pop()
        if depth > deepest:
            _limit(f"{folder}: folders nested more than {deepest} levels below the class folder; "
                   f"{raise_hint('MAX_FOLDER_DEPTH')}", where)
        with os.scandir(folder) as entries:
            for entry in entries:
                listed[0] += 1
                if listed[0] > most:
                    _limit(f"{root}: more than {most:,} files and folders; {raise_hint('MAX_FOLDER_ENTRIES')}", where)
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), depth + 1))
                elif Path(entry.name).suffix.lower() in suffixes and entry.is_file():
                    if entry.is_symlink():
                        _check_inside(Path(entry.path), inside, where)
                    files.append(Path(entry.path))
    return sorted(files)


def _check_inside(link: Path, inside: Path, where: Location | None) -> None:
    target = link.resolve()
    if target != inside and inside not in target.parents:
        raise SpecError(Problem(f"{link}: links to {target}, outside the data folder {inside}; links out of "
                                f"the data folder are not followed (copy or move the images inside)",
                                where, "DATA_ERROR"))


def _limit(message: str, where: Location | None) -> None:
    raise SpecError(Problem(message, where, "LIMIT_EXCEEDED"))
