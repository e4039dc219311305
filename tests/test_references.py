"""`from:` (issue 27): `input` / `$input` names a list's input; any earlier item is reachable by its
full or relative dotted name (nested containers and block uses included); `m.*` is every output of
the repeat `m`; an unknown name is reported once, as itself.

Each spec is compared with the same model written by hand in torch (same weights, equal outputs).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from spec_helpers import build, problems


def layer(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


# --- input / $input -------------------------------------------------------------------------------

BLOCK_INPUT = """\
inputs: {x: {shape: [8]}}
blocks:
  gated:                      # out = x * sigmoid(fc(x)) + x, without an Identity to name x
    layers:
      - Linear: 8
        name: fc
      - Sigmoid
      - mul: {}
        from: [input, 1]
      - add: {}
        from: [2, $input]
layers:
  - Linear: 8
  - gated: {}
    name: g
    repeat: 2
  - residual:
      - Linear: 8
      - mul: {}
        from: [input, 0]       # the residual's input
  - parallel:
      a: [Linear: 8]
      b:
        - sub: {}
          from: [input, x]    # the parallel's input minus the model's
    merge: add
"""


def test_input_names_the_input_of_each_list():
    model = build(BLOCK_INPUT)
    x = torch.randn(3, 8)

    def gated(value, prefix):
        return value * torch.sigmoid(layer(model, f"{prefix}.fc")(value)) + value

    expected = gated(gated(layer(model, "0")(x), "g.0"), "g.1")
    expected = layer(model, "2.body.0")(expected) * expected + expected
    expected = layer(model, "3.a.0")(expected) + (expected - x)
    assert torch.equal(model(x), expected)


def test_input_at_the_top_level_is_the_first_model_input():
    model = build("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n  - add: {}\n    from: [0, input]\n")
    x = torch.randn(2, 4)
    assert torch.equal(model(x), layer(model, "0")(x) + x)


# --- any earlier item, by full or relative dotted name ----------------------------------------------

NESTED = """\
inputs: {x: {shape: [8]}}
blocks:
  unit:
    layers:
      - sequential:
          - Linear: 8
            name: inner
          - ReLU
        name: seq
      - cat: 1
        from: [seq, seq.inner]  # relative: this use's own seq, searched first
      - Linear: 8
layers:
  - sequential:
      - Linear: 8
        name: inner
    name: seq                   # a top-level seq.inner too: the block must not take it
  - unit: {}
    name: u
    repeat: 2
  - parallel:
      a: [Linear: 8, Tanh]
      b: [Linear: 8]
    merge: add
    name: par
  - cat: 1
    from: [u.0.seq.inner, u.1.seq, par.a, par.a.0, seq.inner]
"""


def test_from_reaches_nested_items_by_full_and_relative_names():
    model = build(NESTED)
    x = torch.randn(3, 8)
    top = layer(model, "seq.inner")(x)

    def unit(value, prefix):
        inner = layer(model, f"{prefix}.seq.inner")(value)
        return layer(model, f"{prefix}.2")(torch.cat([torch.relu(inner), inner], 1)), inner, torch.relu(inner)

    first, inner0, _ = unit(top, "u.0")
    second, _, seq1 = unit(first, "u.1")
    branch_a0 = layer(model, "par.a.0")(second)
    expected = torch.cat([inner0, seq1, torch.tanh(branch_a0), branch_a0, top], 1)
    assert torch.equal(model(x), expected)


# --- every output of a repeat: YOLOv8's C2f n+2-way concat -----------------------------------------

C2F = """\
inputs: {x: {shape: [8, 6, 6]}}
vars: {n: 3}
layers:
  - Conv2d: {out_channels: 8, kernel_size: 1}
    name: cv1
  - chunk: {chunks: 2, dim: 1}
  - getitem: 0
    name: y0
  - getitem: 1
    from: 1
    name: y1
  - Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
    repeat: $n
    name: m
  - cat: 1
    from: [y0, y1, m.*]        # 2 + n tensors
  - Conv2d: {out_channels: 8, kernel_size: 1}
    name: cv2
  - add: {}
    from: [m.$(n - 1), m.0]    # one repetition by number
"""


class _C2f(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.cv1 = nn.Conv2d(8, 8, 1)
        self.m = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(n))
        self.cv2 = nn.Conv2d(4 * (n + 2), 8, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        self.cv2(torch.cat(y, 1))   # built and run, as the spec's cv2; the spec returns the add below
        return y[-1] + y[2]


@pytest.mark.parametrize("n", [1, 3])
def test_a_repeat_star_is_every_repetition_in_order(n):
    model, reference = build(C2F, n=n), _C2f(n)
    assert sorted(model.state_dict()) == sorted(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(model(x), reference(x))
    assert layer(model, "cv2").in_channels == 4 * (n + 2)


# --- mistakes --------------------------------------------------------------------------------------

def test_an_unknown_name_in_a_two_input_function_is_reported_alone():
    found = problems("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n  - add: {}\n    from: [0, nope]\n")
    assert [problem.code for problem in found] == ["UNKNOWN_REFERENCE"]
    assert "'nope'" in found[0].message and "needs two inputs" not in found[0].message


def test_star_of_an_item_that_is_no_repeat_is_located():
    found = problems("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n    name: a\n  - cat: 1\n"
                     "    from: [a.*]\n")
    assert [(problem.code, problem.location.line) for problem in found] == [("UNKNOWN_REFERENCE", 6)]
    assert "needs 'a' to be an earlier item with `repeat:`" in found[0].message


def test_a_later_item_is_not_reachable():
    found = problems("inputs: {x: {shape: [4]}}\nlayers:\n  - add: {}\n    from: [x, seq.a]\n"
                     "  - sequential: [{Linear: 4, name: a}]\n    name: seq\n")
    assert [problem.code for problem in found] == ["UNKNOWN_REFERENCE"]
