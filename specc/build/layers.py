"""specc's own layers: the pieces of real architectures that torch.nn lacks.

Each class is a plain nn.Module a spec uses by name (`- CausalSelfAttention: {n_heads: 12}`).
A required first argument called `dim` is inferred by the compiler from the input's last dim, so
specs only write the sizes that are a choice (heads, hidden width, sequence length).

All layers build on the meta device and trace with torch.compile / torch.export: they branch on
shapes and module state only, never on tensor values, and hold no cached buffers (rotary angles
are computed in `forward`, so they are right on whatever device the module ends up on).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specc.build.functional import attention, linear_scan

__all__ = [
    "PositionalEmbedding", "CausalSelfAttention", "MLP", "SwiGLU",
    "ClassToken", "LayerScale", "DropPath", "Attention", "LayerNorm2d", "LinearScan",
]

ACTIVATIONS = {
    "gelu": nn.GELU,                                   # exact erf GELU (nanoGPT)
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # OpenAI GPT-2's "gelu_new"
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


class PositionalEmbedding(nn.Module):
    """Learned absolute positions added to the input (GPT-2's `wpe`).

    Args:
        max_len: the longest sequence accepted.
        dim: the embedding size (inferred from the input's last dim).

    Shapes: (B, T, dim) -> (B, T, dim), T <= max_len.
    """

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)  # GPT-2's init; N(0, 1) would swamp the token embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[-2]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} is longer than max_len={self.max_len}")
        return x + self.weight[:T]  # (B, T, C) + (T, C)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, dim={self.weight.shape[1]}"


def rotary_cos_sin(T: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype):
    """The rotary angles' cos and sin for positions 0..T-1, each (T, head_dim).

    Computed in float32 and cast, as Llama does, so low-precision models keep accurate angles.
    """
    inv_freq = base ** -(torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    positions = torch.arange(T, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)            # (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)          # (T, hs): half-split layout, see apply_rotary
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs (i, i + hs/2) of x (B, nh, T, hs) by each position's angle.

    This is the half-split ("rotate_half") layout of Hugging Face / litgpt Llama checkpoints.
    """
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, GPT-2 or Llama flavoured.

    One fused projection `c_attn` makes q, k and v; `c_proj` mixes the heads back. GPT-2 is the
    default; Llama is `bias=False, rope=True`. Grouped-query attention (Llama 2 70B, Llama 3,
    Mistral) shares each k/v head between n_heads // n_kv_heads query heads.

    Args:
        dim: model width (inferred).
        n_heads: number of query heads; must divide dim.
        bias: add biases to the projections (GPT-2 yes, Llama no).
        rope: rotate q and k by their positions (rotary embeddings) instead of needing a
            PositionalEmbedding.
        rope_base: the rotary frequency base (10000 in Llama 1/2, 500000 in Llama 3).
        max_len: the longest sequence accepted.
        dropout: dropout on attention weights and on the output, during training.
        n_kv_heads: number of key/value heads; default n_heads (plain multi-head attention).

    Shapes: (B, T, dim) -> (B, T, dim).
    """

    def __init__(self, dim: int, n_heads: int, bias: bool = True, rope: bool = False,
                 rope_base: float = 10000.0, max_len: int = 4096, dropout: float = 0.0,
                 n_kv_heads: int | None = None):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must divide dim={dim}, and n_kv_heads={n_kv_heads} "
                             f"must divide n_heads")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.rope, self.rope_base, self.max_len, self.dropout = rope, rope_base, max_len, dropout
        kv_dim = n_kv_heads * self.head_dim
        self.c_attn = nn.Linear(dim, dim + 2 * kv_dim, bias=bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if T > self.max_len:
            raise ValueError(f"sequence length {T} is longer than max_len={self.max_len}")
        kv_dim = self.n_kv_heads * self.head_dim
        q, k, v = self.c_attn(x).split([C, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if self.rope:
            cos, sin = rotary_cos_sin(T, self.head_dim, self.rope_base, x.device, x.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.n_kv_heads != self.n_heads:
            repeats = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeats, dim=1)  # (B, nh, T, hs)
            v = v.repeat_interleave(repeats, dim=1)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, rope={self.rope}, "
                f"max_len={self.max_len}")


class MLP(nn.Module):
    """The GPT-2 feed-forward block: Linear -> activation -> Linear.

    Args:
        dim: model width (inferred).
        hidden_dim: inner width (4 * dim in GPT-2).
        activation: one of "gelu", "gelu_tanh", "relu", "silu".
        bias: add biases to both projections.
        dropout: dropout on the output, during training.

    Shapes: (B, ..., dim) -> (B, ..., dim).
    """

    def __init__(self, dim: int, hidden_dim: int, activation: str = "gelu", bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}")
        self.c_fc = nn.Linear(dim, hidden_dim, bias=bias)
        self.activation = ACTIVATIONS[activation]()
        self.c_proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.c_fc(x))  # (B, T, hidden)
        return self.dropout(self.c_proj(hidden))  # (B, T, C)


class SwiGLU(nn.Module):
    """The Llama feed-forward block: w2(silu(w1 x) * w3 x).

    The gate (w1) and the value (w3) are two projections of the same input; their product lets
    the block switch features on and off, which trains better than a plain MLP of equal size.

    Args:
        dim: model width (inferred).
        hidden_dim: inner width (11008 for Llama 2 7B).
        bias: add biases to the three projections (Llama: no).

    Shapes: (B, ..., dim) -> (B, ..., dim).
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.w3 = nn.Linear(dim, hidden_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, hidden) -> (B, T, C)


class ClassToken(nn.Module):
    """Prepend a learned token to the sequence (ViT / BERT's [CLS]); read it back with getitem.

    Args:
        dim: token size (inferred).

    Shapes: (B, T, dim) -> (B, T + 1, dim).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token = self.token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        return torch.cat((token, x), dim=1)             # (B, T + 1, C)


class LayerScale(nn.Module):
    """Multiply each channel by a learned scale that starts small (CaiT, ConvNeXt, DINOv2).

    Starting near zero makes a fresh residual branch almost an identity, which keeps deep
    stacks stable early in training.

    Args:
        dim: number of channels, the last dim (inferred).
        init_value: the starting scale.

    Shapes: (B, ..., dim) -> (B, ..., dim).
    """

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: during training, zero a whole sample's residual branch with probability p.

    Surviving samples are scaled by 1 / (1 - p) so the expected output is unchanged; in eval
    mode the layer is the identity. Put it last in a `residual:` body.

    Args:
        p: probability of dropping a sample's branch.

    Shapes: (B, ...) -> (B, ...).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # one draw per sample, broadcast over the rest
        mask = torch.empty(mask_shape, device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """The `attention` item: multi-head scaled dot-product attention on `[B, T, H*d]` q, k, v.

    No weights: the projections are the spec's own `Linear` items. A module (not a function) so
    attention dropout follows `model.train()` / `model.eval()`.

    Args:
        heads: number of heads; must divide the inputs' last dim.
        causal: mask out future keys.
        scale: multiplies q·k; null is 1/sqrt(head dim).
        dropout: dropout on the attention weights, during training.

    Shapes: q (B, T, H*d), k (B, S, H*d), v (B, S, H*dv)[, mask/bias broadcastable to (B, H, T, S)
    or (B, T, S)] -> (B, T, H*dv).
    """

    def __init__(self, heads: int, causal: bool = False, scale: float | None = None, dropout: float = 0.0):
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be positive, got {heads}")
        self.heads, self.causal, self.scale, self.dropout = heads, causal, scale, dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        for name, tensor in (("q", q), ("k", k), ("v", v)):
            if tensor.dim() != 3 or tensor.shape[-1] % self.heads:
                raise ValueError(f"{name} must be [B, T, heads*d] with heads={self.heads} dividing its last dim, "
                                 f"got {list(tensor.shape[1:])}")
        dropout = self.dropout if self.training else 0.0
        return attention(q, k, v, mask, heads=self.heads, causal=self.causal, scale=self.scale, dropout=dropout)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, causal={self.causal}, scale={self.scale}, dropout={self.dropout}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of channels-first maps `[B, C, H, W]` (ConvNeXt, Swin V2 stages).

    Each position's C values are normalised, as `permute -> LayerNorm -> permute` would, without
    the permutes in the spec. Weights are `weight`/`bias` of size C, like nn.LayerNorm's.

    Args:
        num_channels: C (inferred from dim 1).
        eps, elementwise_affine, bias: as in nn.LayerNorm.

    Shapes: (B, C, ...) -> (B, C, ...).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__(num_channels, eps=eps, elementwise_affine=elementwise_affine, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class LinearScan(nn.Module):
    """The `scan` item: the linear recurrence `h_t = a_t * h_{t-1} + b_t` along a dim, every state
    returned (a state-space model's selective scan; Mamba's `h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t`).

    No weights. Computed by a chunked scan (see `linear_scan`): O(L) memory, 2C + L/C small steps.

    Args:
        dim: the time dim (torch's numbering: the batch is 0), default 1.
        reverse: run from the last step back (h_t = a_t h_{t+1} + b_t).

    Shapes: a, b broadcastable to (B, ..., L, ...)[, initial: that shape without dim] -> the broadcast shape.
    """

    def __init__(self, dim: int = 1, reverse: bool = False):
        super().__init__()
        self.dim, self.reverse = dim, reverse

    def forward(self, a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
        return linear_scan(a, b, initial, dim=self.dim, reverse=self.reverse)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, reverse={self.reverse}"
