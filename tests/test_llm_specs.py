"""The language-model specs: exact parameter counts of the real models (built on meta), and
small versions built on cpu that compute the same function as hand-written nanoGPT-style
references loaded with the same weights."""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specc.weights.building import build

SPECS = Path(__file__).resolve().parent.parent / "specs"
GPT2 = SPECS / "gpt2_small.yaml"
LLAMA = SPECS / "llama2_7b.yaml"
ENCODER = SPECS / "transformer_encoder.yaml"


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def renamed(state_dict: dict, rules: list[tuple[str, str]]) -> dict:
    """Rename state_dict keys with regex rules; every key must match exactly one rule."""
    result = {}
    for key, value in state_dict.items():
        matches = [(pattern, replacement) for pattern, replacement in rules if re.fullmatch(pattern, key)]
        assert len(matches) == 1, f"{key}: matched {len(matches)} rules"
        pattern, replacement = matches[0]
        result[re.sub(pattern, replacement, key)] = value
    return result


# --- a hand-written GPT-2 (nanoGPT's model.py, trimmed to inference) ---------------------------

@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int


class ReferenceGPTAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class ReferenceGPTBlock(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = ReferenceGPTAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(config.n_embd, 4 * config.n_embd),
                                      c_proj=nn.Linear(4 * config.n_embd, config.n_embd)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([ReferenceGPTBlock(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx):
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)


GPT2_RENAMES = [
    (r"wte\.weight", "transformer.wte.weight"),
    (r"wpe\.weight", "transformer.wpe.weight"),
    (r"h\.(\d+)\.attention\.body\.norm\.(\w+)", r"transformer.h.\1.ln_1.\2"),
    (r"h\.(\d+)\.attention\.body\.attn\.(c_attn|c_proj)\.(\w+)", r"transformer.h.\1.attn.\2.\3"),
    (r"h\.(\d+)\.feed_forward\.body\.norm\.(\w+)", r"transformer.h.\1.ln_2.\2"),
    (r"h\.(\d+)\.feed_forward\.body\.mlp\.(c_fc|c_proj)\.(\w+)", r"transformer.h.\1.mlp.\2.\3"),
    (r"ln_f\.(\w+)", r"transformer.ln_f.\1"),
    (r"head\.weight", "lm_head.weight"),
]


# --- a hand-written Llama (Meta's model.py structure; rope via complex numbers) ---------------

@dataclass
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    norm_eps: float = 1e-5


def reference_rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate (B, T, nh, hs) by complex multiplication, pairing features i and i + hs/2."""
    T, half = x.shape[1], x.shape[-1] // 2
    frequencies = 1.0 / base ** (torch.arange(0, 2 * half, 2).float() / (2 * half))
    rotations = torch.polar(torch.ones(T, half), torch.outer(torch.arange(T).float(), frequencies))
    pairs = torch.complex(x[..., :half], x[..., half:]) * rotations[None, :, None, :]
    return torch.cat([pairs.real, pairs.imag], dim=-1)


class ReferenceLlamaBlock(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        dim, self.n_heads = config.dim, config.n_heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.w1 = nn.Linear(dim, config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, config.hidden_dim, bias=False)
        self.attention_norm = nn.RMSNorm(dim, eps=config.norm_eps)
        self.ffn_norm = nn.RMSNorm(dim, eps=config.norm_eps)

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = (w(x).view(B, T, self.n_heads, C // self.n_heads) for w in (self.wq, self.wk, self.wv))
        q, k = reference_rope(q), reference_rope(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // self.n_heads)
        scores = scores + torch.full((T, T), float("-inf")).triu(1)
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        return self.wo(y)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class ReferenceLlama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList([ReferenceLlamaBlock(config) for _ in range(config.n_layers)])
        self.norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)

    def forward(self, tokens):
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


def llama_state_dict_from_spec(state_dict: dict) -> dict:
    """Split the spec's fused c_attn into wq/wk/wv and rename everything to Meta's names."""
    result = {}
    for key, value in state_dict.items():
        fused = re.fullmatch(r"layers\.(\d+)\.attention\.body\.attn\.c_attn\.weight", key)
        if fused:
            for name, part in zip(("wq", "wk", "wv"), value.chunk(3, dim=0)):
                result[f"layers.{fused.group(1)}.{name}.weight"] = part
            continue
        result.update(renamed({key: value}, [
            (r"tok_embeddings\.weight|norm\.weight|output\.weight", r"\g<0>"),
            (r"layers\.(\d+)\.attention\.body\.norm\.weight", r"layers.\1.attention_norm.weight"),
            (r"layers\.(\d+)\.attention\.body\.attn\.c_proj\.weight", r"layers.\1.wo.weight"),
            (r"layers\.(\d+)\.feed_forward\.body\.norm\.weight", r"layers.\1.ffn_norm.weight"),
            (r"layers\.(\d+)\.feed_forward\.body\.mlp\.(w\d)\.weight", r"layers.\1.\2.weight"),
        ]))
    return result


# --- full-size parameter counts on meta --------------------------------------------------------

def test_gpt2_small_has_124m_parameters_with_the_head_tied():
    model = build(GPT2, device="meta")
    assert parameter_count(model) == 124_439_808
    assert model.get_submodule("head").weight is model.get_submodule("wte").weight


def test_llama2_7b_has_its_exact_parameter_count_and_builds_on_meta_quickly():
    start = time.perf_counter()
    model = build(LLAMA, device="meta")
    elapsed = time.perf_counter() - start
    assert parameter_count(model) == 6_738_415_616
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.get_submodule("output").weight is not model.get_submodule("tok_embeddings").weight
    assert elapsed < 30, f"building Llama 2 7B on meta took {elapsed:.1f}s"


def test_transformer_encoder_parameter_count():
    model = build(ENCODER, device="meta")
    vocab, seq, dim, ff, layers, classes = 8000, 128, 128, 512, 2, 4
    encoder_layer = (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * ff + ff) + (ff * dim + dim) + 4 * dim
    expected = vocab * dim + seq * dim + layers * encoder_layer + 2 * dim + dim * classes + classes
    assert parameter_count(model) == expected


# --- small models on cpu against the references ------------------------------------------------

SMALL_GPT2 = dict(vocab_size=97, block_size=16, dim=32, n_layers=2, n_heads=4)


def test_small_gpt2_matches_hand_written_nanogpt():
    torch.manual_seed(0)
    model = build(GPT2, device="cpu", **SMALL_GPT2).eval()
    config = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32)
    reference = ReferenceGPT(config).eval()
    reference.load_state_dict(renamed(model.state_dict(), GPT2_RENAMES))
    tokens = torch.randint(0, 97, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, 97)
    torch.testing.assert_close(logits, reference(tokens))
    assert parameter_count(model) == parameter_count(reference)


def test_small_gpt2_tied_head_shares_storage_and_trains_as_one_tensor():
    model = build(GPT2, device="cpu", **SMALL_GPT2)
    head, embedding = model.get_submodule("head").weight, model.get_submodule("wte").weight
    assert head.data_ptr() == embedding.data_ptr()
    model(torch.randint(0, 97, (2, 16))).sum().backward()
    assert embedding.grad is not None and head.grad is embedding.grad


def test_small_llama_matches_hand_written_reference():
    torch.manual_seed(0)
    sizes = dict(vocab_size=61, max_len=12, dim=32, n_layers=2, n_heads=4, hidden_dim=48)
    model = build(LLAMA, device="cpu", **sizes).eval()
    config = LlamaConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, hidden_dim=48)
    reference = ReferenceLlama(config).eval()
    reference.load_state_dict(llama_state_dict_from_spec(model.state_dict()))
    tokens = torch.randint(0, 61, (2, 12))
    torch.testing.assert_close(model(tokens), reference(tokens))
    assert parameter_count(model) == parameter_count(reference)


def test_transformer_encoder_classifies_each_text():
    torch.manual_seed(0)
    model = build(ENCODER, device="cpu", seq_len=16, vocab_size=50, dim=32).eval()
    tokens = torch.randint(0, 50, (3, 16))
    scores = model(tokens)
    assert scores.shape == (3, 4)
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 50  # bidirectional: the last token moves every score
    assert not torch.allclose(model(changed)[0], scores[0])
    torch.testing.assert_close(model(changed)[1:], scores[1:])


@pytest.mark.parametrize("path", [GPT2, LLAMA, ENCODER], ids=lambda path: path.stem)
def test_specs_open_with_a_comment_on_how_to_run_them(path):
    text = path.read_text()
    assert text.startswith("# ")
    assert f"specc summary specs/{path.name}" in text and f"specc draw specs/{path.name}" in text


@pytest.mark.parametrize("path, sizes", [
    (GPT2, SMALL_GPT2),
    (LLAMA, dict(vocab_size=61, max_len=16, dim=32, n_layers=2, n_heads=4, hidden_dim=48)),
], ids=["gpt2_small", "llama2_7b"])
def test_small_language_models_export_with_a_dynamic_sequence_length(path, sizes):
    model = build(path, device="cpu", **sizes).eval()
    vocab = sizes["vocab_size"]
    sequence = torch.export.Dim("sequence", min=2, max=16)
    exported = torch.export.export(model, (torch.randint(0, vocab, (2, 16)),), dynamic_shapes=({1: sequence},))
    shorter = torch.randint(0, vocab, (2, 7))
    torch.testing.assert_close(exported.module()(shorter), model(shorter))
