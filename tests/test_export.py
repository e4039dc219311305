"""`specc export`: ONNX files checked in onnxruntime at two batch sizes against the PyTorch model
(MLP, parallel CNN, ResNet-18, LSTM), .pt2 programs reloaded with torch.export.load, safetensors
files that rebuild the trained model from their own metadata, training checkpoints (with their
input scaling), and located errors for items an exporter cannot handle. All through the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from specc.weights.checkpoint import save_checkpoint
from specc.cli import app
from specc.build.compiler import compile
from specc.lang.errors import SpecError
from specc.weights.building import build_from_safetensors
from specc.weights.loading import load_weights

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def trained_checkpoint(tmp_path: Path, spec: str | Path, normalizer: dict | None = None, **overrides) -> tuple:
    """A model with its own random weights, saved as `specc train` saves a checkpoint."""
    compiled = compile(spec, **overrides)
    with torch.no_grad():
        for parameter in compiled.module.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))   # weights no fresh build has
    path = tmp_path / "best.pt"
    save_checkpoint({"spec": compiled.spec.raw, "epoch": 1, "model": compiled.module.state_dict(),
                     "normalizer": normalizer or {"kind": "none", "stats": [None]}}, path)
    return compiled, path


def export_cli(*arguments: str) -> object:
    return CliRunner().invoke(app, ["export", *map(str, arguments)])


def run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


ONNX_EXAMPLES = {
    "mlp": {},
    "parallel_cnn": {},
    "resnet18": {"image_size": 32},            # the same weights as at 224: the head pools globally
    "lstm_classifier": {"seq_len": 8},
}


@pytest.mark.parametrize("name", list(ONNX_EXAMPLES))
def test_onnx_matches_pytorch_at_two_batch_sizes(name: str, tmp_path: Path) -> None:
    overrides = ONNX_EXAMPLES[name]
    compiled, checkpoint = trained_checkpoint(tmp_path, SPECS / f"{name}.yaml", **overrides)
    output = tmp_path / f"{name}.onnx"
    settings = [argument for key, value in overrides.items() for argument in ("--set", f"{key}={value}")]
    result = export_cli(SPECS / f"{name}.yaml", "-o", output, "--checkpoint", checkpoint, "--no-check", *settings)
    assert result.exit_code == 0, result.output

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [item.name for item in session.get_inputs()] == compiled.input_names
    assert [item.name for item in session.get_outputs()] == compiled.graph.outputs
    assert session.get_inputs()[0].shape[0] == "batch"
    model = compiled.module.eval()
    for batch_size in (2, 5):
        inputs = compiled.example_inputs(batch_size)
        with torch.no_grad():
            expected = model(*inputs)
        (actual,) = session.run(None, {name: tensor.numpy() for name, tensor in zip(compiled.input_names, inputs)})
        assert actual.shape == tuple(expected.shape)
        np.testing.assert_allclose(actual, expected.numpy(), atol=1e-5, rtol=0)


def test_onnx_carries_the_checkpoints_input_scaling(tmp_path: Path) -> None:
    spec = "name: tiny\ninputs:\n  x: {shape: [3]}\nlayers:\n  - Linear: {out_features: 2}\n"
    shift, scale = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 4.0])
    normalizer = {"kind": "standard", "stats": [[shift, scale]]}
    compiled, checkpoint = trained_checkpoint(tmp_path, spec, normalizer)
    (tmp_path / "tiny.yaml").write_text(spec)
    output = tmp_path / "tiny.onnx"
    result = export_cli(tmp_path / "tiny.yaml", "-o", output, "--checkpoint", checkpoint)
    assert result.exit_code == 0, result.output
    assert "input scaling (standard) is part of the exported graph" in result.output
    assert "matches the model at batch sizes 1 and 3" in result.output
    raw = torch.randn(4, 3) * 10
    with torch.no_grad():
        expected = compiled.module((raw - shift) / scale)
    (actual,) = run_onnx(output, {"x": raw.numpy()})
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-5, rtol=0)


def test_pt2_reloads_with_torch_export_and_gives_the_same_outputs(tmp_path: Path) -> None:
    compiled, checkpoint = trained_checkpoint(tmp_path, SPECS / "parallel_cnn.yaml")
    output = tmp_path / "model.pt2"
    result = export_cli(SPECS / "parallel_cnn.yaml", "-o", output, "--checkpoint", checkpoint)
    assert result.exit_code == 0, result.output
    assert "checked: the exported file matches the model" in result.output
    program = torch.export.load(output).module()
    for batch_size in (1, 4):
        inputs = compiled.example_inputs(batch_size)
        with torch.no_grad():
            assert torch.allclose(program(*inputs), compiled.module.eval()(*inputs), atol=1e-6)


def test_safetensors_rebuilds_the_trained_model_from_its_own_metadata(tmp_path: Path) -> None:
    overrides = {"n_layers": 1, "dim": 32, "n_heads": 4, "vocab_size": 64, "block_size": 8}
    compiled, checkpoint = trained_checkpoint(tmp_path, SPECS / "gpt2_small.yaml", **overrides)
    output = tmp_path / "gpt2.safetensors"
    settings = [argument for key, value in overrides.items() for argument in ("--set", f"{key}={value}")]
    result = export_cli(SPECS / "gpt2_small.yaml", "-o", output, "--checkpoint", checkpoint, *settings)
    assert result.exit_code == 0, result.output

    spec, state = load_weights(output)
    assert spec["name"] == "gpt2_small" and spec["vars"]["n_layers"] == 1      # the resolved spec
    assert state.keys() == compiled.module.state_dict().keys()                # tied head.weight included
    rebuilt = build_from_safetensors(output)
    assert rebuilt.get_parameter("head.weight") is rebuilt.get_parameter("wte.weight")   # still tied
    tokens = compiled.example_inputs(2)
    with torch.no_grad():
        assert torch.equal(rebuilt(*tokens), compiled.module.eval()(*tokens))


def test_a_safetensors_file_is_also_a_checkpoint_for_other_formats(tmp_path: Path) -> None:
    compiled, checkpoint = trained_checkpoint(tmp_path, SPECS / "mlp.yaml")
    weights = tmp_path / "mlp.safetensors"
    assert export_cli(SPECS / "mlp.yaml", "-o", weights, "--checkpoint", checkpoint).exit_code == 0
    result = export_cli(SPECS / "mlp.yaml", "-o", tmp_path / "mlp.pt2", "--checkpoint", weights)
    assert result.exit_code == 0, result.output
    features = compiled.example_inputs(3)
    program = torch.export.load(tmp_path / "mlp.pt2").module()
    with torch.no_grad():
        assert torch.equal(program(*features), compiled.module.eval()(*features))


def test_an_operation_onnx_lacks_is_named_at_its_item(tmp_path: Path) -> None:
    spec = tmp_path / "pooling.yaml"
    spec.write_text("inputs:\n  x: {shape: [3, 8, 8]}\nlayers:\n  - Conv2d: {out_channels: 4, kernel_size: 1}\n"
                    "  - AdaptiveMaxPool2d: {output_size: 3}\n    name: pool\n  - Flatten\n")
    result = export_cli(spec, "-o", tmp_path / "pooling.onnx")
    assert result.exit_code == 2
    assert f"{spec}:5:5: AdaptiveMaxPool2d 'pool' cannot be exported with ONNX" in result.output
    assert "aten.adaptive_max_pool2d" in result.output and "Traceback" not in result.output


FIXED_BATCH = '''
import torch
from torch import nn


class FixedBatch(nn.Module):
    """Hard-codes the batch size: fine in a dry run, but an exported model must take any batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] == 2 else x   # runs at any batch; tracing specialises it to 2
'''


def test_a_layer_torch_export_cannot_trace_is_named_at_its_item(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "fixed_batch_layers.py").write_text(FIXED_BATCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "fixed.yaml"
    spec.write_text("imports: [fixed_batch_layers.FixedBatch]\ninputs:\n  x: {shape: [4]}\nblocks:\n  wrap:\n"
                    "    layers:\n      - Linear: {out_features: 4}\n      - FixedBatch\nlayers:\n  - wrap\n"
                    "  - Linear: {out_features: 2}\n")
    result = export_cli(spec, "-o", tmp_path / "fixed.pt2")
    assert result.exit_code == 2
    assert f"{spec}:8:9: FixedBatch cannot be exported with torch.export: its code fixes the batch size" in result.output
    assert f"in block 'wrap' used at {spec}:10:5" in result.output


def test_checkpoint_and_extension_mistakes_exit_2(tmp_path: Path) -> None:
    _, checkpoint = trained_checkpoint(tmp_path, SPECS / "mlp.yaml")
    wrong = export_cli(SPECS / "parallel_cnn.yaml", "-o", tmp_path / "cnn.pt2", "--checkpoint", checkpoint)
    assert wrong.exit_code == 2 and "the weights do not fit this spec's model" in wrong.output
    missing = export_cli(SPECS / "mlp.yaml", "-o", tmp_path / "m.pt2", "--checkpoint", tmp_path / "nope.pt")
    assert missing.exit_code == 2 and "checkpoint not found" in missing.output
    extension = export_cli(SPECS / "mlp.yaml", "-o", tmp_path / "model.zip")
    assert extension.exit_code == 2 and "must be one of .onnx, .pt2, .safetensors" in extension.output


def test_safetensors_without_a_spec_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(SpecError, match="no spec in the metadata"):
        build_from_safetensors(path)


def test_specc_export_is_callable_in_any_import_order(tmp_path: Path) -> None:
    import specc
    import specc.export.exporter  # noqa: F401 - a submodule import must not hide the function

    path = specc.export(SPECS / "mlp.yaml", tmp_path / "mlp.safetensors", hidden=16)
    assert path == tmp_path / "mlp.safetensors"
    assert load_weights(path)[0]["vars"]["hidden"] == 16
