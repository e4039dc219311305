"""specs/diffusion_unet.yaml against diffusers itself: it loads the reference UNet2DModel's weights
(written by diffusers, every tensor perturbed) with strict=True and reproduces diffusers' output; its
sinusoidal timestep embedding equals diffusers' formula; its resnet and attention blocks equal
hand-written ResnetBlock2D / Attention modules on the reference weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import specc

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "diffusion_unet.yaml"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
WEIGHTS = REFERENCE / "diffusers_unet2d_tiny.safetensors"
IO = REFERENCE / "diffusers_unet2d_tiny_io.safetensors"

needs_reference = pytest.mark.skipif(not WEIGHTS.exists(), reason="the reference files are not in ../shared/reference")


def reference_weights() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(WEIGHTS)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """diffusers' get_timestep_embedding with flip_sin_to_cos=True, downscale_freq_shift=0."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@needs_reference
def test_loads_diffusers_weights_strictly_and_reproduces_its_output():
    from safetensors.torch import load_file
    model = specc.build(SPEC).eval()
    weights = reference_weights()
    assert list(model.state_dict()) != list(weights)              # run order, not the file's key order
    model.load_state_dict(weights, strict=True)
    io = load_file(IO)
    with torch.no_grad():
        output = model(io["sample"], io["timestep"])
    torch.testing.assert_close(output, io["output"], rtol=0, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == 177_427


@needs_reference
def test_weights_argument_loads_it_too():
    from safetensors.torch import load_file
    model = specc.build(SPEC, weights=str(WEIGHTS)).eval()
    io = load_file(IO)
    with torch.no_grad():
        torch.testing.assert_close(model(io["sample"], io["timestep"]), io["output"], rtol=0, atol=1e-5)


def test_timestep_embedding_equals_diffusers_formula():
    model = specc.build(SPEC).eval()
    seen = {}
    model.get_submodule("time_embedding.linear_1").register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    steps = torch.tensor([0.0, 1.0, 10.0, 500.0, 999.0])
    with torch.no_grad():
        model(torch.randn(5, 3, 16, 16), steps)
    torch.testing.assert_close(seen["x"], timestep_embedding(steps, 16), rtol=0, atol=0)


class ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D (default time-embedding norm, output scale 1), by hand."""

    def __init__(self, channels: int, out: int, time_dim: int = 64, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=1e-5)
        self.conv1 = nn.Conv2d(channels, out, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_dim, out)
        self.norm2 = nn.GroupNorm(groups, out, eps=1e-5)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(channels, out, 1) if channels != out else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class AttentionBlock(nn.Module):
    """diffusers' Attention with a group norm and a residual (AttnProcessor2_0), by hand."""

    def __init__(self, channels: int, head_dim: int = 8, groups: int = 8):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.heads = channels // head_dim

    def forward(self, x):
        batch, channels, height, width = x.shape
        tokens = self.group_norm(x).view(batch, channels, height * width).transpose(1, 2)
        q, k, v = (layer(tokens).view(batch, -1, self.heads, channels // self.heads).transpose(1, 2)
                   for layer in (self.to_q, self.to_k, self.to_v))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, channels)
        return self.to_out[0](attended).transpose(1, 2).reshape(batch, channels, height, width) + x


def block_spec(use: str, inputs: str) -> dict:
    """The UNet spec's blocks and vars, with one use of a block as its only item."""
    spec = yaml.safe_load(SPEC.read_text())
    spec["inputs"] = yaml.safe_load(inputs)
    spec["layers"] = yaml.safe_load(use)
    return spec


def weights_under(prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in reference_weights().items() if key.startswith(prefix)}


@needs_reference
@pytest.mark.parametrize("prefix, channels, out, skip", [
    ("down_blocks.0.resnets.0.", 16, 16, False),
    ("down_blocks.1.resnets.0.", 16, 32, False),
    ("up_blocks.0.resnets.1.", 32, 32, True),          # the skip (16 channels) concatenated first: 48 in
])
def test_resnet_block_equals_diffusers_resnet(prefix, channels, out, skip):
    if skip:
        spec = block_spec(f"- up_resnet: {{out: {out}, skip: skip}}\n  from: x\n  name: block\n",
                          f"{{x: {{shape: [{channels}, 8, 8]}}, skip: {{shape: [16, 8, 8]}}, temb: {{shape: [64]}}}}")
    else:
        spec = block_spec(f"- resnet: {{out: {out}, shortcut: {str(channels != out).lower()}}}\n  from: x\n  name: block\n",
                          f"{{x: {{shape: [{channels}, 8, 8]}}, temb: {{shape: [64]}}}}")
    model = specc.build(spec).eval()
    weights = weights_under(prefix)
    model.load_state_dict({f"block.{key}": value for key, value in weights.items()}, strict=True)
    hand = ResnetBlock(channels + (16 if skip else 0), out).eval()
    hand.load_state_dict(weights, strict=True)
    x, skip_input, temb = torch.randn(2, channels, 8, 8), torch.randn(2, 16, 8, 8), torch.randn(2, 64)
    with torch.no_grad():
        activated = F.silu(temb)                   # the spec's `temb` is silu(time embedding), computed once
        got = model(x, skip_input, activated) if skip else model(x, activated)
        want = hand(torch.cat([x, skip_input], dim=1) if skip else x, temb)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_reference
def test_attention_block_equals_diffusers_attention():
    spec = block_spec("- attention_block: {}\n  name: block\n", "{x: {shape: [32, 8, 8]}}")
    model = specc.build(spec).eval()
    weights = weights_under("mid_block.attentions.0.")
    model.load_state_dict({f"block.{key}": value for key, value in weights.items()}, strict=True)
    hand = AttentionBlock(32).eval()
    hand.load_state_dict(weights, strict=True)
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hand(x), rtol=1e-5, atol=1e-5)


def test_saved_tensor_count_is_the_same_every_time():
    """The timestep input is last used early; once freed, its storage's address was reused by a later
    saved tensor, which the count then left out as an input (a different total run to run)."""
    from specc.summary.rows import SavedForBackward
    first = specc.summary(SPEC, batch_size=3).memory_bytes()
    assert all(specc.summary(SPEC, batch_size=3).memory_bytes() == first for _ in range(3))
    saved, value = SavedForBackward(nn.Linear(2, 2)), torch.empty(4, device="meta")
    saved.exclude(value)
    storage = value.untyped_storage()
    del value
    assert storage._cdata in saved._excluded and any(kept.untyped_storage()._cdata == storage._cdata for kept in saved._kept)
