"""The records a summary is made of: one `LayerRow` per spec item or submodule call, the
`ModelSummary` that holds them with the totals, and the helpers both collectors share."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from specc.summary import render as rendering
from specc.summary.layout import DEFAULT_COLUMNS

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

MEMORY_UNITS = {"MiB": 1024 ** 2, "MB": 1000 ** 2}  # torchsummary's "MB" is a MiB; torchinfo's is 10**6 bytes
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
    input_shape: list | None = None   # the first input's shape (a list of shapes for several inputs)
    kernel_size: list | None = None   # a convolution's or pool's kernel_size, as a list
    params: int = 0               # parameters counted here: each parameter once, at its first use
    shared_params: int = 0        # parameters used here but counted at an earlier row (tie:, share:)
    trainable_params: int = 0     # the trainable part of `params`
    flops: int = 0                # forward FLOPs for the whole batch
    output_bytes: int = 0         # outputs of the items inside, for the forward/backward memory estimate
    count: int = 1                # how many repetitions this row stands for
    unused: bool = False          # its output reaches no model output (the compiler warns: UNUSED_ITEM)
    args: dict[str, Any] = field(default_factory=dict, repr=False)  # a layer's constructor / a function's call kwargs
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
    activation_bytes: int         # what autograd saves for the backward pass (SavedForBackward)
    param_bytes: int
    gradient_bytes: int           # the trainable parameters' gradients
    batch_size: int | None
    device: str
    show_backward: bool = False   # the table adds the backward estimate (json/csv always carry it)
    columns: tuple[str, ...] = DEFAULT_COLUMNS  # the table's columns (summary.layout.COLUMNS keys)
    memory_unit: str = "MiB"      # of the memory lines: MiB (2**20 bytes) or MB (10**6)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def backward_flops(self) -> int:
        """The usual estimate: a backward pass costs about twice the forward."""
        return 2 * self.flops

    def memory_bytes(self) -> dict[str, int]:
        """The memory of a training step, in bytes: inputs, what autograd saves for backward, the
        parameters and their gradients (trainable ones only), and the sum."""
        sizes = {"input": self.input_bytes, "forward_backward": self.activation_bytes, "params": self.param_bytes,
                 "gradients": self.gradient_bytes}
        sizes["total"] = sum(sizes.values())
        return sizes

    def memory_mb(self) -> dict[str, float]:
        """`memory_bytes()` in MiB (2**20 bytes, the "MB" of torchsummary)."""
        return self.memory_in("MiB")

    def memory_in(self, unit: str) -> dict[str, float]:
        """`memory_bytes()` in "MiB" (2**20 bytes) or "MB" (10**6, torchinfo's)."""
        return {key: value / MEMORY_UNITS[unit] for key, value in self.memory_bytes().items()}

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
            "memory_bytes": self.memory_bytes(),
        }

    def render(self, output_format: str = "table", width: int | None = None) -> str:
        """The summary as text: "table" (rich, plain characters), "markdown", "json" or "csv"."""
        return rendering.render(self, output_format, width)

    def __str__(self) -> str:
        return self.render("table")

    def __repr__(self) -> str:
        """The table, so a notebook or REPL echoing the result shows it rather than the dataclass fields."""
        return self.render("table")

    def _repr_html_(self) -> str:
        return rendering.html(self)


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
    saved_bytes: int = 0          # what autograd saved for backward (SavedForBackward)


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


def kernel_size(layer: nn.Module) -> list | None:
    """`kernel_size` of a convolution or pooling layer as a list (`2` -> `[2, 2]` for MaxPool2d)."""
    size = getattr(layer, "kernel_size", None)
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        return list(size)
    name = type(layer).__name__
    dims = int(name[-2]) if name[-1:] == "d" and name[-2:-1].isdigit() else 1
    return [size] * dims


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


class SavedForBackward:
    """Bytes autograd saves for the backward pass, counted with `saved_tensors_hooks` while the model
    runs: every saved tensor's storage once (a view and its base, or a tensor saved by two ops, are
    one storage), leaving out the parameters and buffers (the Params line) and the inputs (the
    Input line). On the meta device the storages have sizes but no memory, so nothing is allocated.

        with SavedForBackward(module, inputs) as saved:
            ...run the forward...
        saved.bytes
    """

    def __init__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...] = ()):
        self._excluded = {_storage_key(tensor) for tensor in (*module.parameters(), *module.buffers(), *inputs)}
        self._sizes: dict[int, int] = {}
        self._kept: list[torch.Tensor] = []  # keeps each storage alive, so no other can take its key
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def exclude(self, tensor: torch.Tensor) -> None:
        """Leave `tensor`'s storage out of the count (an input made after the hooks were set)."""
        self._excluded.add(_storage_key(tensor))
        self._kept.append(tensor)   # alive to the end: a freed input's address would exclude a later saved tensor

    def add(self, tensor: torch.Tensor) -> None:
        """Count `tensor` as saved (summary/saved_rules.py, which knows what autograd would save)."""
        self._pack(tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded and key not in self._sizes:
            self._sizes[key] = tensor.untyped_storage().nbytes()
            self._kept.append(tensor)
        return tensor

    def __enter__(self) -> "SavedForBackward":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._hooks.__exit__(*exc_info)
        self._kept.clear()


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata  # the StorageImpl's address: shared by every view of it


@contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """Run in training mode (dropout on: what a training step saves); restore each module's mode after."""
    modes = {module: module.training for module in model.modules()}
    model.train()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


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
