"""Issue 15: optimizer, scheduler and loss arguments are type-checked at load (lang/call_args.py),
so `specc check` refuses what `specc train` would fail on at its first step."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from specc.lang.call_args import parse_type
from specc.lang.errors import SpecError
from specc.lang.spec import load

HEAD = """\
name: args
inputs:
  x: {shape: [4]}
layers:
  - Linear: 3
train:
  data: {source: "synthetic:classification"}
  loss: CrossEntropyLoss
  epochs: 1
"""


def problem_of(train_lines: str):
    with pytest.raises(SpecError) as raised:
        load(HEAD + train_lines)
    assert len(raised.value.problems) == 1, raised.value
    return raised.value.first


@pytest.mark.parametrize("lines, line, message", [
    ("  optimizer: {Adam: {betas: 0.9}}\n", 10,
     "train.optimizer.Adam.betas: optimizer Adam: betas must be a list of 2 numbers, got 0.9; the default is [0.9, 0.999]"),
    ("  optimizer: {Adam: {betas: [0.9, 1.5]}}\n", 10,
     "train.optimizer.Adam.betas: optimizer Adam: betas must be in [0, 1), got [0.9, 1.5]; the default is [0.9, 0.999]"),
    ("  optimizer: {Adam: {lr: -0.1}}\n", 10,
     "train.optimizer.Adam.lr: optimizer Adam: lr must be >= 0, got -0.1; the default is 0.001"),
    ("  optimizer: {SGD: {lr: fast}}\n", 10,
     "train.optimizer.SGD.lr: optimizer SGD: lr must be a number, got 'fast'; the default is 0.001"),
    ("  optimizer: {AdamW: {lr: 0.01, amsgrad: 'yes'}}\n", 10,
     "train.optimizer.AdamW.amsgrad: optimizer AdamW: amsgrad must be true or false, got 'yes'; the default is False"),
    ("  optimizer: {SGD: {lr: 0.1, momentum: -0.5}}\n", 10,
     "train.optimizer.SGD.momentum: optimizer SGD: momentum must be >= 0, got -0.5; the default is 0"),
    ("  scheduler: {StepLR: {step_size: 2.5}}\n", 10,
     "train.scheduler.StepLR.step_size: scheduler StepLR: step_size must be an integer, got 2.5"),
    ("  scheduler: {ReduceLROnPlateau: {mode: low}}\n", 10,
     "train.scheduler.ReduceLROnPlateau.mode: scheduler ReduceLROnPlateau: mode must be one of 'min', 'max', "
     "got 'low'; the default is 'min'"),
    ("  optimizer: {SGD: {lr: 0.1, groups: [{params: '0.*', lr: [1]}]}}\n", 10,
     "train.optimizer.SGD.groups.0.lr: optimizer group SGD: lr must be a number, got [1]; the default is 0.001"),
])
def test_wrong_argument_types_are_located_at_load(lines, line, message):
    problem = problem_of(lines)
    assert (problem.code, problem.location.line, problem.message) == ("TYPE_ERROR", line, message)


def test_loss_arguments_are_checked_and_a_weight_list_becomes_a_tensor():
    with pytest.raises(SpecError) as raised:
        load(HEAD.replace("loss: CrossEntropyLoss", "loss: {CrossEntropyLoss: {label_smoothing: high}}"))
    assert raised.value.first.message == ("train.loss.CrossEntropyLoss.label_smoothing: loss CrossEntropyLoss: "
                                          "label_smoothing must be a number, got 'high'; the default is 0.0")
    assert raised.value.first.location.line == 8
    spec = load(HEAD.replace("loss: CrossEntropyLoss", "loss: {CrossEntropyLoss: {weight: [1.0, 2.0, 0.5]}}"))
    from specc.train.metrics import build_loss

    loss = build_loss(spec.train.loss, None)
    assert torch.equal(loss.weight, torch.tensor([1.0, 2.0, 0.5]))


def test_well_typed_arguments_pass():
    spec = load(HEAD + "  optimizer: {SGD: {lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0}}\n"
                "  scheduler: [{StepLR: {step_size: 2, gamma: 0.5}}, {ReduceLROnPlateau: {mode: min, factor: 0.5}}]\n")
    assert spec.train.optimizer.kwargs["momentum"] == 0.9


def test_check_cli_exits_2_for_betas_as_a_float(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(HEAD + "  optimizer: {Adam: {betas: 0.9}}\n")
    done = subprocess.run([sys.executable, "-m", "specc", "check", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert f"{path}:10:22: train.optimizer.Adam.betas: optimizer Adam: betas must be a list of 2 numbers" in done.stderr


@pytest.mark.parametrize("text, expected", [
    ("float | torch.Tensor", "number"),
    ("tuple[float | torch.Tensor, float | torch.Tensor]", ("tuple", ["number", "number"])),
    ("int | None", ("union", ["int", "none"])),
    ("Literal['min', 'max']", ("literal", ["min", "max"])),
    ("list[float] | float", ("union", [("list", "number"), "number"])),
    ("torch.Tensor | None", ("union", ["tensor", "none"])),
    ("Callable[[int], float]", None),
])
def test_annotations_become_checkable_types(text, expected):
    assert parse_type(text) == expected
