"""Llama 2 written by hand, nanoGPT-style: the baseline for the compile-cost benchmark.

The same layers and parameter count (6,738,415,616 at 7B) as specs/llama2_7b.yaml: a token
embedding, 32 pre-norm blocks (RMSNorm, causal attention with rotary embeddings and a fused
q/k/v projection, RMSNorm, SwiGLU), a final RMSNorm and an untied output head, no biases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaConfig:
    vocab_size: int = 32000   # SentencePiece vocabulary
    dim: int = 4096           # model width
    n_layers: int = 32        # transformer blocks
    n_heads: int = 32         # attention heads (head size 128)
    hidden_dim: int = 11008   # SwiGLU width
    norm_eps: float = 1e-5    # RMSNorm epsilon
    rope_base: float = 10000.0  # rotary frequency base


def rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding of (B, nh, T, hs), pairing features i and i + hs/2."""
    T, hs = x.shape[-2], x.shape[-1]
    inv_freq = base ** -(torch.arange(0, hs, 2, device=x.device, dtype=torch.float32) / hs)
    angles = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
    first, second = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat((-second, first), dim=-1) * angles.sin()


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_heads, self.rope_base = config.n_heads, config.rope_base
        self.c_attn = nn.Linear(config.dim, 3 * config.dim, bias=False)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=-1))  # (B, nh, T, hs)
        q, k = rotate(q, self.rope_base), rotate(k, self.rope_base)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)

    def forward(self, tokens):
        x = self.tok_embeddings(tokens)  # (B, T, C)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))  # (B, T, vocab)


def build_on_meta(config: LlamaConfig | None = None) -> Llama:
    """Llama 2 7B (or `config`) on the meta device: shapes only, no memory for the weights."""
    with torch.device("meta"):
        return Llama(config or LlamaConfig())
