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

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

    from specc.spec import Spec

MEGABYTE = 1024 ** 2  # torchsummary's "MB", so the memory lines compare with its output
FIGURES = ("params", "shared_params", "trainable_params", "flops", "output_bytes")


@dataclass
class LayerRow:
    """One row: a spec item, or a container of items (block, parallel, branch, residual, repeat).

    A container's figures include everything inside it. A row whose `count` is above 1 stands for
    that many identical repetitions (a collapsed `repeat:`) and its figures are their sum.
    """

    path: str                     # qualified name; for a layer its module path (state_dict prefix)
    name: str                     # what the Layer column shows: the item's name, or its index when unnamed
    type: str                     # layer class, function, block name, or the container's kind
    kind: str                     # layer | function | block | parallel | branch | residual | shortcut |
    #                               sequential | repeat | module | model
    depth: int = 0
    shape: list | None = None     # output shape with the batch dim; a list of shapes for tuple outputs
    params: int = 0               # parameters counted here: each parameter once, at its first use
    shared_params: int = 0        # parameters used here but counted at an earlier row (tie:, share:)
    trainable_params: int = 0     # the trainable part of `params`
    flops: int = 0                # forward FLOPs for the whole batch
    output_bytes: int = 0         # outputs of the items inside, for the forward/backward memory estimate
    count: int = 1                # how many repetitions this row stands for
    children: list["LayerRow"] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The row's stable machine-readable keys (documented in docs/summary.md)."""
        return {"name": self.name, "path": self.path, "type": self.type, "kind": self.kind,
                "depth": self.depth, "count": self.count, "output_shape": self.shape,
                "params": self.params, "shared_params": self.shared_params,
                "trainable_params": self.trainable_params, "flops": self.flops}


@dataclass
class InputInfo:
    """One model input as it was fed: name, shape with the batch dim, dtype."""

    name: str
    shape: list[int]
    dtype: str


@dataclass
class ModelSummary:
    """What `summary` found. `str(result)` (or `print(result)`) renders the table."""

    model: str                    # the spec's name or the module's class
    rows: list[LayerRow]          # the rows shown, in order (after --depth and repeat collapsing)
    inputs: list[InputInfo]
    total_params: int             # unique parameters: tied and shared weights counted once
    trainable_params: int
    flops: int                    # forward FLOPs for the whole batch, counted by FlopCounterMode
    input_bytes: int
    activation_bytes: int         # every item's output, twice (the gradients), as torchsummary
    param_bytes: int
    batch_size: int | None
    device: str
    show_backward: bool = False   # the table adds the backward estimate (json/csv always carry it)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def backward_flops(self) -> int:
        """The usual estimate: a backward pass costs about twice the forward."""
        return 2 * self.flops

    def memory_mb(self) -> dict[str, float]:
        """The memory estimate in MB (2**20 bytes), torchsummary's four lines."""
        sizes = {"input": self.input_bytes, "forward_backward": self.activation_bytes, "params": self.param_bytes}
        sizes["total"] = sum(sizes.values())
        return {key: value / MEGABYTE for key, value in sizes.items()}

    def to_dict(self) -> dict[str, Any]:
        """Every figure under stable keys (the `--format json` output; see docs/summary.md)."""
        return {
            "model": self.model, "batch_size": self.batch_size, "device": self.device,
            "inputs": [vars(info) for info in self.inputs],
            "rows": [row.to_dict() for row in self.rows],
            "totals": {"params": self.total_params, "trainable_params": self.trainable_params,
                       "non_trainable_params": self.non_trainable_params, "flops": self.flops,
                       "backward_flops": self.backward_flops},
            "memory_mb": {key: round(value, 4) for key, value in self.memory_mb().items()},
        }

    def render(self, output_format: str = "table", width: int | None = None) -> str:
        """The summary as text: "table" (rich, plain characters), "markdown", "json" or "csv"."""
        from specc.summary_render import render

        return render(self, output_format, width)

    def __str__(self) -> str:
        return self.render("table")


def summary(model: str | Path | dict | "Spec" | nn.Module, *, batch_size: int = 1, depth: int | None = None,
            expand: bool = False, device: str | torch.device = "meta",
            input_shapes: dict[str, Sequence[int]] | Sequence[int] | None = None,
            input_size: Any = None, input_data: Any = None, dtypes: list[torch.dtype] | None = None,
            backward: bool = False, **variables: Any) -> ModelSummary:
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
        **variables: overrides of the spec's vars (`width=128`).

    Returns:
        A `ModelSummary`; `print()` it for the table.

    Raises:
        SpecError: the spec does not compile (located problems).
        ValueError: a module without `input_size` / `input_data`, or a misnamed input shape.
    """
    if isinstance(model, nn.Module):
        from specc.summary_module import collect_module

        collected = collect_module(model, input_size, input_data, dtypes)
    else:
        from specc.summary_spec import collect_spec

        collected = collect_spec(model, batch_size, device, input_shapes, variables)
    root = collected.root
    _aggregate(root)
    top_rows = root.children if collected.rows_under_root else [root]
    if not expand:
        top_rows = [_collapse_repeats(row) for row in top_rows]
    total, trainable, param_bytes = _unique_parameters(collected.module)
    input_bytes = sum(torch.Size(info.shape).numel() * getattr(torch, info.dtype).itemsize for info in collected.inputs)
    return ModelSummary(root.name, _flatten(top_rows, depth), collected.inputs, total, trainable, collected.flops,
                        input_bytes, 2 * root.output_bytes, param_bytes, collected.batch_size, collected.device, backward)


@dataclass
class Collected:
    """What a collector hands to `summary`: the row tree (own figures only) and the run's facts."""

    root: LayerRow                # the model's row; its children are the top-level rows
    module: nn.Module             # whose parameters make the totals
    inputs: list[InputInfo]
    flops: int                    # FlopCounterMode's total for the whole forward
    device: str
    batch_size: int | None        # None when the caller's input sizes carry the batch dim
    rows_under_root: bool = True  # a spec shows its items; a module shows itself as the first row


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
def count_parameters(row: LayerRow, parameters: Any, counted: set[int]) -> None:
    """Add `parameters` to the row: new ones to `params`, ones counted at an earlier row to `shared_params`."""
    for parameter in parameters:
        if id(parameter) in counted:
            row.shared_params += parameter.numel()
            continue
        counted.add(id(parameter))
        row.params += parameter.numel()
        if parameter.requires_grad:
            row.trainable_params += parameter.numel()


def _unique_parameters(module: nn.Module) -> tuple[int, int, int]:
    """Total and trainable parameter counts and their bytes; `parameters()` yields a tied weight once."""
    parameters = list(module.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return total, trainable, sum(p.numel() * p.element_size() for p in parameters)


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
    path = merged_prefix + first.path.removeprefix(first_prefix) if first.path.startswith(first_prefix) else first.path
    merged = LayerRow(path, first.name, first.type, first.kind, shape=first.shape, count=sum(row.count for row in rows))
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


def flop_counter() -> "FlopCounterMode":
    """torch's FlopCounterMode, also counting attention on CPU.

    torch 2.13 has no FLOP formula for the flash-attention kernel `F.scaled_dot_product_attention`
    runs on CPU, so attention would count 0 there (pytorch/pytorch#195460); it gets the formula of
    the other attention kernels (QK^T and AV: 4·B·h·T_q·T_k·d, causal or not).
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: cpu_attention_flops} if cpu_attention else None)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (dropout off, batch-norm statistics untouched); restore each module's mode after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training

