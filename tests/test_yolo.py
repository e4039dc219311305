"""specs/yolov8n.yaml against YOLOv8n written by hand in torch, after ultralytics' modules (Conv, C2f,
Bottleneck, SPPF, Detect with DFL and make_anchors; ultralytics is not installed here): the same
state_dict keys, 3,157,200 parameters of which 16 fixed, and equal detections at 64x64.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import specc

SPEC = Path(__file__).resolve().parents[1] / "specs" / "yolov8n.yaml"


class Conv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 3), Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        self.cv1 = Conv(c1, c1 // 2, 1)
        self.cv2 = Conv(c1 // 2 * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats: list, strides: list, offset: float = 0.5):
    points, stride_tensor = [], []
    for feature, stride in zip(feats, strides):
        _, _, h, w = feature.shape
        sx = torch.arange(w, dtype=feature.dtype) + offset
        sy = torch.arange(h, dtype=feature.dtype) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=feature.dtype))
    return torch.cat(points), torch.cat(stride_tensor)


class Detect(nn.Module):
    def __init__(self, nc: int, ch: tuple):
        super().__init__()
        self.nc, self.reg_max, self.stride = nc, 16, [8, 16, 32]
        self.no = nc + self.reg_max * 4
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
                                 for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(self.reg_max)

    def forward(self, x: list):
        x = [torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1) for i in range(3)]
        anchors, strides = (t.transpose(0, 1) for t in make_anchors(x, self.stride))
        x_cat = torch.cat([xi.view(x[0].shape[0], self.no, -1) for xi in x], 2)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YOLOv8n(nn.Module):
    """ultralytics' yolov8.yaml at scale n: [layer, inputs] rows, outputs kept where a later row reads them."""

    def __init__(self, nc: int = 80):
        super().__init__()
        upsample = nn.Upsample(None, 2, "nearest")
        self.rows = [-1] * 11 + [[-1, 6], -1, -1, [-1, 4], -1, -1, [-1, 12], -1, -1, [-1, 9], -1, [15, 18, 21]]
        self.model = nn.Sequential(
            Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32, 1, True), Conv(32, 64, 3, 2), C2f(64, 64, 2, True),
            Conv(64, 128, 3, 2), C2f(128, 128, 2, True), Conv(128, 256, 3, 2), C2f(256, 256, 1, True),
            SPPF(256, 256, 5), upsample, nn.Identity(), C2f(384, 128), upsample, nn.Identity(), C2f(192, 64),
            Conv(64, 64, 3, 2), nn.Identity(), C2f(192, 128), Conv(128, 128, 3, 2), nn.Identity(), C2f(384, 256),
            Detect(nc, (64, 128, 256)))

    def forward(self, x):
        outputs = []
        for row, layer in zip(self.rows, self.model):
            if isinstance(row, list):
                x = [x if index == -1 else outputs[index] for index in row]
                x = x if isinstance(layer, Detect) else torch.cat(x, 1)
            x = layer(x)
            outputs.append(x)
        return x


def test_yolov8n_has_ultralytics_parameter_counts():
    reference = YOLOv8n()
    assert sum(p.numel() for p in reference.parameters()) == 3_157_200
    assert sum(p.numel() for p in reference.parameters() if p.requires_grad) == 3_157_184
    compiled = specc.compile(SPEC, device="meta")
    parameters = list(compiled.module.parameters())
    assert sum(p.numel() for p in parameters) == 3_157_200
    assert sum(p.numel() for p in parameters if p.requires_grad) == 3_157_184


def test_yolov8n_keys_and_detections_equal_the_hand_written_model():
    torch.manual_seed(0)
    model, reference = specc.build(SPEC, image=64), YOLOv8n()
    assert sorted(model.state_dict()) == sorted(reference.state_dict())
    for parameter in reference.parameters():   # away from the default init, so a mix-up shows
        if parameter.requires_grad:
            parameter.data.normal_(0, 0.1)
    for name, buffer in reference.named_buffers():
        if name.endswith("running_var"):
            buffer.data.uniform_(0.5, 1.5)
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval(), reference.eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(image)
        assert expected.shape == (2, 84, 8 * 8 + 4 * 4 + 2 * 2)
        torch.testing.assert_close(model(image), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(model.get_parameter("model.22.dfl.conv.weight").flatten(), torch.arange(16.0))
