"""specc's attention layer and the rotary position embeddings (RoPE) it and the `attention` item use.

`CausalSelfAttention` holds its projections the way the checkpoint it should load holds them
(`layout`): GPT-2's fused `c_attn`/`c_proj`, Hugging Face's `q_proj/k_proj/v_proj/o_proj` or Meta's
`wq/wk/wv/wo`; so Llama 3, Mistral, Qwen2 and Gemma weights load by name. Its forward reads
project -> rotate -> attend -> output, one step each, so a KV cache can sit between the steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CausalSelfAttention"]

# Submodule names of each layout: query, key, value, output (`fused`: one Linear makes q, k and v).
PROJECTION_NAMES = {
    "fused": ("c_attn", "c_proj"),
    "hf": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "meta": ("wq", "wk", "wv", "wo"),
}
# Keys of `rope_scaling`, as Hugging Face configs spell them, for each `rope_type`.
ROPE_SCALING_KEYS = {
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def check_rope_scaling(scaling: dict | None) -> None:
    """Raise ValueError naming what is wrong with a `rope_scaling` mapping (None is no scaling)."""
    if scaling is None:
        return
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"rope_scaling: rope_type must be one of {sorted(ROPE_SCALING_KEYS)}, got {kind!r}")
    given, needed = set(scaling) - {"rope_type"}, ROPE_SCALING_KEYS[kind]
    if given != needed:
        raise ValueError(f"rope_scaling of rope_type {kind} takes exactly {sorted(needed)}; "
                         f"missing {sorted(needed - given)}, unknown {sorted(given - needed)}")


def rotary_inverse_frequencies(rotary_dim: int, base: float, device: torch.device,
                               scaling: dict | None = None) -> torch.Tensor:
    """The rotation speed of each feature pair, (rotary_dim / 2,) float32, as Hugging Face computes it.

    `scaling` stretches the slow frequencies for contexts longer than training's: `linear` divides
    all of them by `factor`; `llama3` (Llama 3.1+) divides only wavelengths longer than
    `original_max_position_embeddings / low_freq_factor`, keeps those shorter than
    `.../ high_freq_factor`, and blends in between.
    """
    exponents = torch.arange(0, rotary_dim, 2, device=device, dtype=torch.int64).float() / rotary_dim
    inverse = 1.0 / (base ** exponents)
    if scaling is None:
        return inverse
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inverse / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelength = 2 * torch.pi / inverse
    scaled = torch.where(wavelength > context / low, inverse / factor, inverse)
    smooth = (context / wavelength - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= context / high) & (wavelength <= context / low)
    return torch.where(medium, blended, scaled)


def rotary_cos_sin(T: int, rotary_dim: int, base: float, device: torch.device, dtype: torch.dtype,
                   scaling: dict | None = None, start: int = 0):
    """The rotary angles' cos and sin for positions start..start+T-1, each (T, rotary_dim).

    Computed in float32 and cast, as Llama does, so low-precision models keep accurate angles.
    """
    inverse = rotary_inverse_frequencies(rotary_dim, base, device, scaling)
    positions = torch.arange(start, start + T, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inverse)             # (T, rd/2)
    angles = torch.cat((angles, angles), dim=-1)          # (T, rd): half-split layout, see apply_rotary
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs (i, i + rd/2) of x (B, nh, T, hs) by each position's angle.

    This is the half-split ("rotate_half") layout of Hugging Face / litgpt Llama checkpoints. When
    cos covers fewer features than x (partial rotary, rd < hs), the features past rd pass unrotated.
    """
    rotary_dim = cos.shape[-1]
    if rotary_dim != x.shape[-1]:
        rotated = apply_rotary(x[..., :rotary_dim], cos, sin)
        return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return x * cos + rotated * sin


def rotary_dim_of(head_dim: int, fraction: float) -> int:
    """Features rotated per head: `int(head_dim * fraction)` (Hugging Face's partial_rotary_factor),
    which must be even and positive."""
    rotary_dim = int(head_dim * fraction)
    if not 0.0 < fraction <= 1.0 or rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"rope_fraction={fraction} of head_dim={head_dim} rotates {rotary_dim} features; "
                         f"it must be an even number from 2 to head_dim")
    return rotary_dim


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: GPT-2, Llama, Mistral, Qwen2 and Gemma flavoured.

    GPT-2 is the default; Llama is `bias=False, rope=True`. Grouped-query attention (Llama 2 70B,
    Llama 3, Mistral) shares each k/v head between n_heads // n_kv_heads query heads.

    Args:
        dim: model width (inferred).
        n_heads: number of query heads.
        bias: add biases to the q, k and v projections (GPT-2 and Qwen2 yes, Llama no).
        rope: rotate q and k by their positions (rotary embeddings) instead of needing a
            PositionalEmbedding.
        rope_base: the rotary frequency base, Hugging Face's rope_theta (10000 in Llama 1/2,
            500000 in Llama 3).
        max_len: the longest sequence accepted.
        dropout: dropout on attention weights and on the output, during training.
        n_kv_heads: number of key/value heads; default n_heads (plain multi-head attention).
        layout: how the projections are held: "fused" (`c_attn` makes q, k and v, `c_proj`),
            "hf" (`q_proj`, `k_proj`, `v_proj`, `o_proj`) or "meta" (`wq`, `wk`, `wv`, `wo`).
        head_dim: features per head; default dim // n_heads (Gemma sets it apart from dim).
        out_bias: a bias on the output projection; default `bias` (Qwen2: q/k/v biases, no output bias).
        rope_scaling: Hugging Face's `rope_scaling` mapping (`rope_type` llama3 or linear).
        rope_fraction: the fraction of each head's features rotated (partial rotary; 1.0 = all).

    Shapes: (B, T, dim) -> (B, T, dim).
    """

    def __init__(self, dim: int, n_heads: int, bias: bool = True, rope: bool = False,
                 rope_base: float = 10000.0, max_len: int = 4096, dropout: float = 0.0,
                 n_kv_heads: int | None = None, layout: str = "fused",
                 head_dim: int | None = None, out_bias: bool | None = None,
                 rope_scaling: dict[str, float | int | str] | None = None, rope_fraction: float = 1.0):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if head_dim is None and dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must divide dim={dim} (or give head_dim), and "
                             f"n_kv_heads={n_kv_heads} must divide n_heads")
        if layout not in PROJECTION_NAMES:
            raise ValueError(f"layout must be one of {sorted(PROJECTION_NAMES)}, got {layout!r}")
        check_rope_scaling(rope_scaling)
        self.dim, self.n_heads, self.n_kv_heads = dim, n_heads, n_kv_heads
        self.head_dim = head_dim or dim // n_heads
        self.rope, self.rope_base, self.rope_scaling = rope, rope_base, rope_scaling
        self.rotary_dim = rotary_dim_of(self.head_dim, rope_fraction) if rope else self.head_dim
        self.max_len, self.dropout, self.layout = max_len, dropout, layout
        self.bias, self.out_bias, self.rope_fraction = bias, out_bias, rope_fraction   # as given (import reads them)
        q_dim, kv_dim = n_heads * self.head_dim, n_kv_heads * self.head_dim
        self.split_sizes = [q_dim, kv_dim, kv_dim]
        names = PROJECTION_NAMES[layout]
        if layout == "fused":
            self.c_attn = nn.Linear(dim, q_dim + 2 * kv_dim, bias=bias)  # q, k, v in one matmul
        else:
            for name, size in zip(names, self.split_sizes):
                setattr(self, name, nn.Linear(dim, size, bias=bias))
        setattr(self, names[-1], nn.Linear(q_dim, dim, bias=bias if out_bias is None else out_bias))
        self.resid_dropout = nn.Dropout(dropout)

    def input_projections(self) -> list[nn.Linear]:
        """The Linear layers applied to the input: [c_attn] or [q, k, v] (FLOP and memory rules)."""
        return [getattr(self, name) for name in PROJECTION_NAMES[self.layout][:-1]]

    @property
    def output_projection(self) -> nn.Linear:
        """The Linear that mixes the heads back: c_proj, o_proj or wo."""
        return getattr(self, PROJECTION_NAMES[self.layout][-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        if T > self.max_len:
            raise ValueError(f"sequence length {T} is longer than max_len={self.max_len}")
        q, k, v = self.project(x)                                   # (B, nh, T, hs), (B, nkv, T, hs) x 2
        if self.rope:
            cos, sin = rotary_cos_sin(T, self.rotary_dim, self.rope_base, x.device, x.dtype, self.rope_scaling)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = self.attend(q, k, v)                                    # (B, T, nh * hs)
        return self.resid_dropout(self.output_projection(y))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of x (B, T, dim), split into heads: (B, nh, T, hs), (B, nkv, T, hs), (B, nkv, T, hs)."""
        B, T, _ = x.shape
        if self.layout == "fused":
            q, k, v = self.c_attn(x).split(self.split_sizes, dim=-1)
        else:
            q, k, v = (projection(x) for projection in self.input_projections())
        heads = (self.n_heads, self.n_kv_heads, self.n_kv_heads)
        return tuple(t.view(B, T, n, self.head_dim).transpose(1, 2) for t, n in zip((q, k, v), heads))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of q (B, nh, T, hs) over k, v (B, nkv, S, hs): (B, T, nh * hs)."""
        if self.n_kv_heads != self.n_heads:
            repeats = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeats, dim=1)  # (B, nh, S, hs): query heads 0..r-1 share kv head 0
            v = v.repeat_interleave(repeats, dim=1)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (B, nh, T, hs)
        return y.transpose(1, 2).flatten(2)  # (B, T, nh * hs): heads side by side again

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"rope={self.rope}, max_len={self.max_len}, layout={self.layout}")
