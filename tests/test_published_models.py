"""The pure-YAML reproductions of published models compute what the models compute.

Each spec in specs/ is compared with a hand-written twin in tests/twins/ (torchvision / Hugging
Face module names): the twin's weights are loaded into the compiled spec through a rename map
(spec key -> twin key; every tensor on both sides must be used, shapes equal) and both must give
the same outputs. The full-size parameter counts are checked on the meta device by each spec's own
`expect: {params: ...}`; outputs are compared at small sizes so the tests take seconds.

Swin and T5 are also run at the tiny configs in ../shared/reference/ with the weights written by
torchvision / transformers themselves, and must reproduce the outputs those libraries wrote.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from specc.build.compiler import compile as compile_spec
from specc.weights.building import build
from specc.build.expect import count_parameters
from twins.mobilenet_v3 import MobileNetV3Small
from twins.swin import SwinTransformer
from twins.t5 import T5Model
from twins.vit import VisionTransformer

SPECS = Path(__file__).resolve().parent.parent / "specs"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

PUBLISHED_COUNTS = {
    "mobilenet_v3_small": 2_542_856,   # torchvision.models.mobilenet_v3_small()
    "vit_b_16": 86_567_656,            # torchvision.models.vit_b_16()
    "swin_t": 28_288_354,              # torchvision.models.swin_t()
    "t5_small": 60_506_624,            # transformers' T5Model(T5Config()), the shared embedding once
}


def load_renamed(model: nn.Module, state: dict[str, torch.Tensor], rename: Callable[[str], str],
                 computed: tuple[str, ...] = ()) -> None:
    """Load `state` (a twin's state_dict) into `model`: model key -> `rename(key)` -> twin key.

    Every model tensor must be found with the same shape, and every twin tensor used, except the
    twin keys matching a `computed` pattern (buffers the spec computes in its forward instead).
    """
    ours = model.state_dict()
    renamed = {key: rename(key) for key in ours}
    missing = sorted(theirs for theirs in renamed.values() if theirs not in state)
    assert not missing, f"no twin tensor for {missing[:5]}"
    unused = sorted(set(state) - set(renamed.values()))
    unused = [key for key in unused if not any(re.fullmatch(pattern, key) for pattern in computed)]
    assert not unused, f"twin tensors left unloaded: {unused[:5]}"
    assert len(set(renamed.values())) == len(renamed), "two spec tensors map to the same twin tensor"
    for key, theirs in renamed.items():
        assert ours[key].shape == state[theirs].shape, f"{key} {tuple(ours[key].shape)} vs {theirs} {tuple(state[theirs].shape)}"
    model.load_state_dict({key: state[theirs] for key, theirs in renamed.items()}, strict=True)


def substitutions(*rules: tuple[str, str]) -> Callable[[str], str]:
    """A rename map: regex rules applied in order."""
    def rename(key: str) -> str:
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        return key
    return rename


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm statistics and affine weights: fresh ones are the identity and would hide a mix-up."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        for name in ("weight", "bias"):
            tensor = getattr(module, name, None)
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)) and tensor is not None:
                tensor.data.copy_(torch.randn(tensor.shape, generator=generator) * 0.5 + (name == "weight"))
    for name, parameter in model.named_parameters():
        if name.endswith(("class_token", "pos_embedding")):
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def reference_file(name: str) -> dict[str, torch.Tensor]:
    """A file written by torchvision / transformers (../shared/reference, README there)."""
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference file {path} not found (CI lays shared/ beside the clone)")
    safetensors = pytest.importorskip("safetensors.torch")
    return safetensors.load_file(path)


def assert_same_outputs(model: nn.Module, twin: nn.Module, *inputs: torch.Tensor, atol: float = 1e-5) -> None:
    model.eval(), twin.eval()
    with torch.no_grad():
        ours, theirs = model(*inputs), twin(*inputs)
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)




@pytest.mark.parametrize("name, expected", [
    pytest.param(name, count)
    for name, count in PUBLISHED_COUNTS.items()])
def test_full_size_parameter_count_is_the_published_one(name, expected):
    compiled = compile_spec(SPECS / f"{name}.yaml", device="meta")
    assert count_parameters(compiled.module) == expected
    assert compiled.spec.expect.params == expected


@pytest.mark.parametrize("name", PUBLISHED_COUNTS)
def test_spec_is_pure_yaml(name):
    text = (SPECS / f"{name}.yaml").read_text()
    assert not re.search(r"^imports:", text, re.MULTILINE)


# ----- MobileNetV3-Small -----------------------------------------------------------------------------
def test_mobilenet_v3_small_matches_its_twin():
    # the spec's keys are torchvision's, in its order (a skipped `if:` layer takes no number): no renames
    model = build(SPECS / "mobilenet_v3_small.yaml", image_size=64)
    twin = randomize(MobileNetV3Small())
    assert list(model.state_dict()) == list(twin.state_dict())
    model.load_state_dict(twin.state_dict(), strict=True)
    assert_same_outputs(model, twin, torch.randn(2, 3, 64, 64))


# ----- ViT-B/16 ----------------------------------------------------------------------------------------
# encoder.layers.<i>.<0|1>.body.<name> -> encoder.layers.encoder_layer_<i>.<name>: the two residuals
vit_rename = substitutions((r"^encoder\.layers\.(\d+)\.[01]\.body\.", r"encoder.layers.encoder_layer_\1."))


def test_vit_b_16_matches_its_twin_at_32x32():
    # the full depth and width, 4 patches of 16x16 instead of 196
    model = build(SPECS / "vit_b_16.yaml", image_size=32, n_layers=2, **{"expect.params": None})
    twin = randomize(VisionTransformer(image_size=32, num_layers=2))
    load_renamed(model, twin.state_dict(), vit_rename)
    assert_same_outputs(model, twin, torch.randn(2, 3, 32, 32), atol=1e-4)


# ----- Swin-T ---------------------------------------------------------------------------------------
# features.<stage>.<block>.<0|1>.body.<name> -> features.<stage>.<block>.<name> (the two residuals);
# the bias table is an Embedding indexed by the relative-position index the spec computes
swin_rename = substitutions((r"^features\.(\d+)\.(\d+)\.[01]\.body\.", r"features.\1.\2."),
                            (r"\.relative_position_bias_table\.weight$", ".relative_position_bias_table"))
SWIN_COMPUTED = (r"features\.\d+\.\d+\.attn\.relative_position_index",)   # torchvision's buffer


def test_swin_matches_its_twin_with_three_stages():
    # window 2 on 8x8, 4x4 and 2x2 maps: shifted windows in stages 1-2, one unshifted window in stage 3
    sizes = dict(image_size=32, embed_dim=16, window=2, depth1=2, depth2=2, depth3=2, depth4=0,
                 heads1=1, heads2=2, heads3=4, n_classes=5)
    model = build(SPECS / "swin_t.yaml", **sizes, **{"expect.params": None})
    twin = randomize(SwinTransformer(embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=2,
                                     num_classes=5))
    for name, parameter in twin.named_parameters():
        if name.endswith("relative_position_bias_table"):
            parameter.data.normal_()
    load_renamed(model, twin.state_dict(), swin_rename, SWIN_COMPUTED)
    assert_same_outputs(model, twin, torch.randn(2, 3, 32, 32))


def test_swin_tiny_variant_reproduces_torchvision_with_its_weights():
    state = reference_file("torchvision_swin_tiny.safetensors")
    io = reference_file("torchvision_swin_tiny_io.safetensors")
    model = build(SPECS / "swin_t.yaml", variant="tiny")  # torchvision_swin_tiny_config.json; expect: 136,822
    load_renamed(model, state, swin_rename, SWIN_COMPUTED)
    with torch.no_grad():
        output = model.eval()(io["input"])
    torch.testing.assert_close(output, io["output"], atol=1e-5, rtol=0)


# ----- T5-small ---------------------------------------------------------------------------------------
# the spec's names are Hugging Face's, so its weights load strictly


def test_t5_tiny_reproduces_transformers_with_its_weights():
    state = reference_file("hf_t5_tiny.safetensors")
    io = reference_file("hf_t5_tiny_io.safetensors")
    model = build(SPECS / "t5_small.yaml", variant="tiny")   # hf_t5_tiny_config.json; expect: 44,800
    model.load_state_dict(state, strict=True)      # every HF key, no renaming
    with torch.no_grad():
        decoded, encoded = model.eval()(io["input_ids"], io["decoder_input_ids"])
    assert (decoded - io["last_hidden_state"]).abs().max() <= 1e-5
    assert (encoded - io["encoder_last_hidden_state"]).abs().max() <= 1e-5


def test_t5_matches_its_twin_past_the_max_distance():
    # 150 / 140 tokens: relative distances past max_distance (128) reach the last, shared bucket
    model = build(SPECS / "t5_small.yaml", variant="tiny", src_len=150, tgt_len=140, num_layers=3,
                  **{"expect.params": None})
    twin = T5Model(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=2, num_heads=4)
    generator = torch.Generator().manual_seed(0)
    for parameter in twin.parameters():         # norms and bias tables not at their fresh values
        parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    load_renamed(model, twin.state_dict(), lambda key: key)
    tokens = torch.randint(0, 100, (2, 150), generator=generator)
    decoder_tokens = torch.randint(0, 100, (2, 140), generator=generator)
    assert_same_outputs(model, twin, tokens, decoder_tokens)
