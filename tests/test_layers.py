"""Unit tests for specc.build.layers: shapes, the maths against hand-written versions, parameter counts,
causality, rotary embeddings, meta-device construction and tracing with torch.export / dynamo."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from specc.build.layers import (
    MLP, CausalSelfAttention, ClassToken, DropPath, LayerScale, PositionalEmbedding, SwiGLU,
    apply_rotary, rotary_cos_sin,
)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reference_attention(module: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Causal attention written out with an explicit mask and softmax (no SDPA, no rope, no GQA)."""
    B, T, C = x.shape
    nh, hs = module.n_heads, module.head_dim
    q, k, v = module.c_attn(x).split(C, dim=-1)
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)                      # (B, nh, T, T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(B, T, C)
    return module.c_proj(y)


# --- PositionalEmbedding -----------------------------------------------------------------------

def test_positional_embedding_adds_the_first_T_positions():
    layer = PositionalEmbedding(max_len=16, dim=8)
    x = torch.randn(2, 5, 8)
    assert torch.equal(layer(x), x + layer.weight[:5])
    assert parameter_count(layer) == 16 * 8


def test_positional_embedding_rejects_sequences_longer_than_max_len():
    with pytest.raises(ValueError, match="max_len=4"):
        PositionalEmbedding(max_len=4, dim=8)(torch.randn(1, 5, 8))


# --- CausalSelfAttention -----------------------------------------------------------------------

def test_attention_matches_explicit_masked_softmax():
    torch.manual_seed(0)
    layer = CausalSelfAttention(dim=32, n_heads=4).eval()
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(layer(x), reference_attention(layer, x))


@pytest.mark.parametrize("rope", [False, True])
def test_attention_is_causal(rope):
    torch.manual_seed(0)
    layer = CausalSelfAttention(dim=32, n_heads=4, rope=rope).eval()
    x = torch.randn(1, 10, 32)
    changed = x.clone()
    changed[:, 6] = torch.randn(32)  # alter token 6 only
    before, after = layer(x), layer(changed)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_attention_parameter_counts_match_gpt2_and_llama():
    dim = 64
    gpt2 = CausalSelfAttention(dim, n_heads=4)
    assert parameter_count(gpt2) == (dim * 3 * dim + 3 * dim) + (dim * dim + dim)
    llama = CausalSelfAttention(dim, n_heads=4, bias=False, rope=True)
    assert parameter_count(llama) == 4 * dim * dim
    grouped = CausalSelfAttention(dim, n_heads=8, n_kv_heads=2, bias=False)
    head_dim = dim // 8
    assert parameter_count(grouped) == dim * (dim + 2 * 2 * head_dim) + dim * dim
    assert list(dict(llama.named_buffers())) == []  # rope keeps no state


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    dim, n_heads, n_kv_heads = 32, 8, 2
    grouped = CausalSelfAttention(dim, n_heads, rope=True, n_kv_heads=n_kv_heads).eval()
    full = CausalSelfAttention(dim, n_heads, rope=True).eval()
    head_dim, repeats = dim // n_heads, n_heads // n_kv_heads
    q_w, k_w, v_w = grouped.c_attn.weight.split([dim, n_kv_heads * head_dim, n_kv_heads * head_dim])
    q_b, k_b, v_b = grouped.c_attn.bias.split([dim, n_kv_heads * head_dim, n_kv_heads * head_dim])

    def expand(t):  # (nkv * hs, ...) -> (nh * hs, ...): each kv head copied for its query heads
        return t.view(n_kv_heads, head_dim, *t.shape[1:]).repeat_interleave(repeats, 0).flatten(0, 1)

    with torch.no_grad():
        full.c_attn.weight.copy_(torch.cat([q_w, expand(k_w), expand(v_w)]))
        full.c_attn.bias.copy_(torch.cat([q_b, expand(k_b), expand(v_b)]))
        full.c_proj.load_state_dict(grouped.c_proj.state_dict())
    x = torch.randn(2, 6, dim)
    torch.testing.assert_close(grouped(x), full(x))


def test_attention_rejects_heads_that_do_not_divide_dim():
    with pytest.raises(ValueError, match="must divide"):
        CausalSelfAttention(dim=30, n_heads=4)


# --- rotary embeddings -------------------------------------------------------------------------

def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    head_dim = 16
    cos, sin = rotary_cos_sin(40, head_dim, 10000.0, torch.device("cpu"), torch.float32)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(query_position, key_position):
        rotated_q = apply_rotary(q, cos[query_position], sin[query_position])
        rotated_k = apply_rotary(k, cos[key_position], sin[key_position])
        return rotated_q @ rotated_k

    torch.testing.assert_close(score(7, 3), score(37, 33))
    torch.testing.assert_close(score(3, 7), score(20, 24))
    assert not torch.allclose(score(7, 3), score(8, 3))  # a different offset gives a different score


def test_rope_is_a_rotation():
    cos, sin = rotary_cos_sin(8, 16, 10000.0, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 3, 8, 16)
    rotated = apply_rotary(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated[..., 0, :], x[..., 0, :])  # position 0: angle 0


def test_rope_matches_complex_multiplication():
    """Half-split rope = multiplying (x_i + j x_{i+hs/2}) by e^{j theta_i pos} (Llama's definition)."""
    head_dim, T, base = 8, 5, 10000.0
    x = torch.randn(T, head_dim)
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(T).float(), inv_freq)
    pairs = torch.complex(x[:, : head_dim // 2], x[:, head_dim // 2:]) * torch.polar(torch.ones_like(angles), angles)
    expected = torch.cat([pairs.real, pairs.imag], dim=-1)
    cos, sin = rotary_cos_sin(T, head_dim, base, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected)


# --- feed-forward blocks -----------------------------------------------------------------------

def test_mlp_is_linear_gelu_linear():
    layer = MLP(dim=8, hidden_dim=32)
    x = torch.randn(2, 3, 8)
    expected = layer.c_proj(F.gelu(layer.c_fc(x)))
    torch.testing.assert_close(layer(x), expected)
    assert parameter_count(layer) == 8 * 32 + 32 + 32 * 8 + 8
    assert parameter_count(MLP(8, 32, bias=False)) == 2 * 8 * 32


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="gelu_tanh"):
        MLP(8, 32, activation="swish")


def test_swiglu_formula_and_parameter_count():
    layer = SwiGLU(dim=8, hidden_dim=24)
    x = torch.randn(2, 3, 8)
    expected = layer.w2(F.silu(layer.w1(x)) * layer.w3(x))
    torch.testing.assert_close(layer(x), expected)
    assert parameter_count(layer) == 3 * 8 * 24
    assert parameter_count(SwiGLU(8, 24, bias=True)) == 3 * 8 * 24 + 2 * 24 + 8


# --- small helpers -----------------------------------------------------------------------------

def test_class_token_is_prepended():
    layer = ClassToken(dim=4)
    with torch.no_grad():
        layer.token.fill_(7.0)
    x = torch.randn(3, 5, 4)
    y = layer(x)
    assert y.shape == (3, 6, 4)
    assert torch.all(y[:, 0] == 7.0) and torch.equal(y[:, 1:], x)


def test_layer_scale_multiplies_channels():
    layer = LayerScale(dim=4, init_value=0.1)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(layer(x), x * 0.1)
    assert parameter_count(layer) == 4


def test_drop_path_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    layer = DropPath(p=0.5)
    x = torch.ones(64, 3, 4)
    y = layer(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}       # dropped or scaled by 1 / (1 - p)
    assert torch.all(per_sample.min(dim=1).values == per_sample.max(dim=1).values)
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(ValueError):
        DropPath(p=1.0)


# --- meta device, export, compile --------------------------------------------------------------

def all_layers(dim: int = 32) -> dict[str, torch.nn.Module]:
    return {
        "positional": PositionalEmbedding(max_len=16, dim=dim),
        "gpt2_attention": CausalSelfAttention(dim, n_heads=4),
        "llama_attention": CausalSelfAttention(dim, n_heads=4, bias=False, rope=True, n_kv_heads=2),
        "mlp": MLP(dim, 4 * dim),
        "swiglu": SwiGLU(dim, 3 * dim),
        "class_token": ClassToken(dim),
        "layer_scale": LayerScale(dim),
        "drop_path": DropPath(0.1),
    }


def test_layers_build_and_run_on_meta():
    with torch.device("meta"):
        layers = all_layers()
    x = torch.empty(2, 8, 32, device="meta")
    for name, layer in layers.items():
        y = layer.train()(x)
        expected = (2, 9, 32) if name == "class_token" else (2, 8, 32)
        assert y.device.type == "meta" and tuple(y.shape) == expected, name


def test_meta_built_rope_attention_works_after_to_empty():
    torch.manual_seed(0)
    reference = CausalSelfAttention(32, n_heads=4, bias=False, rope=True).eval()
    with torch.device("meta"):
        layer = CausalSelfAttention(32, n_heads=4, bias=False, rope=True).eval()
    layer = layer.to_empty(device="cpu")
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(2, 8, 32)
    torch.testing.assert_close(layer(x), reference(x))


@pytest.mark.parametrize("name", ["gpt2_attention", "llama_attention", "positional", "swiglu", "mlp"])
def test_layers_export_with_a_dynamic_sequence_length(name):
    layer = all_layers()[name].eval()
    x = torch.randn(2, 8, 32)
    sequence = torch.export.Dim("sequence", min=2, max=16)
    exported = torch.export.export(layer, (x,), dynamic_shapes=({1: sequence},))
    shorter = torch.randn(2, 5, 32)
    torch.testing.assert_close(exported.module()(shorter), layer(shorter))


def test_llama_attention_compiles_without_graph_breaks():
    torch._dynamo.reset()
    layer = all_layers()["llama_attention"].eval()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(2, 8, 32)
    torch.testing.assert_close(compiled(x), layer(x))
