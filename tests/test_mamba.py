"""specs/mamba_block.yaml against a Mamba block written by hand the way Hugging Face's MambaMixer
runs without its CUDA kernels (a Python loop over time): the same keys, parameter count and outputs,
with every weight randomised so a misplaced one shows; and its selective scan runs in O(L) memory."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import specc

SPEC = Path(__file__).resolve().parents[1] / "specs" / "mamba_block.yaml"
SMALL = {"length": 24, "d_model": 32, "d_inner": 64, "d_state": 8, "dt_rank": 4, "d_conv": 4}


class HandMambaMixer(nn.Module):
    """Mamba's mixer with HF's module names; the scan is a loop over time."""

    def __init__(self, d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int):
        super().__init__()
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.randn(d_inner, d_state))
        self.D = nn.Parameter(torch.randn(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.dt_rank, self.d_state = dt_rank, d_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        stream, gate = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)          # (B, I, L) each
        stream = F.silu(self.conv1d(stream)[..., :length])
        step, B, C = self.x_proj(stream.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        step = F.softplus(self.dt_proj(step)).transpose(1, 2)                    # (B, I, L)
        A = -torch.exp(self.A_log)                                               # (I, N)
        decay = torch.exp(A[None, :, None, :] * step[:, :, :, None])             # (B, I, L, N)
        drive = step[:, :, :, None] * B[:, None, :, :] * stream[:, :, :, None]
        state = torch.zeros(x.shape[0], stream.shape[1], self.d_state)
        outputs = []
        for t in range(length):
            state = decay[:, :, t] * state + drive[:, :, t]
            outputs.append((state @ C[:, t, :, None])[..., 0])                  # (B, I)
        y = torch.stack(outputs, dim=-1) + stream * self.D[None, :, None]
        return self.out_proj((y * F.silu(gate)).transpose(1, 2))


class HandMambaBlock(nn.Module):
    def __init__(self, **sizes):
        super().__init__()
        self.norm = nn.RMSNorm(sizes["d_model"], eps=1e-5)
        self.mixer = HandMambaMixer(**sizes)

    def forward(self, x):
        return x + self.mixer(self.norm(x))


def randomised(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def test_keys_and_parameter_count_are_hugging_faces():
    model = specc.build(SPEC, **SMALL)
    sizes = {key: value for key, value in SMALL.items() if key != "length"}
    hand = HandMambaBlock(**sizes)
    shapes = {key.removeprefix("layers.0."): tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == {key: tuple(value.shape) for key, value in hand.state_dict().items()}     # A_log [I, N], D [I]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hand.parameters())
    full = specc.compile(SPEC, device="meta").module
    assert sum(p.numel() for p in full.parameters()) == 3_771_648        # one mamba-130m block


def test_outputs_equal_the_hand_written_block_with_two_layers():
    model = randomised(specc.build(SPEC, n_layers=2, **SMALL), seed=0).eval()
    sizes = {key: value for key, value in SMALL.items() if key != "length"}
    hands = [HandMambaBlock(**sizes).eval() for _ in range(2)]
    for index, hand in enumerate(hands):
        prefix = f"layers.{index}."
        hand.load_state_dict({key.removeprefix(prefix): value for key, value in model.state_dict().items()
                              if key.startswith(prefix)}, strict=True)
    x = torch.randn(3, SMALL["length"], SMALL["d_model"])
    with torch.no_grad():
        expected = hands[1](hands[0](x))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_gradients_equal_the_hand_written_block():
    model = randomised(specc.build(SPEC, **SMALL), seed=1)
    sizes = {key: value for key, value in SMALL.items() if key != "length"}
    hand = HandMambaBlock(**sizes)
    hand.load_state_dict({key.removeprefix("layers.0."): value for key, value in model.state_dict().items()},
                         strict=True)
    x = torch.randn(2, SMALL["length"], SMALL["d_model"])
    model(x).square().sum().backward()
    hand(x).square().sum().backward()
    theirs = dict(hand.named_parameters())
    for key, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, theirs[key.removeprefix("layers.0.")].grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_summary_is_exact(device):
    result = specc.summary(SPEC, device=device, **SMALL)
    assert result.total_params == sum(p.numel() for p in specc.build(SPEC, **SMALL).parameters())
    scan = next(row for row in result.rows if row.type == "LinearScan")
    assert list(scan.shape) == [1, "length", SMALL["d_inner"], SMALL["d_state"]]       # the named dim
    # the Linear layers and the conv: 2·rows·in·out each, the einsum's 2·B·L·I·N; the scan and element-wise work 0
    rows, sizes = SMALL["length"], SMALL
    linears = rows * (sizes["d_model"] * 2 * sizes["d_inner"] + sizes["d_inner"] * (sizes["dt_rank"] + 2 * sizes["d_state"])
                      + sizes["dt_rank"] * sizes["d_inner"] + sizes["d_inner"] * sizes["d_model"])
    conv = (rows + sizes["d_conv"] - 1) * sizes["d_inner"] * sizes["d_conv"]
    einsum = rows * sizes["d_inner"] * sizes["d_state"]
    assert result.flops == 2 * (linears + conv + einsum)
