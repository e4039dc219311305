"""The parquet and arrow sources: a column per spec input (numbers, lists of numbers or encoded
images) plus the target column, read with pyarrow. Holes (nulls), text where numbers belong and
empty tables are refused naming the column and row."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specc.lang.errors import Location, Problem, SpecError
from specc.lang.train_config import DataConfig
from specc.train.columns import ImageBytes


def read_table(path: Path, config: DataConfig, layout: Any, where: Location | None) -> tuple[dict[str, Any], np.ndarray]:
    """A parquet or arrow (IPC/feather) table: a column per input (images as encoded bytes) + the target.

    Returns:
        (inputs: spec input name -> column, targets), as `RawData` holds them.

    Raises:
        SpecError: DATA_ERROR naming the file, column and row of anything that cannot be trained on.
    """
    table = _read_table(path, config.kind, where)
    if table.num_rows == 0:
        _fail(f"{path}: the table has no rows", where)
    columns = table.column_names
    target = _table_target(config.target, columns, path, where)
    names = list(layout.inputs)
    for name in config.inputs:
        if name not in names:
            _fail(f"`inputs` names '{name}', which is not a spec input ({', '.join(names)})", where)
    wanted = {name: config.inputs.get(name, name) for name in names}
    if len(names) == 1 and not config.inputs and names[0] not in columns:
        wanted = {names[0]: [column for column in columns if column != target]}
    inputs = {}
    for name, column in wanted.items():
        for label in column if isinstance(column, list) else [column]:
            if label not in columns:
                _fail(f"{path}: no column named '{label}' (for input {name}); the columns are "
                      f"{', '.join(columns)}", where)
        inputs[name] = _table_input(table, column, layout.inputs[name][0], name, path, where)
    return inputs, _table_values(table.column(target), path, target, where)


def _read_table(path: Path, kind: str, where: Location | None):
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, memory_map=True)
        source = pa.memory_map(str(path))
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowException) as error:
        _fail(f"{path}: not a readable {kind} file ({error})", where)


def _table_target(target: str | int | None, columns: list[str], path: Path, where) -> str:
    if isinstance(target, int):
        if not -len(columns) <= target < len(columns):
            _fail(f"{path}: target column {target} is out of range ({len(columns)} columns)", where)
        return columns[target]
    if target is None:
        return "target" if "target" in columns else columns[-1]
    if target not in columns:
        _fail(f"{path}: no column named '{target}' (the target); the columns are {', '.join(columns)}", where)
    return target


def _table_input(table, column: str | list[str], shape, name: str, path: Path, where) -> Any:
    """One column of images (binary) or of arrays (lists), or several numeric columns side by side."""
    import pyarrow as pa

    if isinstance(column, list) and len(column) == 1:
        column = column[0]
    if isinstance(column, list):
        return np.stack([_numeric(table.column(label), path, label, name, where) for label in column], axis=1)
    values = table.column(column).combine_chunks()
    kind = values.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        values, kind = values.field("bytes"), kind.field("bytes").type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return ImageBytes(values, shape, name, f"{path} column '{column}'", where)
    return _numeric(values, path, column, name, where)


def _numeric(values, path: Path, column: str, name: str, where) -> np.ndarray:
    array = _table_values(values, path, column, where)
    if array.dtype.kind in "US":   # text is fine as class labels only
        _fail(f"{path}: column '{column}' (input {name}) holds text ({str(array[0])!r}, ...), not numbers; "
              f"store it as numbers", where)
    return array


def _table_values(values, path: Path, column: str, where) -> np.ndarray:
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    _check_no_nulls(values, path, column, where)
    kind = values.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = set(values.value_lengths().to_pylist()) if not pa.types.is_fixed_size_list(kind) else {kind.list_size}
        if len(lengths) > 1:
            _fail(f"{path}: column '{column}' holds lists of different lengths {sorted(lengths)[:5]}", where)
        return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), -1)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return np.asarray(values.to_pylist(), dtype=str)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        _fail(f"{path}: column '{column}' has type {kind}; use numbers, lists of numbers or image bytes", where)
    return values.to_numpy(zero_copy_only=False)


def _check_no_nulls(values, path: Path, column: str, where) -> None:
    """A null value or list, or a null inside a list, named by its row: a hole cannot be trained on."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if values.null_count:
        row = pc.index(values.is_null(), True).as_py()
        _fail(f"{path}: column '{column}' is null (missing) at row {row}; clean or drop that row", where)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        inner = values.flatten()
        if inner.null_count:
            position = pc.index(inner.is_null(), True).as_py()
            row = pc.list_parent_indices(values)[position].as_py()
            _fail(f"{path}: column '{column}' holds a null (missing) value in row {row}; clean or drop that row",
                  where)


def _fail(message: str, where: Location | None) -> None:
    raise SpecError(Problem(message, where, "DATA_ERROR"))
