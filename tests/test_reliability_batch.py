"""Issue 15: the dry run keeps the batch dim the batch (batch_check.py), reaches an LSTM's (h, c)
with `outputs: all`, and runs in eval mode so batch 1 works wherever batch 2 does."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from specc.build.compiler import compile as compile_spec
from specc.weights.building import build
from specc.lang.errors import SpecError
from specc.summary.summarize import summary

LSTM_INDEXING_THE_BATCH = """\
name: bad_lstm
inputs:
  x: {shape: [5, 8]}
layers:
  - LSTM: {hidden_size: 16, batch_first: true}
  - getitem: [0]
  - Linear: 4
"""

H_N_CLASSIFIER = """\
name: hn_classifier
inputs:
  x: {shape: [5, 8]}
layers:
  - LSTM: {hidden_size: 16, num_layers: 2, batch_first: true}
    outputs: all
  - getitem: 1
  - getitem: 0
    batch_dim: 1
  - getitem: -1
  - Linear: 4
"""


def problem_of(text: str, **kwargs):
    with pytest.raises(SpecError) as raised:
        compile_spec(text, device="meta", **kwargs)
    assert len(raised.value.problems) == 1, raised.value
    return raised.value.first


def test_getitem_indexing_the_batch_after_an_lstm_is_reported_at_the_item():
    problem = problem_of(LSTM_INDEXING_THE_BATCH)
    assert problem.code == "BATCH_DIM"
    assert (problem.location.line, problem.location.column) == (6, 5)
    assert problem.message.startswith("getitem drops the batch dim: input [2, 5, 16] -> output [1, 5, 16]")
    assert "batch_dim: <dim>" in problem.message


def test_the_cli_check_exits_2_with_the_location(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(LSTM_INDEXING_THE_BATCH)
    done = subprocess.run([sys.executable, "-m", "specc", "check", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert f"{path}:6:5: getitem drops the batch dim" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_feature_dim_equal_to_the_batch_size_is_caught_by_the_second_batch_size():
    # [B, 2, 8] -> getitem 0 -> [2, 8]: at batch 2 dim 0 is 2 by chance; the run at batch 1 tells
    text = "inputs:\n  x: {shape: [2, 8]}\nlayers:\n  - Linear: 8\n  - getitem: 0\n  - Linear: 3\n"
    problem = problem_of(text, batch_size=2)
    assert problem.code == "BATCH_DIM" and problem.location.line == 5
    assert "input [B, 2, 8] -> output [2, 8] (B = the batch; dry runs at batch 2 and 1)" in problem.message


def test_a_moved_batch_is_reported_as_moved():
    text = "inputs:\n  x: {shape: [5, 8]}\nlayers:\n  - transpose: [0, 1]\n  - Linear: 3\n"
    problem = problem_of(text)
    assert problem.code == "BATCH_DIM" and problem.location.line == 4
    assert "transpose moves the batch dim: input [B, 5, 8] -> output [5, B, 8]" in problem.message


def test_squeeze_that_drops_the_batch_at_batch_1_fails_check_too():
    text = ("inputs:\n  x: {shape: [3, 8, 8]}\nlayers:\n  - Conv2d: {out_channels: 4, kernel_size: 3}\n"
            "  - AdaptiveAvgPool2d: 1\n  - squeeze\n  - Linear: 2\n")
    for batch_size in (2, 1):   # specc check (2) and specc summary (1) agree
        problem = problem_of(text, batch_size=batch_size)
        assert problem.code == "BATCH_DIM" and problem.location.line == 6, problem


def test_classifier_on_the_last_layers_h_n_equals_hand_written_torch():
    torch.manual_seed(0)
    model = build(H_N_CLASSIFIER)
    lstm, head = nn.LSTM(8, 16, num_layers=2, batch_first=True), nn.Linear(16, 4)
    lstm.load_state_dict(model.get_submodule("0").state_dict())
    head.load_state_dict(model.get_submodule("4").state_dict())
    x = torch.randn(3, 5, 8)
    _, (h_n, _) = lstm(x)
    expected = head(h_n[-1])
    assert model(x).shape == (3, 4)
    torch.testing.assert_close(model(x), expected)
    compiled = compile_spec(H_N_CLASSIFIER, device="meta")
    assert compiled.graph["0"].shape is None             # the whole tuple is passed on
    assert compiled.graph["2"].shape == (2, 2, 16)       # h_n, batch at dim 1 as declared
    assert compiled.graph["3"].shape == (2, 16)


def test_a_wrongly_declared_batch_dim_is_reported():
    problem = problem_of(H_N_CLASSIFIER.replace("batch_dim: 1", "batch_dim: 2"))
    assert problem.code == "BATCH_DIM" and problem.location.line == 8
    assert "declares batch_dim: 2, but its output [2, B, 16] has the batch at dim 1" in problem.message


def test_without_the_declaration_h_n_is_a_moved_batch():
    problem = problem_of(H_N_CLASSIFIER.replace("    batch_dim: 1\n", ""))
    assert problem.code == "BATCH_DIM" and problem.location.line == 8
    assert "getitem moves the batch dim: output [2, B, 16]" in problem.message


def test_batch_dim_false_allows_a_reduction_over_the_batch():
    text = "inputs:\n  x: {shape: [6]}\nlayers:\n  - Linear: 4\n  - mean: {dim: 0}\n"
    assert problem_of(text).location.line == 5
    model = build(text + "    batch_dim: false\n")
    x = torch.randn(3, 6)
    torch.testing.assert_close(model(x), model.get_submodule("0")(x).mean(0))


def test_seq_first_section_declared_and_restored():
    # permute to (T, B, C) for a seq-first encoder layer, then back: nothing in between is checked
    text = ("inputs:\n  x: {shape: [7, 16]}\nlayers:\n  - permute: [1, 0, 2]\n    batch_dim: 1\n"
            "  - TransformerEncoderLayer: {nhead: 2, dim_feedforward: 32, dropout: 0.0}\n"
            "  - permute: [1, 0, 2]\n  - Linear: 3\n")
    compiled = compile_spec(text, device="meta", batch_size=4)
    assert compiled.graph["3"].shape == (4, 7, 3)


def test_free_tensors_are_not_checked_but_what_they_feed_is():
    text = ("inputs:\n  x: {shape: [4, 8]}\nlayers:\n  - parameter: {shape: [4, 8]}\n    name: pos\n"
            "  - add:\n    from: [x, pos]\n  - Linear: 2\n")
    assert compile_spec(text, device="meta").graph["pos"].shape == (4, 8)   # exactly as written
    assert compile_spec(text, device="meta").graph["2"].shape == (2, 4, 2)
    # a parameter with one dim too many broadcasts the batch into dim 1
    problem = problem_of(text.replace("shape: [4, 8]}\n    name", "shape: [1, 1, 4, 8]}\n    name"))
    assert problem.code == "BATCH_DIM" and problem.location.line == 6
    assert "add moves the batch dim: input [B, 4, 8] -> output [1, B, 4, 8]" in problem.message


@pytest.mark.parametrize("key, value, message", [
    ("batch_dim", "first", "batch_dim must be false (no batch dim) or the dim holding the batch, got 'first'"),
    ("outputs", "everything", "outputs must be 'all' (the layer's whole tuple) or 'first', got 'everything'"),
])
def test_bad_meta_values_are_located(key, value, message):
    problem = problem_of(f"inputs:\n  x: {{shape: [8]}}\nlayers:\n  - Linear: 4\n    {key}: {value}\n")
    assert (problem.code, problem.location.line, problem.message) == ("TYPE_ERROR", 5, message)


def test_outputs_all_on_a_single_output_layer_is_refused():
    problem = problem_of("inputs:\n  x: {shape: [8]}\nlayers:\n  - Linear: 4\n    outputs: all\n")
    assert problem.code == "TYPE_ERROR" and problem.location.line == 5
    assert problem.message == "outputs: only GRU, LSTM, MultiheadAttention, RNN return several outputs, not Linear"


BATCHNORM_AFTER_POOL = """\
name: bn_after_pool
inputs:
  x: {shape: [3, 8, 8]}
layers:
  - Conv2d: {out_channels: 4, kernel_size: 3}
  - AdaptiveAvgPool2d: 1
  - flatten
  - BatchNorm1d
  - Linear: 2
"""


def test_batchnorm_after_a_global_pool_works_at_batch_1():
    compiled = compile_spec(BATCHNORM_AFTER_POOL, device="meta", batch_size=1)
    assert compiled.graph["4"].shape == (1, 2)
    assert all(layer.training for layer in compiled.module.modules())   # the dry run gave their mode back
    result = summary(BATCHNORM_AFTER_POOL)
    assert result.total_params == 112 + 8 + 10


def test_expect_flops_at_batch_1_is_checked_not_an_internal_error():
    # Conv2d 4x3x3x3 on 6x6 outputs: 2*108*36 = 7,776 multiply-adds x2; Linear 4->2: 16
    good = BATCHNORM_AFTER_POOL + "expect: {flops: 7792}\n"
    compile_spec(good, device="meta", batch_size=1)
    problem = problem_of(BATCHNORM_AFTER_POOL + "expect: {flops: 9000}\n", batch_size=1)
    assert (problem.code, problem.message) == ("EXPECT_FAILED", "expect.flops: expected 9000 (±1%), got 7792")


def test_summary_cli_at_batch_1_accepts_what_check_accepts(tmp_path):
    path = tmp_path / "bn.yaml"
    path.write_text(BATCHNORM_AFTER_POOL)
    for command in (["check", str(path)], ["summary", str(path)]):
        done = subprocess.run([sys.executable, "-m", "specc", *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


FIXED_BATCH = '''
from torch import nn


class FixedBatch(nn.Module):
    def forward(self, x):
        return x.view(2, -1)
'''


def test_a_layer_whose_code_fixes_the_batch_size_is_caught_at_batch_1(tmp_path, monkeypatch):
    (tmp_path / "fixed_batch_two.py").write_text(FIXED_BATCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = "imports: [fixed_batch_two.FixedBatch]\ninputs:\n  x: {shape: [4]}\nlayers:\n  - FixedBatch\n"
    problem = problem_of(text)
    assert problem.code == "BATCH_DIM" and problem.location.line == 5
    assert "FixedBatch drops the batch dim: input [B, 4] -> output [2, 4] at batch 2, [2, 2] at batch 1" in problem.message


def test_codegen_of_the_h_n_classifier_keeps_the_whole_tuple(tmp_path, monkeypatch):
    from specc.export.eject import codegen

    torch.manual_seed(0)
    compiled = compile_spec(H_N_CLASSIFIER)
    (tmp_path / "hn_generated.py").write_text(codegen(H_N_CLASSIFIER))
    monkeypatch.syspath_prepend(str(tmp_path))
    import hn_generated

    generated = hn_generated.HnClassifier()
    generated.load_state_dict(compiled.module.state_dict())
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(generated(x), compiled.module(x))
