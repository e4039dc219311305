"""Hand-written modules in the style of torchvision's ResNet and MobileNet and of nanoGPT, for the
`specc.from_module` round trips in tests/test_importer.py (written for these tests, not copied)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, widths=(8, 16), blocks=2, n_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, in_planes = [], widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers.append(nn.Sequential(*[BasicBlock(in_planes if b == 0 else width, width, stride if b == 0 else 1)
                                          for b in range(blocks)]))
            in_planes = width
        self.layer1, self.layer2 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], n_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, expanded: int, out_channels: int, stride: int, se: bool):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = [nn.Sequential(nn.Conv2d(in_channels, expanded, 1, bias=False), nn.BatchNorm2d(expanded), nn.Hardswish())]
        layers.append(nn.Sequential(nn.Conv2d(expanded, expanded, 3, stride, 1, groups=expanded, bias=False),
                                    nn.BatchNorm2d(expanded), nn.Hardswish()))
        if se:
            layers.append(SqueezeExcitation(expanded, max(8, expanded // 4)))
        layers.append(nn.Sequential(nn.Conv2d(expanded, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result = result + x
        return result


class TinyMobileNet(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()),
            InvertedResidual(8, 16, 8, 1, se=True),
            InvertedResidual(8, 24, 16, 2, se=False),
            InvertedResidual(16, 32, 16, 1, se=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, n_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention (flash path); its scaled_dot_product_attention has no spec function,
    so the importer keeps this class as an import."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_embd, self.n_head = n_embd, n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """nanoGPT at a tiny config; positions as an Embedding over a constant index."""

    def __init__(self, vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            drop=nn.Dropout(0.0),
            h=nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight   # weight tying, as nanoGPT does

    def forward(self, idx):
        x = self.transformer.drop(self.transformer.wte(idx))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class SignGate(nn.Module):
    """Control flow on the input: torch.fx cannot trace it, so it stays an import."""

    def __init__(self, features: int, flip: bool = True):
        super().__init__()
        self.features, self.flip = features, flip
        self.fc = nn.Linear(features, features)

    def forward(self, x):
        y = self.fc(x)
        if self.flip and x.shape[-1] > 4:
            return -y
        return y


class GatedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.gate = SignGate(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.gate(self.stem(x))))


class Functional(nn.Module):
    """Functional ops between layers: each becomes the spec function of the same meaning."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.side = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4 * 8 * 8 * 2, 5)

    def forward(self, x):
        a = F.gelu(self.conv(x), approximate="tanh")
        b = torch.sigmoid(self.side(x)) * 0.5
        y = torch.cat([a, b], dim=1)
        y = y.permute(0, 1, 3, 2).contiguous()
        y = y.view(y.size(0), -1)
        return self.fc(y).softmax(dim=-1)


class Interleaved(nn.Module):
    """A sum computed at the top level between two calls into `block` (codegen's flattened style)."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleDict({"norm": nn.LayerNorm(8), "proj": nn.Linear(8, 8)})
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.block.norm(x)
        h = x + h
        h = self.block.proj(h)
        return self.head(h)


class Alternating(nn.Module):
    """Layers of `a` called around a layer of `b`: the items cannot nest like the attributes."""

    def __init__(self):
        super().__init__()
        self.a = nn.ModuleDict({"first": nn.Linear(4, 4), "second": nn.Linear(4, 4)})
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.a.second(self.b(self.a.first(x)))


class ScaledNorm(nn.Module):
    """A weight of shape [dim] used directly: a spec parameter of exactly that shape."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6) * self.weight


class Tokens(nn.Module):
    """ViT-style free tensors: a class token expanded over the batch, a learned scale, a position
    buffer, and a module with a [dim] weight used directly."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.token = nn.Parameter(torch.randn(1, 1, 8))
        self.scale = nn.Parameter(torch.randn(1, 4, 8))
        self.register_buffer("positions", torch.arange(4, dtype=torch.float32).unsqueeze(0))
        self.norm = ScaledNorm(8)

    def forward(self, x):                                   # x: [B, 3, 4]
        h = self.proj(x)
        token = self.token.expand(h.shape[0], -1, -1)
        h = torch.cat([token, h], dim=1) * self.scale        # [B, 4, 8]
        h = h + self.positions.unsqueeze(-1)
        return self.norm(h)


class NumberedAfterFunctions(nn.Module):
    """Layer `1` called after three items (T5's `SelfAttention["3"]` after its bias items)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.add_module("1", nn.Linear(8, 8))

    def forward(self, x):
        h = torch.relu(self.inp(x)) * 2.0
        return getattr(self, "1")(h)


class LibraryLayerNorm(nn.LayerNorm):
    """timm's `LayerNorm`: nn.LayerNorm under other constructor args, its own forward, no new weights."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class LibraryLayerNorm2d(nn.LayerNorm):
    """timm's `LayerNorm2d`: an nn.LayerNorm over the channels of [B, C, H, W] maps."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LibraryScaledLinear(nn.Linear):
    """A subclass that computes something else than its torch base: no stand-in, kept as an import."""

    def forward(self, x):
        return super().forward(x) * 2.0


class ConvNeXtLike(nn.Module):
    """timm's convnext_tiny in small: LayerNorm2d stem and downsample, blocks with a channels-last LayerNorm."""

    def __init__(self, dims: tuple = (8, 16)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LibraryLayerNorm2d(dims[0]))
        self.stages = nn.ModuleList()
        for index, dim in enumerate(dims):
            layers = [LibraryLayerNorm2d(dims[index - 1]), nn.Conv2d(dims[index - 1], dim, 2, stride=2)] if index else []
            self.stages.append(nn.Sequential(*layers, ConvNeXtBlockLike(dim)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), LibraryLayerNorm(dims[-1]), nn.Linear(dims[-1], 5))

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


class ConvNeXtBlockLike(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LibraryLayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-1))     # layer scale, [C] as timm stores it

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(self.norm(x)))).permute(0, 3, 1, 2)
        return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut   # timm's ConvNeXtBlock


class ScaledHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.head = LibraryScaledLinear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.proj(x)))
