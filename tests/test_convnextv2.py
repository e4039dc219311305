"""ConvNeXt V2 (specs/convnextv2_atto.yaml) with timm's names: timm's file loads with `strict` and
the model reproduces timm's outputs; GRN's `[C]` weight and bias are parameters of exactly that shape.

The reference file was written by timm itself (shared/reference/README.md); timm is not needed here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specc.build.compiler import compile as compile_spec
from specc.weights.building import build
from references import reference

SPEC = Path(__file__).resolve().parent.parent / "specs" / "convnextv2_atto.yaml"


def test_timms_file_loads_strictly_and_reproduces_its_output() -> None:
    model = build(SPEC, variant="reference", weights=reference("timm_convnextv2_atto.safetensors"),
                  weights_map="strict", check=reference("timm_convnextv2_atto_io.safetensors"))
    report = model.weights_report
    assert len(report.by_name) == 140 and report.ok and not report.transposed
    io = load_file(reference("timm_convnextv2_atto_io.safetensors"))
    with torch.no_grad():
        assert (model.eval()(io["input"]) - io["output"]).abs().max() <= 1e-4


def test_the_state_dict_is_timms_key_for_key_and_shape_for_shape() -> None:
    expected = {key: list(tensor.shape) for key, tensor in load_file(reference("timm_convnextv2_atto.safetensors")).items()}
    module = compile_spec(SPEC, device="meta", variant="reference").module
    assert {key: list(tensor.shape) for key, tensor in module.state_dict().items()} == expected
    assert expected["stages.0.blocks.0.mlp.grn.weight"] == [64]    # GRN's [4C]: no leading 1


@pytest.mark.parametrize("n_classes, params", [(1000, 3708400), (10, 3390610)])
def test_atto_at_full_size_has_timms_parameter_count(n_classes: int, params: int) -> None:
    config = json.loads(reference("timm_convnextv2_atto_config.json").read_text())
    label = "convnextv2_atto()" if n_classes == 1000 else "convnextv2_atto(num_classes=10)"
    assert config["full_size_params"][label] == params
    module = compile_spec(SPEC, device="meta", n_classes=n_classes, **{"expect.params": params}).module
    assert sum(parameter.numel() for parameter in module.parameters()) == params


def test_grn_computes_what_convnext_v2_defines() -> None:
    """y = x + bias + weight * x * N(x), N(x) = ||x||_2 over H, W / (its mean over channels + 1e-6)."""
    spec = SPEC.read_text().split("\nlayers:\n")[0] + "\nlayers:\n  - grn: {channels: 8}\n    name: grn\n"
    spec = spec.replace("$image_size, $image_size", "5, 5").replace("[3, 5, 5]", "[8, 5, 5]")
    model = build(spec, **{"expect.params": None})
    torch.manual_seed(0)
    weight, bias, x = torch.randn(8), torch.randn(8), torch.randn(2, 8, 5, 5)
    model.load_state_dict({"grn.weight": weight, "grn.bias": bias})
    spread = x.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    response = spread / (spread.mean(dim=1, keepdim=True) + 1e-6)
    expected = x + bias.view(1, -1, 1, 1) + weight.view(1, -1, 1, 1) * x * response
    torch.testing.assert_close(model(x), expected)
