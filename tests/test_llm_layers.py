"""specc's attention and feed-forward layers in the layouts the libraries use (issue #26.2): each
compared with a hand-written Hugging Face-style module (eager softmax attention, `repeat_kv`,
`rotate_half`) loaded with the same state_dict by name, strictly."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specc.build.compiler import compile as compile_spec
from specc.build.attention_layers import rotary_inverse_frequencies
from specc.build.layers import CausalSelfAttention, OffsetRMSNorm, SwiGLU
from specc.lang.errors import SpecError


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class HFStyleAttention(nn.Module):
    """Llama/Qwen2/Gemma attention as transformers writes it (eager path), with partial rotary."""

    def __init__(self, dim, n_heads, n_kv_heads, head_dim, qkv_bias, o_bias, inverse_frequencies):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=o_bias)
        self.inverse_frequencies = inverse_frequencies

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        freqs = torch.arange(T, dtype=torch.float32)[:, None] * self.inverse_frequencies[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        rd = cos.shape[-1]
        q = torch.cat((q[..., :rd] * cos + rotate_half(q[..., :rd]) * sin, q[..., rd:]), dim=-1)
        k = torch.cat((k[..., :rd] * cos + rotate_half(k[..., :rd]) * sin, k[..., rd:]), dim=-1)
        groups = self.n_heads // self.n_kv_heads
        k = k[:, :, None].expand(B, self.n_kv_heads, groups, T, self.head_dim).reshape(B, self.n_heads, T, self.head_dim)
        v = v[:, :, None].expand(B, self.n_kv_heads, groups, T, self.head_dim).reshape(B, self.n_heads, T, self.head_dim)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        out = scores.softmax(-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


def _perturbed(module: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return module.eval()


CASES = {   # (dim, n_heads, n_kv_heads, head_dim, qkv_bias, o_bias, rope_fraction, rope_scaling)
    "llama3_gqa": (96, 6, 2, 16, False, False, 1.0, None),
    "qwen2_bias": (96, 6, 2, 16, True, False, 1.0, None),
    "gemma_head_dim": (96, 4, 1, 32, False, False, 1.0, None),
    "partial_rotary": (64, 4, 4, 16, True, True, 0.5, None),
    "llama31_scaling": (64, 4, 2, 16, False, False, 1.0,
                        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32}),
}


def _hf_inverse_frequencies(rotary_dim: int, base: float, scaling: dict | None) -> torch.Tensor:
    """transformers' default and llama3 `inv_freq`, written out from its modeling_rope_utils."""
    inverse = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    if scaling is None:
        return inverse
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_wavelength, high_wavelength = old_context / low, old_context / high
    wavelength = 2 * math.pi / inverse
    llama = torch.where(wavelength > low_wavelength, inverse / factor, inverse)
    smooth = (old_context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * llama / factor + smooth * llama
    medium = ~(wavelength < high_wavelength) * ~(wavelength > low_wavelength)
    return torch.where(medium, smoothed, llama)


@pytest.mark.parametrize("case", CASES)
def test_hf_layout_attention_equals_hand_written_hf_attention(case):
    dim, n_heads, n_kv_heads, head_dim, qkv_bias, o_bias, fraction, scaling = CASES[case]
    base = 500000.0
    layer = CausalSelfAttention(dim, n_heads, bias=qkv_bias, rope=True, rope_base=base, n_kv_heads=n_kv_heads,
                                layout="hf", head_dim=head_dim, out_bias=o_bias, rope_scaling=scaling,
                                rope_fraction=fraction)
    layer = _perturbed(layer)
    rotary_dim = int(head_dim * fraction)
    reference = HFStyleAttention(dim, n_heads, n_kv_heads, head_dim, qkv_bias, o_bias,
                                 _hf_inverse_frequencies(rotary_dim, base, scaling)).eval()
    reference.load_state_dict(layer.state_dict(), strict=True)       # the very same names and shapes
    x = torch.randn(2, 40, dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), atol=2e-5, rtol=1e-4)
    assert ("q_proj.bias" in layer.state_dict()) == qkv_bias and ("o_proj.bias" in layer.state_dict()) == o_bias


def test_llama3_frequency_scaling_changes_only_long_wavelengths():
    scaling = CASES["llama31_scaling"][-1]
    plain = rotary_inverse_frequencies(16, 500000.0, torch.device("cpu"))
    scaled = rotary_inverse_frequencies(16, 500000.0, torch.device("cpu"), scaling)
    torch.testing.assert_close(scaled, _hf_inverse_frequencies(16, 500000.0, scaling))
    assert scaled[0] == plain[0] and scaled[-1] == plain[-1] / 8     # fastest kept, slowest divided by factor
    linear = rotary_inverse_frequencies(16, 10000.0, torch.device("cpu"), {"rope_type": "linear", "factor": 4.0})
    torch.testing.assert_close(linear, rotary_inverse_frequencies(16, 10000.0, torch.device("cpu")) / 4)


def test_layouts_hold_the_libraries_names_and_compute_the_same():
    torch.manual_seed(0)
    fused = _perturbed(CausalSelfAttention(32, 4, n_kv_heads=2, rope=True, bias=False))
    meta = CausalSelfAttention(32, 4, n_kv_heads=2, rope=True, bias=False, layout="meta").eval()
    hf = CausalSelfAttention(32, 4, n_kv_heads=2, rope=True, bias=False, layout="hf").eval()
    q, k, v = fused.c_attn.weight.split([32, 16, 16])
    meta.load_state_dict({"wq.weight": q, "wk.weight": k, "wv.weight": v, "wo.weight": fused.c_proj.weight})
    hf.load_state_dict({"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "o_proj.weight": fused.c_proj.weight})
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(meta(x), fused(x))
        torch.testing.assert_close(hf(x), fused(x))


def test_swiglu_hf_layout_and_gemma_activation():
    layer = _perturbed(SwiGLU(16, 40, layout="hf", activation="gelu_tanh"))
    assert sorted(layer.state_dict()) == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    x = torch.randn(3, 5, 16)
    expected = layer.down_proj(F.gelu(layer.gate_proj(x), approximate="tanh") * layer.up_proj(x))
    torch.testing.assert_close(layer(x), expected)
    assert sorted(SwiGLU(16, 40).state_dict()) == ["w1.weight", "w2.weight", "w3.weight"]


def test_offset_rms_norm_is_gemmas_norm():
    norm = _perturbed(OffsetRMSNorm(8, eps=1e-6))
    x = torch.randn(4, 8) * 3
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + norm.weight)
    torch.testing.assert_close(norm(x), expected)


ATTENTION_ITEM = """
inputs: {x: {shape: [9, 32]}}
layers:
  - Linear: {out_features: 32, bias: false}
    name: q
  - Linear: {out_features: 16, bias: false}
    from: x
    name: k
  - Linear: {out_features: 16, bias: false}
    from: x
    name: v
  - attention: {heads: 4, n_kv_heads: 2, causal: true, rope: true, rope_base: 500000.0, rope_fraction: 0.5}
    from: [q, k, v]
  - Linear: {out_features: 32, bias: false}
    name: o
"""


def test_attention_item_takes_rope_and_kv_heads():
    compiled = compile_spec(ATTENTION_ITEM, device="cpu")
    model = _perturbed(compiled.module)
    layer = CausalSelfAttention(32, 4, bias=False, rope=True, rope_base=500000.0, n_kv_heads=2, layout="hf",
                                rope_fraction=0.5).eval()
    layer.load_state_dict({f"{name}_proj.weight": model.state_dict()[f"{name}.weight"] for name in "qkvo"})
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), layer(x))


@pytest.mark.parametrize("args, message", [
    ("{n_heads: 4, layout: fuzed}", "layout must be one of"),
    ("{n_heads: 4, rope: true, rope_scaling: {rope_type: llama3, factor: 8.0}}", "missing"),
    ("{n_heads: 4, rope: true, rope_fraction: 0.1}", "rope_fraction"),
])
def test_bad_attention_options_are_located_errors(args, message):
    spec = f"inputs: {{x: {{shape: [6, 32]}}}}\nlayers:\n  - CausalSelfAttention: {args}\n"
    with pytest.raises(SpecError) as raised:
        compile_spec(spec, device="meta")
    assert message in str(raised.value) and ":3:" in str(raised.value)
