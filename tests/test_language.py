"""The spec language's round-2 features (issue 20): `if:`, `repeat: 0`, layer-valued args, `$in`,
free tensors, `attention`, the new functions, variants, imports next to the spec, LayerNorm2d.

Each feature is checked against the same model written by hand in torch (same weights, equal
outputs), and each mistake against its file:line:column.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import specc
from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecError
from spec_helpers import build, where


def first_problem(text: str, **variables):
    with pytest.raises(SpecError) as raised:
        compile_spec(text, **variables)
    return raised.value.problems[0]


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- if: and repeat: 0 -------------------------------------------------------------------------

GATED = """\
inputs: {x: {shape: [8]}}
vars: {extra: false}
layers:
  - Linear: [16]
  - Linear: [16]
    name: gated
    if: $extra
  - Linear: [4]
    from: gated
"""


def test_if_false_skips_the_item_and_its_name_passes_the_input_on():
    model = build(GATED)
    assert params(model) == (8 * 16 + 16) + (16 * 4 + 4)
    assert "gated" not in dict(model.named_modules())
    x = torch.randn(3, 8)
    # the skipped item takes no number, as a layer left out of an nn.Sequential: the last Linear is `1`
    assert torch.equal(model(x), getattr(model, "1")(getattr(model, "0")(x)))


def test_if_true_keeps_the_item():
    model = build(GATED, extra=True)
    assert params(model) == (8 * 16 + 16) + (16 * 16 + 16) + (16 * 4 + 4)
    x = torch.randn(3, 8)
    assert torch.equal(model(x), getattr(model, "2")(model.gated(getattr(model, "0")(x))))


def test_repeat_zero_skips_the_item():
    model = build("inputs: {x: {shape: [8]}}\nlayers:\n  - Linear: [8]\n    repeat: 0\n  - Linear: [2]\n")
    assert params(model) == 8 * 2 + 2


def test_if_must_be_a_bool():
    problem = first_problem("inputs: {x: {shape: [8]}}\nlayers:\n  - Linear: [8]\n    if: sometimes\n")
    assert where(problem) == (4, 5, "TYPE_ERROR")
    assert "if must be true, false" in problem.message


# --- layer-valued args ---------------------------------------------------------------------------

ACTIVATED = """\
inputs: {x: {shape: [8]}}
blocks:
  layer:
    args: {act: ReLU}
    layers:
      - Linear: [8]
      - $act
layers:
  - layer
  - layer: {act: Hardswish}
  - layer: {act: GELU}
  - $last: {inplace: true}
vars: {last: ReLU6}
"""


def test_a_var_naming_a_layer_is_the_item():
    model = build(ACTIVATED)
    types = [type(module).__name__ for module in model.modules()]
    assert [t for t in types if t in ("ReLU", "Hardswish", "GELU", "ReLU6")] == ["ReLU", "Hardswish", "GELU", "ReLU6"]
    assert model.get_submodule("3").inplace is True


def test_a_layer_valued_var_that_names_nothing_is_located():
    problem = first_problem(ACTIVATED.replace("act: GELU", "act: Hardswich"))
    assert where(problem) == (7, 9, "UNKNOWN_LAYER")
    assert "unknown layer 'Hardswich'" in problem.message and problem.suggestion == "Hardswish"


def test_a_layer_valued_var_must_be_a_name():
    problem = first_problem("inputs: {x: {shape: [8]}}\nvars: {act: 3}\nlayers:\n  - $act\n")
    assert where(problem) == (4, 5, "TYPE_ERROR")
    assert "'$act' must name a layer, block or function, got 3" in problem.message


# --- $in ---------------------------------------------------------------------------------------

SQUEEZE = """\
inputs: {x: {shape: [3, 8, 8]}}
blocks:
  se:
    args: {c: $in.channels}
    layers:
      - parallel:
          scale:
            - AdaptiveAvgPool2d: 1
            - Conv2d: {out_channels: $(c // 4), kernel_size: 1}
            - ReLU
            - Conv2d: {out_channels: $c, kernel_size: 1}
            - Sigmoid
          identity: [Identity]
        merge: mul
layers:
  - Conv2d: {out_channels: 16, kernel_size: 3, padding: 1}
  - Conv2d: {out_channels: $in.channels, kernel_size: 3, padding: 1, groups: $in.channels}
    name: depthwise
  - se:
  - Conv2d: {out_channels: "$(in.shape[1] * 2)", kernel_size: 1}
"""


class HandWrittenSqueeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.reduce, self.expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Conv2d(16, 16, 1)   # in.shape[1] is the height, 8

    def forward(self, x):
        x = self.depthwise(self.stem(x))
        x = x * torch.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(x)


def test_in_sizes_fill_item_args_and_block_defaults():
    model = build(SQUEEZE)
    twin = HandWrittenSqueeze()
    assert params(model) == params(twin)
    twin.load_state_dict(dict(zip(twin.state_dict(), model.state_dict().values())))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), twin(x))
    assert model.depthwise.groups == 16


def test_in_out_of_range_names_the_item_and_the_shape():
    problem = first_problem(SQUEEZE.replace("in.shape[1] * 2", "in.shape[5] * 2"))
    assert where(problem) == (20, 5, "EXPRESSION_ERROR")
    assert "in.shape[5] is out of range for an input of shape [16, 8, 8]" in problem.message
    assert "Conv2d" in problem.message


def test_in_is_refused_where_sizes_are_not_known_yet():
    problem = first_problem("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: [4]\n    repeat: $in.features\n")
    assert where(problem) == (4, 5, "EXPRESSION_ERROR")
    assert "depends on the input's size ($in)" in problem.message


# --- free tensors ------------------------------------------------------------------------------

TOKENS = """\
inputs: {x: {shape: [5, 8]}}
layers:
  - parameter: {shape: [1, 1, 8], batch: true}
    name: class_token
    from: x
  - cat:
    from: [class_token, x]
    name: joined
  - parameter: {shape: [1, 6, 8], init: {normal: {std: 0.02}}}
    name: position
  - add:
    from: [joined, position]
  - constant: {arange: 6}
    name: index
  - buffer: {ones: [6]}
    name: scale
  - mul:
    from: [index, scale]
"""


def test_parameters_are_state_dict_entries_under_their_names():
    model = build(TOKENS)
    state = model.state_dict()
    assert list(state) == ["class_token", "position", "scale"]          # constants are not saved
    assert state["class_token"].shape == (1, 1, 8) and torch.equal(state["class_token"], torch.zeros(1, 1, 8))
    assert state["position"].shape == (1, 6, 8) and 0.005 < state["position"].std() < 0.05
    assert params(model) == 8 + 48
    assert torch.equal(model.index, torch.arange(6).unsqueeze(0))


def test_free_tensors_compute_like_hand_written_code():
    model = build(TOKENS)
    x = torch.randn(3, 5, 8)
    expected = torch.arange(6).unsqueeze(0) * torch.ones(1, 6)
    assert torch.equal(model(x), expected)
    tokens = build(TOKENS.split("  - constant")[0])
    manual = torch.cat([tokens.class_token.expand(3, -1, -1), x], dim=1) + tokens.position
    torch.testing.assert_close(tokens(x), manual)


def test_free_tensor_mistakes_are_located():
    problem = first_problem("inputs: {x: {shape: [4]}}\nlayers:\n  - parameter: {shap: [4]}\n")
    assert where(problem) == (3, 17, "UNKNOWN_KWARG") and problem.suggestion == "shape"
    problem = first_problem("inputs: {x: {shape: [4]}}\nlayers:\n  - constant: {arange: 4, ones: [4]}\n")
    assert where(problem) == (3, 5, "MISSING_ARGUMENT")
    assert "exactly one of value, arange, zeros, ones" in problem.message
    problem = first_problem("inputs: {x: {shape: [4]}}\nlayers:\n  - parameter: {shape: [4], init: gaussian}\n")
    assert where(problem) == (3, 29, "TYPE_ERROR")


# --- attention ---------------------------------------------------------------------------------

ATTENTION = """\
inputs: {x: {shape: [6, 16]}, bias: {shape: [4, 6, 6]}}
layers:
  - Linear: {out_features: 48, bias: false}
    name: qkv
  - chunk: [3, -1]
  - getitem: 0
    name: q
  - getitem: 1
    from: 1
    name: k
  - getitem: 2
    from: 1
    name: v
  - attention: {heads: 4, causal: $causal, scale: $scale}
    from: $sources
"""


def manual_attention(q, k, v, heads, bias=None, causal=False, scale=None):
    B, T, C = q.shape
    q, k, v = (t.view(B, -1, heads, C // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(C // heads))
    if bias is not None:
        scores = scores + bias
    if causal:
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)


@pytest.mark.parametrize("causal, scale, with_bias", [(False, None, False), (True, None, False), (False, 1.0, True)])
def test_attention_splits_heads_and_matches_the_formula(causal, scale, with_bias):
    sources = ["q", "k", "v", "bias"] if with_bias else ["q", "k", "v"]
    model = build(ATTENTION, causal=causal, scale=scale, sources=sources)
    x, bias = torch.randn(2, 6, 16), torch.randn(2, 4, 6, 6)
    q, k, v = model.qkv(x).chunk(3, dim=-1)
    expected = manual_attention(q, k, v, 4, bias if with_bias else None, causal, scale)
    torch.testing.assert_close(model(x, bias), expected)


def test_attention_flops_are_counted_exactly():
    from torch.utils.flop_counter import FlopCounterMode

    result = specc.summary(ATTENTION, causal=False, scale=None, sources=["q", "k", "v"])
    q = torch.randn(1, 4, 6, 4, device="meta")   # batch 1, 4 heads, 6 tokens, head dim 4
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    row = next(row for row in result.rows if row.type == "Attention")
    assert row.flops == counter.get_total_flops() == 2 * (2 * 1 * 4 * 6 * 6 * 4)   # q·k and weights·v


def test_attention_heads_must_divide_the_width():
    problem = first_problem(ATTENTION.replace("heads: 4", "heads: 5"), causal=False, scale=None, sources=["q", "k", "v"])
    assert where(problem) == (14, 5, "SHAPE_MISMATCH")
    assert "5 heads dividing its last dim, got [6, 16]" in problem.message


# --- functions ---------------------------------------------------------------------------------

FUNCTION_CASES = [
    ("roll: {shifts: 2, dims: 1}", lambda x, y: torch.roll(x, 2, 1)),
    ("expand: [4, 6]\n    from: first", lambda x, y: x[:, :1].expand(3, 4, 6)),
    ("repeat_interleave: {repeats: 2, dim: 1}", lambda x, y: x.repeat_interleave(2, dim=1)),
    ("clamp: {min: -0.5, max: 0.5}", lambda x, y: x.clamp(-0.5, 0.5)),
    ("exp:", lambda x, y: x.exp()), ("log:\n    from: y", lambda x, y: y.log()), ("abs:", lambda x, y: x.abs()),
    ("neg:", lambda x, y: -x), ("pow: 2", lambda x, y: x ** 2), ("rsqrt:\n    from: y", lambda x, y: y.rsqrt()),
    ("einsum: \"bij,bkj->bik\"\n    from: [x, y]", lambda x, y: torch.einsum("bij,bkj->bik", x, y)),
    ("where: {other: 0.0}\n    from: [mask, x]", lambda x, y: torch.where(x > 0, x, 0.0)),
    ("masked_fill: -1.0\n    from: [x, mask]", lambda x, y: x.masked_fill(x > 0, -1.0)),
    # the index is a batchless constant [1, 4, 6], so the output has no batch dim: declared
    ("gather: 1\n    from: [x, index]\n    batch_dim: false", lambda x, y: x.gather(1, torch.zeros(1, 4, 6, dtype=torch.long))),
]


@pytest.mark.parametrize("item, expected", FUNCTION_CASES, ids=[case[0].split(":")[0].split("\n")[0] for case in FUNCTION_CASES])
def test_new_functions_match_torch(item, expected):
    text = ("inputs: {x: {shape: [4, 6]}, y: {shape: [4, 6]}}\nlayers:\n"
            "  - gt: 0\n    from: x\n    name: mask\n"
            "  - constant: {zeros: [4, 6], dtype: long}\n    name: index\n"
            "  - getitem: \"[:, :1]\"\n    from: x\n    name: first\n"
            f"  - {item}\n" + ("    from: x\n" if "from:" not in item else ""))
    model = build(text)
    x, y = torch.randn(3, 4, 6), torch.rand(3, 4, 6) + 0.1
    torch.testing.assert_close(model(x, y), expected(x, y))


def test_two_input_function_needs_its_other_input():
    problem = first_problem("inputs: {x: {shape: [4]}}\nlayers:\n  - where\n")
    assert where(problem) == (3, 5, "MISSING_ARGUMENT")
    assert "where needs at least two inputs (`from: [...]`), got 1" in problem.message


def test_key_padding_masks_reach_multihead_attention_and_encoder_layers():
    pad = torch.tensor([[False] * 5 + [True], [False] * 6])
    x = torch.randn(2, 6, 8)
    text = ("inputs: {x: {shape: [6, 8]}, pad: {shape: [6], dtype: bool}}\nlayers:\n"
            "  - MultiheadAttention: {num_heads: 2, batch_first: true}\n    from: [x, x, x, pad]\n    name: mha\n"
            "  - TransformerEncoderLayer: {nhead: 2, dim_feedforward: 16, dropout: 0.0, batch_first: true}\n"
            "    from: [x, pad]\n    name: encoder\n"
            "  - add:\n    from: [mha, encoder]\n")
    model = build(text).eval()
    expected = model.mha(x, x, x, key_padding_mask=pad, need_weights=False)[0] + model.encoder(x, src_key_padding_mask=pad)
    torch.testing.assert_close(model(x, pad), expected)
    unmasked = model.mha(x, x, x, need_weights=False)[0] + model.encoder(x)
    assert not torch.allclose(model(x, pad), unmasked)


def test_layer_norm_2d_normalises_channels_like_permute_layer_norm_permute():
    model = build("inputs: {x: {shape: [6, 5, 4]}}\nlayers:\n  - LayerNorm2d: {eps: 1.0e-6}\n    name: norm\n")
    with torch.no_grad():
        model.norm.weight.normal_()
        model.norm.bias.normal_()
    reference = nn.LayerNorm(6, eps=1e-6)
    reference.load_state_dict(model.norm.state_dict())
    x = torch.randn(2, 6, 5, 4)
    torch.testing.assert_close(model(x), reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    assert model.norm.normalized_shape == (6,)


def test_layer_norm_dim_1_is_the_channels_first_layer_norm():
    model = build("inputs: {x: {shape: [6, 5, 4]}}\nlayers:\n  - LayerNorm: {dim: 1, eps: 1.0e-6}\n    name: norm\n")
    assert type(model.norm).__name__ == "LayerNorm2d" and list(model.state_dict()) == ["norm.weight", "norm.bias"]
    with torch.no_grad():
        model.norm.weight.normal_()
        model.norm.bias.normal_()
    reference = nn.LayerNorm(6, eps=1e-6)
    reference.load_state_dict(model.norm.state_dict())
    x = torch.randn(2, 6, 5, 4)
    torch.testing.assert_close(model(x), reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    last = build("inputs: {x: {shape: [6, 5, 4]}}\nlayers:\n  - LayerNorm: {dim: -1}\n")
    assert getattr(last, "0").normalized_shape == (4,)                  # the default: the last dim


def test_layer_norm_over_another_dim_is_a_located_error():
    problem = first_problem("inputs: {x: {shape: [6, 5, 4]}}\nlayers:\n  - LayerNorm: {dim: 2}\n")
    assert where(problem) == (3, 17, "TYPE_ERROR")
    assert problem.message.startswith("LayerNorm: dim must be 1 (the channels of channels-first maps")


def test_torch_layers_dim_is_an_axis_not_an_inferred_size():
    model = build("inputs: {x: {shape: [6]}}\nlayers:\n  - Unflatten: {dim: 1, unflattened_size: [2, 3]}\n")
    assert model(torch.arange(12.0).view(2, 6)).shape == (2, 2, 3)


# --- imports next to the spec --------------------------------------------------------------------

def test_imports_find_a_module_in_the_spec_folder_first(tmp_path):
    (tmp_path / "lang_features_local_layers.py").write_text(
        "import torch\nclass Double(torch.nn.Module):\n    def forward(self, x):\n        return 2 * x\n"
        "def not_a_layer():\n    return 1\n")
    spec = tmp_path / "model.yaml"
    spec.write_text("inputs: {x: {shape: [3]}}\nimports: [lang_features_local_layers.Double]\nlayers:\n  - Double\n")
    model = build(spec)
    assert torch.equal(model(torch.ones(2, 3)), torch.full((2, 3), 2.0))
    spec.write_text("inputs: {x: {shape: [3]}}\nimports: [lang_features_local_layers.not_a_layer]\nlayers:\n  - ReLU\n")
    problem = first_problem(spec)
    assert where(problem) == (2, 11, "IMPORT_ERROR")
    assert "not an nn.Module subclass" in problem.message
