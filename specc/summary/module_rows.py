"""Summary rows for any `nn.Module` (one the user wrote by hand, or loaded from a library).

torchinfo does what it does well here: it feeds the example input, walks every submodule call
(nested, reused modules marked recursive) and records output shapes and sizes. FLOPs come from
FlopCounterMode instead of torchinfo's mult-adds: hooks read the counter before and after each
module call, so a call gets exactly the FLOPs of the ops it ran.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

from specc.summary.rows import (Collected, InputInfo, LayerRow, SavedForBackward, count_parameters, eval_mode,
                                flop_counter, kernel_size)


def collect_module(model: nn.Module, input_size: Any, input_data: Any,
                   dtypes: list[torch.dtype] | None) -> Collected:
    """Run `model` once under torchinfo and FlopCounterMode; one row per submodule call.

    Raises:
        ValueError: neither `input_size` nor `input_data` was given.
    """
    import torchinfo

    if input_size is None and input_data is None:
        raise ValueError("summarizing an nn.Module needs input_size=(batch, ...) or input_data=tensor(s)")
    # torchinfo moves the model to `device`: name the device it is on, so the user's model stays put
    device = next(model.parameters(), torch.empty(0)).device
    call_flops: dict[int, list[int]] = defaultdict(list)
    saved = SavedForBackward(model)
    # torchinfo makes the inputs from input_size: they are the Input line, not saved activations
    excluding_inputs = model.register_forward_pre_hook(lambda module, args: _exclude(saved, args))
    with eval_mode(model), flop_counter() as counter, _flop_hooks(model, counter, call_flops), saved:
        statistics = torchinfo.summary(model, input_size=input_size, input_data=input_data, dtypes=dtypes,
                                       device=device, depth=1_000, verbose=0, mode="eval")
    excluding_inputs.remove()
    root = _module_tree(statistics.summary_list, call_flops)
    inputs = _input_infos(input_size, input_data, dtypes)
    return Collected(root, model, inputs, counter.get_total_flops(), str(device),
                     batch_size=None, rows_under_root=False, saved_bytes=saved.bytes)


@contextmanager
def _flop_hooks(model: nn.Module, counter: "FlopCounterMode", call_flops: dict[int, list[int]]) -> Iterator[None]:
    """Record the FLOPs of each module call (its submodules' included), in call order; keep autograd on."""
    started: list[int] = []

    def before(module: nn.Module, args: Any) -> None:
        started.append(counter.get_total_flops())

    def after(module: nn.Module, args: Any, output: Any) -> None:
        call_flops[id(module)].append(counter.get_total_flops() - started.pop())

    def enable_grad(module: nn.Module, args: Any) -> None:
        # torchinfo runs the model under no_grad, which sends eval-mode MultiheadAttention and
        # TransformerEncoderLayer down fused fast paths that FlopCounterMode cannot count. The
        # no_grad context restores the grad mode when torchinfo's call ends.
        torch.set_grad_enabled(True)

    handles = [model.register_forward_pre_hook(enable_grad)]
    for module in model.modules():
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _module_tree(layers: list, call_flops: dict[int, list[int]]) -> LayerRow:
    """torchinfo's records (one per call, depth-first, the model first) as nested rows."""
    calls: Counter = Counter()
    counted: set[int] = set()
    inclusive: dict[int, int] = {}
    open_rows: list[LayerRow] = []  # the current row at each depth
    called = {id(layer.module) for layer in layers if layer.executed}
    for layer in layers:
        call = calls[layer.layer_id]  # which call of this module the record is
        calls[layer.layer_id] += 1
        del open_rows[layer.depth:]
        parent = open_rows[-1] if open_rows else None
        path = "" if parent is None else f"{parent.path}.{layer.var_name}".lstrip(".")
        row = LayerRow(path, layer.var_name, layer.class_name,
                       "model" if parent is None else "layer" if layer.is_leaf_layer else "module",
                       shape=list(layer.output_size) if layer.executed else None,
                       input_shape=list(layer.input_size) if layer.executed and layer.input_size else None,
                       kernel_size=kernel_size(layer.module),
                       output_bytes=layer.output_bytes if layer.is_leaf_layer else 0)
        count_parameters(row, _row_parameters(layer.module, called), counted)
        made = call_flops.get(layer.layer_id, [])
        inclusive[id(row)] = made[call] if call < len(made) else 0
        if parent is not None:
            parent.children.append(row)
        open_rows.append(row)
    root = open_rows[0]
    _own_flops(root, inclusive)
    return root


def _row_parameters(module: nn.Module, called: set[int]) -> list[nn.Parameter]:
    """The module's own parameters and those of its submodules that no call reached (they have no
    row of their own): MultiheadAttention uses `out_proj.weight` without calling `out_proj`."""
    parameters = list(module.parameters(recurse=False))
    for child in module.children():
        if id(child) not in called:
            parameters += _row_parameters(child, called)
    return parameters


def _own_flops(row: LayerRow, inclusive: dict[int, int]) -> None:
    """A call's FLOPs minus its submodules' calls: what the module's own forward code ran."""
    row.flops = inclusive[id(row)] - sum(inclusive[id(child)] for child in row.children)
    for child in row.children:
        _own_flops(child, inclusive)


def _input_infos(input_size: Any, input_data: Any, dtypes: list[torch.dtype] | None) -> list[InputInfo]:
    if input_data is not None:
        tensors = [input_data] if isinstance(input_data, torch.Tensor) else list(_tensors(input_data))
        shapes, types = [list(t.shape) for t in tensors], [t.dtype for t in tensors]
    else:
        shapes = [list(input_size)] if all(isinstance(size, int) for size in input_size) else \
            [list(shape) for shape in input_size]
        types = list(dtypes or [torch.float32] * len(shapes))
    names = ["input"] if len(shapes) == 1 else [f"input_{index}" for index in range(len(shapes))]
    return [InputInfo(name, shape, str(dtype).removeprefix("torch."))
            for name, shape, dtype in zip(names, shapes, types)]


def _exclude(saved: SavedForBackward, args: Any) -> None:
    for tensor in _tensors(args):
        saved.exclude(tensor)


def _tensors(data: Any) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _tensors(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _tensors(value)
