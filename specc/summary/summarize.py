"""`specc.summary`: a model at a glance. One row per spec item (output shape, parameters, FLOPs),
then totals and a torchsummary-style memory estimate.

The work is split the way torchinfo splits it: specc/summary_spec.py and specc/summary_module.py
collect per-item records (from a spec, from any nn.Module), this module nests, collapses and totals
them, and specc/summary_render.py formats them. FLOPs are counted by torch's FlopCounterMode, which is exact
for matmuls, convolutions and attention whatever the rank of the input (torchinfo's mult-adds are
estimated from parameter counts and go wrong for sequence inputs). It counts 2 FLOPs per
multiply-add and nothing for element-wise ops, so activations, norms and adds show 0.

    result = specc.summary("specs/mnist_net.yaml")   # or any nn.Module, with input_size=
    print(result)                                     # the table
    result.total_params, result.flops                 # the figures
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from specc.summary.layout import chosen_columns
from specc.summary.rows import FIGURES, MEMORY_UNITS, LayerRow, ModelSummary

if TYPE_CHECKING:
    from specc.lang.spec import Spec

def summary(model: str | Path | dict | "Spec" | nn.Module, *, batch_size: int = 1, depth: int | None = None,
            expand: bool = False, device: str | torch.device = "meta",
            input_shapes: dict[str, Sequence[int]] | Sequence[int] | None = None,
            input_size: Any = None, input_data: Any = None, dtypes: list[torch.dtype] | None = None,
            backward: bool = False, columns: Sequence[str] = (), units: str = "MiB", **variables: Any) -> ModelSummary:
    """Summarize a spec (per spec item) or any `nn.Module` (per submodule call, via torchinfo).

    Args:
        model: a spec (path, YAML text, dict or `Spec`) or an `nn.Module`.
        batch_size: batch size of the example input for a spec (shapes and FLOPs include it).
        depth: show rows down to this nesting depth (0: top-level items only); None shows all.
        expand: show every repetition of a `repeat:` item instead of one row marked ×N.
        device: where a spec is built; "meta" allocates nothing. A module runs where it is.
        input_shapes: a spec's input shapes without the batch dim, by input name, or one shape
            when the spec has a single input.
        input_size: for a module: its input shape(s) with the batch dim, as torchinfo takes them.
        input_data: for a module: example input tensor(s), instead of `input_size`.
        dtypes: for a module: the dtypes of the `input_size` inputs (default float32).
        backward: render the backward FLOPs estimate too.
        units: of the memory lines: "MiB" (2**20 bytes, as torchsummary) or "MB" (10**6, as torchinfo).
        columns: optional columns to add to the table: "input_shape", "kernel_size",
            "params_percent" (or "all").
        **variables: overrides of the spec's vars (`width=128`).

    Returns:
        A `ModelSummary`; `print()` it for the table.

    Raises:
        SpecError: the spec does not compile (located problems).
        ValueError: a module without `input_size` / `input_data`, a misnamed input shape, an unknown column.
    """
    shown_columns = chosen_columns(columns)
    if units not in MEMORY_UNITS:
        raise ValueError(f"units {units}: choose MiB (2**20 bytes) or MB (10**6 bytes)")
    if isinstance(model, nn.Module):
        from specc.summary.module_rows import collect_module

        collected = collect_module(model, input_size, input_data, dtypes)
    else:
        from specc.summary.spec_rows import collect_spec

        collected = collect_spec(model, batch_size, device, input_shapes, variables)
    root = collected.root
    _aggregate(root)
    top_rows = root.children if collected.rows_under_root else [root]
    if not expand:
        top_rows = [_collapse_repeats(row) for row in top_rows]
    total, trainable, param_bytes, gradient_bytes = _unique_parameters(collected.module)
    input_bytes = sum(torch.Size(info.shape).numel() * getattr(torch, info.dtype).itemsize for info in collected.inputs)
    return ModelSummary(root.name, _flatten(top_rows, depth), collected.inputs, total, trainable, collected.flops,
                        input_bytes, collected.saved_bytes, param_bytes, gradient_bytes, collected.batch_size,
                        collected.device, backward, shown_columns, units)


def parse_input_shapes(texts: list[str] | None) -> dict[str, list[int]] | list[int] | None:
    """`--input-shape` values: `["x=3,64,64"]` -> `{"x": [3, 64, 64]}`; `["3,64,64"]` -> `[3, 64, 64]`
    (the spec's only input); none -> None.

    Raises:
        ValueError: sizes that are not integers, or an unnamed shape next to others.
    """
    shapes: dict[str | None, list[int]] = {}
    for text in texts or []:
        name, _, sizes = text.rpartition("=")
        try:
            shapes[name.strip() or None] = [int(size) for size in sizes.strip("[]() ").split(",") if size.strip()]
        except ValueError:
            raise ValueError(f"--input-shape {text}: sizes must be integers, like x=3,64,64") from None
    if None in shapes and len(shapes) > 1:
        raise ValueError("--input-shape: name every input (x=3,64,64) when giving several")
    return shapes.get(None) if None in shapes else (shapes or None)


# ----- shared by specs and modules ------------------------------------------------------------------
def _unique_parameters(module: nn.Module) -> tuple[int, int, int, int]:
    """Total and trainable parameter counts, their bytes and the trainable ones' (their gradients');
    `parameters()` yields a tied weight once."""
    parameters = list(module.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return (total, trainable, sum(p.numel() * p.element_size() for p in parameters),
            sum(p.numel() * p.element_size() for p in parameters if p.requires_grad))


def _aggregate(row: LayerRow) -> None:
    """A container's figures become its own (a merge's) plus everything inside it."""
    for child in row.children:
        _aggregate(child)
        for name in FIGURES:
            setattr(row, name, getattr(row, name) + getattr(child, name))


def _collapse_repeats(row: LayerRow) -> LayerRow:
    """A `repeat:` whose repetitions are identical becomes one row ×N with summed figures."""
    row.children = [_collapse_repeats(child) for child in row.children]
    if row.kind != "repeat" or not row.children:
        return row
    first = _signature(row.children[0])
    if any(_signature(child) != first for child in row.children[1:]):
        return row  # the repetitions differ (sizes depending on $i): show each one
    merged = _sum_rows(row.children, row.children[0].path + ".", row.path + ".*.")
    merged.path, merged.name = row.path, row.name
    return merged


def _signature(row: LayerRow) -> tuple:
    return (row.kind, row.type, str(row.shape), row.params + row.shared_params, row.flops,
            tuple(_signature(child) for child in row.children))


def _sum_rows(rows: list[LayerRow], first_prefix: str, merged_prefix: str) -> LayerRow:
    """Add up rows position by position; paths become patterns (`h.*.attention`) matching every repetition."""
    first = rows[0]
    path = first.path
    # a flat structure's row (`layer1.0 (residual, flat)`) sits at the repetition's own path
    for prefix, merged in ((first_prefix, merged_prefix), (first_prefix[:-1] + " (", merged_prefix[:-1] + " (")):
        if first.path.startswith(prefix):
            path = merged + first.path.removeprefix(prefix)
            break
    merged = LayerRow(path, first.name, first.type, first.kind, shape=first.shape, count=sum(row.count for row in rows),
                      input_shape=first.input_shape, kernel_size=first.kernel_size, args=first.args)
    for name in FIGURES:
        setattr(merged, name, sum(getattr(row, name) for row in rows))
    merged.children = [_sum_rows(list(group), first_prefix, merged_prefix)
                       for group in zip(*(row.children for row in rows))]
    return merged


def _flatten(rows: list[LayerRow], max_depth: int | None, depth: int = 0) -> list[LayerRow]:
    shown = []
    for row in rows:
        row.depth = depth
        shown.append(row)
        if max_depth is None or depth < max_depth:
            shown.extend(_flatten(row.children, max_depth, depth + 1))
    return shown


