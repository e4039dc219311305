"""Compiled specs compute exactly what the same model written by hand computes.

Each reference module below is the textbook way to write the model in PyTorch. The compiled spec's
weights are copied into it (by name where the names match, else by order) and both must give the
same outputs. The second half checks that a compiled model is an ordinary nn.Module: torch.compile,
torch.export, state_dict round trips, `.to()`, `print()`.
"""
from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from specc.weights.building import build

SPECS = Path(__file__).resolve().parent.parent / "specs"


def copy_weights_by_order(source: nn.Module, target: nn.Module) -> None:
    """Load `source`'s state_dict into `target` whose keys differ only in naming, not order or shape."""
    source_state, target_keys = source.state_dict(), list(target.state_dict())
    assert len(source_state) == len(target_keys), "the two models hold different numbers of tensors"
    renamed = dict(zip(target_keys, source_state.values()))
    target.load_state_dict(renamed, strict=True)  # strict: every shape must match too


def assert_same_outputs(compiled_model: nn.Module, reference: nn.Module, *inputs: torch.Tensor) -> None:
    compiled_model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled_model(*inputs), reference(*inputs))


# ----- hand-written references ------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, in_features=784, hidden=256, n_classes=10, dropout=0.1):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        for layer in (self.fc1, self.fc2, self.fc3):
            x = self.dropout(F.relu(layer(x)))
        return self.head(x)


class Net(nn.Module):
    """The MNIST example network from pytorch/examples (logits, no log_softmax)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout2d(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


class ParallelCNN(nn.Module):
    def __init__(self, channels=6, n_classes=10):
        super().__init__()
        self.branch_a = nn.Conv2d(3, channels, kernel_size=5, padding=2)
        self.branch_b = nn.Conv2d(3, channels, kernel_size=3, padding=1)
        self.head = nn.Linear(2 * channels * 16 * 16, n_classes)

    def forward(self, x):
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)  # (B, 12, 32, 32)
        x = F.max_pool2d(F.relu(x), 2)                                # (B, 12, 16, 16)
        return self.head(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block."""

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, n_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_channels = [], 64
        for channels, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stages.append(nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels)))
            in_channels = channels
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(512, n_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class LSTMClassifier(nn.Module):
    def __init__(self, vocab_size=10000, embedding_dim=100, hidden_size=128, num_layers=2, dropout=0.2, n_classes=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, tokens):
        output, _ = self.lstm(self.embedding(tokens))  # (B, T, H)
        return self.head(self.dropout(output[:, -1]))


# ----- same weights, same outputs ----------------------------------------------------------------
def test_mlp_matches_hand_written():
    model, reference = build(SPECS / "mlp.yaml"), MLP()
    copy_weights_by_order(model, reference)
    assert_same_outputs(model, reference, torch.randn(4, 784))


def test_mnist_net_state_dict_keys_match_the_classic_net():
    model, reference = build(SPECS / "mnist_net.yaml"), Net()
    assert list(model.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(model.state_dict())  # by name, no renaming needed
    assert_same_outputs(model, reference, torch.randn(4, 1, 28, 28))


def test_parallel_cnn_matches_hand_written():
    model, reference = build(SPECS / "parallel_cnn.yaml"), ParallelCNN()
    copy_weights_by_order(model, reference)
    assert_same_outputs(model, reference, torch.randn(4, 3, 32, 32))


@pytest.mark.parametrize("block, in_channels, channels, stride", [
    ("basic_block", 64, 64, 1), ("down_block", 64, 128, 2),
])
def test_resnet_blocks_match_torchvision_basic_block(block, in_channels, channels, stride):
    resnet = yaml.safe_load((SPECS / "resnet18.yaml").read_text())
    spec = {"inputs": {"x": {"shape": [in_channels, 16, 16]}}, "blocks": resnet["blocks"],
            "layers": [{block: {"channels": channels}}]}
    model, reference = build(spec), BasicBlock(in_channels, channels, stride)
    _randomize_batch_norm_statistics(model)
    copy_weights_by_order(model, reference)
    assert_same_outputs(model, reference, torch.randn(2, in_channels, 16, 16))


def test_resnet18_matches_hand_written_at_64x64():
    model, reference = build(SPECS / "resnet18.yaml", image_size=64), ResNet18()
    _randomize_batch_norm_statistics(model)
    copy_weights_by_order(model, reference)
    assert_same_outputs(model, reference, torch.randn(2, 3, 64, 64))


def test_resnet18_matches_in_training_mode_too():
    # training mode: batch-norm uses batch statistics and updates its running buffers
    model, reference = build(SPECS / "resnet18.yaml", image_size=32), ResNet18()
    copy_weights_by_order(model, reference)
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model.train()(images), reference.train()(images))
    for ours, theirs in zip(model.buffers(), reference.buffers()):
        torch.testing.assert_close(ours, theirs)


def test_lstm_classifier_matches_hand_written():
    model, reference = build(SPECS / "lstm_classifier.yaml"), LSTMClassifier()
    assert list(model.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(model.state_dict())
    assert_same_outputs(model, reference, torch.randint(0, 10000, (3, 64)))


def test_seeded_build_gives_the_hand_written_initial_weights():
    # layers are built in spec order, so the same seed draws the same initial weights
    torch.manual_seed(0)
    model = build(SPECS / "mnist_net.yaml")
    torch.manual_seed(0)
    reference = Net()
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, msg=name)


def _randomize_batch_norm_statistics(model: nn.Module) -> None:
    """Fresh BatchNorm is the identity in eval mode; random statistics make the comparison meaningful."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator))


# ----- a compiled spec is an ordinary nn.Module ---------------------------------------------------
@pytest.fixture
def parallel_cnn():
    model = build(SPECS / "parallel_cnn.yaml").eval()
    return model, torch.randn(2, 3, 32, 32)


def test_torch_compile(parallel_cnn):
    model, images = parallel_cnn
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images))


def test_torch_export(parallel_cnn):
    model, images = parallel_cnn
    exported = torch.export.export(model, (images,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(images), model(images))


def test_state_dict_save_and_load_round_trip(parallel_cnn):
    model, images = parallel_cnn
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(SPECS / "parallel_cnn.yaml").eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), model(images))


def test_to_changes_dtype_and_device(parallel_cnn):
    model, images = parallel_cnn
    with torch.no_grad():
        expected = model(images)
    model = model.to(torch.float64).to("cpu")
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float64}
    with torch.no_grad():
        result = model(images.double())
    assert result.dtype == torch.float64
    torch.testing.assert_close(result.float(), expected)


def test_print_shows_spec_names_and_layers(parallel_cnn):
    model, _ = parallel_cnn
    text = str(model)
    assert text.startswith("ParallelCnn(")
    assert "(head): Linear(in_features=3072, out_features=10, bias=True)" in text
    assert "Conv2d(3, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))" in text


def test_build_with_dtype_gives_weights_of_that_dtype():
    model = build(SPECS / "mlp.yaml", dtype=torch.float64)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float64}
    assert model(torch.randn(2, 784, dtype=torch.float64)).dtype == torch.float64


def test_whole_module_pickles_and_deep_copies(parallel_cnn):
    model, images = parallel_cnn
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)  # a whole module is pickled code + weights
    copied = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(restored(images), model(images))
        torch.testing.assert_close(copied(images), model(images))
