"""Shape rules (see shape_rules.py) for attention, recurrent and transformer-block layers: torch's
MultiheadAttention, TransformerEncoderLayer, LSTM/GRU/RNN, and specc's own blocks (layers.py)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from specc.build import layers as specc_layers
from specc.build import moe_layers
from specc.build.shape_functions import empty, floats, one_input, weight_dtype

Tensor = torch.Tensor


def _multihead_attention(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple | None:
    """Batched q, k, v without masks, as the dry run calls it (need_weights=False)."""
    if len(args) != 3 or kwargs != {"need_weights": False} or not floats(*args):
        return None
    query, key, value = args
    if any(t.dim() != 3 for t in args) or not weight_dtype(module, query):
        return None
    batch_dim, length_dim = (0, 1) if module.batch_first else (1, 0)
    batch, length = query.shape[batch_dim], query.shape[length_dim]
    if (query.shape[-1] != module.embed_dim or key.shape[-1] != module.kdim or value.shape[-1] != module.vdim
            or key.shape[batch_dim] != batch or value.shape[batch_dim] != batch
            or key.shape[length_dim] != value.shape[length_dim]):
        return None
    output = empty((length, batch, module.embed_dim), query.dtype)  # torch works sequence-first ...
    return (output.transpose(0, 1) if module.batch_first else output), None  # ... and hands back a view


def _encoder_layer(module: nn.TransformerEncoderLayer, args: tuple, kwargs: dict) -> Tensor | None:
    x = one_input(args, kwargs)
    if x is None or x.dim() != 3 or x.shape[-1] != module.self_attn.embed_dim or not x.is_contiguous():
        return None
    return empty(x.shape, x.dtype) if weight_dtype(module, x) else None


def _recurrent(module: nn.RNNBase, args: tuple, kwargs: dict) -> tuple | None:
    """LSTM/GRU/RNN on a batched sequence without an initial state: (output, final state)."""
    x = one_input(args, kwargs)
    if x is None or x.dim() != 3 or x.shape[-1] != module.input_size or not weight_dtype(module, x):
        return None
    batch, length = (x.shape[0], x.shape[1]) if module.batch_first else (x.shape[1], x.shape[0])
    directions = 2 if module.bidirectional else 1
    out_size = module.proj_size or module.hidden_size
    output = empty((length, batch, directions * out_size), x.dtype)  # sequence-first inside torch ...
    output = output.transpose(0, 1) if module.batch_first else output  # ... a view for batch_first
    hidden = empty((directions * module.num_layers, batch, out_size), x.dtype)
    if isinstance(module, nn.LSTM):
        return output, (hidden, empty((directions * module.num_layers, batch, module.hidden_size), x.dtype))
    return output, hidden


def _causal_self_attention(module: specc_layers.CausalSelfAttention, args: tuple, kwargs: dict) -> Tensor | None:
    x = one_input(args, kwargs)
    if (x is None or x.dim() != 3 or x.shape[-1] != module.dim or x.shape[1] > module.max_len
            or not weight_dtype(module, x)):
        return None
    return empty(x.shape, x.dtype)


def _projection(first: str, last: str) -> Callable[[nn.Module, tuple, dict], Tensor | None]:
    """A block whose input goes into Linear `first` and whose output comes out of Linear `last`."""
    def rule(module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
        x = one_input(args, kwargs)
        if x is None or x.dim() < 1 or x.shape[-1] != getattr(module, first).in_features or not weight_dtype(module, x):
            return None
        return empty((*x.shape[:-1], getattr(module, last).out_features), x.dtype)
    return rule


def _positional_embedding(module: specc_layers.PositionalEmbedding, args: tuple, kwargs: dict) -> Tensor | None:
    x = one_input(args, kwargs)
    if (x is None or x.dim() < 2 or x.shape[-2] > module.max_len or x.shape[-1] != module.weight.shape[1]
            or not x.is_contiguous() or not weight_dtype(module, x)):
        return None
    return empty(x.shape, x.dtype)


def _class_token(module: specc_layers.ClassToken, args: tuple, kwargs: dict) -> Tensor | None:
    x = one_input(args, kwargs)
    if x is None or x.dim() != 3 or x.shape[-1] != module.token.shape[-1] or not weight_dtype(module, x):
        return None
    return empty((x.shape[0], x.shape[1] + 1, x.shape[2]), x.dtype)


def _layer_scale(module: specc_layers.LayerScale, args: tuple, kwargs: dict) -> Tensor | None:
    x = one_input(args, kwargs)
    if x is None or x.dim() < 1 or x.shape[-1] != module.gamma.shape[0] or not x.is_contiguous():
        return None
    return empty(x.shape, x.dtype) if weight_dtype(module, x) else None


def _attention(module: specc_layers.Attention, args: tuple, kwargs: dict) -> Tensor | None:
    """specc's Attention on q, k, v without a mask: [B, T, H*d], [B, S, Hkv*d], [B, S, Hkv*dv] -> [B, T, H*dv]."""
    if len(args) != 3 or kwargs or not floats(*args) or any(t.dim() != 3 for t in args):
        return None
    query, key, value = args
    kv_heads = module.kv_heads
    if (query.shape[-1] % module.heads or any(t.shape[-1] % kv_heads for t in (key, value))
            or key.shape[-1] // kv_heads != query.shape[-1] // module.heads
            or len({t.shape[0] for t in args}) != 1 or key.shape[1] != value.shape[1]):
        return None
    return empty((query.shape[0], query.shape[1], value.shape[-1] // kv_heads * module.heads), query.dtype)


def _offset_rms_norm(module: specc_layers.OffsetRMSNorm, args: tuple, kwargs: dict) -> Tensor | None:
    x = one_input(args, kwargs)
    if (x is None or x.dim() < 1 or x.shape[-1] != module.weight.shape[0] or not x.is_contiguous()
            or not weight_dtype(module, x)):
        return None
    return empty(x.shape, x.dtype)


def _mixture_of_experts(module: moe_layers.MoE, args: tuple, kwargs: dict) -> Tensor | None:
    x = one_input(args, kwargs)
    if x is None or x.dim() < 1 or x.shape[-1] != module.gate.in_features or not weight_dtype(module, x):
        return None
    return empty(x.shape, x.dtype)


ATTENTION_RULES: dict[type, Callable[[nn.Module, tuple, dict], Any]] = {
    nn.MultiheadAttention: _multihead_attention,
    nn.TransformerEncoderLayer: _encoder_layer,
    nn.LSTM: _recurrent, nn.GRU: _recurrent, nn.RNN: _recurrent,
    specc_layers.CausalSelfAttention: _causal_self_attention,
    specc_layers.MLP: _projection("c_fc", "c_proj"),
    specc_layers.SwiGLU: _projection("gate", "down"),
    specc_layers.PositionalEmbedding: _positional_embedding,
    specc_layers.ClassToken: _class_token,
    specc_layers.LayerScale: _layer_scale,
    specc_layers.Attention: _attention,
    moe_layers.MoE: _mixture_of_experts,
    specc_layers.OffsetRMSNorm: _offset_rms_norm,
}
