"""The dry run's shape rules (build/shape_rules.py, shape_attention.py, shape_functions.py) give
what the meta kernels give: the same shape, dtype and strides for every item of every spec in
specs/ and for a zoo of layer and function examples; cases they do not rule fall back to torch,
so errors keep torch's wording; and a small spec is checked without importing torch._dynamo."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from specc.build import infer, layers as specc_layers
from specc.build.compiler import compile as compile_spec
from specc.build.moe_layers import MoE
from specc.build.registry import FUNCTIONS
from specc.build.shape_functions import function_output, merge_output
from specc.build.shape_rules import MODULE_RULES, module_output
from specc.lang.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
ERROR_SPECS = sorted((ROOT / "specs" / "errors").glob("*.yaml"))


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def layout(value):
    """Shape, dtype and strides of a tensor, or of each tensor in a (nested) tuple."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.dtype, value.stride()
    if isinstance(value, (tuple, list)):
        return tuple(layout(item) for item in value)
    return value


@pytest.fixture
def without_rules(monkeypatch):
    """The dry run with every rule off: each item runs its meta kernel."""
    def use_kernels():
        for name in ("module_output", "function_output", "merge_output"):
            monkeypatch.setattr(infer, name, lambda *args: None)
    return use_kernels


def _node_figures(compiled):
    return [(node.name, node.shape, node.dtype, dict(node.args), node.meta.get("symbolic_shape"))
            for node in compiled.graph.nodes]


@pytest.mark.parametrize("path", SPECS, ids=lambda path: path.stem)
def test_every_spec_item_gets_the_kernels_shape(path, without_rules):
    ruled = _node_figures(compile_spec(path, device="meta"))
    without_rules()
    assert ruled == _node_figures(compile_spec(path, device="meta"))


@pytest.mark.parametrize("path", ERROR_SPECS, ids=lambda path: path.stem)
def test_broken_specs_fail_with_the_same_message(path, without_rules):
    def message() -> str:
        with pytest.raises(SpecError) as caught:
            compile_spec(path, device="meta")
        return str(caught.value)

    ruled = message()
    without_rules()
    assert ruled == message()


def _conv_zoo():
    return [
        (nn.Conv1d(3, 8, 3), [meta(2, 3, 17)]),
        (nn.Conv1d(3, 8, 5, stride=2, padding=2, dilation=2), [meta(2, 3, 31)]),
        (nn.Conv2d(3, 16, 3, padding=1), [meta(2, 3, 28, 28)]),
        (nn.Conv2d(3, 16, (3, 5), stride=(2, 1), padding=(1, 2)), [meta(2, 3, 28, 27)]),
        (nn.Conv2d(4, 8, 3, padding="same", dilation=2), [meta(2, 4, 10, 9)]),
        (nn.Conv2d(4, 8, 4, padding="valid", groups=2, bias=False), [meta(2, 4, 10, 9)]),
        (nn.Conv2d(8, 8, 1), [meta(2, 8, 1, 1)]),
        (nn.Conv3d(2, 4, 3, stride=2, padding=1), [meta(2, 2, 9, 8, 7)]),
        (nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1), [meta(2, 4, 9)]),
        (nn.ConvTranspose2d(8, 4, 2, stride=2), [meta(2, 8, 7, 7)]),
        (nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, dilation=1), [meta(2, 8, 7, 6)]),
        (nn.ConvTranspose3d(4, 2, 3, stride=(1, 2, 2), padding=1), [meta(2, 4, 5, 6, 7)]),
    ]


def _pool_zoo():
    return [
        (nn.MaxPool1d(3, stride=2), [meta(2, 4, 17)]),
        (nn.MaxPool2d(2), [meta(2, 4, 28, 28)]),
        (nn.MaxPool2d(3, stride=2, padding=1), [meta(2, 4, 7, 7)]),
        (nn.MaxPool2d(3, stride=2, ceil_mode=True), [meta(2, 4, 8, 9)]),
        (nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True), [meta(2, 4, 10, 11)]),
        (nn.MaxPool3d(2, stride=2), [meta(2, 4, 6, 7, 8)]),
        (nn.AvgPool1d(4, stride=3, padding=2, ceil_mode=True), [meta(2, 4, 15)]),
        (nn.AvgPool2d(2), [meta(2, 4, 9, 9)]),
        (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), [meta(2, 4, 8, 8)]),
        (nn.AvgPool3d((1, 2, 2)), [meta(2, 4, 3, 8, 8)]),
        (nn.AdaptiveAvgPool1d(5), [meta(2, 4, 17)]),
        (nn.AdaptiveAvgPool2d(1), [meta(2, 4, 7, 7)]),
        (nn.AdaptiveAvgPool2d((3, None)), [meta(2, 4, 7, 6)]),
        (nn.AdaptiveAvgPool3d((2, 3, 4)), [meta(2, 4, 5, 6, 7)]),
        (nn.AdaptiveMaxPool1d(4), [meta(2, 4, 9)]),
        (nn.AdaptiveMaxPool2d((2, 2)), [meta(2, 4, 7, 5)]),
        (nn.AdaptiveMaxPool3d(2), [meta(2, 4, 5, 6, 7)]),
    ]


def _norm_zoo():
    return [
        (nn.BatchNorm1d(8), [meta(2, 8)]),
        (nn.BatchNorm1d(8), [meta(2, 8, 5)]),
        (nn.BatchNorm2d(8), [meta(2, 8, 5, 5)]),
        (nn.BatchNorm2d(8, affine=False, track_running_stats=False), [meta(2, 8, 5, 5)]),
        (nn.BatchNorm3d(4), [meta(2, 4, 3, 3, 3)]),
        (nn.InstanceNorm1d(4, affine=True), [meta(2, 4, 9)]),
        (nn.InstanceNorm2d(4), [meta(2, 4, 5, 5)]),
        (nn.InstanceNorm3d(4), [meta(2, 4, 3, 3, 3)]),
        (nn.LayerNorm(16), [meta(2, 5, 16)]),
        (nn.LayerNorm([5, 16], elementwise_affine=False), [meta(2, 5, 16)]),
        (nn.LayerNorm(16), [meta(2, 5, 16).transpose(0, 1)]),
        (nn.LayerNorm(96), [meta(2, 96, 7, 7).permute(0, 2, 3, 1)]),
        (nn.GroupNorm(2, 8), [meta(2, 8, 5, 5)]),
        (nn.GroupNorm(4, 8, affine=False), [meta(2, 8, 6)]),
        (nn.RMSNorm(16), [meta(2, 5, 16)]),
        (nn.RMSNorm([5, 16], eps=1e-6), [meta(2, 5, 16)]),
        (specc_layers.LayerNorm2d(8), [meta(2, 8, 5, 6)]),
    ]


def _activation_zoo():
    x = meta(2, 6, 5)
    cases = [(cls(), [x]) for cls in (nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
                                      nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                                      nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Softshrink,
                                      nn.Hardshrink, nn.LogSigmoid, nn.Dropout, nn.AlphaDropout)]
    return cases + [
        (nn.ReLU(inplace=True), [meta(2, 6, 5)]),
        (nn.GELU(approximate="tanh"), [x]),
        (nn.ReLU(), [meta(2, 6, 5).transpose(1, 2)]),           # permuted input: permuted output
        (nn.Dropout(0.1), [meta(2, 3, 128)[:, -1]]),             # a slice: packed output
        (nn.Dropout(0.5), [meta(2, 6, 5, dtype=torch.float64)]),
        (nn.Identity(), [meta(2, 6, dtype=torch.long)]),
        (nn.Dropout1d(0.1), [meta(2, 4, 9)]),
        (nn.Dropout2d(0.1), [meta(2, 4, 5, 5)]),
        (nn.Dropout3d(0.1), [meta(2, 4, 3, 3, 3)]),
        (specc_layers.DropPath(0.1), [x]),
        (nn.Softmax(dim=-1), [x]), (nn.LogSoftmax(dim=1), [x]), (nn.Softmin(dim=0), [x]),
    ]


def _other_zoo():
    tokens = torch.zeros(2, 7, dtype=torch.long, device="meta")
    return [
        (nn.Linear(8, 4), [meta(2, 8)]),
        (nn.Linear(8, 4, bias=False), [meta(2, 5, 8)]),
        (nn.Linear(8, 4), [meta(2, 8, 5).transpose(1, 2)]),
        (nn.Linear(8, 4), [meta(8)]),
        (nn.Linear(8, 4, dtype=torch.float64), [meta(3, 2, 8, dtype=torch.float64)]),
        (nn.Embedding(100, 16), [tokens]),
        (nn.Embedding(100, 16, padding_idx=0), [torch.zeros(2, 3, 4, dtype=torch.int32, device="meta")]),
        (nn.Flatten(), [meta(2, 3, 4, 5)]),
        (nn.Flatten(2, -1), [meta(2, 3, 4, 5)]),
        (nn.Flatten(0, 1), [meta(2, 3, 4)]),
    ]


def _attention_zoo():
    return [
        (nn.MultiheadAttention(16, 4, batch_first=True), [meta(2, 5, 16)] * 3),
        (nn.MultiheadAttention(16, 4), [meta(5, 2, 16)] * 3),
        (nn.MultiheadAttention(16, 2, batch_first=True, kdim=8, vdim=6), [meta(2, 5, 16), meta(2, 7, 8), meta(2, 7, 6)]),
        (nn.MultiheadAttention(16, 4, bias=False, batch_first=True), [meta(2, 5, 16), meta(2, 9, 16), meta(2, 9, 16)]),
        (nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), [meta(2, 5, 16)]),
        (nn.TransformerEncoderLayer(16, 4, 32, norm_first=True, batch_first=True), [meta(2, 5, 16)]),
        (nn.TransformerEncoderLayer(16, 4, 32), [meta(5, 2, 16)]),
        (nn.LSTM(8, 16, batch_first=True), [meta(2, 5, 8)]),
        (nn.LSTM(8, 16, num_layers=2, bidirectional=True), [meta(5, 2, 8)]),
        (nn.LSTM(8, 16, proj_size=4, batch_first=True), [meta(2, 5, 8)]),
        (nn.GRU(8, 16, batch_first=True, bidirectional=True), [meta(2, 5, 8)]),
        (nn.RNN(8, 16, num_layers=3), [meta(5, 2, 8)]),
        (specc_layers.CausalSelfAttention(16, 4), [meta(2, 5, 16)]),
        (specc_layers.CausalSelfAttention(16, 4, bias=False, rope=True, n_kv_heads=2), [meta(2, 5, 16)]),
        (specc_layers.MLP(16, 64), [meta(2, 5, 16)]),
        (specc_layers.CausalSelfAttention(16, 4, layout="hf", n_kv_heads=1, head_dim=8, out_bias=False), [meta(2, 5, 16)]),
        (specc_layers.CausalSelfAttention(16, 2, layout="meta", rope=True, rope_fraction=0.5), [meta(2, 5, 16)]),
        (specc_layers.SwiGLU(16, 40), [meta(2, 5, 16)]),
        (specc_layers.SwiGLU(16, 40, layout="hf", activation="gelu_tanh"), [meta(2, 5, 16)]),
        (MoE(16, 24, 4, 2), [meta(2, 5, 16)]),
        (specc_layers.OffsetRMSNorm(16), [meta(2, 5, 16)]),
        (MoE(16, 24, 3, 1, layout="per_expert", renormalize=False), [meta(2, 7, 16)]),
        (specc_layers.PositionalEmbedding(10, 16), [meta(2, 5, 16)]),
        (specc_layers.ClassToken(16), [meta(2, 5, 16)]),
        (specc_layers.LayerScale(16), [meta(2, 5, 16)]),
        (specc_layers.Attention(4), [meta(2, 5, 16), meta(2, 7, 16), meta(2, 7, 8)]),
        (specc_layers.Attention(2, causal=True), [meta(2, 5, 8)] * 3),
        (specc_layers.LinearScan(), [meta(2, 7, 4, 3), meta(2, 7, 4, 3)]),
        (specc_layers.LinearScan(dim=-1, reverse=True), [meta(2, 4, 1, 10), meta(2, 4, 3, 10), meta(2, 4, 3)]),
        (specc_layers.Attention(4, n_kv_heads=2, rope=True), [meta(2, 5, 16), meta(2, 7, 8), meta(2, 7, 8)]),
    ]


ZOO = _conv_zoo() + _pool_zoo() + _norm_zoo() + _activation_zoo() + _other_zoo() + _attention_zoo()


def _call(module, inputs):
    return infer.call_inputs(_NodeLike(module), list(inputs))


class _NodeLike:
    """Enough of a graph node for `call_inputs` (how the dry run calls a layer)."""

    def __init__(self, module):
        self.target = type(module).__name__


@pytest.mark.parametrize("module, inputs", ZOO, ids=lambda value: repr(value).replace("\n", "")[:60]
                         if isinstance(value, nn.Module) else "")
def test_layer_rule_matches_the_meta_kernel(module, inputs):
    with torch.device("meta"):
        module = module.to("meta")
    args, kwargs = _call(module, inputs)
    ruled = module_output(module, args, kwargs)
    assert ruled is not None, f"no rule answered for {module}"
    assert layout(ruled) == layout(module(*args, **kwargs))


def test_every_ruled_class_is_in_the_zoo():
    assert set(MODULE_RULES) <= {type(module) for module, _ in ZOO}


# Inputs the rules must leave to torch: torch raises (and words the error) or decides promotion.
FALLBACKS = [
    (nn.Linear(8, 4), [meta(2, 7)]),
    (nn.Linear(8, 4), [meta(2, 8, dtype=torch.float64)]),
    (nn.Conv2d(3, 8, 5), [meta(2, 3, 4, 4)]),
    (nn.Conv2d(3, 8, 3), [meta(2, 4, 8, 8)]),
    (nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), [meta(2, 3, 8, 8)]),
    (nn.Conv2d(3, 8, 3), [meta(2, 8, 8, 3).permute(0, 3, 1, 2)]),
    (nn.MaxPool2d(2, padding=2), [meta(2, 3, 8, 8)]),
    (nn.MaxPool2d(4), [meta(2, 3, 3, 3)]),
    (nn.MaxPool2d(2, return_indices=True), [meta(2, 3, 8, 8)]),
    (nn.BatchNorm2d(3), [meta(2, 4, 5, 5)]),
    (nn.BatchNorm1d(3), [meta(1, 3)]),
    (nn.LayerNorm(16), [meta(2, 8)]),
    (nn.Embedding(10, 4), [meta(2, 3)]),
    (nn.MultiheadAttention(16, 4, batch_first=True), [meta(2, 5, 12)] * 3),
    (nn.Dropout2d(0.1), [meta(2, 4, 5)]),
    (nn.Softmax(), [meta(2, 4)]),
    (specc_layers.PositionalEmbedding(4, 16), [meta(2, 5, 16)]),
]


@pytest.mark.parametrize("module, inputs", FALLBACKS, ids=lambda value: repr(value).replace("\n", "")[:60]
                         if isinstance(value, nn.Module) else "")
def test_rules_leave_other_cases_to_torch(module, inputs):
    module = module.to("meta")
    args, kwargs = _call(module, inputs)
    assert module_output(module, args, kwargs) is None


def _int(*shape):
    return torch.zeros(shape, dtype=torch.long, device="meta")


FUNCTION_ZOO = [
    *[(name, [meta(2, 5, 3)], {}) for name in ("relu", "silu", "sigmoid", "tanh", "exp", "log", "abs", "neg",
                                                 "rsqrt", "floor")],
    ("relu", [meta(2, 5, 3).permute(2, 0, 1)], {}),
    ("abs", [_int(1, 4, 4)], {}),
    ("gelu", [meta(2, 5)], {"approximate": "tanh"}),
    ("clamp", [meta(2, 5)], {"min": 0.0, "max": 1.0}),
    ("clamp", [_int(1, 7)], {"min": 0, "max": 1}),
    ("clamp", [_int(1, 7)], {"max": 0.5}),
    ("add", [meta(2, 5, 3), meta(3)], {}),
    ("add", [meta(2, 5, 3), meta(2, 1, 3)], {}),
    ("add", [meta(2, 4, 3, 3), meta(1, 3, 3, 4).permute(0, 3, 1, 2)], {}),
    ("add", [_int(1, 5, 1), _int(1, 1, 5)], {}),
    ("add", [_int(1, 5)], {"other": -3}),
    ("mul", [_int(1, 5)], {"other": -100.0}),
    ("mul", [meta(2, 6, 4)[:, ::2]], {"other": 0.5}),
    ("mul", [meta(2, 5, dtype=torch.float16), meta(2, 5)], {}),
    ("sub", [meta(2, 5)], {"other": 1}),
    ("div", [meta(2, 5), meta(2, 1)], {}),
    ("minimum", [meta(2, 5), meta(5)], {}),
    ("maximum", [meta(2, 5), meta(2, 1)], {}),
    ("matmul", [meta(2, 5, 8), meta(8, 3)], {}),
    ("matmul", [meta(2, 4, 5, 8), meta(2, 4, 8, 6)], {}),
    ("matmul", [meta(2, 1, 5, 8), meta(3, 8, 6)], {}),
    ("softmax", [meta(2, 5, 7)], {"dim": -1}),
    ("log_softmax", [meta(2, 5, 7)], {"dim": 1}),
    ("mean", [meta(2, 5, 7)], {"dim": 1}),
    ("mean", [meta(2, 5, 7)], {"dim": [1, 2], "keepdim": True}),
    ("sum", [meta(2, 5, 7)], {"dim": -1, "keepdim": False}),
    ("amax", [meta(2, 5, 7)], {"dim": [0, -1]}),
    ("cat", [meta(2, 3, 4), meta(2, 5, 4)], {"dim": 1}),
    ("cat", [(meta(2, 3, 4), meta(2, 3, 6))], {"dim": -1}),
    ("stack", [meta(2, 3), meta(2, 3), meta(2, 3)], {"dim": 1}),
    ("stack", [meta(2, 3), meta(2, 3)], {"dim": -1}),
]


@pytest.mark.parametrize("target, inputs, kwargs", FUNCTION_ZOO)
def test_function_rule_matches_the_kernel(target, inputs, kwargs):
    ruled = function_output(target, inputs, kwargs)
    assert ruled is not None
    info = FUNCTIONS[target]
    real = info.call(infer.list_argument(inputs), **kwargs) if info.takes_list else info.call(*inputs, **kwargs)
    assert layout(ruled) == layout(real)


@pytest.mark.parametrize("target, inputs, kwargs", [
    ("add", [meta(2, 5), meta(2, 4)], {}),
    ("add", [meta(2, 5)], {"other": 1, "alpha": 2}),
    ("exp", [_int(2, 5)], {}),
    ("div", [_int(2, 5)], {"other": 2}),
    ("cat", [meta(2, 3, 4), meta(2, 3, 5)], {"dim": 1}),
    ("cat", [meta(2, 3), meta(2, 3, dtype=torch.float64)], {"dim": 1}),
    ("matmul", [meta(8), meta(8, 3)], {}),
    ("matmul", [meta(2, 5, 8), meta(7, 3)], {}),
    ("softmax", [meta(2, 5)], {"dim": 2}),
    ("reshape", [meta(2, 6)], {"shape": [2, 3]}),
])
def test_function_rules_leave_other_cases_to_torch(target, inputs, kwargs):
    assert function_output(target, inputs, kwargs) is None


@pytest.mark.parametrize("target, inputs, dim", [
    ("add", [meta(2, 8, 4, 4), meta(2, 8, 4, 4)], None),
    ("mean", [meta(2, 8), meta(2, 8), meta(2, 8)], None),
    ("mul", [meta(2, 8, 4, 4), meta(2, 8, 1, 1)], None),
    ("max", [meta(2, 8), meta(2, 8)], None),
    ("cat", [meta(2, 8, 4, 4), meta(2, 3, 4, 4)], 1),
    ("stack", [meta(2, 8), meta(2, 8)], 0),
])
def test_merge_rule_matches_run_merge(target, inputs, dim):
    node = _MergeNode(target, {} if dim is None else {"dim": dim})
    ruled = merge_output(target, inputs, node.args)
    assert ruled is not None
    assert layout(ruled) == layout(infer.run_merge(node, inputs))


class _MergeNode:
    op = "merge"

    def __init__(self, target, args):
        self.target, self.args, self.meta, self.inputs = target, args, {}, []


def test_mismatched_merge_is_left_to_the_located_check():
    assert merge_output("add", [meta(2, 8, 4, 4), meta(2, 3, 4, 4)], {}) is None
    assert merge_output("cat", [meta(2, 8, 4, 4), meta(2, 3, 5, 4)], {"dim": 1}) is None


@pytest.mark.parametrize("spec", ["mlp", "digits_cnn", "resnet18", "gpt2_small", "llama2_7b", "unet"])
def test_dry_run_needs_no_decomposition(spec):
    """The common layers never reach torch's Python meta kernels: neither sympy nor torch._dynamo
    gets imported (together ~1 s of every `specc check` before the rules)."""
    code = ("import sys; from specc.build.compiler import compile; "
            f"compile('specs/{spec}.yaml', device='meta'); "
            "print(sorted(name for name in ('sympy', 'torch._dynamo') if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
