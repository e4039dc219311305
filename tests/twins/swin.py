"""Swin Transformer (Liu et al., 2021) as torchvision builds it (`swin_t()`, version 1).

Feature maps stay channels-last ([B, H, W, C]) through the stages. Sizes must be multiples of the
window (true for Swin-T at 224 and for the tiny reference config), so no padding is needed.
"""
from __future__ import annotations

import torch
from torch import nn


def relative_position_index(window: int) -> torch.Tensor:
    """For every pair (i, j) of the window's window*window positions: the row of the bias table."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    d_rows = rows[:, None] - rows[None, :] + window - 1     # 0 .. 2*window-2
    d_cols = cols[:, None] - cols[None, :] + window - 1
    return (d_rows * (2 * window - 1) + d_cols).flatten()


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * windows, window*window, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """[windows, N, N]: -100 between positions that came from different regions before the roll."""
    regions = torch.zeros(height, width)
    slices = ((0, -window), (-window, -shift), (-shift, None))
    for count, (h, w) in enumerate((h, w) for h in slices for w in slices):
        regions[h[0]:h[1], w[0]:w[1]] = count
    regions = window_partition(regions[None, :, :, None], window)[..., 0]      # [windows, N]
    differs = regions[:, None, :] != regions[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, -100.0)


class ShiftedWindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, shift: int, num_heads: int):
        super().__init__()
        self.window, self.shift, self.num_heads = window, shift, num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))

    def forward(self, x):
        b, h, w, c = x.shape
        window = self.window
        shift = 0 if window >= h else self.shift     # one window covers the map: nothing to shift
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, window)                                 # [B*nW, N, C]
        n = window * window
        qkv = self.qkv(windows).reshape(-1, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // self.num_heads) ** -0.5, qkv[1], qkv[2]
        bias = self.relative_position_bias_table[self.relative_position_index]
        attn = q @ k.transpose(-2, -1) + bias.view(n, n, -1).permute(2, 0, 1)
        if shift:
            mask = shift_mask(h, w, window, shift).to(x)                      # [nW, N, N]
            attn = (attn.view(b, -1, self.num_heads, n, n) + mask[None, :, None]).view(-1, self.num_heads, n, n)
        out = self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c))
        out = out.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim, num_heads, window, shift, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = ShiftedWindowAttention(dim, window, shift, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))     # stochastic depth is the identity in eval mode
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated on channels (4C), normalised, projected to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class SwinTransformer(nn.Module):
    def __init__(self, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                 num_classes=1000):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, embed_dim, patch_size, stride=patch_size),
                                                 Permute([0, 2, 3, 1]), nn.LayerNorm(embed_dim))]
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2 ** stage
            layers.append(nn.Sequential(*(SwinTransformerBlock(dim, heads, window_size, 0 if i % 2 == 0 else window_size // 2)
                                          for i in range(depth))))
            if stage < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(features)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x):
        x = self.permute(self.norm(self.features(x)))
        return self.head(self.flatten(self.avgpool(x)))
