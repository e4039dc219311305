"""Forward overhead: a compiled spec vs the same model written by hand, with the same weights.

Batch 1, one thread, no_grad, eval mode: the setting where per-call Python overhead is the
largest share of the time. Both models call the same torch.nn layers, so any difference is the
cost of specc's generated forward (torch.fx GraphModule) over a hand-written one.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.timing import SPECS, Result, Target, forward_against_hand_written, median_ratio, medians

TARGET = Target("<=", 1.03)

# A ResNet basic block at CIFAR width: the identity-shortcut block of specs/resnet18.yaml.
BASIC_BLOCK_SPEC = """
name: basic_block
inputs:
  x: {shape: [64, 32, 32]}
layers:
  - residual:
      - Conv2d: {out_channels: 64, kernel_size: 3, padding: 1, bias: false}
        name: conv1
      - BatchNorm2d: {}
        name: bn1
      - ReLU
      - Conv2d: {out_channels: 64, kernel_size: 3, padding: 1, bias: false}
        name: conv2
      - BatchNorm2d: {}
        name: bn2
  - ReLU
"""


class DenseBlock(nn.Module):
    def __init__(self, in_features: int, width: int, p: float):
        super().__init__()
        self.linear = nn.Linear(in_features, width)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(p)

    def forward(self, x):
        return self.dropout(self.activation(self.linear(x)))


class HandMLP(nn.Module):
    """specs/mlp.yaml by hand: three Linear-ReLU-Dropout blocks and a linear head."""

    def __init__(self, in_features=784, hidden=256, dropout=0.1, n_classes=10):
        super().__init__()
        self.hidden = nn.ModuleList([DenseBlock(in_features if i == 0 else hidden, hidden, dropout) for i in range(3)])
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        for block in self.hidden:
            x = block(x)
        return self.head(x)


class HandParallelCNN(nn.Module):
    """specs/parallel_cnn.yaml by hand: a 5x5 and a 3x3 conv side by side, concatenated."""

    def __init__(self, channels=6, n_classes=10):
        super().__init__()
        self.branch_a = nn.Conv2d(3, channels, 5, padding=2)
        self.branch_b = nn.Conv2d(3, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(2 * channels * 16 * 16, n_classes)

    def forward(self, x):
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)  # (B, 12, 32, 32)
        return self.head(self.flatten(self.pool(self.relu(x))))


class HandBasicBlock(nn.Module):
    """torchvision's BasicBlock (identity shortcut), without in-place ReLU to match the spec."""

    def __init__(self, channels=64):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


CASES = {
    "mlp": (SPECS / "mlp.yaml", HandMLP),
    "parallel_cnn": (SPECS / "parallel_cnn.yaml", HandParallelCNN),
    "resnet_basic_block": (BASIC_BLOCK_SPEC, HandBasicBlock),
}


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy parameters and buffers in definition order (both models define layers in spec order)."""
    source_state, target_state = source.state_dict(), target.state_dict()
    if len(source_state) != len(target_state):
        raise ValueError(f"{len(source_state)} tensors in the spec model, {len(target_state)} by hand")
    for (source_key, value), (target_key, slot) in zip(source_state.items(), target_state.items()):
        if value.shape != slot.shape:
            raise ValueError(f"{source_key} {list(value.shape)} does not fit {target_key} {list(slot.shape)}")
    target.load_state_dict(dict(zip(target_state, source_state.values())))


def equivalent_pair(spec, hand_class) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """The compiled spec, the hand-written model with its weights, and a batch-1 input.

    Raises:
        AssertionError: the two models do not compute the same function.
    """
    from specc.build.compiler import compile as compile_spec

    torch.manual_seed(0)
    compiled = compile_spec(spec)
    specc_model = compiled.module.eval()
    hand_model = hand_class().eval()
    copy_weights(specc_model, hand_model)
    (example,) = compiled.example_inputs(batch_size=1)
    with torch.no_grad():
        torch.testing.assert_close(specc_model(example), hand_model(example))
    return specc_model, hand_model, example


def run(repeats: int = 9, turn_seconds: float = 0.004, turns: int = 50) -> list[Result]:
    """Time each case's forward pass, specc against hand-written, taking turns.

    Args:
        repeats: measurements per case (the ratio is the median over them).
        turn_seconds: about how long one turn of calls lasts.
        turns: turns per model per repeat.

    Returns:
        One Result per case: specc seconds / hand-written seconds per call (this thread's CPU time).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [_run_case(name, spec, hand_class, repeats, turn_seconds, turns)
                for name, (spec, hand_class) in CASES.items()]
    finally:
        torch.set_num_threads(threads)


def _run_case(name, spec, hand_class, repeats: int, turn_seconds: float, turns: int) -> Result:
    specc_model, hand_model, example = equivalent_pair(spec, hand_class)
    seconds, noise, calls = forward_against_hand_written(specc_model, hand_model, example, repeats, turn_seconds, turns)
    return Result("forward", f"{name}: specc / hand-written", median_ratio(seconds["specc"], seconds["hand-written"]),
                  TARGET, seconds=medians(seconds), repeats=repeats,
                  note=f"batch 1, 1 thread, no_grad, CPU time, {turns} turns x {calls} calls per repeat; "
                       f"hand-written / itself {noise:.3f}")
