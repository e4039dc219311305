"""Regression tests for the bugs met while writing today's architectures (issue 27): a BatchNorm after
a global pool in the HTML drawing, an imported layer's own `num_channels`, `share:` without the
shared layer's arguments. (Two same-named container inputs and `self`: test_paths.py; an unknown
name in a two-input function: test_references.py.)
"""
from __future__ import annotations

import textwrap

import pytest
import torch
from typer.testing import CliRunner

import specc
from specc.build.compiler import compile as compile_spec
from specc.cli.app import app
from specc.lang.errors import SpecError

POOL_THEN_BATCH_NORM = """\
inputs: {x: {shape: [3, 8, 8]}}
layers:
  - Conv2d: {out_channels: 4, kernel_size: 3}
  - AdaptiveAvgPool2d: 1
  - Flatten
  - BatchNorm1d
  - Linear: 2
"""


@pytest.mark.parametrize("suffix", ["html", "svg", "dot", "mmd"])
def test_every_drawing_of_a_batch_norm_after_a_global_pool_works(tmp_path, suffix):
    spec = tmp_path / "pooled.yaml"
    spec.write_text(POOL_THEN_BATCH_NORM)
    output = tmp_path / f"pooled.{suffix}"
    result = CliRunner().invoke(app, ["draw", str(spec), "-o", str(output)])
    if result.exit_code != 0 and "Graphviz" in result.output:
        pytest.skip("Graphviz's dot is not installed")
    assert result.exit_code == 0, result.output
    assert output.stat().st_size > 0


def test_the_html_figures_leave_the_model_in_its_own_mode():
    from specc.draw.figures import node_figures

    compiled = compile_spec(POOL_THEN_BATCH_NORM, device="meta", batch_size=1)
    compiled.module.train()
    figures = node_figures(compiled.graph, compiled.module)
    assert figures["3"]["params"] == 8            # BatchNorm1d(4): weight and bias
    assert all(layer.training for layer in compiled.module.modules())


TIMESTEPS = '''\
import torch
from torch import nn


class Timesteps(nn.Module):
    """diffusers' signature: `num_channels` is the embedding width, not the input's channels."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool = True):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps):
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
        angles = timesteps[:, None].float() * torch.exp(-9.21 * exponent)[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
'''


def test_an_imported_layers_num_channels_is_its_own(tmp_path):
    (tmp_path / "diffusion_layers.py").write_text(TIMESTEPS)
    spec = tmp_path / "timesteps.yaml"
    spec.write_text(textwrap.dedent("""\
        imports: [diffusion_layers.Timesteps]
        inputs: {t: {shape: []}}
        layers:
          - Timesteps: {num_channels: 32}
          - Linear: 4
        """))
    model = specc.build(spec)
    t = torch.tensor([1.0, 500.0])
    embedding = model.get_submodule("0")(t)
    assert embedding.shape == (2, 32)
    assert torch.equal(model(t), model.get_submodule("1")(embedding))


def test_a_torch_layers_given_size_is_still_checked():
    with pytest.raises(SpecError) as raised:
        compile_spec("inputs: {x: {shape: [6, 4, 4]}}\nlayers:\n  - GroupNorm: {num_groups: 2, num_channels: 8}\n")
    assert "num_channels=8 but its input [6, 4, 4] has 6" in raised.value.problems[0].message


SHARED = """\
inputs: {x: {shape: [8]}}
layers:
  - Linear: 8
    name: m
  - Linear:
    share: m
"""


def test_share_needs_no_arguments():
    model = compile_spec(SHARED).module
    x = torch.randn(2, 8)
    assert torch.equal(model(x), model.m(model.m(x)))
    assert sum(parameter.numel() for parameter in model.parameters()) == 72


@pytest.mark.parametrize("item, words, line", [
    ("  - Linear: 4\n    share: m\n", "share: 'm' has out_features=8, not 4", 5),
    ("  - Conv1d:\n    share: m\n", "share: 'm' is a Linear, not a Conv1d", 6),
])
def test_share_with_other_arguments_or_another_layer_is_located(item, words, line):
    with pytest.raises(SpecError) as raised:
        compile_spec("inputs: {x: {shape: [8]}}\nlayers:\n  - Linear: 8\n    name: m\n" + item)
    problem = raised.value.problems[0]
    assert words in problem.message and problem.location.line == line
