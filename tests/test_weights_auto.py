"""`weights_map="auto"` loads correctly or refuses, naming what it cannot tell apart; it never guesses.

Every reference file (written by the real libraries, shared/reference/README.md) whose spec exists is
loaded with its keys shuffled, prefixed, flattened and made meaningless: each load either reproduces
the library's outputs or raises a SpecError; a model with other outputs is never returned.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specc.lang.errors import SpecError
from specc.weights.building import build
from references import reference

SPECS = Path(__file__).resolve().parent.parent / "specs"


def gpt2_vars() -> dict:
    config = json.loads(reference("hf_gpt2_tiny_config.json").read_text())
    return {"vocab_size": config["vocab_size"], "block_size": config["n_positions"], "dim": config["n_embd"],
            "n_layers": config["n_layer"], "n_heads": config["n_head"], "activation": "gelu_tanh"}


# file stem -> (spec, its vars, io input names, io output names in the order the model returns them)
REFERENCE_MODELS = {
    "torchvision_squeezenet1_1": ("squeezenet1_1.yaml", dict, ["input"], ["output"]),
    "hf_gpt2_tiny": ("gpt2_small.yaml", gpt2_vars, ["input_ids"], ["logits"]),
    "torchvision_swin_tiny": ("swin_t.yaml", lambda: {"variant": "tiny"}, ["input"], ["output"]),
    "hf_t5_tiny": ("t5_small.yaml", lambda: {"variant": "tiny"}, ["input_ids", "decoder_input_ids"],
                   ["last_hidden_state", "encoder_last_hidden_state"]),
    "timm_convnextv2_atto": ("convnextv2_atto.yaml", lambda: {"variant": "reference"}, ["input"], ["output"]),
    # specs written on other branches (their defaults are the reference configs); skipped until they land
    "hf_llama_gqa_tiny": ("llama3.yaml", dict, ["input_ids"], ["logits"]),
    "hf_qwen2_tiny": ("qwen2.yaml", dict, ["input_ids"], ["logits"]),
    "hf_gemma_tiny": ("gemma.yaml", dict, ["input_ids"], ["logits"]),
    "hf_mixtral_tiny": ("mixtral.yaml", dict, ["input_ids"], ["logits"]),
    "hf_bert_tiny": ("bert.yaml", dict, ["input_ids", "attention_mask"], ["last_hidden_state", "pooler_output"]),
    "diffusers_unet2d_tiny": ("diffusion_unet.yaml", dict, ["sample", "timestep"], ["output"]),
}


def _opaque(part: str, names: dict[str, str]) -> str:
    """A module name with no words or numbers left in it: `expand1x1` -> `mb`."""
    if part.isdigit():
        return part
    if part not in names:
        index, letters = len(names), ""
        while True:
            letters = chr(ord("a") + index % 26) + letters
            index = index // 26 - 1
            if index < 0:
                break
        names[part] = "m" + letters
    return names[part]


def _renamed(state: dict, how: str) -> dict:
    keys = list(state)
    random.Random(0).shuffle(keys)   # the order a file lists tensors in is no evidence
    names: dict[str, str] = {}

    def rename(key: str) -> str:
        *path, leaf = key.split(".")
        if how == "prefixed":
            return "model." + key
        if how == "flattened":     # `features.3.squeeze.weight` -> `features_3_squeeze.weight`
            return "_".join(path) + "." + leaf if path else key
        if how == "opaque":
            return ".".join([_opaque(part, names) for part in path] + [leaf])
        return key
    return {rename(key): state[key] for key in keys}


@pytest.mark.parametrize("how", ["shuffled", "prefixed", "flattened", "opaque"])
@pytest.mark.parametrize("stem", list(REFERENCE_MODELS))
def test_auto_loads_every_reference_file_correctly_or_refuses(stem: str, how: str) -> None:
    spec, variables, input_names, output_names = REFERENCE_MODELS[stem]
    if not (SPECS / spec).exists():
        pytest.skip(f"specs/{spec} is not on this branch")
    state = load_file(reference(f"{stem}.safetensors"))
    io = load_file(reference(f"{stem}_io.safetensors"))
    try:
        model = build(SPECS / spec, weights=_renamed(state, how), weights_map="auto", **variables()).eval()
    except SpecError as error:
        assert error.problems[0].code == "CHECKPOINT_ERROR"
        return
    with torch.no_grad():
        produced = model(*[io[name] for name in input_names])
    produced = produced if isinstance(produced, tuple) else (produced,)
    assert len(produced) == len(output_names)
    for name, output in zip(output_names, produced):
        assert (output - io[name]).abs().max() <= 1e-4, f"{stem} ({how}): {name} differs"


def test_the_shuffled_and_flattened_reference_files_do_load() -> None:
    """Refusing is allowed, but not for files whose names or numbers settle every pairing."""
    io = load_file(reference("torchvision_squeezenet1_1_io.safetensors"))
    state = load_file(reference("torchvision_squeezenet1_1.safetensors"))
    for how in ("shuffled", "prefixed", "flattened", "opaque"):
        model = build(SPECS / "squeezenet1_1.yaml", weights=_renamed(state, how), weights_map="auto").eval()
        with torch.no_grad():
            assert (model(io["input"]) - io["output"]).abs().max() <= 1e-5, how
    gpt2 = load_file(reference("hf_gpt2_tiny.safetensors"))
    for how in ("shuffled", "prefixed", "flattened"):
        model = build(SPECS / "gpt2_small.yaml", weights=_renamed(gpt2, how), weights_map="auto", **gpt2_vars())
        assert model.weights_report.ok and len(model.weights_report.transposed) == 8, how


# ----- what auto refuses --------------------------------------------------------------------------------
MLP_SPEC = """
inputs: {{x: {{shape: [4, 8]}}}}
layers:
  - parallel:
      {first}: [{{Linear: {{out_features: 16, bias: false}}, name: w1}}, SiLU]
      {second}: [{{Linear: {{out_features: 16, bias: false}}, name: w3}}]
    merge: mul
  - Linear: {{out_features: 8, bias: false}}
    name: w2
"""


def test_llama_mlp_names_that_nothing_decides_are_refused_with_a_rename_rule() -> None:
    torch.manual_seed(0)
    file = {"model.layers.0.mlp.gate_proj.weight": torch.randn(16, 8),
            "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8),
            "model.layers.0.mlp.down_proj.weight": torch.randn(8, 16)}
    with pytest.raises(SpecError) as raised:   # w1 and w3: nothing says which is the gate
        build(MLP_SPEC.format(first="a", second="b"), weights=file, weights_map="auto")
    message = str(raised.value)
    assert "auto will not guess: model 0.a.w1 / 0.b.w3 and file model.layers.0.mlp.gate_proj / " \
           "model.layers.0.mlp.up_proj hold the same tensors (weight [16, 8])" in message
    assert "a rename rule settles it, e.g. {'model.layers.*.mlp.gate_proj.*': '*.a.w1.*'}" in message
    assert "w2" not in message   # the down projection is decided by its shape alone
    rules = {"model.layers.0.mlp.gate_proj.*": "0.a.w1.*", "model.layers.0.mlp.up_proj.*": "0.b.w3.*",
             "model.layers.0.mlp.down_proj.*": "w2.*"}
    model = build(MLP_SPEC.format(first="a", second="b"), weights=file, weights_map=rules)
    assert torch.equal(model.get_submodule("0.a.w1").weight, file["model.layers.0.mlp.gate_proj.weight"])
    # where the spec's names carry the words, they decide
    model = build(MLP_SPEC.format(first="gate", second="up"), weights=file, weights_map="auto")
    assert model.weights_report.reasons == {"0.gate.w1.weight": "name words", "0.up.w3.weight": "name words",
                                            "w2.weight": "the only one of its kind"}
    assert torch.equal(model.get_submodule("0.up.w3").weight, file["model.layers.0.mlp.up_proj.weight"])


def test_a_plain_linear_is_never_transposed_to_fit() -> None:
    spec = "inputs: {x: {shape: [8]}}\nlayers:\n  - Linear: {out_features: 16}\n    name: proj\n"
    file = {"dense.weight": torch.randn(8, 16), "dense.bias": torch.randn(16)}   # [in, out]: not a Linear's
    with pytest.raises(SpecError, match=r"2 model tensors got no weights: proj.weight, proj.bias"):
        build(spec, weights=file, weights_map="auto")


NORMS_SPEC = """
inputs: {{x: {{shape: [8, 4, 4]}}}}
layers:
  - GroupNorm: [2, 8]
    name: {first}
  - GroupNorm: [2, 8]
    name: {second}
  - GroupNorm: [2, 8]
    name: {third}
"""


@pytest.mark.parametrize("names, why", [
    (("resnets_0", "attentions_0", "resnets_1"), ["name words"] * 3),       # diffusers' names, written with `_`
    (("resnet_0", "attention_0", "resnet_1"), ["name words", "name words", "numbers"]),   # the same numbers
])
def test_same_shape_norms_go_where_names_or_numbers_say(names: tuple, why: list) -> None:
    spec = NORMS_SPEC.format(first=names[0], second=names[1], third=names[2])
    file = {f"{path}.{leaf}": torch.randn(8) for path in ("resnets.0", "attentions.0", "resnets.1")
            for leaf in ("weight", "bias")}
    model = build(spec, weights=file, weights_map="auto")
    for path, source, reason in zip(names, ("resnets.0", "attentions.0", "resnets.1"), why):
        assert torch.equal(model.get_submodule(path).weight, file[f"{source}.weight"])
        assert model.weights_report.reasons[f"{path}.weight"] == reason


def test_same_shape_norms_without_evidence_are_refused() -> None:
    spec = NORMS_SPEC.format(first="alpha", second="beta", third="gamma")
    file = {f"{path}.{leaf}": torch.randn(8) for path in ("norm_a", "norm_b", "norm_c") for leaf in ("weight", "bias")}
    with pytest.raises(SpecError, match="model alpha / beta / gamma and file norm_a / norm_b / norm_c hold the same"):
        build(spec, weights=file, weights_map="auto")


def test_auto_prints_what_it_paired_and_why(capsys) -> None:
    file = {f"{path}.{leaf}": torch.randn(8) for path in ("resnets.0", "attentions.0", "resnets.1")
            for leaf in ("weight", "bias")}
    build(NORMS_SPEC.format(first="resnet_0", second="attention_0", third="resnet_1"), weights=file,
          weights_map="auto")
    printed = capsys.readouterr().err
    assert "(auto): 0 matched by name, 6 by structure" in printed and "why: name words 4, numbers 2" in printed
    assert "resnet_0.bias <- resnets.0.bias (name words)" in printed


# ----- checks against the library's outputs compare every output -------------------------------------------
TWO_OUTPUTS = """
inputs: {x: {shape: [8]}}
layers:
  - Linear: {out_features: 8}
    name: hidden
  - Linear: {out_features: 4}
    name: pooled
outputs: [hidden, pooled]
"""


def _two_output_io(tmp_path: Path, shift: float) -> tuple[dict, Path]:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = build(TWO_OUTPUTS).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        hidden, pooled = model(x)
    save_file({"x": x, "hidden": hidden, "pooled": pooled + shift}, tmp_path / "io.safetensors")
    return model.state_dict(), tmp_path / "io.safetensors"


def test_build_check_compares_every_output_not_just_the_first(tmp_path: Path) -> None:
    state, io_path = _two_output_io(tmp_path, shift=0.0)
    build(TWO_OUTPUTS, weights=state, weights_map="strict", check=io_path)   # both outputs agree
    state, io_path = _two_output_io(tmp_path, shift=5.0)                      # BERT's pooler, off by +5
    with pytest.raises(SpecError, match=r"tolerance 1e-04\): pooled \[2, 4\] differs by 5.0e\+00") as raised:
        build(TWO_OUTPUTS, weights=state, weights_map="strict", check=io_path)
    assert "hidden" not in str(raised.value)


def test_port_check_prints_and_fails_on_any_output(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from specc.cli import app

    state, io_path = _two_output_io(tmp_path, shift=5.0)
    (tmp_path / "spec.yaml").write_text(TWO_OUTPUTS)
    save_file(state, tmp_path / "weights.safetensors")
    result = CliRunner().invoke(app, ["port", str(tmp_path / "spec.yaml"), "--weights", str(tmp_path / "weights.safetensors"),
                                      "--map", "strict", "-o", str(tmp_path / "out.safetensors"), "--check", str(io_path)])
    assert result.exit_code == 1, result.output
    assert "checked: hidden [2, 8] from io.safetensors matches" in result.output
    assert "checked: pooled [2, 4] from io.safetensors DIFFERS (max |difference| 5.0e+00" in result.output


def test_a_check_file_without_every_output_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state, io_path = _two_output_io(tmp_path, shift=0.0)
    tensors = load_file(io_path)
    save_file({"x": tensors["x"], "output": tensors["hidden"]}, tmp_path / "one.safetensors")
    with pytest.raises(SpecError, match="no expected output named hidden, pooled; every output of the spec is compared"):
        build(TWO_OUTPUTS, weights=state, weights_map="strict", check=tmp_path / "one.safetensors")


def test_an_embedding_and_a_head_of_the_same_shape_go_by_kind() -> None:
    spec = ("inputs: {tokens: {shape: [4], dtype: long}}\nlayers:\n"
            "  - Embedding: {num_embeddings: 16, embedding_dim: 8}\n    name: table\n"
            "  - Linear: {out_features: 16, bias: false}\n    name: output\n")
    file = {"model.embed_tokens.weight": torch.randn(16, 8), "lm_head.weight": torch.randn(16, 8)}
    model = build(spec, weights=file, weights_map="auto")
    assert torch.equal(model.table.weight, file["model.embed_tokens.weight"])
    assert torch.equal(model.output.weight, file["lm_head.weight"])
    assert model.weights_report.reasons == {"table.weight": "kind", "output.weight": "kind"}


# ----- a Hugging Face checkpoint folder: config.json, shards, index -------------------------------------------
def test_port_reads_a_sharded_folder_and_its_config(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from specc.cli import app

    state = load_file(reference("hf_gpt2_tiny.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:14], "model-00002-of-00002.safetensors": keys[14:]}
    folder = tmp_path / "gpt2-tiny"
    folder.mkdir()
    for shard, names in shards.items():
        save_file({key: state[key] for key in names}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {key: shard for shard, names in shards.items() for key in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(reference("hf_gpt2_tiny_config.json").read_text())
    result = CliRunner().invoke(app, ["port", str(SPECS / "gpt2_small.yaml"), "--weights", str(folder), "--config",
                                      str(folder), "-o", str(tmp_path / "gpt2.safetensors"),
                                      "--check", str(reference("hf_gpt2_tiny_io.safetensors"))])
    assert result.exit_code == 0, result.output
    assert "model.safetensors.index.json (auto): 4 matched by name, 24 by structure" in result.output
    assert "    h.0.attention.body.norm.bias <- h.0.ln_1.bias (order of use)" in result.output
    assert "checked: logits [2, 32, 1000] from hf_gpt2_tiny_io.safetensors matches" in result.output


def test_config_vars_are_only_the_ones_the_spec_declares(tmp_path: Path) -> None:
    from specc.weights.hf_config import config_vars

    llama = json.loads(reference("hf_llama_gqa_tiny_config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(llama))
    found = config_vars(tmp_path, {"dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "rope_base", "norm_eps"})
    assert found == {"dim": 96, "n_layers": 2, "n_heads": 6, "n_kv_heads": 2, "hidden_dim": 256,
                     "rope_base": 500000.0, "norm_eps": 1e-6}   # rope_theta read from rope_parameters
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(SpecError, match="a config is a JSON object"):
        config_vars(tmp_path, {"dim"})


def test_hugging_face_llama_into_meta_names_is_refused_not_transposed() -> None:
    """The issue's case: HF Llama's gate/up/down into llama2_7b.yaml's w1/w3/w2 used to pair by
    shape, transposing plain Linear weights to fit; now the MLP is refused with a rename rule."""
    sizes = dict(vocab_size=512, max_len=24, dim=96, n_layers=2, n_heads=6, hidden_dim=256, norm_eps=1e-6,
                 rope_base=500000.0)
    with pytest.raises(SpecError) as raised:
        build(SPECS / "llama2_7b.yaml", weights=reference("hf_llama_gqa_tiny.safetensors"), weights_map="auto",
              **sizes)
    message = str(raised.value)
    assert ("auto will not guess: model layers.0.feed_forward.body.mlp.w1 / layers.0.feed_forward.body.mlp.w3 "
            "and file layers.0.mlp.gate_proj / layers.0.mlp.up_proj") in message
    assert "{'layers.*.mlp.gate_proj.*': 'layers.*.feed_forward.body.mlp.w1.*'}" in message
    assert "layers.0.feed_forward.body.mlp.w2.weight" not in message   # down_proj: decided by its shape


def test_a_sharded_llama_folder_ports_strictly_with_its_config(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from specc.export.port import port

    if not (SPECS / "llama3.yaml").exists():
        pytest.skip("specs/llama3.yaml is not on this branch")
    state = load_file(reference("hf_llama_gqa_tiny.safetensors"))
    state = {key: value for key, value in state.items() if ".layers.1." not in key}   # a one-layer Llama
    keys = sorted(state)
    folder = tmp_path / "llama-tiny"
    folder.mkdir()
    shards = {"model-00001-of-00002.safetensors": keys[:6], "model-00002-of-00002.safetensors": keys[6:]}
    for shard, names in shards.items():
        save_file({key: state[key] for key in names}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {key: shard for shard, names in shards.items() for key in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads(reference("hf_llama_gqa_tiny_config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))   # the config decides
    result = port(SPECS / "llama3.yaml", folder, tmp_path / "llama.safetensors", weights_map="strict", config=folder)
    assert result.report.ok and len(result.report.by_name) == 12   # embed, norm, head + 9 of layer 0
    rebuilt = build(tmp_path / "llama.safetensors")
    assert sum(".layers." in key for key in rebuilt.state_dict()) == 9
