"""Readers for `train.data`: sklearn, csv, npz, synthetic, image folders, parquet/arrow tables, npy
files and user Datasets, each to columns (numpy arrays, or columns read on demand: specc.train.columns).

Every reader returns `RawData`; `specc.train.data` then shapes, splits and batches it (or
`specc.train.streaming` streams it). The sklearn datasets are the ones bundled with scikit-learn,
so nothing is downloaded.
"""
from __future__ import annotations

import csv
import importlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from specc.lang.errors import Location, Problem, SpecError
from specc.lang.train_config import DataConfig, check_dataset_path
from specc.train.columns import IMAGE_SUFFIXES, ImageFiles, NpyFile
from specc.train.folder_walk import class_folders, image_files
from specc.train.npz import read_npz
from specc.train.tables import read_table


@dataclass
class RawData:
    """Features (one array, or one per input name) and targets, first axis = examples.

    An input may be a column read on demand (specc.train.columns) instead of an array."""

    inputs: np.ndarray | dict[str, Any]
    target: np.ndarray


@dataclass
class Context:
    base_dir: Path
    where: Location | None
    seed: int


def read_source(config: DataConfig, layout: Any, *, base_dir: Path, where: Location | None, seed: int) -> RawData:
    """Read the examples named by `config` (see docs/train.md for every source)."""
    readers: dict[str, Callable[..., RawData]] = {
        "sklearn": _sklearn, "csv": _csv, "npz": _npz, "synthetic": _synthetic, "dataset": _dataset,
        "folder": _folder, "parquet": _table, "arrow": _table, "npy": _npy}
    return readers[config.kind](config, layout, Context(base_dir, where, seed))


def resolve_path(text: str, base_dir: Path, where: Location | None = None, folder: bool = False) -> Path:
    """A data path (a file, or a folder with `folder`): next to the spec file first, then relative to
    the current directory."""
    for candidate in (base_dir / text, Path(text)):
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate
    what = "data folder" if folder else "data file"
    raise SpecError(Problem(f"{what} not found: {text} (looked in {base_dir} and the current directory)",
                            where, "DATA_ERROR"))


def read_csv(path: Path, target: str | int | None, where: Location | None,
             require_target: bool = True) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """A csv file with a header row -> (features, target or None, feature column names).

    Args:
        path: the file.
        target: target column name or index; None = the last column.
        where: the spec position errors point at.
        require_target: False for prediction inputs, which may lack the target column.
    """
    reader = csv.reader(_utf8_lines(path, where))
    try:
        rows = [row for row in reader if row]
    except csv.Error as error:  # a field over csv's 131,072-character limit, a NUL byte
        _fail(f"{path}:{reader.line_num}: not a readable csv row ({error})", where)
    if len(rows) < 2:
        _fail(f"{path}: needs a header row and at least one data row", where)
    header, body = [name.strip() for name in rows[0]], rows[1:]
    target_index = _target_column(header, target, path, where, require_target)
    columns = [i for i in range(len(header)) if i != target_index]
    features = np.empty((len(body), len(columns)), dtype=np.float32)
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            _fail(f"{path}:{line}: {len(row)} values but the header has {len(header)} columns", where)
        for j, column in enumerate(columns):
            try:
                features[line - 2, j] = value = float(row[column])
            except ValueError:
                _fail(f"{path}:{line}: column '{header[column]}' is not a number: {row[column]!r}", where)
            if not math.isfinite(value):   # float() reads "nan" and "inf": training would stop at step 1
                _fail(f"{path}:{line}: column '{header[column]}' is {row[column].strip()}; clean or drop that row", where)
    labels = None if target_index is None else _numbers_or_text([row[target_index] for row in body])
    if labels is not None and labels.dtype.kind == "f" and not np.isfinite(labels).all():
        line = int(np.argmax(~np.isfinite(labels))) + 2
        _fail(f"{path}:{line}: target column '{header[target_index]}' is {body[line - 2][target_index].strip()}; "
              f"clean or drop that row", where)
    return features, labels, [header[i] for i in columns]


def _utf8_lines(path: Path, where: Location | None) -> list[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        _fail(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
              f"save the file as UTF-8", where)
    return text.splitlines(keepends=True)


def _target_column(header: list[str], target, path, where, require_target: bool) -> int | None:
    if target is None:
        return len(header) - 1 if require_target else None
    if isinstance(target, int):
        if -len(header) <= target < len(header):
            return target % len(header)
        _fail(f"{path}: target column {target} is out of range ({len(header)} columns)", where)
    if target in header:
        return header.index(target)
    if require_target:
        _fail(f"{path}: no column named '{target}'; columns: {', '.join(header)}", where)
    return None


def _numbers_or_text(values: list[str]) -> np.ndarray:
    try:
        return np.asarray([float(value) for value in values], dtype=np.float64)
    except ValueError:
        return np.asarray([value.strip() for value in values], dtype=str)


def _sklearn(config: DataConfig, layout, context: Context) -> RawData:
    import sklearn.datasets

    loader = getattr(sklearn.datasets, f"load_{config.location}")
    features, target = loader(return_X_y=True)
    return RawData(features.astype(np.float32), target)


def _csv(config: DataConfig, layout, context: Context) -> RawData:
    features, target, _ = read_csv(resolve_path(config.location, context.base_dir, context.where),
                                   config.target, context.where)
    return RawData(features, target)


def _npz(config: DataConfig, layout, context: Context) -> RawData:
    path = resolve_path(config.location, context.base_dir, context.where)
    arrays = read_npz(path, context.where)
    if not arrays:
        _fail(f"{path}: the archive holds no arrays; it needs x (the features) and y (the targets)", context.where)
    if "y" not in arrays:
        _fail(f"{path}: needs an array named y (the targets); it has {', '.join(arrays)}", context.where)
    names = list(layout.inputs)
    if all(name in arrays for name in names):
        return RawData({name: arrays[name] for name in names}, arrays["y"])
    if "x" in arrays:
        return RawData(arrays["x"], arrays["y"])
    _fail(f"{path}: needs an array x (or one per input: {', '.join(names)}); it has {', '.join(arrays)}",
          context.where)


def _synthetic(config: DataConfig, layout, context: Context) -> RawData:
    """Generated data sized from the spec's first input and the model's output."""
    (shape, dtype), = list(layout.inputs.values())[:1]
    samples = int(config.args.get("samples", 1000))
    noise = float(config.args.get("noise", 0.1))
    kind = config.location
    _check_synthetic_fits(samples, math.prod(shape) + max(1, math.prod(layout.output_shape)), context.where)
    if kind == "sequence":
        return _token_sequences(config, layout, shape, dtype, samples, noise, context)
    if dtype.is_floating_point is False:
        _fail(f"synthetic:{kind} makes float features; the input is declared {dtype}", context.where)
    features = math.prod(shape)
    if kind == "classification":
        return _classification(config, layout, features, samples, context)
    from sklearn.datasets import make_regression

    outputs = math.prod(layout.output_shape) or 1
    x, y = make_regression(n_samples=samples, n_features=features, n_informative=min(features, 10),
                           n_targets=outputs, noise=noise, random_state=context.seed)
    y = (y - y.mean(0)) / y.std(0)  # unit-scale targets, so default learning rates work
    return RawData(x.astype(np.float32), y.astype(np.float32))


def _check_synthetic_fits(samples: int, values_per_sample: int, where: Location | None) -> None:
    """Refuse sizes the CPU cannot hold before generating (sklearn makes float64, then a float32 copy)."""
    import torch

    from specc.build.memory import check_fits

    if samples < 1:
        _fail(f"synthetic data needs samples >= 1 (got {samples})", where)
    check_fits(samples * values_per_sample * 12, torch.device("cpu"), f"{samples:,} synthetic samples",
               where, "DATA_ERROR")


def _classification(config: DataConfig, layout, features: int, samples: int, context: Context) -> RawData:
    from sklearn.datasets import make_classification

    classes = int(config.args.get("classes", layout.num_outputs if layout.class_index else 2))
    informative = min(features, max(4, classes))
    if 2 ** informative < classes:
        _fail(f"synthetic:classification cannot make {classes} classes from {features} features", context.where)
    x, y = make_classification(n_samples=samples, n_features=features, n_informative=informative,
                               n_redundant=0, n_classes=classes, n_clusters_per_class=1,
                               random_state=context.seed)
    return RawData(x.astype(np.float32), y)


def _token_sequences(config, layout, shape, dtype, samples, noise, context) -> RawData:
    """Next-token prediction on a random Markov chain: learnable, and perplexity has a floor."""
    if dtype.is_floating_point or len(shape) != 1:
        _fail(f"synthetic:sequence makes token ids: declare the input as {{shape: [length], dtype: long}} "
              f"(got {list(shape)}, {dtype})", context.where)
    vocab = int(config.args.get("vocab_size", layout.num_outputs))
    rng = np.random.default_rng(context.seed)
    successor = rng.integers(0, vocab, size=vocab)
    tokens = np.empty((samples, shape[0] + 1), dtype=np.int64)
    tokens[:, 0] = rng.integers(0, vocab, size=samples)
    for step in range(1, shape[0] + 1):
        random_jump = rng.random(samples) < noise
        tokens[:, step] = np.where(random_jump, rng.integers(0, vocab, size=samples), successor[tokens[:, step - 1]])
    return RawData(tokens[:, :-1], tokens[:, 1:])


def _dataset(config: DataConfig, layout, context: Context) -> RawData:
    """A user Dataset, read once into arrays; items are (inputs..., target) or a dict of named arrays."""
    dataset = open_dataset(config, context.base_dir, context.where)
    try:
        items = [dataset[index] for index in range(len(dataset))]
    except Exception as error:  # the user's code: report any failure at the spec line
        _fail(f"{config.dataset}({config.args}) failed: {type(error).__name__}: {error}", context.where)
    return dataset_items(items, config.dataset, list(layout.inputs), context.where)


def open_dataset(config: DataConfig, base_dir: Path, where: Location | None) -> Any:
    """The `dataset:` class instantiated with `args` (its items are read later, or streamed)."""
    dataset_class = import_dataset_class(config.dataset, base_dir, where)
    try:
        dataset = dataset_class(**config.args)
        count = len(dataset)
    except Exception as error:  # the user's code: report any failure at the spec line
        _fail(f"{config.dataset}({config.args}) failed: {type(error).__name__}: {error}", where)
    if not count:
        _fail(f"{config.dataset} is empty", where)
    return dataset


def dataset_items(items: list, dataset: str, names: list[str], where: Location | None) -> RawData:
    """Stack Dataset items, `(input..., target)` tuples or dicts keyed by input name and `target`."""
    if not items:
        _fail(f"{dataset} is empty", where)
    if isinstance(items[0], dict):
        key = "target" if "target" in items[0] else "y"
        inputs = {name: _stack([item[name] for item in items]) for name in names if name in items[0]}
        return RawData(inputs, _stack([item[key] for item in items]))
    if not isinstance(items[0], (tuple, list)) or len(items[0]) != len(names) + 1:
        _fail(f"{dataset} items must be (input{'s...' if len(names) > 1 else ''}, target) tuples "
              f"or dicts keyed by input name and 'target'", where)
    columns = list(zip(*items))
    inputs = {name: _stack(column) for name, column in zip(names, columns)}
    return RawData(inputs, _stack(columns[-1]))


def import_dataset_class(dotted: str, base_dir: Path, where: Location | None) -> type:
    """`package.module.Name` -> a `torch.utils.data.Dataset` subclass, checked before anything is called.

    The spec's folder is searched too, for local modules. Importing runs the named module's code
    (the user's own, as `import` would); the object itself is only used once it is a Dataset class.

    Raises:
        SpecError: IMPORT_ERROR for a path that is refused, cannot be imported or is no Dataset class.
    """
    try:
        check_dataset_path(dotted)
    except ValueError as error:
        raise SpecError(Problem(str(error), where, "IMPORT_ERROR")) from None
    found = import_object(dotted, base_dir, where)
    from torch.utils.data import Dataset

    if not (isinstance(found, type) and issubclass(found, Dataset)):
        kind = "a class" if isinstance(found, type) else f"a {type(found).__name__}"
        raise SpecError(Problem(f"dataset {dotted} is {kind}, not a subclass of torch.utils.data.Dataset; "
                                f"it was not called", where, "IMPORT_ERROR"))
    return found


def _folder(config: DataConfig, layout, context: Context) -> RawData:
    """One subfolder per class, like torchvision's ImageFolder: classes in sorted order (the targets
    are their names, numbered in that order by specc.train.data), files sorted within each."""
    root = resolve_path(config.location, context.base_dir, context.where, folder=True)
    names = list(layout.inputs)
    if len(names) != 1:
        _fail(f"folder: feeds one image input; the spec has {', '.join(names)}", context.where)
    classes = class_folders(root, context.where)
    if len(classes) < 2:
        found = f"one class folder ({classes[0]})" if classes else "no class folders"
        _fail(f"{root}: has {found}; a folder source needs one subfolder per class, at least two", context.where)
    paths, labels, listed = [], [], [0]
    for name in classes:
        files = image_files(root, name, IMAGE_SUFFIXES, context.where, listed)
        if not files:
            _fail(f"{root / name}: the class folder '{name}' has no png or jpg images", context.where)
        paths += files
        labels += [name] * len(files)
    shape = layout.inputs[names[0]][0]
    return RawData({names[0]: ImageFiles(paths, shape, names[0], context.where)}, np.asarray(labels, dtype=str))


def _table(config: DataConfig, layout, context: Context) -> RawData:
    """A parquet or arrow (IPC/feather) table: a column per input (images as encoded bytes) + the target."""
    path = resolve_path(config.location, context.base_dir, context.where)
    return RawData(*read_table(path, config, layout, context.where))


def _npy(config: DataConfig, layout, context: Context) -> RawData:
    """`npy:x.npy` (target y.npy beside it) or `npy:<folder>` holding `<input>.npy` per input and y.npy;
    the inputs are read row by row on demand (specc.train.columns.NpyFile), never mapped whole."""
    location, names = Path(config.location), list(layout.inputs)
    folder = (context.base_dir / location if (context.base_dir / location).is_dir() else location)
    if folder.is_dir():
        files = {name: config.inputs.get(name, str(folder / f"{name}.npy")) for name in names}
        beside = folder
    else:
        path = resolve_path(config.location, context.base_dir, context.where)
        files, beside = {names[0]: str(path), **config.inputs}, path.parent
        if any(name not in files for name in names):
            _fail(f"the spec has inputs {', '.join(names)}: name a .npy file for each under `inputs`, "
                  f"or use npy:<folder> with one <input>.npy per input", context.where)
    inputs = {name: _npy_file(text, beside, context) for name, text in files.items()}
    target_file = _npy_file(str(config.target) if config.target is not None else "y.npy", beside, context)
    return RawData(inputs, target_file[:])


def _npy_file(text: str, beside: Path, context: Context) -> NpyFile:
    path = beside / text if (beside / text).is_file() else resolve_path(text, context.base_dir, context.where)
    try:
        return NpyFile(path)
    except (OSError, ValueError) as error:
        _fail(f"{path}: not a readable .npy array ({error})", context.where)


def import_object(dotted: str, base_dir: Path, where: Location | None) -> Any:
    """`package.module.Name` -> the object; the spec's folder is searched too, for local modules."""
    module_name, _, attribute = dotted.rpartition(".")
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise SpecError(Problem(f"cannot import {dotted}: {error}", where, "IMPORT_ERROR")) from None
    finally:
        if added:
            sys.path.remove(str(base_dir))


def _stack(values) -> np.ndarray:
    return np.stack([np.asarray(value) for value in values])


def _fail(message: str, where: Location | None) -> None:
    raise SpecError(Problem(message, where, "DATA_ERROR"))
