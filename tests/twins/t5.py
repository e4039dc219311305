"""T5 (Raffel et al., 2019) encoder-decoder as Hugging Face builds it (`T5Model(T5Config())`).

Pre-norm blocks with RMS layer norms (no bias, no mean), attention without the 1/sqrt(d) scale,
and a learned bias per head and relative-position bucket, computed by the first layer of each stack
and added in every layer. The token embedding `shared` feeds both stacks.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int):
    """Exact buckets for small distances, logarithmic ones up to max_distance (T5's scheme)."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(relative < max_exact, relative, large)


class T5LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class T5Attention(nn.Module):
    def __init__(self, d_model, d_kv, num_heads, relative_bias=False, bidirectional=True, num_buckets=32,
                 max_distance=128):
        super().__init__()
        inner = d_kv * num_heads
        self.num_heads, self.d_kv = num_heads, d_kv
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)
        if relative_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)

    def position_bias(self, q_len: int, k_len: int) -> torch.Tensor:
        """[1, heads, q_len, k_len]."""
        relative = torch.arange(k_len)[None, :] - torch.arange(q_len)[:, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]

    def forward(self, x, key_value=None, bias=None):
        key_value = x if key_value is None else key_value

        def heads(t):
            return t.view(t.shape[0], -1, self.num_heads, self.d_kv).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(key_value)), heads(self.v(key_value))
        scores = q @ k.transpose(-1, -2)          # T5 folds the 1/sqrt(d) scale into its initialisation
        if bias is not None:
            scores = scores + bias
        out = (scores.float().softmax(-1).type_as(scores) @ v).transpose(1, 2)
        return self.o(out.reshape(x.shape[0], -1, self.num_heads * self.d_kv))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config, relative_bias, bidirectional):
        super().__init__()
        self.SelfAttention = T5Attention(config["d_model"], config["d_kv"], config["num_heads"], relative_bias,
                                         bidirectional)
        self.layer_norm = T5LayerNorm(config["d_model"], config["eps"])

    def forward(self, x, bias):
        return x + self.SelfAttention(self.layer_norm(x), bias=bias)


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.EncDecAttention = T5Attention(config["d_model"], config["d_kv"], config["num_heads"])
        self.layer_norm = T5LayerNorm(config["d_model"], config["eps"])

    def forward(self, x, encoded):
        return x + self.EncDecAttention(self.layer_norm(x), key_value=encoded)


class T5DenseReluDense(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.wo(torch.relu(self.wi(x)))


class T5LayerFF(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.DenseReluDense = T5DenseReluDense(config["d_model"], config["d_ff"])
        self.layer_norm = T5LayerNorm(config["d_model"], config["eps"])

    def forward(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, config, relative_bias, is_decoder):
        super().__init__()
        self.is_decoder = is_decoder
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, relative_bias, bidirectional=not is_decoder)])
        if is_decoder:
            self.layer.append(T5LayerCrossAttention(config))
        self.layer.append(T5LayerFF(config))

    def forward(self, x, bias, encoded=None):
        x = self.layer[0](x, bias)
        if self.is_decoder:
            x = self.layer[1](x, encoded)
        return self.layer[-1](x)


class T5Stack(nn.Module):
    def __init__(self, config, num_layers, is_decoder):
        super().__init__()
        self.is_decoder = is_decoder
        self.block = nn.ModuleList(T5Block(config, i == 0, is_decoder) for i in range(num_layers))
        self.final_layer_norm = T5LayerNorm(config["d_model"], config["eps"])

    def forward(self, x, encoded=None):
        length = x.shape[1]
        bias = self.block[0].layer[0].SelfAttention.position_bias(length, length)
        if self.is_decoder:   # causal: position i sees positions <= i
            future = torch.ones(length, length, dtype=torch.bool).triu(1)
            bias = bias.masked_fill(future, torch.finfo(bias.dtype).min)
        for block in self.block:
            x = block(x, bias, encoded)
        return self.final_layer_norm(x)


class T5Model(nn.Module):
    """Returns (decoder last hidden state, encoder last hidden state), as T5Model's outputs 0 and 2."""

    def __init__(self, vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                 num_heads=8, layer_norm_epsilon=1e-6):
        super().__init__()
        config = {"d_model": d_model, "d_kv": d_kv, "d_ff": d_ff, "num_heads": num_heads, "eps": layer_norm_epsilon}
        self.shared = nn.Embedding(vocab_size, d_model)
        self.encoder = T5Stack(config, num_layers, is_decoder=False)
        self.decoder = T5Stack(config, num_decoder_layers, is_decoder=True)

    def forward(self, input_ids, decoder_input_ids):
        encoded = self.encoder(self.shared(input_ids))
        return self.decoder(self.shared(decoder_input_ids), encoded), encoded
