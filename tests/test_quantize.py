"""`specc quantize`: torchao post-training quantization of a trained checkpoint, measured and reloaded."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from specc.weights.checkpoint import load_checkpoint
from specc.cli import app
from specc.lang.errors import SpecError
from specc.train.evaluation import evaluate, predict
from specc.train.quantize import quantize
from specc.train.training import train

torchao = pytest.importorskip("torchao", reason="quantization needs torchao (the `quantize` extra, in `dev`)")
torch.set_num_threads(1)  # two pytest workers share two cores

DIGITS = {
    "name": "quantized_digits",
    "inputs": {"image": {"shape": [1, 8, 8]}},
    "layers": [{"Conv2d": {"out_channels": 8, "kernel_size": 3, "padding": 1}}, "ReLU", "Flatten",
               {"Linear": {"out_features": 64}, "name": "hidden"}, "ReLU",
               {"Linear": {"out_features": 10}, "name": "head"}],
    "train": {"data": {"source": "sklearn:digits", "normalize": "standard"}, "epochs": 4, "batch_size": 64,
              "loss": "CrossEntropyLoss", "metrics": ["accuracy"], "optimizer": {"AdamW": {"lr": 0.003}}},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    result = train(DIGITS, out=tmp_path_factory.mktemp("runs"), verbose=False)
    assert result.metrics["test"]["accuracy"] > 0.9
    return result


def test_int8_dynamic_is_smaller_keeps_accuracy_and_reloads(trained, tmp_path):
    output = tmp_path / "model_q.pt"
    report = quantize(DIGITS, trained.best_checkpoint, method="int8-dynamic", output=output, repeats=2)
    assert report.quantized == ["hidden", "head"]
    assert report.kept_float == ["0 (Conv2d): torchao's int8-dynamic quantizes nn.Linear only"]
    assert report.after.bytes < 0.5 * report.before.bytes          # the Linear weights hold most bytes
    assert abs(report.after.metrics["accuracy"] - report.before.metrics["accuracy"]) <= 0.02
    assert set(report.before.latency_ms) == {1, 64} and all(v > 0 for v in report.after.latency_ms.values())
    state = load_checkpoint(output)                                # weights_only: torchao's vetted types only
    assert type(state["model"]["head.weight"]).__name__ == "Int8Tensor"
    assert state["quantization"] == {"method": "int8-dynamic", "layers": ["hidden", "head"]}
    # evaluate and predict rebuild the quantized model from the file alone
    assert evaluate(DIGITS, output, split="test") == pytest.approx(report.after.metrics)


def test_the_quantized_layers_are_torchaos_own(trained):
    # the same float weights quantized by hand with torchao give the same outputs as specc's model
    from specc.train.evaluation import restore

    quantized = quantize(DIGITS, trained.best_checkpoint, method="int8-weight", repeats=1)
    state = load_checkpoint(trained.best_checkpoint)
    _, compiled, _ = restore(DIGITS, state, trained.best_checkpoint, "cpu", None)
    by_hand = copy.deepcopy(compiled.module).eval()
    torchao.quantization.quantize_(by_hand, torchao.quantization.Int8WeightOnlyConfig())
    assert type(by_hand.head.weight).__name__ == "Int8Tensor"
    assert quantized.after.metrics == pytest.approx(
        evaluate_module(compiled, by_hand, state), rel=1e-6)


def evaluate_module(compiled, module, state):
    from specc.train.evaluation import score, split_data
    from specc.train.prepare import load_train_spec

    spec = load_train_spec(DIGITS)
    data, task = split_data(spec, compiled, state, "test", torch.device("cpu"))
    return score(spec, module, data, task, torch.device("cpu"))


def test_predict_reads_a_quantized_checkpoint(trained, tmp_path):
    output = tmp_path / "q.pt"
    quantize(DIGITS, trained.best_checkpoint, method="int8-dynamic", output=output, repeats=1)
    from sklearn.datasets import load_digits

    images = load_digits().data[:20].astype(np.float32)
    np.savez(tmp_path / "new.npz", x=images)
    written = predict(DIGITS, output, tmp_path / "new.npz", tmp_path / "out.csv")
    rows = written.read_text().splitlines()
    assert rows[0].startswith("prediction,probability_0") and len(rows) == 21
    expected = load_digits().target[:20]
    predicted = np.array([int(row.split(",")[0]) for row in rows[1:]])
    assert (predicted == expected).mean() >= 0.8


def test_int4_on_a_cpu_machine_is_refused_with_the_reason(trained):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: int4 may run")
    with pytest.raises(SpecError) as error:
        quantize(DIGITS, trained.best_checkpoint, method="int4-weight")
    assert "int4-weight needs torchao's int4 kernels, which run on CUDA GPUs" in str(error.value)


def test_a_model_without_linear_layers_is_refused_naming_what_stays_float(tmp_path):
    spec = copy.deepcopy(DIGITS)
    spec["layers"] = [{"Conv2d": {"out_channels": 10, "kernel_size": 8}}, "Flatten"]
    spec["train"]["epochs"] = 1
    result = train(spec, out=tmp_path, verbose=False)
    with pytest.raises(SpecError) as error:
        quantize(spec, result.best_checkpoint)
    assert "this model has none it can take; left in float: 0 (Conv2d)" in str(error.value)


def test_the_cli_prints_the_comparison_and_json(trained, tmp_path):
    runner = CliRunner()
    spec = tmp_path / "digits.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(DIGITS))
    result = runner.invoke(app, ["quantize", str(spec), "--checkpoint", str(trained.best_checkpoint),
                                 "-o", str(tmp_path / "q.pt")])
    assert result.exit_code == 0, result.output
    assert "int8-dynamic: 2 layers quantized" in result.output and "latency, batch 1" in result.output
    assert "kept in float: 0 (Conv2d)" in result.output and f"wrote {tmp_path / 'q.pt'}" in result.output
    result = runner.invoke(app, ["quantize", str(spec), "--checkpoint", str(trained.best_checkpoint),
                                 "--method", "int8-weight", "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["quantized"] == ["hidden", "head"] and payload["rows"][0][0] == "size"
    result = runner.invoke(app, ["quantize", str(spec), "--checkpoint", str(trained.best_checkpoint),
                                 "--method", "int8_dynamic"])
    assert result.exit_code == 2 and "did you mean 'int8-dynamic'" in result.output


@pytest.mark.parametrize(("method", "quantized_ops"), [
    ("int8", {"DynamicQuantizeLinear", "MatMulInteger"}),
    ("int8-static", {"QuantizeLinear", "DequantizeLinear"}),
])
def test_onnx_export_quantized_by_onnxruntime_is_smaller_and_checked(trained, tmp_path, method, quantized_ops):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the `export` extra")
    import yaml

    spec = tmp_path / "digits.yaml"
    spec.write_text(yaml.safe_dump(DIGITS))
    output = tmp_path / "digits_int8.onnx"
    result = CliRunner().invoke(app, ["export", str(spec), "--checkpoint", str(trained.best_checkpoint),
                                      "-o", str(output), "--quantize", method])
    assert result.exit_code == 0, result.output
    assert f"{method}; float:" in result.output
    assert "checked on 256 examples of the spec's data" in result.output and "top class agrees on" in result.output
    agreement = float(result.output.split("top class agrees on ")[1].split("%")[0])
    assert agreement >= 90
    ops = {node.op_type for node in onnx.load(str(output)).graph.node}
    assert quantized_ops <= ops
    assert sorted(path.name for path in tmp_path.iterdir()) == ["digits.yaml", "digits_int8.onnx"]   # no temp left


def test_onnx_quantization_needs_an_onnx_output(trained, tmp_path):
    import yaml

    spec = tmp_path / "digits.yaml"
    spec.write_text(yaml.safe_dump(DIGITS))
    result = CliRunner().invoke(app, ["export", str(spec), "-o", str(tmp_path / "m.pt2"), "--quantize", "int8"])
    assert result.exit_code == 2 and "--quantize writes an ONNX model" in result.output
    result = CliRunner().invoke(app, ["export", str(spec), "-o", str(tmp_path / "m.onnx"), "--quantize", "int4"])
    assert result.exit_code == 2 and "--quantize int4: choose int8 or int8-static" in result.output


@pytest.mark.parametrize("entry", ["int8", {"method": "int3"}, {"method": "int8-dynamic", "layers": [3]}])
def test_a_malformed_quantization_entry_is_a_checkpoint_error(trained, tmp_path, entry):
    from specc.weights.checkpoint import save_checkpoint

    state = load_checkpoint(trained.best_checkpoint)
    state.pop("checksum", None)
    state.pop("format", None)
    broken = tmp_path / "broken.pt"
    save_checkpoint({**state, "quantization": entry}, broken)
    with pytest.raises(SpecError) as error:
        evaluate(DIGITS, broken)
    assert error.value.first.code == "CHECKPOINT_ERROR" and "`quantization` entry is malformed" in str(error.value)


def test_qat_trains_with_fake_quantization_and_converts_to_its_int8_scheme(trained, tmp_path):
    spec = copy.deepcopy(DIGITS)
    spec["train"]["qat"] = "int8"
    result = train(spec, out=tmp_path / "runs", verbose=False)
    # fake quantization rounds in every forward: the same seeded run without it trains differently
    assert [r["train_loss"] for r in result.history] != [r["train_loss"] for r in trained.history]
    assert result.metrics["test"]["accuracy"] > 0.9
    state = load_checkpoint(result.best_checkpoint)
    assert set(state["model"]) == set(load_checkpoint(trained.best_checkpoint)["model"])   # plain keys
    # evaluate runs the checkpoint as it trained (fake-quantized): the figure the run reported
    assert evaluate(spec, result.best_checkpoint)["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    output = tmp_path / "qat_int8.pt"
    report = quantize(spec, result.best_checkpoint, output=output, repeats=1)
    assert type(load_checkpoint(output)["model"]["head.weight"]).__name__ == "IntxUnpackedToInt8Tensor"
    assert abs(report.after.metrics["accuracy"] - report.before.metrics["accuracy"]) <= 0.01
    assert evaluate(spec, output) == pytest.approx(report.after.metrics)
    with pytest.raises(SpecError, match="trained with qat: int8"):
        quantize(spec, result.best_checkpoint, method="int8-weight")


@pytest.mark.parametrize(("extra", "message"), [
    ({"qat": "int4"}, "qat"),
    ({"qat": "int8", "prune": {"amount": 0.5}}, "qat and prune cannot be combined"),
])
def test_bad_qat_settings_are_located_errors(extra, message, tmp_path):
    spec = copy.deepcopy(DIGITS)
    spec["train"].update(extra)
    with pytest.raises(SpecError) as error:
        train(spec, out=tmp_path, verbose=False)
    assert message in str(error.value) and error.value.first.location is not None
