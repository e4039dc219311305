"""`specc summary`: parameter counts of known models, FLOPs against hand computation, the memory
lines, repeat collapsing, every output format, plain nn.Modules, and the command in a subprocess."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import specc
from specc.cli import app
from specc.build.compiler import compile as compile_spec
from specc.build.expect import forward_flops

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
SPECC = ROOT / ".venv" / "bin" / "specc"

# The classic MNIST `Net`, written out here so these tests do not depend on specs/mnist_net.yaml.
MNIST = """
name: mnist_net
inputs:
  image: {shape: [1, 28, 28]}
layers:
  - Conv2d: {out_channels: 32, kernel_size: 3}
    name: conv1
  - ReLU
  - Conv2d: {out_channels: 64, kernel_size: 3}
    name: conv2
  - ReLU
  - MaxPool2d: {kernel_size: 2}
  - Dropout2d: {p: 0.25}
  - Flatten
  - Linear: {out_features: 128}
    name: fc1
  - ReLU
  - Dropout: {p: 0.5}
  - Linear: {out_features: 10}
    name: fc2
"""

# One GPT-2 style block, small enough to check by hand.
TRANSFORMER = """
name: tiny_gpt
inputs:
  tokens: {shape: [16], dtype: long}
vars: {dim: 32, n_heads: 4, n_layers: 3}
blocks:
  block:
    layers:
      - residual: [LayerNorm, CausalSelfAttention: {n_heads: $n_heads, max_len: 16}]
        name: attention
      - residual: [LayerNorm, MLP: {hidden_dim: $(4 * dim)}]
        name: feed_forward
layers:
  - Embedding: {num_embeddings: 100, embedding_dim: $dim}
    name: wte
  - block: {}
    repeat: $n_layers
    name: h
  - Linear: {out_features: 100, bias: false}
    name: head
tie: {head.weight: wte.weight}
"""


def row(result, path):
    return next(r for r in result.rows if r.path == path)


def top_level(result):
    return [r for r in result.rows if r.depth == 0]


def assert_columns_add_up(result):
    rows = top_level(result)
    assert sum(r.params for r in rows) == result.total_params
    assert sum(r.trainable_params for r in rows) == result.trainable_params
    assert sum(r.flops for r in rows) == result.flops


# ----- parameters -------------------------------------------------------------------------------
def test_mnist_parameter_column_and_totals():
    result = specc.summary(MNIST)
    assert [r.params for r in result.rows if r.params] == [320, 18_496, 1_179_776, 1_290]
    assert [r.name for r in result.rows if r.params] == ["conv1", "conv2", "fc1", "fc2"]
    assert len(result.rows) == 11 and all(r.depth == 0 for r in result.rows)
    assert (result.total_params, result.trainable_params, result.non_trainable_params) == (1_199_882, 1_199_882, 0)
    text = str(result)
    for figure in ("320", "18,496", "1,179,776", "1,290", "Total params: 1,199,882", "Non-trainable params: 0"):
        assert figure in text
    assert_columns_add_up(result)


def test_mnist_spec_file_matches_the_inline_net():
    result = specc.summary(SPECS / "mnist_net.yaml")
    assert [r.params for r in result.rows if r.params] == [320, 18_496, 1_179_776, 1_290]
    assert result.total_params == 1_199_882


def test_resnet18_parameters_and_flops_match_the_whole_model():
    result = specc.summary(SPECS / "resnet18.yaml")
    assert result.total_params == 11_689_512
    assert row(result, "fc").params == 512 * 1000 + 1000
    assert_columns_add_up(result)
    # the item-by-item count equals FlopCounterMode on the compiled module in one go
    assert result.flops == forward_flops(compile_spec(SPECS / "resnet18.yaml", device="meta"), batch_size=1)


def test_gpt2_small_counts_the_tied_head_once():
    result = specc.summary(SPECS / "gpt2_small.yaml")
    assert result.total_params == 124_439_808
    embedding, head = row(result, "wte"), row(result, "head")
    assert embedding.params == head.shared_params == 50257 * 768
    assert head.params == 0
    assert "(shared 38,597,376)" in str(result)
    assert_columns_add_up(result)


def test_llama2_7b_on_meta():
    result = specc.summary(SPECS / "llama2_7b.yaml")
    assert result.total_params == 6_738_415_616
    assert "6,738,415,616" in str(result)
    layers = row(result, "layers")
    assert layers.count == 32 and layers.params == 32 * 202_383_360
    assert result.device == "meta"


def test_shared_module_is_counted_once_and_run_at_each_call():
    spec = """
inputs: {x: {shape: [8]}}
layers:
  - Linear: {out_features: 8}
    name: encode
  - Linear: [8]
    share: encode
"""
    result = specc.summary(spec, batch_size=3)
    assert result.total_params == 72
    assert row(result, "1").shared_params == 72 and row(result, "1").params == 0
    assert row(result, "encode").flops == row(result, "1").flops == 2 * 3 * 8 * 8
    assert result.flops == 2 * 2 * 3 * 8 * 8


# ----- FLOPs against hand computation -------------------------------------------------------------
def test_linear_and_conv_flops_by_hand():
    B = 3
    result = specc.summary(MNIST, batch_size=B)
    conv = lambda c_in, c_out, h, w, k: 2 * B * c_out * h * w * c_in * k * k  # noqa: E731
    assert row(result, "conv1").flops == conv(1, 32, 26, 26, 3)
    assert row(result, "conv2").flops == conv(32, 64, 24, 24, 3)
    assert row(result, "fc1").flops == 2 * B * 9216 * 128
    assert row(result, "fc2").flops == 2 * B * 128 * 10
    assert result.flops == conv(1, 32, 26, 26, 3) + conv(32, 64, 24, 24, 3) + 2 * B * (9216 * 128 + 128 * 10)
    assert row(result, "conv1").shape == [B, 32, 26, 26]


def test_attention_and_transformer_block_flops_by_hand():
    B, T, d, h, layers, vocab = 2, 16, 32, 4, 3, 100
    result = specc.summary(TRANSFORMER, batch_size=B)
    linear = lambda n_in, n_out: 2 * B * T * n_in * n_out  # noqa: E731
    attention = linear(d, 3 * d) + 4 * B * h * T * T * (d // h) + linear(d, d)  # qkv, SDPA (QK^T and AV), proj
    mlp = linear(d, 4 * d) + linear(4 * d, d)
    assert row(result, "h.*.attention.body.1").flops == layers * attention
    assert row(result, "h.*.feed_forward.body.1").flops == layers * mlp
    assert row(result, "h").flops == layers * (attention + mlp)
    assert result.flops == layers * (attention + mlp) + linear(d, vocab)
    assert result.flops == forward_flops(compile_spec(TRANSFORMER, device="meta"), batch_size=B)


def test_backward_estimate_is_twice_forward():
    result = specc.summary(MNIST, backward=True)
    assert result.backward_flops == 2 * result.flops
    assert f"Backward FLOPs (estimate: 2x forward): {2 * result.flops:,}" in str(result)
    assert "Backward" not in str(specc.summary(MNIST))


# ----- memory ------------------------------------------------------------------------------------
def test_memory_lines_by_hand():
    result = specc.summary(MNIST)
    # What autograd saves in a training step (each storage once; the input and the weights are
    # their own lines): the ReLUs' outputs (the next conv or linear saves the same storage), the max
    # pool's int64 indices, Dropout2d's per-channel float mask and its output (fc1's input),
    # Dropout's float mask and output (fc2's input).
    saved = 4 * (32 * 26 * 26 + 64 * 24 * 24 + 64 + 64 * 12 * 12 + 128 + 2 * 128) + 8 * 64 * 12 * 12
    mebibyte = 1024 ** 2
    expected = {"input": 28 * 28 * 4 / mebibyte, "forward_backward": saved / mebibyte,
                "params": 1_199_882 * 4 / mebibyte, "gradients": 1_199_882 * 4 / mebibyte}
    expected["total"] = sum(expected.values())
    assert result.memory_mb() == pytest.approx(expected)
    assert result.activation_bytes == saved
    text = str(result)
    for label, key in [("Input size (MiB)", "input"), ("Forward/backward pass size (MiB)", "forward_backward"),
                       ("Params size (MiB)", "params"), ("Gradients size (MiB)", "gradients"),
                       ("Estimated Total Size (MiB)", "total")]:
        assert f"{label}: {expected[key]:.2f}" in text


# ----- rows: nesting, repeats, depth ----------------------------------------------------------------
def test_repeat_collapses_to_one_row_with_summed_figures():
    collapsed = specc.summary(TRANSFORMER)
    expanded = specc.summary(TRANSFORMER, expand=True)
    block = row(collapsed, "h")
    assert (block.count, block.type, block.depth) == (3, "block", 0)
    repetitions = [r for r in expanded.rows if r.path in ("h.0", "h.1", "h.2")]
    assert len(repetitions) == 3 and all(r.count == 1 for r in repetitions)
    assert block.params == sum(r.params for r in repetitions)
    assert block.flops == sum(r.flops for r in repetitions)
    assert row(collapsed, "h.*.attention.body.1").count == 3  # rows inside the group stand for all three
    assert "block ×3" in str(collapsed)
    assert collapsed.total_params == expanded.total_params and collapsed.flops == expanded.flops


def test_repeat_with_different_repetitions_stays_expanded():
    spec = """
inputs: {x: {shape: [3, 8, 8]}}
layers:
  - Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
    repeat: 2
    name: convs
"""
    result = specc.summary(spec)  # the first convolution sees 3 channels, the second 4
    assert [r.path for r in result.rows] == ["convs", "convs.0", "convs.1"]
    assert [r.params for r in result.rows] == [112 + 148, 112, 148]


def test_nesting_follows_the_spec_and_depth_limits_rows():
    spec = """
inputs: {x: {shape: [3, 8, 8]}}
layers:
  - parallel:
      a: [Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}]
      b: [Conv2d: {out_channels: 4, kernel_size: 1}, ReLU]
    merge: cat
  - residual: [Conv2d: {out_channels: 8, kernel_size: 3, padding: 1}, BatchNorm2d]
"""
    result = specc.summary(spec)
    assert [(r.depth, r.name, r.type) for r in result.rows] == [
        (0, "0", "parallel"), (1, "a", "branch"), (2, "0", "Conv2d"), (1, "b", "branch"), (2, "0", "Conv2d"),
        (2, "1", "ReLU"), (0, "1", "residual"), (1, "0", "Conv2d"), (1, "1", "BatchNorm2d")]
    assert row(result, "0").shape == [1, 8, 8, 8]  # the merged output
    shallow = specc.summary(spec, depth=0)
    assert [r.path for r in shallow.rows] == ["0", "1"]
    assert shallow.total_params == result.total_params == (112 + 16) + (584 + 16)
    assert_columns_add_up(shallow)


def test_set_and_input_shapes_change_the_model():
    result = specc.summary(TRANSFORMER, n_layers=1, input_shapes=[8], batch_size=4)
    assert row(result, "h").count == 1 and result.inputs[0].shape == [4, 8]
    assert row(result, "head").shape == [4, 8, 100]
    with pytest.raises(ValueError, match="no input named 'x'"):
        specc.summary(TRANSFORMER, input_shapes={"x": [8]})


@pytest.mark.parametrize("spec", [MNIST, TRANSFORMER, SPECS / "transformer_encoder.yaml"])
def test_cpu_run_gives_the_same_figures_as_meta(spec):
    # on cpu, attention runs torch's CPU flash kernel (no FlopCounterMode formula of its own) and
    # eval-mode TransformerEncoderLayer has a fused fast path: both must still be counted
    meta, cpu = specc.summary(spec, batch_size=2), specc.summary(spec, batch_size=2, device="cpu")
    assert cpu.device == "cpu" and meta.device == "meta"
    assert meta.to_dict()["rows"] == cpu.to_dict()["rows"] and meta.flops == cpu.flops


# ----- formats -----------------------------------------------------------------------------------
def test_json_has_the_documented_keys():
    data = json.loads(specc.summary(TRANSFORMER).render("json"))
    assert set(data) == {"model", "batch_size", "device", "inputs", "rows", "totals", "memory_mb", "memory_bytes"}
    assert set(data["totals"]) == {"params", "trainable_params", "non_trainable_params", "flops", "backward_flops"}
    assert set(data["memory_mb"]) == set(data["memory_bytes"]) == {"input", "forward_backward", "params", "gradients",
                                                                   "total"}
    assert set(data["rows"][0]) == {"name", "path", "type", "kind", "depth", "count", "output_shape",
                                    "params", "shared_params", "trainable_params", "flops"}
    assert data["inputs"] == [{"name": "tokens", "shape": [1, 16], "dtype": "int64"}]


def test_csv_reads_back_to_the_rows():
    result = specc.summary(TRANSFORMER)
    records = list(csv.DictReader(io.StringIO(result.render("csv"))))
    assert len(records) == len(result.rows)
    for record, original in zip(records, result.rows):
        assert record["path"] == original.path
        assert int(record["params"]) == original.params and int(record["flops"]) == original.flops
        assert json.loads(record["output_shape"]) == original.shape


def test_markdown_is_a_table_with_one_line_per_row():
    result = specc.summary(MNIST)
    lines = result.render("markdown").splitlines()
    assert lines[4] == "| Layer | Type | Output shape | Params | Trainable | FLOPs |"
    assert "| fc1 | Linear | [1, 128] | 1,179,776 | yes | 2.36 M |" in lines
    assert "| Total params | 1,199,882 |" in lines


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format 'yaml'"):
        specc.summary(MNIST).render("yaml")


# ----- any nn.Module ------------------------------------------------------------------------------
class TiedNet(nn.Module):
    """Embedding, two blocks, a matmul in forward itself and a head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(2)])
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        x = self.embed(tokens)                   # (B, T, 8)
        for block in self.blocks:
            x = block(x)
        x = x @ x.transpose(1, 2) @ x            # (B, T, 8), FLOPs outside any submodule
        return self.head(x)


def test_plain_module_rows_flops_and_tied_weights():
    model = TiedNet().train()
    result = specc.summary(model, input_size=(2, 5), dtypes=[torch.long])
    B, T = 2, 5
    assert result.total_params == 80 + 2 * 72  # the tied head adds nothing
    assert row(result, "head").shared_params == 80 and row(result, "head").params == 0
    assert row(result, "blocks.0.0").flops == 2 * B * T * 8 * 8
    assert row(result, "head").flops == 2 * B * T * 8 * 10
    root = result.rows[0]
    assert root.kind == "model" and root.depth == 0
    assert root.flops == result.flops == 2 * (2 * B * T * 8 * 8) + 2 * (2 * B * T * T * 8) + 2 * B * T * 8 * 10
    assert root.params == result.total_params
    assert all(module.training for module in model.modules())  # the mode is restored
    assert next(model.parameters()).device.type == "cpu"


def test_plain_module_matches_its_spec():
    hand_written = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Dropout2d(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(128, 10))
    from_module = specc.summary(hand_written, input_size=(1, 1, 28, 28))
    from_spec = specc.summary(MNIST)
    assert [r.params for r in from_module.rows[1:]] == [r.params for r in from_spec.rows]
    assert [r.flops for r in from_module.rows[1:]] == [r.flops for r in from_spec.rows]
    module_memory, spec_memory = from_module.memory_bytes(), from_spec.memory_bytes()
    assert {key: module_memory[key] for key in ("input", "params", "gradients")} == \
        {key: spec_memory[key] for key in ("input", "params", "gradients")}
    # torchinfo runs a module in eval mode: no dropout masks, and dropout returns its input itself
    assert module_memory["forward_backward"] == spec_memory["forward_backward"] - 4 * (64 + 2 * 128)


def test_plain_module_counts_torch_attention_by_hand():
    B, T, d, heads, ff = 2, 32, 64, 4, 256
    model = nn.Sequential(nn.Embedding(1000, d), nn.TransformerEncoderLayer(d, heads, ff, batch_first=True),
                          nn.Linear(d, 1000))
    result = specc.summary(model, input_size=(B, T), dtypes=[torch.long])
    linear = lambda n_in, n_out: 2 * B * T * n_in * n_out  # noqa: E731
    attention = linear(d, 3 * d) + 4 * B * T * T * d + linear(d, d)  # in_proj, QK^T and AV, out_proj
    assert row(result, "1.self_attn").flops == attention
    assert row(result, "1").flops == attention + linear(d, ff) + linear(ff, d)
    assert result.flops == attention + linear(d, ff) + linear(ff, d) + linear(d, 1000)


def test_plain_module_needs_an_input():
    with pytest.raises(ValueError, match="input_size"):
        specc.summary(nn.Linear(2, 2))


# ----- command line ---------------------------------------------------------------------------------
def test_cli_subprocess_prints_the_table(tmp_path):
    spec = tmp_path / "mnist.yaml"
    spec.write_text(MNIST)
    done = subprocess.run([str(SPECC), "summary", str(spec), "--backward"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for text in ("fc1", "1,179,776", "Total params: 1,199,882", "Forward FLOPs (batch of 1): 23,984,896",
                 "Backward FLOPs", "Params size (MiB): 4.58"):
        assert text in done.stdout


def test_cli_subprocess_broken_spec_exits_2_with_a_location(tmp_path):
    spec = tmp_path / "broken.yaml"
    text = MNIST.replace("Linear: {out_features: 10}", "Linear: {out_feature: 10}")
    spec.write_text(text)
    line = next(number for number, content in enumerate(text.splitlines(), 1) if "out_feature:" in content)
    done = subprocess.run([str(SPECC), "summary", str(spec)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {spec}:{line}:14: Linear has no argument 'out_feature'")


def test_cli_formats_and_options(tmp_path):
    spec = tmp_path / "gpt.yaml"
    spec.write_text(TRANSFORMER)
    runner = CliRunner()
    done = runner.invoke(app, ["summary", str(spec), "--format", "json", "--set", "n_layers=2",
                               "--batch-size", "2", "--input-shape", "tokens=8", "--depth", "0"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert data["batch_size"] == 2 and data["inputs"][0]["shape"] == [2, 8]
    assert [r["path"] for r in data["rows"]] == ["wte", "h", "head"] and data["rows"][1]["count"] == 2
    done = runner.invoke(app, ["summary", str(spec), "--format", "csv", "--expand"])
    paths = [record["path"] for record in csv.DictReader(io.StringIO(done.output))]
    assert {"h.0", "h.1", "h.2"} <= set(paths)
    done = runner.invoke(app, ["summary", str(spec), "--format", "markdown"])
    assert done.exit_code == 0 and "| Layer | Type |" in done.output
    done = runner.invoke(app, ["summary", str(spec), "--format", "yaml"])
    assert done.exit_code == 2 and "choose one of table, markdown, json, csv" in done.output
    done = runner.invoke(app, ["summary", str(spec), "--input-shape", "x=8"])
    assert done.exit_code == 2 and "no input named 'x'" in done.output
    done = runner.invoke(app, ["summary", str(spec), "--format", "json", "--set", "n_heads=5"])
    assert done.exit_code == 2
    problems = json.loads(done.output)["errors"]
    attention_line = next(n for n, text in enumerate(TRANSFORMER.splitlines(), 1) if "CausalSelfAttention" in text)
    assert problems[0]["line"] == attention_line and "n_heads=5" in problems[0]["message"]


def test_specc_summary_is_callable_after_importing_the_module():
    code = ("import specc.summary.summarize, specc\n"
            "result = specc.summary('inputs: {x: {shape: [4]}}\\nlayers: [Linear: [2]]')\n"
            "print(result.total_params)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10"


def test_named_input_dims_show_by_name():
    spec = ("inputs: {tokens: {shape: [seq], dtype: long}}\nvars: {seq: 16}\n"
            "layers:\n  - Embedding: [100, 8]\n  - transpose: [1, 2]\n  - Conv1d: {out_channels: 4, kernel_size: 2, stride: 2}\n")
    rows = {row["type"]: row["output_shape"] for row in specc.summary(spec).to_dict()["rows"]}
    assert rows["Embedding"] == [1, "seq", 8] and rows["Conv1d"] == [1, 4, "seq/2"]
    assert "[1, 4, seq/2]" in str(specc.summary(spec))
