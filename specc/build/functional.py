"""Tensor functions that the spec language adds on top of torch's (kept tiny: they appear in forward)."""
from __future__ import annotations

import torch


def reshape(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Reshape keeping the batch dim: `shape` excludes it, like the spec's `inputs` shapes."""
    return x.reshape(x.shape[0], *shape)


def view(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """View keeping the batch dim (see `reshape`)."""
    return x.view(x.shape[0], *shape)


def contiguous(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous()


def expand(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Expand keeping the batch dim (see `reshape`); -1 keeps a dim's size."""
    return x.expand(x.shape[0], *shape)


def gather(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """`torch.gather` with the tensors first, so `from: [x, index]` reads in call order."""
    return torch.gather(x, dim, index)


def einsum(*operands: torch.Tensor, equation: str) -> torch.Tensor:
    """`torch.einsum` with the operands first (`from: [q, k]`), the equation as an arg."""
    return torch.einsum(equation, *operands)


def to_dtype(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """Cast to a dtype named as in `inputs:` (`long`, `float32`, `bool`, ...)."""
    return x.to(DTYPES[dtype])


def batch_expand(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A free tensor `[1, ...]` repeated (as a view) over the batch of `like` (class tokens)."""
    return tensor.expand(like.shape[0], *tensor.shape[1:])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
              heads: int, causal: bool = False, scale: float | None = None, dropout: float = 0.0,
              kv_heads: int | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention on `[B, T, H*d]` inputs; returns `[B, T, H*d_v]`.

    Args:
        q, k, v: queries `[B, T, H*d]`, keys and values `[B, S, H*d]`, `[B, S, H*d_v]`.
        mask: a bool mask (True = attend) or an additive float bias, broadcastable to `[B, H, T, S]`;
            a 3-D mask `[B, T, S]` is shared by all heads.
        heads: number of heads H; must divide the last dims.
        causal: mask out future keys (the decoder's self-attention).
        scale: multiplies q·k; None is 1/sqrt(d) (T5 uses 1.0).
        dropout: dropout on the attention weights (pass 0 in eval).
        kv_heads: heads of k and v, each shared by heads // kv_heads query heads (grouped-query
            attention); None is `heads`.
    """
    batch, length = q.shape[0], q.shape[1]
    kv_heads = kv_heads or heads
    q = q.unflatten(-1, (heads, -1)).transpose(1, 2)                                 # (B, H, T, d)
    k, v = (t.unflatten(-1, (kv_heads, -1)).transpose(1, 2) for t in (k, v))         # (B, Hkv, S, d)
    if kv_heads != heads:
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))       # (B, H, S, d)
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                           is_causal=causal, scale=scale)
    return out.transpose(1, 2).reshape(batch, length, -1)  # heads side by side again


DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "long": torch.long, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
}
