"""`trainable: false` on any item and `init:` from values (`arange`, a list, a constant), issue 27:
YOLOv8's DFL holds a fixed 1x1 conv whose weights are 0..15.

Each case is compared with the module written by hand in torch: the same values, the same
`requires_grad`, the same outputs, and a training step that leaves the fixed tensors unchanged.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import specc
from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecError

DFL = """\
inputs: {x: {shape: [64, 8]}}         # 4 sides x 16 bins, 8 anchors
blocks:
  dfl:                                 # ultralytics DFL: softmax over 16 bins, expectation by a fixed conv
    args: {bins: 16}
    layers:
      - reshape: [4, $bins, -1]
      - transpose: [2, 1]
      - softmax: 1
      - Conv2d: {out_channels: 1, kernel_size: 1, bias: false}
        name: conv
        trainable: false
      - reshape: [4, -1]
layers:
  - dfl: {}
    name: dfl
  - Linear: 3
init:
  dfl.conv.weight: {arange: 16}        # [1, 16, 1, 1] filled with 0..15
"""


class _Dfl(nn.Module):
    def __init__(self, bins: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float).view(1, bins, 1, 1)
        self.bins = bins

    def forward(self, x):
        batch, _, anchors = x.shape
        return self.conv(x.view(batch, 4, self.bins, anchors).transpose(2, 1).softmax(1)).view(batch, 4, anchors)


def test_a_fixed_arange_conv_is_ultralytics_dfl():
    model, reference = specc.build(DFL), _Dfl()
    assert torch.equal(model.dfl.conv.weight, reference.conv.weight)
    assert not model.dfl.conv.weight.requires_grad
    x = torch.randn(2, 64, 8)
    assert torch.equal(model.dfl(x), reference(x))
    assert specc.summary(DFL).trainable_params == 8 * 3 + 3


def test_a_training_step_leaves_fixed_tensors_unchanged():
    model = specc.build(DFL)
    fixed = model.dfl.conv.weight.clone()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model(torch.randn(2, 64, 8)).sum().backward()
    optimizer.step()
    assert torch.equal(model.dfl.conv.weight, fixed) and model.dfl.conv.weight.grad is None


FIXED_ITEMS = """\
inputs: {x: {shape: [4, 6]}}
blocks:
  stem:
    layers:
      - Conv1d: {out_channels: 4, kernel_size: 1}
      - BatchNorm1d
layers:
  - stem: {}
    name: stem
    trainable: false                   # every layer inside
  - parameter: {shape: [4, 1], init: {value: [[1.0], [2.0], [3.0], [4.0]]}}
    name: gain
    trainable: false
  - mul: {}
    from: [stem, gain]
  - parameter: {shape: [6], init: {constant: 0.5}}
    name: shift
  - add: {}
    from: [2, shift]
"""


def test_trainable_false_fixes_every_parameter_of_the_item():
    model = specc.build(FIXED_ITEMS)
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen == {"stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias", "gain"}
    assert torch.equal(model.gain, torch.tensor([[[1.0], [2.0], [3.0], [4.0]]]))
    assert torch.equal(model.shift, torch.full((1, 6), 0.5))


def test_a_fixed_batch_norm_keeps_its_statistics_in_training():
    model = specc.build(FIXED_ITEMS).train()
    statistics = model.stem.get_submodule("1").running_mean.clone()
    model(torch.randn(3, 4, 6) + 5)
    assert torch.equal(model.stem.get_submodule("1").running_mean, statistics)


def test_init_values_fill_buffers_when_no_parameter_matches():
    model = specc.build("inputs: {x: {shape: [3, 5]}}\nlayers:\n  - BatchNorm1d\ninit:\n"
                        "  running_var: {value: [4.0, 9.0, 16.0]}\n").eval()
    x = torch.randn(2, 3, 5)
    assert torch.allclose(model(x), x / torch.tensor([2.0, 3.0, 4.0]).view(1, 3, 1), atol=1e-5)


@pytest.mark.parametrize("init, words", [
    ("{arange: 15}", "arange gives 15 numbers for a tensor of 16"),
    ("{value: [1, 2]}", "value gives 2 numbers for a tensor of 16"),
])
def test_values_that_do_not_fit_are_located_at_the_init_key(init, words):
    with pytest.raises(SpecError) as raised:
        compile_spec(DFL.replace("{arange: 16}", init))
    problem = raised.value.problems[0]
    assert (problem.code, problem.location.line) == ("SHAPE_MISMATCH", 18) and words in problem.message


def test_a_parameters_values_that_do_not_fit_are_located():
    with pytest.raises(SpecError) as raised:
        compile_spec("inputs: {x: {shape: [4]}}\nlayers:\n  - parameter: {shape: [4], init: {arange: 3}}\n")
    problem = raised.value.problems[0]
    assert (problem.code, problem.location.line) == ("SHAPE_MISMATCH", 3)
    assert "arange gives 3 numbers for a tensor of 4" in problem.message


def test_trainable_must_be_a_bool():
    with pytest.raises(SpecError) as raised:
        compile_spec("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: 4\n    trainable: maybe\n")
    assert raised.value.problems[0].code == "TYPE_ERROR"


def test_codegen_keeps_the_values_and_the_fixed_weights(tmp_path):
    from specc.export.eject import codegen

    path = tmp_path / "dfl_model.py"
    path.write_text(codegen(DFL))
    spec = importlib.util.spec_from_file_location("dfl_model", path)
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    plain = next(cls for name, cls in vars(generated).items() if isinstance(cls, type) and issubclass(cls, nn.Module)
                 and cls.__module__ == "dfl_model" and name != "Dfl")
    model = plain()
    assert torch.equal(model.get_parameter("dfl.conv.weight").flatten(), torch.arange(16.0))
    assert not model.get_parameter("dfl.conv.weight").requires_grad
