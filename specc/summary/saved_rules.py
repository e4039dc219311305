"""What autograd saves for backward, by rule, for specs made only of common layers.

`SavedForBackward` counts the saved tensors with hooks while the meta kernels run, but a meta
kernel's first use imports sympy and torch._dynamo (~1 s of every `specc summary`), which the shape
and FLOP rules (build/shape_rules.py, build/flop_rules.py) otherwise avoid. For the layers below
the saved tensors follow from torch's derivative formulas (tools/autograd/derivatives.yaml):

- Linear / Conv / ConvTranspose: the input (the weight is a parameter, counted in Params);
- ReLU, Tanh, Sigmoid, Softmax, LogSoftmax: their output; GELU, SiLU, LeakyReLU, Hardswish,
  Hardsigmoid: their input;
- Dropout (0 < p < 1): the mask, a tensor like the input; Dropout1d/2d/3d: a mask per channel
  (B, C, 1, ...); p = 0 and Identity pass the input through;
- BatchNorm in eval mode (as the summary runs it): the input, and on meta a mean and an inverse
  standard deviation per channel;
- MaxPool: the input and the int64 indices of the output; AvgPool: the input; AdaptiveAvgPool:
  the input, or nothing when it pools to a single value per channel (torch then takes a mean);
- Embedding: the indices; Flatten, PositionalEmbedding (an add) and the add/cat merges: nothing; a mul merge of two: each input
  whose partner needs a gradient;
- the norms and specc's transformer layers: summary/saved_blocks.py;
- one-input function items: relu, sigmoid, tanh, exp, sqrt, rsqrt, reciprocal, softmax, log_softmax
  their output; silu, gelu, log, sin, cos, erf, abs, softplus their input; neg, sign, floor and a
  number added, subtracted, multiplied or divided (`mul: 0.5`) nothing.

An op saves nothing when none of its inputs needs a gradient and it has no trainable parameters
(autograd does not record it), so "needs a gradient" is tracked per value. A spec with any other
item, or frozen parameters, is counted by the hooks instead; tests/test_saved_rules.py checks that
both give the same bytes for every spec and layer the rules cover.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from specc.build import layers as specc_layers
from specc.build.flop_rules import predicted_node
from specc.build.infer import run_compiled_node
from specc.build.shape_functions import empty, like
from specc.summary.saved_blocks import BLOCK_RULES

Tensor = torch.Tensor
# (layer, input, output, the input needs a gradient) -> the tensors saved, or None: no rule for this case
SavedRule = Callable[[nn.Module, Tensor, Tensor, bool], "list[Tensor] | None"]


def _input(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor]:
    return [x]  # a layer with weights: recorded whether or not its input needs a gradient


def _output_if_recorded(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor]:
    return [out] if needs_grad else []


def _input_if_recorded(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor]:
    return [x] if needs_grad else []


def _dropout_mask(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor]:
    return [like(x)] if needs_grad else []


def _batch_norm_input_and_statistics(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor]:
    # the eval-mode kernel on meta also returns (and autograd saves) a mean and an inverse std per channel
    return [x, empty((x.shape[1],), torch.float32), empty((x.shape[1],), torch.float32)]


def _channel_dropout_mask(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor] | None:
    channel_dims = {nn.Dropout1d: 3, nn.Dropout2d: 4, nn.Dropout3d: 5}[type(layer)]
    if x.dim() != channel_dims or layer.p == 0:
        return None  # without a batch dim torch drops per sample instead; p = 0 is left to the hooks
    return [empty((x.shape[0], x.shape[1], *(1,) * (x.dim() - 2)), x.dtype)] if needs_grad else []


def _adaptive_average(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor]:
    pools_to_one = all(size == 1 for size in out.shape[2:])
    return [x] if needs_grad and not pools_to_one else []


def _pool_input_and_indices(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor]:
    return [x, like(out, torch.int64)] if needs_grad else []


def _nothing(layer: nn.Module, x: Tensor, out: Tensor, needs_grad: bool) -> list[Tensor]:
    return []


SAVED_RULES: dict[type, SavedRule] = {
    nn.Linear: _input, nn.Conv1d: _input, nn.Conv2d: _input, nn.Conv3d: _input,
    nn.BatchNorm1d: _batch_norm_input_and_statistics, nn.BatchNorm2d: _batch_norm_input_and_statistics,
    nn.BatchNorm3d: _batch_norm_input_and_statistics,
    nn.ConvTranspose1d: _input, nn.ConvTranspose2d: _input, nn.ConvTranspose3d: _input,
    nn.Embedding: _input,
    nn.ReLU: _output_if_recorded, nn.Tanh: _output_if_recorded, nn.Sigmoid: _output_if_recorded,
    nn.Softmax: _output_if_recorded, nn.LogSoftmax: _output_if_recorded,
    nn.GELU: _input_if_recorded, nn.SiLU: _input_if_recorded, nn.LeakyReLU: _input_if_recorded,
    nn.Hardswish: _input_if_recorded, nn.Hardsigmoid: _input_if_recorded,
    nn.Dropout: _dropout_mask,
    nn.Dropout1d: _channel_dropout_mask, nn.Dropout2d: _channel_dropout_mask, nn.Dropout3d: _channel_dropout_mask,
    nn.MaxPool1d: _pool_input_and_indices, nn.MaxPool2d: _pool_input_and_indices,
    nn.MaxPool3d: _pool_input_and_indices,
    nn.AvgPool1d: _input_if_recorded, nn.AvgPool2d: _input_if_recorded, nn.AvgPool3d: _input_if_recorded,
    nn.AdaptiveAvgPool1d: _adaptive_average, nn.AdaptiveAvgPool2d: _adaptive_average,
    nn.AdaptiveAvgPool3d: _adaptive_average,
    nn.Flatten: _nothing, nn.Identity: _nothing,
    specc_layers.PositionalEmbedding: _nothing,     # x + weight[:T]: an add saves nothing
    **BLOCK_RULES,
}
_VIEWS = (nn.Flatten,)              # run for real: a view shares its input's storage, as autograd sees it
_PASSTHROUGH = (nn.Identity,)       # returns its input itself
_MERGES_SAVING_NOTHING = ("add", "cat", "mean", "stack")
# one-input function items: what their derivative formula keeps (derivatives.yaml); `mul: 0.5` and
# the like keep only the number
_FUNCTION_SAVES = {
    **dict.fromkeys(("relu", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "reciprocal", "softmax", "log_softmax"), "output"),
    **dict.fromkeys(("silu", "gelu", "log", "sin", "cos", "erf", "abs", "softplus"), "input"),
    **dict.fromkeys(("neg", "sign", "floor", "sub", "mul", "div"), "nothing"),
}


def run_by_rules(graph: Any, module: nn.Module, add_saved: Callable[[Tensor], None],
                 input_value: Callable[[Any], Tensor]) -> tuple[dict, dict] | None:
    """`({node: value}, {node: FLOPs})` with every saved tensor passed to `add_saved`, or None when
    an item has no rule (then nothing may be kept of this run: count with the hooks instead)."""
    if any(not parameter.requires_grad for parameter in module.parameters()):
        return None
    values, flops, needs_grad = {}, {}, {}
    for node in graph.nodes:
        if node.op == "input":
            values[node.name], flops[node.name], needs_grad[node.name] = input_value(node), 0, False
            continue
        inputs = [values[name] for name in node.inputs]
        if node.target == "mul" and (node.op == "merge" or node.op == "function" and len(node.inputs) == 2):
            counted = _run_product(node, inputs, module, [needs_grad[name] for name in node.inputs], add_saved)
        else:
            counted = _run_node(node, inputs, module, any(needs_grad[name] for name in node.inputs), add_saved)
        if counted is None:
            return None
        values[node.name], flops[node.name], needs_grad[node.name] = counted
    return values, flops


def _run_product(node: Any, inputs: list, module: nn.Module, need_grad: list[bool],
                 add_saved: Callable[[Tensor], None]) -> tuple[Tensor, int, bool] | None:
    """`a * b` saves b for a's gradient and a for b's (a squeeze-excitation gate times its input)."""
    predicted = predicted_node(node, inputs, module) if len(inputs) == 2 else None
    if predicted is None:
        return None
    for tensor, other_needs_grad in ((inputs[1], need_grad[0]), (inputs[0], need_grad[1])):
        if other_needs_grad:
            add_saved(tensor)
    return (*predicted, any(need_grad))


def _run_node(node: Any, inputs: list, module: nn.Module, inputs_need_grad: bool,
              add_saved: Callable[[Tensor], None]) -> tuple[Tensor, int, bool] | None:
    if node.target in _MERGES_SAVING_NOTHING and node.op in ("merge", "function"):   # `- add: {from: [a, b]}` too
        predicted = predicted_node(node, inputs, module)
        return None if predicted is None else (*predicted, inputs_need_grad)
    if node.op == "function" and node.target in _FUNCTION_SAVES and len(inputs) == 1:
        predicted = predicted_node(node, inputs, module)
        if predicted is None:
            return None
        saves = _FUNCTION_SAVES[node.target]
        if inputs_need_grad and saves != "nothing":
            add_saved(predicted[0] if saves == "output" else inputs[0])
        return (*predicted, inputs_need_grad)
    if node.op != "module" or len(inputs) != 1:
        return None
    layer = module.get_submodule(node.shared_with or node.name)
    rule = SAVED_RULES.get(type(layer))
    if rule is None or not _plain(layer):
        return None
    if isinstance(layer, _VIEWS):
        output, layer_flops = run_compiled_node(node, inputs, module), 0
    elif isinstance(layer, _PASSTHROUGH) or (isinstance(layer, nn.Dropout) and layer.p == 0):
        return inputs[0], 0, inputs_need_grad       # dropout(p=0) returns its input itself
    else:
        predicted = predicted_node(node, inputs, module)
        if predicted is None:
            return None
        output, layer_flops = predicted
    saved = rule(layer, inputs[0], output, inputs_need_grad)
    if saved is None:
        return None
    for tensor in saved:
        add_saved(tensor)
    return output, layer_flops, inputs_need_grad or any(True for _ in layer.parameters())


def _plain(layer: nn.Module) -> bool:
    """The cases the rules describe: no in-place variants, dropout below 1, max pooling without
    returned indices, batch norm in eval mode."""
    if getattr(layer, "inplace", False):
        return False
    if isinstance(layer, nn.modules.dropout._DropoutNd):
        return layer.p < 1
    if isinstance(layer, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return not layer.return_indices
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return not layer.training
    return True
