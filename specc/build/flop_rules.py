"""One compiled node's output and forward FLOPs on meta tensors, exactly as torch's FlopCounterMode
counts them, from the shape rules (shape_rules.py) instead of running the kernels.

Under FlopCounterMode every meta op goes through torch's Python dispatch machinery, whose first use
imports torch._dynamo (~1 s of every `specc summary`/`specc draw -o x.html`). FlopCounterMode only
counts matrix products, convolutions and attention, so a layer's count is a formula of its input
shapes: `2·m·k·n` per matrix product, `2·B·c_out·c_in/groups·prod(kernel)·prod(spatial)` per
convolution, `2·B·h·T·S·(d + d_v)` per attention. Nodes without a rule run under FlopCounterMode.
tests/test_flop_rules.py compares every formula with FlopCounterMode.
"""
from __future__ import annotations

from math import prod
from typing import Any, Callable

import torch
from torch import nn

from specc.build import layers as specc_layers
from specc.build import moe_layers
from specc.build.graph import Node
from specc.build.infer import call_inputs, run_compiled_node
from specc.build.registry import passes_first_output
from specc.build.shape_functions import broadcast, function_output, merge_output
from specc.build.shape_rules import MODULE_RULES, module_output

Tensor = torch.Tensor


def run_counted(node: Node, inputs: list, module: nn.Module, counter: Callable[[], Any]) -> tuple[Any, int]:
    """`(output, forward FLOPs)` of a non-input node of a compiled spec.

    Args:
        node: the node; `inputs`: its input values.
        module: the compiled module whose submodules the nodes name.
        counter: makes a FlopCounterMode, entered only for a node without a rule.
    """
    predicted = predicted_node(node, inputs, module)
    if predicted is not None:
        return predicted
    with counter() as flop_counter:
        value = run_compiled_node(node, inputs, module)
    return value, flop_counter.get_total_flops()


def run_measured(node: Node, inputs: list, module: nn.Module, counter: Callable[[], Any]) -> tuple[Any, int]:
    """`(output, forward FLOPs)` like `run_counted`, but always running the node's kernels, so hooks
    around the run (summary's saved_tensors_hooks) see what autograd saves; the formula, where there
    is one, replaces only the FlopCounterMode."""
    predicted = predicted_node(node, inputs, module)
    if predicted is None:
        return run_counted(node, inputs, module, counter)
    return run_compiled_node(node, inputs, module), predicted[1]


def predicted_node(node: Node, inputs: list, module: nn.Module) -> tuple[Any, int] | None:
    """`(output, FLOPs)` from the rules, or None where a rule is missing (or the inputs are not meta)."""
    if not all(isinstance(value, Tensor) and value.is_meta for value in _tensors(inputs)):
        return None
    if node.op == "merge":
        output = merge_output(node.target, inputs, node.args)
        return None if output is None else (output, 0)
    if node.op == "function":
        output = function_output(node.target, inputs, node.args)
        flops = matmul_flops(*inputs) if node.target == "matmul" else 0
        return None if output is None else (output, flops)
    if node.op != "module":
        return None
    layer = module.get_submodule(node.shared_with or node.name)
    args, kwargs = call_inputs(node, inputs)
    output = module_output(layer, args, kwargs)
    flops = module_flops(layer, args) if output is not None else None
    if flops is None:
        return None
    return (output[0] if passes_first_output(node) else output), flops


def _tensors(values: list) -> list:
    return [item for value in values for item in (value if isinstance(value, (tuple, list)) else [value])]


def matmul_flops(left: Tensor, right: Tensor) -> int:
    """FlopCounterMode's count for `left @ right` with both at least 2-D: 2·batch·n·k·m."""
    batch = broadcast(tuple(left.shape[:-2]), tuple(right.shape[:-2]))
    return 2 * prod(batch or ()) * left.shape[-2] * left.shape[-1] * right.shape[-1]


def attention_flops(batch_heads: int, queries: int, keys: int, head_dim: int, value_dim: int) -> int:
    """torch's sdpa_flop_count: Q·Kᵀ and weights·V, causal or not."""
    return 2 * batch_heads * queries * keys * (head_dim + value_dim)


def _linear(layer: nn.Linear, x: Tensor) -> int | None:
    return 2 * prod(x.shape[:-1]) * layer.in_features * layer.out_features if x.dim() >= 2 else None  # 1-D: mv, uncounted


def _conv(layer: nn.modules.conv._ConvNd, x: Tensor) -> int | None:
    output = module_output(layer, (x,), {})
    if output is None:
        return None
    spatial = x.shape[2:] if layer.transposed else output.shape[2:]  # torch counts a transpose over its input
    return 2 * x.shape[0] * prod(spatial) * prod(layer.weight.shape)


def _multihead_attention(layer: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> int | None:
    if layer.bias_k is not None or layer.add_zero_attn or query.dim() != 3:
        return None
    batch = query.shape[0] if layer.batch_first else query.shape[1]
    length, source = query.numel() // batch // query.shape[-1], key.numel() // batch // key.shape[-1]
    width = layer.embed_dim
    projections = 2 * batch * width * (length * width + source * layer.kdim + source * layer.vdim + length * width)
    return projections + attention_flops(batch * layer.num_heads, length, source, layer.head_dim, layer.head_dim)


def _encoder_layer(layer: nn.TransformerEncoderLayer, x: Tensor) -> int | None:
    attention = _multihead_attention(layer.self_attn, x, x, x)
    if attention is None or not isinstance(layer.linear1, nn.Linear):
        return None
    return attention + _linear(layer.linear1, x) + _linear(layer.linear2, x)


def _causal_self_attention(layer: specc_layers.CausalSelfAttention, x: Tensor) -> int | None:
    if x.dim() != 3:
        return None
    batch, length, _ = x.shape
    projections = [*layer.input_projections(), layer.output_projection]
    return (sum(2 * batch * length * linear.in_features * linear.out_features for linear in projections)
            + attention_flops(batch * layer.n_heads, length, length, layer.head_dim, layer.head_dim))


def _two_linears(first: str, *others: str) -> Callable[..., int | None]:
    """Blocks of Linear layers, each applied once to a tensor with the input's leading dims."""
    def flops(layer: nn.Module, x: Tensor) -> int | None:
        if x.dim() < 2:
            return None
        rows = prod(x.shape[:-1])
        return sum(2 * rows * getattr(layer, name).in_features * getattr(layer, name).out_features
                   for name in (first, *others))
    return flops


def _attention(layer: specc_layers.Attention, query: Tensor, key: Tensor, value: Tensor) -> int:
    heads = layer.heads
    return attention_flops(query.shape[0] * heads, query.shape[1], key.shape[1], query.shape[-1] // heads,
                           value.shape[-1] // layer.kv_heads)


def _mixture_of_experts(layer: moe_layers.MoE, x: Tensor) -> int | None:
    """The router on every token, then top_k experts per token: top_k / n_experts of the dense figure."""
    if x.dim() < 1:
        return None
    tokens = prod(x.shape[:-1])
    return _linear(layer.gate, x.reshape(tokens, -1)) + tokens * layer.top_k * layer.expert_flops_per_token()


_COUNTED: dict[type, Callable[..., int | None]] = {
    nn.Linear: _linear,
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _conv),
    nn.MultiheadAttention: _multihead_attention,
    nn.TransformerEncoderLayer: _encoder_layer,
    specc_layers.CausalSelfAttention: _causal_self_attention,
    specc_layers.MLP: _two_linears("c_fc", "c_proj"),
    specc_layers.SwiGLU: _two_linears("gate", "down", "up"),
    specc_layers.Attention: _attention,
    moe_layers.MoE: _mixture_of_experts,
}
# recurrent layers run fused kernels whose counts are torch's business: always measured
_MEASURED = {nn.LSTM, nn.GRU, nn.RNN}


def module_flops(layer: nn.Module, args: tuple) -> int | None:
    """FlopCounterMode's count for `layer(*args)`; 0 for ruled layers without matrix products;
    None: no formula (run it under FlopCounterMode)."""
    kind = type(layer)
    if kind in _MEASURED or kind not in MODULE_RULES:
        return None
    formula = _COUNTED.get(kind)
    return formula(layer, *args) if formula else 0
