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


def scatter(x: torch.Tensor, index: torch.Tensor, source: torch.Tensor, dim: int) -> torch.Tensor:
    """`torch.scatter`: `x` with `source`'s values written at `index` along `dim` (`from: [x, index, source]`)."""
    return torch.scatter(x, dim, index, source)


def scatter_add(x: torch.Tensor, index: torch.Tensor, source: torch.Tensor, dim: int) -> torch.Tensor:
    """`torch.scatter_add`: `source`'s values added into `x` at `index` along `dim` (repeated indices add up)."""
    return torch.scatter_add(x, dim, index, source)


def index_add(x: torch.Tensor, index: torch.Tensor, source: torch.Tensor, dim: int) -> torch.Tensor:
    """`torch.index_add`: slice i of `source` along `dim` added to slice `index[i]` of `x` (an MoE's combine)."""
    return torch.index_add(x, dim, index, source)


def einsum(*operands: torch.Tensor, equation: str) -> torch.Tensor:
    """`torch.einsum` with the operands first (`from: [q, k]`), the equation as an arg."""
    return torch.einsum(equation, *operands)


MAX_SCAN_STEPS = 2 ** 31           # ~140,000 small steps at most


def linear_scan(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None, *, dim: int = 1,
                reverse: bool = False) -> torch.Tensor:
    """The linear recurrence `h_t = a_t * h_{t-1} + b_t` along `dim`, every `h_t` returned.

    Chunked: the L steps are cut into K chunks of C (C·K = L, C near sqrt(L/2)); one pass finds
    each chunk's end state from zero and its decay (the product of its `a`), a K-step loop carries
    the state into each chunk, and a second pass runs all chunks side by side from their true
    start: 2C + K small steps instead of L (96 instead of 1,024) and O(L) memory (the states and
    what autograd keeps of the steps). Exact for any `a`: no logs, no divisions.

    Args:
        a, b: the decay and the input, broadcastable to one shape.
        initial: h before the first step (the shape without `dim`, broadcastable); None is zeros.
        dim: the time dim (torch's numbering: batch 0). reverse: run from the last step back.

    Returns: h, of the broadcast shape of `a` and `b`, contiguous.
    """
    a, b = torch.broadcast_tensors(a, b)
    dim = dim % max(a.dim(), 1)
    if reverse:
        a, b = a.flip(dim), b.flip(dim)
    steps_a, steps_b = a.movedim(dim, 0), b.movedim(dim, 0)     # (L, ...) views
    state = torch.zeros_like(steps_b[0]) if initial is None else initial.expand_as(steps_b[0]).to(b.dtype)
    length = steps_a.shape[0]
    if length > MAX_SCAN_STEPS:     # 2C + L/C Python steps: bounded, even on meta where nothing is computed
        raise ValueError(f"scan over {length:,} steps: at most {MAX_SCAN_STEPS:,}")
    size = _chunk_size(length)
    count = length // size if length else 0
    blocks = []
    if count:
        rows, state = _chunked_states(steps_a[:count * size], steps_b[:count * size], state, count, size)
        # each row is (K, ...): stacked beside the chunk dim they give (.., K, C, ..) = (.., L, ..), contiguous
        blocks.append(torch.stack([row.movedim(0, dim) for row in rows], dim + 1).flatten(dim, dim + 1))
    for step in range(count * size, length):                     # past the last whole chunk (L prime)
        state = torch.addcmul(steps_b[step], steps_a[step], state)
        blocks.append(state.unsqueeze(dim))
    output = torch.cat(blocks, dim) if len(blocks) > 1 else blocks[0] if blocks else b.clone()
    return output.flip(dim) if reverse else output


def _chunk_size(length: int) -> int:
    """C dividing L with the fewest steps 2C + L/C, or isqrt(L) (and a tail) when no divisor is near."""
    if length < 4:
        return max(length, 1)
    root = int(length ** 0.5)       # exact below 2**52 steps
    divisors = [size for size in range(1, 2 * root + 1) if length % size == 0]
    best = min(divisors, key=lambda size: 2 * size + length // size)
    ideal = 2 * (2 * length) ** 0.5
    return best if 2 * best + length // best <= 1.25 * ideal else root


def _chunked_states(a: torch.Tensor, b: torch.Tensor, state: torch.Tensor, count: int,
                    size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every state of `count * size` steps over dim 0, as `size` tensors (K, ...) (row c: step c of
    every chunk), and the state after the last step."""
    chunk_a, chunk_b = a.unflatten(0, (count, size)), b.unflatten(0, (count, size))
    end = chunk_b[:, 0]                                           # (K, ...): each chunk from zero
    for step in range(1, size):
        end = torch.addcmul(chunk_b[:, step], chunk_a[:, step], end)
    decay = torch.prod(chunk_a, 1)                                # (K, ...)
    starts = []
    for chunk in range(count):                                    # the state entering each chunk
        starts.append(state)
        state = torch.addcmul(end[chunk], decay[chunk], state)
    h, rows = torch.stack(starts), []
    for step in range(size):                                      # every chunk at once, from its start
        h = torch.addcmul(chunk_b[:, step], chunk_a[:, step], h)
        rows.append(h)
    return rows, state


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
