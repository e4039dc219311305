"""A key/value cache for specc's attention layers, installed around a model only while it generates.

Without a cache every new token runs the whole context through the model again (quadratic in the
length); with it, each attention layer keeps the keys and values of the tokens it has seen, and a
step feeds only the new token (linear). The model itself is not changed: `kv_cache(model)` swaps
each `CausalSelfAttention` for a `CachedAttention` that holds the layer (same weights) and each
`PositionalEmbedding` for `OffsetPositions`, and puts the originals back when it exits.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from specc.build.layers import CausalSelfAttention, PositionalEmbedding, apply_rotary, rotary_cos_sin


@dataclass
class CacheState:
    """Tokens the cache holds (the position of the next token fed); shared by every cached layer."""

    position: int = 0
    layers: int = 0   # attention layers the cache sits in


class CachedAttention(nn.Module):
    """`layer`'s attention over the cached keys and values plus those of the new tokens."""

    def __init__(self, layer: CausalSelfAttention, state: CacheState):
        super().__init__()
        self.layer, self.state = layer, state
        self.keys: torch.Tensor | None = None     # (B, nkv, S, hs)
        self.values: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer, start = self.layer, self.state.position
        B, T, _ = x.shape
        if start + T > layer.max_len:
            raise ValueError(f"sequence length {start + T} is longer than max_len={layer.max_len}")
        q, k, v = layer.project(x)                                      # (B, nh, T, hs), (B, nkv, T, hs) x 2
        if layer.rope:   # the new tokens' positions are start..start+T-1
            cos, sin = rotary_cos_sin(T, layer.rotary_dim, layer.rope_base, x.device, x.dtype, layer.rope_scaling,
                                      start=start)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.keys is not None:
            k, v = torch.cat((self.keys, k), dim=2), torch.cat((self.values, v), dim=2)   # (B, nkv, S, hs)
        self.keys, self.values = k, v
        if layer.n_kv_heads != layer.n_heads:
            repeats = layer.n_heads // layer.n_kv_heads
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        # new token t (at position start + t) sees every cached key and the new ones up to itself
        mask = None if T == 1 else torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)   # (B, nh, T, hs)
        return layer.resid_dropout(layer.output_projection(y.transpose(1, 2).flatten(2)))


class OffsetPositions(nn.Module):
    """`layer`'s learned positions for the new tokens: rows start..start+T-1 instead of 0..T-1."""

    def __init__(self, layer: PositionalEmbedding, state: CacheState):
        super().__init__()
        self.layer, self.state = layer, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start, T = self.state.position, x.shape[-2]
        if start + T > self.layer.max_len:
            raise ValueError(f"sequence length {start + T} is longer than max_len={self.layer.max_len}")
        return x + self.layer.weight[start:start + T]   # (B, T, C) + (T, C)


WRAPPERS = {CausalSelfAttention: CachedAttention, PositionalEmbedding: OffsetPositions}


@contextlib.contextmanager
def kv_cache(model: nn.Module) -> Iterator[CacheState]:
    """Install the cache in `model` (every path to a shared layer too); the caller advances
    `state.position` by the tokens of each forward. The original layers come back on exit.

    Yields:
        The cache's state; `state.layers` is 0 when the model has no specc attention layer.
    """
    state = CacheState()
    wrappers: dict[int, nn.Module] = {}
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    for path, module in list(model.named_modules(remove_duplicate=False)):
        wrapper_class = WRAPPERS.get(type(module))
        if wrapper_class is None or not path:
            continue
        if id(module) not in wrappers:
            wrappers[id(module)] = wrapper_class(module, state)
            state.layers += isinstance(module, CausalSelfAttention)
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        replaced.append((parent, name, module))
        setattr(parent, name, wrappers[id(module)])
    try:
        yield state
    finally:
        for parent, name, module in reversed(replaced):
            setattr(parent, name, module)


def reset(model: nn.Module, state: CacheState) -> None:
    """Empty the cache (the model is inside `kv_cache`)."""
    state.position = 0
    for module in model.modules():
        if isinstance(module, CachedAttention):
            module.keys = module.values = None
