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
from torch import nn

from specc.build.attention_layers import (  # noqa: F401 - specc layers and helpers, named here for the registry
    CausalSelfAttention, apply_rotary, check_rope_scaling, rotary_cos_sin, rotary_dim_of,
)
from specc.build.functional import attention, linear_scan

__all__ = [
    "PositionalEmbedding", "CausalSelfAttention", "MLP", "SwiGLU", "OffsetRMSNorm",
    "ClassToken", "LayerScale", "DropPath", "Attention", "LayerNorm2d", "LinearScan",
]

# The modules whose classes are specc's layers (codegen copies their source; import keeps them as layers).
LAYER_MODULES = ("specc.build.layers", "specc.build.attention_layers", "specc.build.moe_layers")

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


# Submodule names of SwiGLU's layouts: gate, up (the value), down.
SWIGLU_NAMES = {"meta": ("w1", "w3", "w2"), "hf": ("gate_proj", "up_proj", "down_proj")}


class SwiGLU(nn.Module):
    """The Llama feed-forward block: down(activation(gate x) * up x).

    The gate and the value (up) are two projections of the same input; their product lets the
    block switch features on and off, which trains better than a plain MLP of equal size.

    Args:
        dim: model width (inferred).
        hidden_dim: inner width (11008 for Llama 2 7B).
        bias: add biases to the three projections (Llama: no).
        layout: the projections' names: "meta" (`w1` gate, `w3` up, `w2` down) or "hf"
            (`gate_proj`, `up_proj`, `down_proj`).
        activation: the gate's activation: "silu" (SwiGLU), "gelu_tanh" (Gemma's GeGLU), "gelu", "relu".

    Shapes: (B, ..., dim) -> (B, ..., dim).
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, layout: str = "meta",
                 activation: str = "silu"):
        super().__init__()
        if layout not in SWIGLU_NAMES or activation not in ACTIVATIONS:
            raise ValueError(f"layout must be one of {sorted(SWIGLU_NAMES)} (got {layout!r}) and activation one of "
                             f"{sorted(ACTIVATIONS)} (got {activation!r})")
        self.layout = layout
        gate, up, down = SWIGLU_NAMES[layout]
        setattr(self, gate, nn.Linear(dim, hidden_dim, bias=bias))
        if layout == "meta":   # Meta's order w1, w2, w3: kept, so seeded builds match Llama's code
            setattr(self, down, nn.Linear(hidden_dim, dim, bias=bias))
            setattr(self, up, nn.Linear(dim, hidden_dim, bias=bias))
        else:
            setattr(self, up, nn.Linear(dim, hidden_dim, bias=bias))
            setattr(self, down, nn.Linear(hidden_dim, dim, bias=bias))
        self.activation = activation                 # the name, as given (specc import reads it back)
        self.act = ACTIVATIONS[activation]()

    @property
    def gate(self) -> nn.Linear:
        return getattr(self, SWIGLU_NAMES[self.layout][0])

    @property
    def up(self) -> nn.Linear:
        return getattr(self, SWIGLU_NAMES[self.layout][1])

    @property
    def down(self) -> nn.Linear:
        return getattr(self, SWIGLU_NAMES[self.layout][2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))  # (B, T, hidden) -> (B, T, C)


class OffsetRMSNorm(nn.Module):
    """RMSNorm whose scale is `offset + weight` (Gemma: `norm(x) * (1 + weight)`, weights stored near 0).

    Args:
        dim: the normalized size, the last dim (inferred).
        eps: added to the mean square (Gemma: 1e-6).
        offset: added to the weight before scaling.

    Shapes: (B, ..., dim) -> (B, ..., dim).
    """

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 1.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(dim))   # Gemma's init: the scale starts at `offset`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)  # in float32, as Gemma
        return (normed * (self.offset + self.weight.float())).type_as(x)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, offset={self.offset}"


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
        heads: number of (query) heads; must divide q's last dim.
        causal: mask out future keys.
        scale: multiplies q·k; null is 1/sqrt(head dim).
        dropout: dropout on the attention weights, during training.
        n_kv_heads: heads of k and v (grouped-query attention); default `heads`.
        rope, rope_base, rope_scaling, rope_fraction: rotary position embeddings on q and k,
            as in CausalSelfAttention (positions 0..T-1 of q and 0..S-1 of k).

    Shapes: q (B, T, H*d), k (B, S, Hkv*d), v (B, S, Hkv*dv)[, mask/bias broadcastable to
    (B, H, T, S) or (B, T, S)] -> (B, T, H*dv).
    """

    def __init__(self, heads: int, causal: bool = False, scale: float | None = None, dropout: float = 0.0,
                 n_kv_heads: int | None = None, rope: bool = False, rope_base: float = 10000.0,
                 rope_scaling: dict[str, float | int | str] | None = None, rope_fraction: float = 1.0):
        super().__init__()
        self.kv_heads = n_kv_heads or heads
        if heads < 1 or self.kv_heads < 1 or heads % self.kv_heads:
            raise ValueError(f"heads must be positive and a multiple of n_kv_heads, got heads={heads}, "
                             f"n_kv_heads={n_kv_heads}")
        check_rope_scaling(rope_scaling)
        self.heads, self.causal, self.scale, self.dropout = heads, causal, scale, dropout
        self.n_kv_heads, self.rope, self.rope_base = n_kv_heads, rope, rope_base   # as given (import reads them)
        self.rope_scaling, self.rope_fraction = rope_scaling, rope_fraction

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        for name, tensor, heads in (("q", q, self.heads), ("k", k, self.kv_heads), ("v", v, self.kv_heads)):
            if tensor.dim() != 3 or tensor.shape[-1] % heads:
                raise ValueError(f"{name} must be [B, T, heads*d] with {heads} heads dividing its last dim, "
                                 f"got {list(tensor.shape[1:])}")
        if self.rope:
            q, k = self.rotate(q, self.heads), self.rotate(k, self.kv_heads)
        dropout = self.dropout if self.training else 0.0
        return attention(q, k, v, mask, heads=self.heads, causal=self.causal, scale=self.scale, dropout=dropout,
                         kv_heads=self.kv_heads)

    def rotate(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """x (B, T, heads*d) with each head's features rotated by its position (rotate-half layout)."""
        per_head = x.unflatten(-1, (heads, -1))                                 # (B, T, h, d)
        rotary_dim = rotary_dim_of(per_head.shape[-1], self.rope_fraction)
        cos, sin = rotary_cos_sin(x.shape[1], rotary_dim, self.rope_base, x.device, x.dtype, self.rope_scaling)
        return apply_rotary(per_head, cos.unsqueeze(1), sin.unsqueeze(1)).flatten(2)   # (T, 1, rd) over heads

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, causal={self.causal}, scale={self.scale}, dropout={self.dropout}, "
                f"n_kv_heads={self.n_kv_heads}, rope={self.rope}")


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
