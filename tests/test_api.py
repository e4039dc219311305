"""The Python API and the spec features around layers: `specc.load`, `specc.build` with var
overrides, `--set`, `imports:` of a user's module, `tie:`, `init:`, several inputs and outputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import specc
from specc.build.compiler import compile as compile_spec
from specc.build.expect import count_parameters

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
TESTS = Path(__file__).resolve().parent


def test_load_returns_the_validated_spec():
    spec = specc.load(SPECS / "mnist_net.yaml")
    assert spec.name == "mnist_net"
    assert spec.inputs["image"].shape == [1, 28, 28] and spec.inputs["image"].dtype == "float32"
    assert spec.vars == {"n_classes": 10}
    assert spec.expect.params == 1_199_882
    assert specc.load(spec.to_yaml()).raw == spec.raw   # the resolved spec round-trips through YAML


def test_build_overrides_vars():
    model = specc.build(SPECS / "mlp.yaml", hidden=32, n_classes=3)
    assert isinstance(model, nn.Module)
    assert model.get_submodule("hidden.0.linear").out_features == 32
    assert model.head.out_features == 3
    assert model(torch.randn(5, 784)).shape == (5, 3)


def test_build_overrides_an_input_size_through_its_var():
    model = specc.build(SPECS / "unet.yaml", image_size=32, base=4)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_cli_set_overrides_vars():
    result = subprocess.run([str(Path(sys.executable).parent / "specc"), "check", "specs/mlp.yaml",
                             "--set", "hidden=512", "--set", "in_features=64"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # 64*512+512 + 2 * (512*512+512) + 512*10+10
    assert result.stdout.strip() == "OK specs/mlp.yaml: 563,722 parameters, output head [10]"


def test_imports_a_user_module(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    model = specc.build("inputs: {x: {shape: [3]}}\n"
                        "imports: [user_layers.Scale]\n"
                        "layers:\n"
                        "  - Scale: {initial: 2.0}\n"       # num_features is inferred
                        "    name: scale\n")
    from user_layers import Scale

    assert isinstance(model.scale, Scale) and model.scale.factor.shape == (3,)
    x = torch.randn(4, 3)
    torch.testing.assert_close(model(x), 2 * x)


TIED = """
inputs: {tokens: {shape: [5], dtype: long}}
layers:
  - Embedding: {num_embeddings: 11, embedding_dim: 4}
    name: embed
  - Linear: {out_features: 11, bias: false}
    name: head
tie: {head.weight: embed.weight}
"""


def test_tie_shares_one_parameter():
    model = specc.build(TIED)
    assert model.head.weight is model.embed.weight
    assert count_parameters(model) == 11 * 4
    logits = model(torch.randint(0, 11, (2, 5)))
    logits.sum().backward()
    assert model.embed.weight.grad is not None   # gradients from both uses land on the one tensor
    reloaded = specc.build(TIED)
    reloaded.load_state_dict(model.state_dict())
    assert reloaded.head.weight is reloaded.embed.weight


def test_init_by_layer_type_and_by_parameter_name():
    model = specc.build("inputs: {x: {shape: [4]}}\n"
                        "layers:\n"
                        "  - Linear: {out_features: 8}\n"
                        "  - ReLU\n"
                        "  - Linear: {out_features: 2}\n"
                        "init: {Linear: ones, bias: zeros}\n")
    for layer in (model.get_submodule("0"), model.get_submodule("2")):
        assert torch.equal(layer.weight, torch.ones_like(layer.weight))
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_init_with_arguments():
    model = specc.build("inputs: {x: {shape: [4]}}\n"
                        "layers:\n"
                        "  - Linear: {out_features: 3}\n"
                        "    name: fc\n"
                        "init: {fc.weight: {constant: {val: 0.5}}}\n")
    assert torch.equal(model.fc.weight, torch.full((3, 4), 0.5))


def test_two_outputs_give_a_tuple():
    compiled = compile_spec("inputs: {x: {shape: [6]}}\n"
                            "layers:\n"
                            "  - Linear: {out_features: 4}\n"
                            "    name: features\n"
                            "  - Linear: {out_features: 2}\n"
                            "    name: scores\n"
                            "outputs: [scores, features]\n")
    scores, features = compiled.module(torch.randn(3, 6))
    assert scores.shape == (3, 2) and features.shape == (3, 4)
    assert [compiled.graph[name].feature_shape for name in compiled.graph.outputs] == [(2,), (4,)]


def test_two_inputs_are_forward_arguments_in_spec_order():
    model = specc.build("inputs:\n"
                        "  image: {shape: [1, 8, 8]}\n"
                        "  extra: {shape: [3]}\n"
                        "layers:\n"
                        "  - Flatten: {}\n"
                        "    name: pixels\n"
                        "  - cat: {dim: 1}\n"
                        "    from: [pixels, extra]\n"
                        "  - Linear: {out_features: 2}\n"
                        "    name: head\n")
    assert model.head.in_features == 64 + 3
    image, extra = torch.randn(2, 1, 8, 8), torch.randn(2, 3)
    expected = model.head(torch.cat([image.flatten(1), extra], dim=1))
    torch.testing.assert_close(model(image, extra), expected)
    with pytest.raises(TypeError):
        model(image)   # both inputs are required
