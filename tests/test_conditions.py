"""`if:` reading input sizes, indexing list vars, a repeated item reading `from:` per repetition,
and a skipped named item leaving its name to a built alternative (issue 27). Each against the same
model written by hand in torch.
"""
from __future__ import annotations

import pytest
import torch

from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecError
from spec_helpers import build


UNITS = """\
inputs: {x: {shape: [8, 6, 6]}}
blocks:
  unit:                              # a residual only where the shapes allow it: no flag at the uses
    args: {out: null, stride: 1, c_in: $in.channels}
    layers:
      - Conv2d: {out_channels: $out, kernel_size: 3, stride: $stride, padding: 1}
        name: conv
      - add: {}
        from: [conv, input]
        if: $(stride == 1 and c_in == out)
      - BatchNorm2d:
        name: norm
        if: $(in.channels > 8)
layers:
  - unit: {out: 8}
  - unit: {out: 16, stride: 2}
  - unit: {out: 16}
"""


def test_if_reads_the_input_size():
    model = build(UNITS).eval()
    assert sorted(name for name, _ in model.named_children()) == ["0", "1", "2"]
    assert not hasattr(model.get_submodule("0"), "norm")
    x = torch.randn(2, 8, 6, 6)

    def unit(value, index, residual):
        output = model.get_submodule(f"{index}.conv")(value)
        output = output + value if residual else output
        norm = getattr(model.get_submodule(str(index)), "norm", None)
        return norm(output) if norm is not None else output

    expected = unit(unit(unit(x, 0, True), 1, False), 2, True)
    assert torch.equal(model(x), expected)


def test_a_size_condition_that_cannot_be_read_is_located():
    with pytest.raises(SpecError) as raised:
        compile_spec("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n    if: $(in.shape[3] > 1)\n")
    problem = raised.value.problems[0]
    assert (problem.code, problem.location.line) == ("EXPRESSION_ERROR", 4)
    assert "out of range" in problem.message


LEVELS = """\
inputs: {x: {shape: [4]}}
vars: {widths: [3, 5, 7]}
layers:
  - Linear: "$(widths[-1])"
    name: a
  - Linear: 7
    from: x
    name: b
  - Linear: "$(widths[i])"            # one head per earlier item, each reading its own
    from: "$('a' if i % 2 == 0 else 'b')"
    repeat: 3
    name: head
  - cat: 1
    from: [head.*]
"""


def test_a_repeated_item_reads_its_from_in_each_repetition_and_lists_are_indexed():
    model = build(LEVELS)
    x = torch.randn(2, 4)
    a, b = model.a(x), model.b(x)
    heads = [model.get_submodule(f"head.{index}") for index in range(3)]
    assert [head.out_features for head in heads] == [3, 5, 7]
    assert torch.equal(model(x), torch.cat([heads[0](a), heads[1](b), heads[2](a)], 1))


def test_an_index_out_of_range_is_located():
    with pytest.raises(SpecError) as raised:
        compile_spec("inputs: {x: {shape: [4]}}\nvars: {widths: [3]}\nlayers:\n  - Linear: $(widths[2])\n")
    problem = raised.value.problems[0]
    assert problem.location.line == 4 and "index 2 is out of range for a list of 1" in problem.message


def test_a_skipped_named_item_leaves_its_name_to_a_built_alternative():
    text = """\
inputs: {x: {shape: [4]}}
vars: {wide: false}
layers:
  - Linear: 16
    name: proj
    if: $wide
  - Linear: 2
    name: proj
    if: $(not wide)
  - ReLU
  - add: {}
    from: [proj, 1]
"""
    for wide, width in ((False, 2), (True, 16)):
        model = build(text, wide=wide)
        x = torch.randn(3, 4)
        assert model.proj.out_features == width
        assert torch.equal(model(x), model.proj(x) + torch.relu(model.proj(x)))


def test_a_constant_sized_by_a_named_dim_warns_naming_the_dim():
    compiled = compile_spec("""\
inputs: {tokens: {shape: [seq], dtype: long}}
vars: {seq: 16}
layers:
  - Embedding: {num_embeddings: 100, embedding_dim: 8}
    name: embed
  - constant: {arange: $seq}
    name: positions
  - Embedding: {num_embeddings: 16, embedding_dim: 8}
    name: wpe
  - add: {}
    from: [embed, wpe]
""")
    fixed = [problem for problem in compiled.warnings if problem.code == "FIXED_DIM"]
    assert [(problem.location.line, problem.location.column) for problem in fixed] == [(6, 5)]
    assert "constant 'positions' is sized by the named dim 'seq'" in fixed[0].message
    model = compiled.module
    assert model(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, 8)
    with pytest.raises(RuntimeError):        # the warned-about fact: another length no longer fits
        model(torch.zeros(2, 12, dtype=torch.long))
