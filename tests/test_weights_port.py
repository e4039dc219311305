"""Published weights in: specs that reproduce a library's key names (`flat:`, `names:`), and
checkpoints of torchvision / Hugging Face models loaded by name or by structure.

The reference files were written by the real libraries (see shared/reference/README.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as load_safetensors

from specc.build.compiler import compile as compile_spec
from specc.weights.building import build
from specc.lang.errors import SpecError
from references import reference

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


# ----- names users already know -------------------------------------------------------------------
def test_resnet18_state_dict_is_torchvisions_key_for_key() -> None:
    expected = json.loads(reference("torchvision_resnet18_keys.json").read_text())["state_dict"]
    module = compile_spec(SPECS / "resnet18.yaml", device="meta").module
    assert [[key, list(tensor.shape)] for key, tensor in module.state_dict().items()] == expected


FLAT_SPEC = """
inputs: {x: {shape: [4]}}
blocks:
  unit:
    layers:
      - residual: [Linear: {out_features: 4}, ReLU]
        shortcut: [Linear: {out_features: 4}]
        flat: true
        names: {body: "", shortcut: proj}
layers:
  - unit: {}
    name: first
  - sequential: [{Linear: {out_features: 4}, name: mid}]
    flat: true
  - unit: {}
    repeat: 2
    flat: true
    name: stack
"""


def test_flat_and_names_remove_and_rename_path_levels() -> None:
    module = compile_spec(FLAT_SPEC).module
    assert list(module.state_dict()) == [
        "first.0.weight", "first.0.bias", "first.proj.0.weight", "first.proj.0.bias",   # body: no level
        "mid.weight", "mid.bias",                                                        # flat sequential
        "0.0.weight", "0.0.bias", "0.proj.0.weight", "0.proj.0.bias",                   # flat repeat keeps i
        "1.0.weight", "1.0.bias", "1.proj.0.weight", "1.proj.0.bias"]
    layer = module.get_submodule

    def unit(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return torch.relu(layer(f"{prefix}0")(x)) + layer(f"{prefix}proj.0")(x)

    x = torch.randn(3, 4)
    expected = unit(unit(layer("mid")(unit(x, "first.")), "0."), "1.")
    torch.testing.assert_close(module(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("meta, code, words", [
    ("flat: yes_please", "TYPE_ERROR", "flat must be true or false"),
    ("names: {bdy: ''}", "UNKNOWN_KEY", "names: residual has no part 'bdy'"),
    ("names: {body: 'a..b'}", "TYPE_ERROR", "must be an identifier, a dotted path or ''"),
])
def test_path_keys_mistakes_are_located(meta: str, code: str, words: str) -> None:
    text = f"inputs: {{x: {{shape: [4]}}}}\nlayers:\n  - residual: [Linear: {{out_features: 4}}]\n    {meta}\n"
    with pytest.raises(SpecError) as raised:
        compile_spec(text)
    problem = raised.value.problems[0]
    assert (problem.code, problem.location.line) == (code, 4) and words in problem.message


def test_flat_on_a_layer_and_names_off_a_residual_are_refused() -> None:
    text = ("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 4}\n    flat: true\n"
            "  - sequential: [ReLU]\n    names: {body: ''}\n")
    with pytest.raises(SpecError) as raised:
        compile_spec(text)
    found = [(p.code, p.location.line, p.message.split(" (")[0]) for p in raised.value.problems]
    assert found == [("INVALID_ITEM", 4, "flat applies to a block use or a structure"),
                     ("INVALID_ITEM", 6, "names applies to a residual")]


@pytest.mark.parametrize("second, clash", [
    ("  - sequential: [ReLU, Linear: {out_features: 4}]\n    flat: true\n", "'0'"),          # same name
    ("  - sequential: [sequential: [Linear: {out_features: 4}]]\n    flat: true\n", "'0.0'"),  # inside a layer
])
def test_names_that_collide_after_flattening_are_reported(second: str, clash: str) -> None:
    text = "inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 4}\n" + second
    with pytest.raises(SpecError) as raised:
        compile_spec(text)
    problem = raised.value.problems[0]
    assert (problem.code, problem.location.line) == ("DUPLICATE_NAME", 4) and clash in problem.message


# ----- torchvision's SqueezeNet 1.1, by name ---------------------------------------------------------
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_squeezenet_loads_torchvisions_weights_and_reproduces_its_outputs(mode: str) -> None:
    from safetensors.torch import load_file

    model = build(SPECS / "squeezenet1_1.yaml", weights=reference("torchvision_squeezenet1_1.safetensors"),
                  weights_map=mode).eval()
    report = model.weights_report
    assert len(report.by_name) == 52 and not report.by_structure and report.ok
    io = load_file(reference("torchvision_squeezenet1_1_io.safetensors"))
    with torch.no_grad():
        assert (model(io["input"]) - io["output"]).abs().max() <= 1e-5


# ----- Hugging Face GPT-2, by structure --------------------------------------------------------------
def gpt2_vars() -> dict:
    config = json.loads(reference("hf_gpt2_tiny_config.json").read_text())
    activation = {"gelu_new": "gelu_tanh", "gelu": "gelu"}[config["activation_function"]]
    return {"vocab_size": config["vocab_size"], "block_size": config["n_positions"], "dim": config["n_embd"],
            "n_layers": config["n_layer"], "n_heads": config["n_head"], "activation": activation}


def test_gpt2_loads_hugging_faces_weights_by_structure_and_reproduces_the_logits() -> None:
    from safetensors.torch import load_file

    model = build(SPECS / "gpt2_small.yaml", weights=reference("hf_gpt2_tiny.safetensors"), weights_map="auto",
                  **gpt2_vars()).eval()
    report = model.weights_report
    assert sorted(report.by_name) == [("ln_f.bias", "ln_f.bias"), ("ln_f.weight", "ln_f.weight"),
                                      ("wpe.weight", "wpe.weight"), ("wte.weight", "wte.weight")]  # transformer. dropped
    assert ("h.1.feed_forward.body.norm.weight", "h.1.ln_2.weight") in report.by_structure
    assert len(report.by_structure) == 24 and len(report.transposed) == 8   # every Conv1D weight, square ones too
    assert "h.0.attention.body.attn.c_proj.weight" in report.transposed      # [64, 64]: decided by its kind
    assert model.head.weight is model.wte.weight                              # the tied head is the embedding
    io = load_file(reference("hf_gpt2_tiny_io.safetensors"))
    with torch.no_grad():
        assert (model(io["input_ids"]) - io["logits"]).abs().max() <= 1e-4


def test_gpt2_strict_names_the_tensors_that_do_not_match() -> None:
    with pytest.raises(SpecError) as raised:
        build(SPECS / "gpt2_small.yaml", weights=reference("hf_gpt2_tiny.safetensors"), weights_map="strict",
              **gpt2_vars())
    message = str(raised.value)
    assert raised.value.problems[0].code == "CHECKPOINT_ERROR"
    assert "28 model tensors got no weights: wte.weight" in message and "28 file tensors were not used" in message


def test_rename_rules_map_hugging_face_names_onto_the_spec() -> None:
    rules = {"transformer.h.*.ln_1.*": "h.*.attention.body.norm.*",
             "transformer.h.*.ln_2.*": "h.*.feed_forward.body.norm.*",
             r"re:transformer\.h\.(\d+)\.attn\.(\w+)\.(\w+)": r"h.\1.attention.body.attn.\2.\3",
             r"re:transformer\.h\.(\d+)\.mlp\.(\w+)\.(\w+)": r"h.\1.feed_forward.body.mlp.\2.\3",
             "transformer.*": "*"}
    model = build(SPECS / "gpt2_small.yaml", weights=reference("hf_gpt2_tiny.safetensors"), weights_map=rules,
                  **gpt2_vars()).eval()
    report = model.weights_report
    # GPT-2's Conv1D stores [in, out]: its weights are transposed under any mapping, square c_proj [64, 64] too
    assert len(report.by_name) == 28 and report.ok and len(report.transposed) == 8
    assert "h.0.attention.body.attn.c_proj.weight" in report.transposed
    file = load_safetensors(reference("hf_gpt2_tiny.safetensors"))
    assert torch.equal(model.get_submodule("h.1.attention.body.norm").bias, file["transformer.h.1.ln_1.bias"])
    io = load_safetensors(reference("hf_gpt2_tiny_io.safetensors"))
    with torch.no_grad():
        assert (model(io["input_ids"]) - io["logits"]).abs().max() <= 1e-4


def test_a_linear_c_attn_is_never_transposed() -> None:
    """specc's own GPT-2 file holds nn.Linear weights [3·dim, dim] under the same leaf names: copied as is."""
    spec = ("inputs: {x: {shape: [4, 8]}}\nlayers:\n  - Linear: {out_features: 24}\n    name: c_attn\n"
            "  - Linear: {out_features: 8}\n    name: c_proj\n")
    source = build(spec).state_dict()
    model = build(spec, weights=source, weights_map="auto")
    assert model.weights_report.transposed == [] and torch.equal(model.c_proj.weight, source["c_proj.weight"])


# ----- file formats ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def squeezenet_state() -> dict:
    return load_safetensors(reference("torchvision_squeezenet1_1.safetensors"))


class NotATensor:   # pickled into a file below: weights_only=True must refuse to rebuild it
    pass


@pytest.mark.parametrize("name, wrap", [
    ("plain.pth", lambda state: state),
    ("model.bin", lambda state: {"model": state, "epoch": 3}),
    ("nested.pt", lambda state: {"state_dict": state, "optimizer": {"lr": 0.1}}),
    ("lightning.ckpt", lambda state: {"state_dict": {f"net.{k}": v for k, v in state.items()},
                                      "pytorch-lightning_version": "2.4.0", "global_step": 10}),
])
def test_torch_files_and_their_wrappers_are_read(tmp_path: Path, squeezenet_state: dict, name: str, wrap) -> None:
    torch.save(wrap(squeezenet_state), tmp_path / name)
    model = build(SPECS / "squeezenet1_1.yaml", weights=tmp_path / name, weights_map="strict")
    assert len(model.weights_report.by_name) == 52
    assert torch.equal(model.get_submodule("features.12.expand3x3").weight, squeezenet_state["features.12.expand3x3.weight"])


def test_a_hugging_face_sharded_checkpoint_is_read_from_its_index(tmp_path: Path, squeezenet_state: dict) -> None:
    from safetensors.torch import save_file

    keys = list(squeezenet_state)
    shards = {"model-00001-of-00002.safetensors": keys[:20], "model-00002-of-00002.safetensors": keys[20:]}
    for shard, names in shards.items():
        save_file({key: squeezenet_state[key] for key in names}, tmp_path / shard)
    weight_map = {key: shard for shard, names in shards.items() for key in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for source in (tmp_path / "model.safetensors.index.json", tmp_path):   # the index, or its folder
        model = build(SPECS / "squeezenet1_1.yaml", weights=source, weights_map="strict")
        assert len(model.weights_report.by_name) == 52
    weight_map[keys[0]] = "../elsewhere.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(SpecError, match="is not a file name beside the index"):
        build(SPECS / "squeezenet1_1.yaml", weights=tmp_path, weights_map="strict")


def test_a_file_that_needs_unpickling_code_is_refused(tmp_path: Path, squeezenet_state: dict) -> None:
    torch.save({"state_dict": squeezenet_state, "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(SpecError) as raised:
        build(SPECS / "squeezenet1_1.yaml", weights=tmp_path / "evil.pt", weights_map="strict")
    assert raised.value.problems[0].code == "CHECKPOINT_ERROR" and "weights_only=True" in str(raised.value)


def test_an_unmatched_tensor_is_an_error_unless_allowed(squeezenet_state: dict) -> None:
    partial = {key: value for key, value in squeezenet_state.items() if not key.startswith("classifier.")}
    with pytest.raises(SpecError, match=r"2 model tensors got no weights: classifier.1.weight, classifier.1.bias"):
        build(SPECS / "squeezenet1_1.yaml", weights=partial, weights_map="auto")
    model = build(SPECS / "squeezenet1_1.yaml", weights=partial, weights_map="auto", allow_missing=["classifier.*"])
    assert model.weights_report.allowed == ["classifier.1.weight", "classifier.1.bias"]
    assert "allowed missing (2): classifier.1.weight, classifier.1.bias" in model.weights_report.summary()


# ----- fused and split q/k/v, recomputed buffers -----------------------------------------------------------
MHA_SPEC = "inputs: {x: {shape: [5, 8]}}\nlayers:\n  - MultiheadAttention: {num_heads: 2, batch_first: true}\n    name: attn\n"


def test_separate_q_k_v_are_fused_into_in_proj_weight() -> None:
    torch.manual_seed(0)
    reference_attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    q, k, v = reference_attention.in_proj_weight.detach().chunk(3)
    qb, kb, vb = reference_attention.in_proj_bias.detach().chunk(3)
    file = {"layer.self_attn.q_proj.weight": q, "layer.self_attn.k_proj.weight": k, "layer.self_attn.v_proj.weight": v,
            "layer.self_attn.q_proj.bias": qb, "layer.self_attn.k_proj.bias": kb, "layer.self_attn.v_proj.bias": vb,
            "layer.self_attn.o_proj.weight": reference_attention.out_proj.weight.detach(),
            "layer.self_attn.o_proj.bias": reference_attention.out_proj.bias.detach()}
    model = build(MHA_SPEC, weights=file, weights_map="auto")
    assert sorted(model.weights_report.fused) == ["attn.in_proj_bias", "attn.in_proj_weight"]
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(model(x), reference_attention(x, x, x, need_weights=False)[0], rtol=0, atol=0)


def test_a_fused_projection_is_split_into_q_k_v() -> None:
    spec = ("inputs: {x: {shape: [8]}}\nlayers:\n  - parallel: {q: [Linear: [8]], k: [Linear: [8]], v: [Linear: [8]]}\n"
            "    merge: list\n")
    fused = torch.randn(24, 8)
    model = build(spec, weights={"attn.in_proj_weight": fused, "attn.in_proj_bias": torch.randn(24)},
                  weights_map="auto")
    assert len(model.weights_report.fused) == 6
    for index, role in enumerate("qkv"):
        assert torch.equal(model.get_submodule(f"0.{role}.0").weight, fused[8 * index: 8 * (index + 1)])


def test_integer_buffers_missing_from_the_file_are_recomputed(squeezenet_state: dict) -> None:
    spec = "inputs: {x: {shape: [3, 8, 8]}}\nlayers:\n  - Conv2d: [4, 3]\n  - BatchNorm2d\n"
    torch.manual_seed(0)
    source = build(spec).state_dict()
    del source["1.num_batches_tracked"]
    model = build(spec, weights=source, weights_map="strict")
    assert model.weights_report.recomputed == ["1.num_batches_tracked"] and len(model.weights_report.by_name) == 6


# ----- specc port ----------------------------------------------------------------------------------------
def test_port_cli_writes_the_spec_s_file_and_checks_it_against_the_io_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from specc.cli import app

    sets = [arg for key, value in gpt2_vars().items() for arg in ("--set", f"{key}={value}")]
    output = tmp_path / "gpt2.safetensors"
    result = CliRunner().invoke(app, ["port", str(SPECS / "gpt2_small.yaml"), "--weights",
                                      str(reference("hf_gpt2_tiny.safetensors")), "-o", str(output),
                                      "--check", str(reference("hf_gpt2_tiny_io.safetensors")), *sets])
    assert result.exit_code == 0, result.output
    assert "(auto): 4 matched by name, 24 by structure" in result.output
    assert "transposed (8): h.0.attention.body.attn.c_attn.weight" in result.output
    assert "checked: logits [2, 32, 1000] from hf_gpt2_tiny_io.safetensors matches (max |difference|" in result.output
    rebuilt = build(output).eval()   # the file carries its spec: it rebuilds the ported model
    io = load_safetensors(reference("hf_gpt2_tiny_io.safetensors"))
    with torch.no_grad():
        assert (rebuilt(io["input_ids"]) - io["logits"]).abs().max() <= 1e-4
    strict = CliRunner().invoke(app, ["port", str(SPECS / "gpt2_small.yaml"), "--weights",
                                      str(reference("hf_gpt2_tiny.safetensors")), "-o", str(tmp_path / "x.safetensors"),
                                      "--map", "strict", *sets])
    assert strict.exit_code == 2 and "error: " in strict.output and "28 model tensors got no weights" in strict.output
    assert not (tmp_path / "x.safetensors").exists()


def test_port_check_fails_with_exit_1_when_the_outputs_differ(tmp_path: Path, squeezenet_state: dict) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from specc.cli import app

    io = load_safetensors(reference("torchvision_squeezenet1_1_io.safetensors"))
    save_file({"input": io["input"], "output": io["output"] + 0.01}, tmp_path / "io.safetensors")
    result = CliRunner().invoke(app, ["port", str(SPECS / "squeezenet1_1.yaml"), "--weights",
                                      str(reference("torchvision_squeezenet1_1.safetensors")), "--map", "strict",
                                      "-o", str(tmp_path / "s.safetensors"), "--check", str(tmp_path / "io.safetensors")])
    assert result.exit_code == 1 and "DIFFERS (max |difference| 1.0e-02" in result.output


# ----- fine-tuning: init_from and freeze -----------------------------------------------------------------
def test_fine_tuning_trains_only_the_head_and_keeps_frozen_batchnorm_statistics(tmp_path: Path) -> None:
    from specc.weights.loading import save_weights
    from specc.train.training import train

    torch.manual_seed(1)
    source = compile_spec(SPECS / "digits_cnn.yaml")
    save_weights(source, tmp_path / "digits_cnn.safetensors")
    saved = load_safetensors(tmp_path / "digits_cnn.safetensors")
    init = {"path": str(tmp_path / "digits_cnn.safetensors"), "map": "strict", "allow_missing": ["head.*"]}
    result = train(SPECS / "digits_finetune.yaml", out=tmp_path / "runs", epochs=2, init_from=init, verbose=False)
    assert result.ok
    trained = torch.load(result.last_checkpoint, weights_only=True)["model"]
    body = [key for key in saved if not key.startswith("head.")]
    assert "1.running_mean" in body and "9.weight" in body
    for key in body:   # weights and BatchNorm statistics exactly as loaded
        assert torch.equal(trained[key], saved[key]), key
    assert not torch.equal(trained["head.weight"], saved["head.weight"])   # the head learned


def test_a_freeze_glob_that_matches_nothing_is_located() -> None:
    from specc.train.training import train

    with pytest.raises(SpecError) as raised:
        train(SPECS / "digits_finetune.yaml", init_from=None, freeze=["body.*"], verbose=False)
    problem = raised.value.problems[0]
    assert problem.code == "UNKNOWN_REFERENCE" and "freeze: 'body.*' matches no parameter" in problem.message
