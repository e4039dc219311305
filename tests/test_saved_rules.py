"""The bytes autograd saves for backward, by rule (summary/saved_rules.py), equal what the
saved-tensor hooks count when the meta kernels run: for every spec in specs/ and for each layer
the rules cover, with inputs that need a gradient and inputs that do not."""
from __future__ import annotations

from pathlib import Path

import pytest

import specc
from specc.build.compiler import compile as compile_spec
from specc.summary import spec_rows
from specc.summary.rows import SavedForBackward
from specc.summary.saved_rules import run_by_rules

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
RULED = {"llama3", "qwen2", "gemma", "mixtral", "gpt_char", "mlp", "digits_cnn", "digits_finetune", "iris_mlp", "diabetes_mlp", "parallel_cnn", "llama2_7b",
         "gpt2_small", "resnet18", "squeezenet1_1", "folder_cnn", "mnist_net", "conv_autoencoder",
         "mobilenet_v3_small", "unet"}


def _by_hooks(monkeypatch, spec, **options):
    with monkeypatch.context() as patch:
        patch.setattr(spec_rows, "run_by_rules", lambda *args: None)
        return specc.summary(spec, **options)


def _uses_rules(spec) -> bool:
    compiled = compile_spec(spec, device="meta", batch_size=2)
    with spec_rows._training_step_mode(compiled.module):
        return run_by_rules(compiled.graph, compiled.module, SavedForBackward(compiled.module).add,
                            lambda node: spec_rows._input_value(node, compiled.device)) is not None


@pytest.mark.parametrize("path", SPECS, ids=lambda path: path.stem)
def test_every_spec_counts_the_same_by_rule_and_by_hooks(path, monkeypatch):
    ruled, hooked = specc.summary(path, batch_size=3), _by_hooks(monkeypatch, path, batch_size=3)
    assert ruled.memory_bytes() == hooked.memory_bytes()
    assert ruled.flops == hooked.flops
    assert [row.to_dict() for row in ruled.rows] == [row.to_dict() for row in hooked.rows]
    assert _uses_rules(path) == (path.stem in RULED)


LAYERS = ["Linear: {out_features: 6}", "ReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "Dropout: {p: 0.3}",
          "Dropout: {p: 0.0}", "BatchNorm1d", "Flatten", "LeakyReLU", "Hardswish", "Hardsigmoid",
          "Softmax: {dim: -1}", "LogSoftmax: {dim: -1}", "Identity", "LayerNorm: {normalized_shape: 8}",
          "LayerNorm: {normalized_shape: 8, elementwise_affine: false}", "RMSNorm: {normalized_shape: 8}",
          "RMSNorm: {normalized_shape: 8, elementwise_affine: false}"]


SEQUENCE_LAYERS = ["CausalSelfAttention: {n_heads: 4}", "CausalSelfAttention: {n_heads: 4, bias: false, rope: true}",
                   "CausalSelfAttention: {n_heads: 4, n_kv_heads: 2}",
                   "CausalSelfAttention: {n_heads: 4, n_kv_heads: 2, rope: true, dropout: 0.1}",
                   "CausalSelfAttention: {n_heads: 4, layout: hf}",
                   "CausalSelfAttention: {n_heads: 4, n_kv_heads: 2, layout: hf, bias: false}",
                   "CausalSelfAttention: {n_heads: 4, layout: meta, rope: true, head_dim: 8}",
                   "CausalSelfAttention: {n_heads: 4, n_kv_heads: 1, layout: hf, rope: true, out_bias: false}",
                   "CausalSelfAttention: {n_heads: 2, rope: true, rope_fraction: 0.5}",
                   "SwiGLU: {hidden_dim: 24}", "SwiGLU: {hidden_dim: 24, layout: hf, activation: gelu_tanh}",
                   "SwiGLU: {hidden_dim: 24, activation: relu}",
                   "MoE: {hidden_dim: 24, n_experts: 4, top_k: 2}",
                   "MoE: {hidden_dim: 24, n_experts: 3, top_k: 1, layout: per_expert, renormalize: false}", "MLP: {hidden_dim: 24}", "MLP: {hidden_dim: 24, activation: relu}",
                   "MLP: {hidden_dim: 24, activation: silu, dropout: 0.2}", "PositionalEmbedding: {max_len: 8}",
                   "RMSNorm: {normalized_shape: 16}", "OffsetRMSNorm: {eps: 1.0e-6}", "LayerNorm: {normalized_shape: 16}"]


# (input shape without the batch dim, its last dim, the layer)
VECTOR_AND_SEQUENCE = [([8], 8, layer) for layer in LAYERS] + [([6, 16], 16, layer) for layer in SEQUENCE_LAYERS]


def _counted_the_same(spec: str, batch_size: int, monkeypatch) -> None:
    assert _uses_rules(spec)
    by_rules, by_hooks = specc.summary(spec, batch_size=batch_size), _by_hooks(monkeypatch, spec, batch_size=batch_size)
    assert by_rules.activation_bytes == by_hooks.activation_bytes


@pytest.mark.parametrize("first", [True, False], ids=["on the input", "after a Linear"])
@pytest.mark.parametrize("shape, width, layer", VECTOR_AND_SEQUENCE, ids=[case[2] for case in VECTOR_AND_SEQUENCE])
def test_each_layer_counts_the_same(shape, width, layer, first, monkeypatch):
    # on the input nothing needs a gradient yet, so a layer without weights saves nothing
    before = "" if first else f"  - Linear: {{out_features: {width}}}\n"
    _counted_the_same(f"inputs: {{x: {{shape: {shape}}}}}\nlayers:\n{before}  - {layer}\n  - Linear: {{out_features: 2}}\n",
                      4, monkeypatch)


@pytest.mark.parametrize("layer", ["Conv2d: {out_channels: 4, kernel_size: 3}", "MaxPool2d: {kernel_size: 2}",
                                   "BatchNorm2d", "ReLU", "ConvTranspose2d: {out_channels: 4, kernel_size: 2, stride: 2}",
                                   "AvgPool2d: {kernel_size: 2}", "AdaptiveAvgPool2d: {output_size: 1}",
                                   "AdaptiveAvgPool2d: {output_size: [2, 3]}", "Dropout2d: {p: 0.2}",
                                   "GroupNorm: {num_groups: 5, num_channels: 5}"])
def test_each_image_layer_counts_the_same(layer, monkeypatch):
    spec = ("inputs: {x: {shape: [3, 8, 8]}}\nlayers:\n  - Conv2d: {out_channels: 5, kernel_size: 1}\n"
            f"  - {layer}\n  - Flatten\n  - Linear: {{out_features: 2}}\n")
    _counted_the_same(spec, 2, monkeypatch)


@pytest.mark.parametrize("first", [True, False], ids=["on the input", "after a Linear"])
@pytest.mark.parametrize("gate_first", [True, False])
def test_a_gated_product_counts_the_same(gate_first, first, monkeypatch):
    # a gated product; on the input only the gate's side (a Linear) needs a gradient
    branches = ["gate: [{Linear: {out_features: 8}}]", "value: [ReLU]"]
    order = branches if gate_first else branches[::-1]
    before = "" if first else "  - Linear: {out_features: 8}\n"
    spec = (f"inputs: {{x: {{shape: [8]}}}}\nlayers:\n{before}  - parallel:\n"
            f"      {order[0]}\n      {order[1]}\n    merge: mul\n  - Linear: {{out_features: 2}}\n")
    _counted_the_same(spec, 3, monkeypatch)


def test_unruled_and_in_place_layers_take_the_hooks():
    assert not _uses_rules("inputs: {x: {shape: [8]}}\nlayers:\n  - Linear: {out_features: 4}\n  - Mish\n")
    assert not _uses_rules("inputs: {x: {shape: [8]}}\nlayers:\n  - Linear: {out_features: 4}\n  - Dropout1d: {p: 0.0}\n")
    assert not _uses_rules("inputs: {x: {shape: [8]}}\nlayers:\n  - ReLU: {inplace: true}\n  - Linear: {out_features: 4}\n")
