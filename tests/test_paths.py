"""Module paths a library uses, written in a spec (issue 26, item 4): dotted names place a layer at
that path (`attention.self.query`, `resnets.0`), unnamed items are numbered like nn.Sequential
(a skipped item takes no number), and no spec name can break the generated forward (`self`, two
inputs both called `out`).

Each spec is checked against the same model written by hand in torch: identical state_dict keys,
the hand-written weights loaded with `strict=True`, equal outputs.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from spec_helpers import build, problems, where


def assert_same_model(spec_model: nn.Module, reference: nn.Module, forward, *inputs) -> None:
    """Same keys in the same order; the reference's weights load strictly; the outputs are equal."""
    assert list(spec_model.state_dict()) == list(reference.state_dict())
    spec_model.load_state_dict(reference.state_dict(), strict=True)
    spec_model.eval(), reference.eval()
    assert torch.equal(spec_model(*inputs), forward(*inputs))


# --- dotted names: HF BERT's attention.self.query --------------------------------------------

BERT_ATTENTION = """\
inputs: {x: {shape: [5, 16]}}
layers:
  - Linear: 16
    name: attention.self.query
  - Linear: 16
    name: attention.self.key
    from: x
  - add: {}
    from: [attention.self.query, attention.self.key]
  - Linear: 16
    name: attention.output.dense
    from: x
  - add: {}
    from: [2, attention.output.dense]
"""


class _SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key = nn.Linear(16, 16), nn.Linear(16, 16)


class _Output(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(16, 16)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = _SelfAttention()     # HF's own name: a submodule called `self`
        self.output = _Output()


class _BertLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = _Attention()


def test_dotted_names_place_layers_at_the_library_paths():
    model, reference = build(BERT_ATTENTION), _BertLike()
    attention = reference.attention

    def forward(x):
        return attention.self.query(x) + attention.self.key(x) + attention.output.dense(x)

    assert_same_model(model, reference, forward, torch.randn(2, 5, 16))
    assert isinstance(model.attention.self.query, nn.Linear)


# --- diffusers' interleaved resnets.0, attentions.0, resnets.1 -----------------------------------

MID_BLOCK = """\
inputs: {x: {shape: [8, 4, 4]}}
blocks:
  mid:
    args: {channels: null}
    layers:
      - Conv2d: {out_channels: $channels, kernel_size: 3, padding: 1}
        name: resnets.0
      - GroupNorm: {num_groups: 2}
        name: attentions.0
      - Conv2d: {out_channels: $channels, kernel_size: 3, padding: 1}
        name: resnets.2
        if: false
      - Conv2d: {out_channels: $channels, kernel_size: 3, padding: 1}
        name: resnets.1
layers:
  - mid: {channels: 8}
    name: mid_block
"""


class _MidBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnets = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])
        self.attentions = nn.ModuleList([nn.GroupNorm(2, 8)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class _UNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.mid_block = _MidBlock()


def test_interleaved_numbered_paths_match_diffusers_module_lists():
    model, reference = build(MID_BLOCK), _UNetLike()
    # keys are the library's; their order follows the spec (resnets.0, attentions.0, resnets.1)
    assert sorted(model.state_dict()) == sorted(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(model(x), reference.mid_block(x))


def test_a_number_as_a_name_is_the_librarys_position():
    model = build("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n    name: 3\n  - Linear: 2\n")
    assert sorted(model.state_dict()) == ["1.bias", "1.weight", "3.bias", "3.weight"]


# --- nn.Sequential numbering with optional layers (MobileNetV3, EfficientNet) ---------------------

OPTIONAL = """\
inputs: {x: {shape: [4, 8, 8]}}
vars: {expand: false}
layers:
  - Conv2d: {out_channels: 16, kernel_size: 1}
    if: $expand
  - Conv2d: {out_channels: 16, kernel_size: 3, padding: 1, groups: 4}
  - BatchNorm2d
  - Hardswish
    
  - Conv2d: {out_channels: 8, kernel_size: 1}
"""


def _sequential(expand: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(4, 16, 1)] if expand else []   # torchvision appends optional layers
    layers += [nn.Conv2d(16 if expand else 4, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.Hardswish(),
               nn.Conv2d(16, 8, 1)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("expand", [False, True])
def test_a_skipped_item_takes_no_number(expand):
    reference = _sequential(expand)
    assert_same_model(build(OPTIONAL, expand=expand), reference, reference, torch.randn(2, 4, 8, 8))


def test_a_skipped_named_item_still_passes_its_input_on():
    model = build("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n    name: gate\n    if: false\n"
                  "  - Linear: 2\n    from: gate\n")
    assert list(model.state_dict()) == ["0.weight", "0.bias"]


# --- names that must not break the generated forward ----------------------------------------------

def test_an_item_named_self_runs():
    """`self` once rebound the forward's own `self` (`self = self.self(x)`): AttributeError at the first call."""
    model = build("inputs: {x: {shape: [8]}}\nlayers:\n  - Linear: 4\n    name: self\n  - ReLU\n"
                  "  - parameter: {shape: [4]}\n    name: bias\n  - add: {}\n    from: [1, bias]\n")
    x = torch.randn(3, 8)
    assert torch.equal(model(x), torch.relu(model.self(x)) + model.bias)


def test_an_input_named_self_runs():
    model = build("inputs: {self: {shape: [8]}}\nlayers:\n  - Linear: 4\n")
    x = torch.randn(3, 8)
    assert torch.equal(model(x), getattr(model, "0")(x))


def test_two_inputs_with_the_same_last_name_feed_a_container():
    """Two leaves called `out` in different containers once made `def forward(self, out, out)`."""
    model = build("""\
inputs: {x: {shape: [8]}}
layers:
  - sequential: [{Linear: 4, name: out}]
    name: a
  - sequential: [{Linear: 4, name: out}]
    name: b
    from: x
  - sequential:
      - cat: 1
        from: [a.out, b.out]
      - Linear: 2
    name: c
""")
    x = torch.randn(3, 8)
    expected = getattr(model.c, "1")(torch.cat([model.a.out(x), model.b.out(x)], dim=1))
    assert torch.equal(model(x), expected)


# --- mistakes ----------------------------------------------------------------------------------

def test_the_same_dotted_name_twice_is_a_duplicate():
    found = problems("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n    name: a.b\n"
                     "  - Linear: 4\n    name: a.b\n")
    assert where(found[0]) == (6, 5, "DUPLICATE_NAME")


def test_a_layer_inside_another_layers_path_is_a_duplicate():
    found = problems("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n    name: attention.self\n"
                     "  - Linear: 4\n    name: attention.self.query\n")
    assert [problem.code for problem in found] == ["DUPLICATE_NAME"]
    assert found[0].location.line == 5


def test_a_container_and_a_dotted_name_resolving_to_one_path_collide():
    found = problems("inputs: {x: {shape: [4]}}\nlayers:\n  - sequential: [{Linear: 4, name: b}]\n    name: a\n"
                     "  - Linear: 4\n    name: a.b\n")
    assert [problem.code for problem in found] == ["DUPLICATE_NAME"]


@pytest.mark.parametrize("name", ["a..b", "'a-b'", "as.query", "1.5", ".a"])
def test_a_name_that_is_no_module_path_is_located(name):
    found = problems(f"inputs: {{x: {{shape: [4]}}}}\nlayers:\n  - Linear: 4\n    name: {name}\n")
    assert where(found[0]) == (4, 5, "TYPE_ERROR")
    assert "dotted module path" in found[0].message
