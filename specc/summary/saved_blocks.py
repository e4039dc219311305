"""What autograd saves for backward inside the norms and specc's transformer layers, by rule.

The counterpart of saved_rules.py for layers whose forward is several ops. Each rule lists the
tensors the hooks in `SavedForBackward` see when the layer runs on meta, one per storage (a view
saved by two ops is one entry), as torch's derivative formulas make them:

- RMSNorm: the input and the inverse RMS per row, when the input needs a gradient; with a weight,
  also the normalized input (the product with the weight saves it for the weight's gradient);
- OffsetRMSNorm (Gemma): the normalized input; when the input needs a gradient, also the input, the
  inverse RMS per row and the scale (offset + weight);
- LayerNorm / GroupNorm: the input, a mean and an inverse standard deviation per normalized group;
- SwiGLU: the input (gate and up), gate's and up's outputs (the activation and the product; ReLU
  saves its output instead of gate's), the activation's output, and the product (down's input);
- MLP: the input, the hidden pre-activation (GELU and SiLU save their input), the activation
  (c_proj's input; ReLU saves that same tensor), and the output dropout's mask;
- CausalSelfAttention, with scaled_dot_product_attention counted as the fused kernel a real device
  runs (spec_rows._fused_attention): the input; the fused q/k/v projection while q, k or v is still
  a view of it (split layouts: each of q, k, v that the kernel reads unrotated and unrepeated);
  rotary cos and sin (of the rotated features only) and the rotated q and k; repeated k and v
  (grouped-query); the kernel's log-sum-exp and output (the output projection reads it through a
  view); the dropout's mask.

Rules answer float32 only (the log-sum-exp and norm statistics stay float32 whatever the input's
dtype); anything else returns None and the hooks count. tests/test_saved_rules.py compares.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from specc.build import layers as specc_layers
from specc.build import moe_layers
from specc.build.shape_functions import empty, like

Tensor = torch.Tensor
BlockRule = Callable[[nn.Module, Tensor, Tensor, bool], "list[Tensor] | None"]


def _float32(rule: BlockRule) -> BlockRule:
    def float32_only(layer: nn.Module, x: Tensor, out: Tensor, input_needs_grad: bool) -> list[Tensor] | None:
        return rule(layer, x, out, input_needs_grad) if x.dtype == torch.float32 else None
    return float32_only


def _statistic(x: Tensor, normalized_dims: int) -> Tensor:
    """One float32 value per normalized row, keeping the normalized dims as size 1."""
    return empty((*x.shape[:x.dim() - normalized_dims], *(1,) * normalized_dims), torch.float32)


@_float32
def _rms_norm(layer: nn.RMSNorm, x: Tensor, out: Tensor, input_needs_grad: bool) -> list[Tensor]:
    saved = [x, _statistic(x, len(layer.normalized_shape))] if input_needs_grad else []
    return saved + [like(x)] if layer.weight is not None else saved


@_float32
def _offset_rms_norm(layer: specc_layers.OffsetRMSNorm, x: Tensor, out: Tensor, input_needs_grad: bool) -> list[Tensor]:
    """The normalized x (for the weight's gradient); with the input's gradient also x, the inverse RMS
    per row and the scale offset + weight."""
    if not input_needs_grad:
        return [like(x)]
    return [x, _statistic(x, 1), like(x), empty(layer.weight.shape, torch.float32)]


@_float32
def _layer_norm(layer: nn.LayerNorm, x: Tensor, out: Tensor, input_needs_grad: bool) -> list[Tensor]:
    if not (input_needs_grad or layer.elementwise_affine):
        return []
    dims = len(layer.normalized_shape)
    return [x, _statistic(x, dims), _statistic(x, dims)]


@_float32
def _group_norm(layer: nn.GroupNorm, x: Tensor, out: Tensor, input_needs_grad: bool) -> list[Tensor]:
    if not (input_needs_grad or layer.affine):
        return []
    per_group = (x.shape[0], layer.num_groups)
    return [x, empty(per_group, torch.float32), empty(per_group, torch.float32)]


def _hidden(x: Tensor, width: int) -> Tensor:
    return empty((*x.shape[:-1], width), x.dtype)


@_float32
def _swiglu(layer: specc_layers.SwiGLU, x: Tensor, out: Tensor, input_needs_grad: bool) -> list[Tensor]:
    width = layer.gate.out_features
    if isinstance(layer.act, nn.ReLU) and not layer.act.inplace:   # saves its output only
        return [x] + [_hidden(x, width) for _ in range(3)]   # up x, relu(gate x), their product
    if not isinstance(layer.act, _SAVES_ITS_INPUT):
        return None
    return [x] + [_hidden(x, width) for _ in range(4)]   # gate x, up x, silu(gate x), their product


_SAVES_ITS_INPUT = (nn.GELU, nn.SiLU)


@_float32
def _mlp(layer: specc_layers.MLP, x: Tensor, out: Tensor, input_needs_grad: bool) -> list[Tensor] | None:
    if not isinstance(layer.activation, (*_SAVES_ITS_INPUT, nn.ReLU)) or layer.activation.__dict__.get("inplace"):
        return None
    width = layer.c_fc.out_features
    saved = [x, _hidden(x, width)]                         # the activation (ReLU saves its output, c_proj's input)
    if isinstance(layer.activation, _SAVES_ITS_INPUT):
        saved.append(_hidden(x, width))                    # the pre-activation, saved by GELU / SiLU
    return saved + _mask_if_dropping(layer.dropout.p, out)


def _mask_if_dropping(p: float, out: Tensor) -> list[Tensor]:
    return [like(out)] if p > 0 else []


@_float32
def _causal_self_attention(layer: specc_layers.CausalSelfAttention, x: Tensor, out: Tensor,
                           input_needs_grad: bool) -> list[Tensor] | None:
    if x.dim() != 3:
        return None
    batch, length, _ = x.shape
    heads, head_dim = layer.n_heads, layer.head_dim
    per_head = (batch, heads, length, head_dim)
    grouped = layer.n_kv_heads != heads
    saved = [x] + _projections_attention_saves(layer, x, grouped)
    if layer.rope:                                         # q * cos and rotated * sin save cos and sin
        saved += [empty((length, layer.rotary_dim), x.dtype), empty((length, layer.rotary_dim), x.dtype)]
        saved += [empty(per_head, x.dtype), empty(per_head, x.dtype)] if not grouped else [empty(per_head, x.dtype)]
    if grouped:                                            # repeat_interleave copies k (rotated) and v
        saved += [empty(per_head, x.dtype), empty(per_head, x.dtype)]
    saved += [empty((batch, heads, length), torch.float32), empty(per_head, x.dtype)]   # log-sum-exp, output
    if layer.rope and layer.rotary_dim != head_dim:        # cat makes q contiguous per head, so is the output:
        saved.append(empty((batch, length, heads * head_dim), x.dtype))   # merging the heads copies it
    return saved + _mask_if_dropping(layer.resid_dropout.p, out)


def _projections_attention_saves(layer: specc_layers.CausalSelfAttention, x: Tensor, grouped: bool) -> list[Tensor]:
    """The projections' outputs that attention keeps: q (no rope), k (no rope, not repeated), v (not repeated);
    with the fused layout they are views of one tensor, saved once."""
    batch, length, _ = x.shape
    q_dim, kv_dim, _ = layer.split_sizes
    if layer.layout == "fused":
        fused = layer.c_attn.out_features
        return [] if layer.rope and grouped else [empty((batch, length, fused), x.dtype)]
    kept = [q_dim] if not layer.rope else []
    kept += [kv_dim] if not (layer.rope or grouped) else []
    kept += [kv_dim] if not grouped else []
    return [empty((batch, length, width), x.dtype) for width in kept]


def _index(*shape: int) -> Tensor:
    return empty(shape, torch.long)


@_float32
def _mixture_of_experts(layer: moe_layers.MoE, x: Tensor, out: Tensor, input_needs_grad: bool) -> list[Tensor] | None:
    """Whatever the routing, N*k (token, slot) pairs go through the experts, so the bytes are fixed;
    the per-expert pieces are counted as one tensor of all pairs each."""
    if not isinstance(layer.experts.activation_module(), _SAVES_ITS_INPUT) or not x.dim():
        return None
    tokens, k, experts = x.numel() // x.shape[-1], layer.top_k, layer.n_experts
    pairs, width, hidden = tokens * k, x.shape[-1], layer.hidden_dim
    saved = [x, empty((tokens, experts), torch.float32), _index(tokens, k)]    # router input, softmax, top-k indices
    if layer.renormalize:                                  # weights / their sum saves both
        saved += [empty((tokens, k), torch.float32), empty((tokens, 1), torch.float32)]
    if layer.training:                                     # the load-balancing loss: the one-hot shares
        saved.append(empty((k, experts), torch.float32))
    saved += [_index(pairs), empty((pairs, width), x.dtype)]                  # the gather's index, the gathered rows
    saved += [empty((pairs, hidden), x.dtype) for _ in range(4)]             # gate, up, activation, product
    saved += [_index(pairs), empty((pairs, 1), x.dtype)]                       # the weights' order, the weights
    return saved + [empty((pairs, width), x.dtype), empty((pairs, width), x.dtype)]   # outputs; index_add's source


BLOCK_RULES: dict[type, BlockRule] = {
    nn.RMSNorm: _rms_norm, nn.LayerNorm: _layer_norm, nn.GroupNorm: _group_norm,
    specc_layers.OffsetRMSNorm: _offset_rms_norm,
    specc_layers.SwiGLU: _swiglu, specc_layers.MLP: _mlp,
    specc_layers.CausalSelfAttention: _causal_self_attention,
    moe_layers.MoE: _mixture_of_experts,
}
