"""The LLM example specs load the libraries' own files by name (`weights_map="strict"`: the spec
carries every key the library writes) and reproduce the libraries' outputs (../shared/reference,
written by transformers 5.x; every parameter perturbed, so a misplaced tensor shows). Their full-size
variants have the published parameter counts, checked on meta."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import specc
from specc.build.compiler import compile as compile_spec
from specc.build.expect import count_parameters

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
SPECS = ROOT / "specs"
TOLERANCE = 1e-4

# spec -> (reference file stem, the io file's output names in the model's output order)
LOADED = {
    "llama3": ("hf_llama_gqa_tiny", ["logits"]),
    "qwen2": ("hf_qwen2_tiny", ["logits"]),
    "gemma": ("hf_gemma_tiny", ["logits"]),
    "mixtral": ("hf_mixtral_tiny", ["logits"]),
    "bert": ("hf_bert_tiny", ["last_hidden_state", "pooler_output"]),
}
INPUTS = {"bert": ["input_ids", "attention_mask"]}   # the others take input_ids only
# spec, variant -> the library's parameter count
FULL_SIZE = {
    ("llama3", "llama3_8b"): 8_030_261_248,     # Meta-Llama-3-8B
    ("llama3", "llama3_1_8b"): 8_030_261_248,   # Llama-3.1-8B: the same shapes, llama3 RoPE scaling
    ("qwen2", "qwen2_7b"): 7_615_616_512,        # Qwen2-7B
    ("gemma", "gemma_7b"): 8_537_680_896,        # gemma-7b (tied head)
    ("mixtral", "mixtral_8x7b"): 46_702_792_704,  # Mixtral-8x7B-v0.1
    ("bert", "bert_base"): 109_482_240,           # bert-base-uncased's BertModel, pooler included
}


def reference(stem: str) -> tuple[Path, dict[str, torch.Tensor]]:
    weights = REFERENCE / f"{stem}.safetensors"
    if not weights.exists():
        pytest.skip(f"{weights} is not there (../shared/reference holds the library-written files)")
    return weights, load_file(REFERENCE / f"{stem}_io.safetensors")


def outputs_of(model: torch.nn.Module, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        outputs = model.eval()(*inputs)
    return outputs if isinstance(outputs, tuple) else (outputs,)


def assert_every_output_matches(outputs: tuple[torch.Tensor, ...], io: dict, names: list[str]) -> None:
    assert len(outputs) == len(names)
    for output, name in zip(outputs, names):
        assert output.shape == io[name].shape, name
        difference = (output - io[name]).abs().max().item()
        assert difference <= TOLERANCE, f"{name}: max |difference| {difference:.2e}"


@pytest.mark.parametrize("spec", LOADED)
def test_spec_loads_the_library_file_strictly_and_reproduces_its_outputs(spec):
    stem, names = LOADED[spec]
    weights, io = reference(stem)
    model = specc.build(SPECS / f"{spec}.yaml", weights=weights, weights_map="strict")
    report = model.weights_report
    assert not report.unmatched_model and not report.unmatched_file and not report.by_structure
    assert_every_output_matches(outputs_of(model, [io[name] for name in INPUTS.get(spec, ["input_ids"])]), io, names)


@pytest.mark.parametrize("spec", LOADED)
def test_a_wrong_tensor_shows_in_the_outputs(spec):
    """The comparison can fail: two layers' same-shape tensors swapped move the logits past the tolerance."""
    stem, names = LOADED[spec]
    weights, io = reference(stem)
    state = load_file(weights)
    value = "model.layers.{}.self_attn.v_proj.weight" if spec != "bert" else "encoder.layer.{}.attention.self.value.weight"
    first, second = (value.format(i) for i in (0, 1))
    state[first], state[second] = state[second], state[first]
    model = specc.build(SPECS / f"{spec}.yaml", weights=state, weights_map="strict")
    outputs = outputs_of(model, [io[name] for name in INPUTS.get(spec, ["input_ids"])])
    assert all((output - io[name]).abs().max() > 100 * TOLERANCE for output, name in zip(outputs, names))


@pytest.mark.parametrize("spec, variant", FULL_SIZE)
def test_full_size_variant_has_the_published_parameter_count(spec, variant):
    compiled = compile_spec(SPECS / f"{spec}.yaml", device="meta", variant=variant)
    assert count_parameters(compiled.module) == FULL_SIZE[spec, variant]


def test_llama3_keys_are_the_libraries_keys():
    weights, _ = reference("hf_llama_gqa_tiny")
    model = compile_spec(SPECS / "llama3.yaml", device="meta").module
    expected = {name: tuple(tensor.shape) for name, tensor in load_file(weights).items()}
    assert {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()} == expected
    assert expected["model.layers.0.self_attn.k_proj.weight"] == (32, 96)   # 2 kv heads of 16


def hub_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5.x's stacked Mixtral experts as the Hub's per-expert files hold them (the
    conversion the reference config's `_reference.expert_weights` states)."""
    converted = {}
    for key, tensor in state.items():
        if ".mlp.experts.gate_up_proj" in key:
            prefix = key.replace("mlp.experts.gate_up_proj", "block_sparse_moe.experts")
            for e, (gate, up) in enumerate(expert.chunk(2) for expert in tensor):
                converted |= {f"{prefix}.{e}.w1.weight": gate, f"{prefix}.{e}.w3.weight": up}
        elif ".mlp.experts.down_proj" in key:
            prefix = key.replace("mlp.experts.down_proj", "block_sparse_moe.experts")
            converted |= {f"{prefix}.{e}.w2.weight": expert for e, expert in enumerate(tensor)}
        else:
            converted[key.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = tensor
    return converted


def test_mixtral_hub_layout_loads_the_per_expert_file_strictly():
    weights, io = reference("hf_mixtral_tiny")
    state = hub_layout(load_file(weights))
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in state and len(state) == 21 - 4 + 4 * 3 * 2
    model = specc.build(SPECS / "mixtral.yaml", variant="hub_layout", weights=state, weights_map="strict")
    assert_every_output_matches(outputs_of(model, [io["input_ids"]]), io, ["logits"])


def test_mixtral_summary_counts_only_routed_tokens():
    from specc.summary.summarize import summary

    table = summary(SPECS / "mixtral.yaml", batch_size=1, expand=True)
    row = next(row for row in table.rows if row.path == "model.layers.0.mlp")
    tokens, dim, hidden, experts, top_k = 24, 64, 128, 4, 2
    dense_experts = tokens * experts * 2 * 3 * dim * hidden
    assert row.flops == 2 * tokens * dim * experts + dense_experts * top_k // experts


def test_bert_pooler_is_compared_too():
    """Every output is compared: a wrong pooler alone (last_hidden_state still right) fails."""
    weights, io = reference("hf_bert_tiny")
    state = load_file(weights)
    state["pooler.dense.bias"] = state["pooler.dense.bias"] + 0.01
    model = specc.build(SPECS / "bert.yaml", weights=state, weights_map="strict")
    outputs = outputs_of(model, [io["input_ids"], io["attention_mask"]])
    assert (outputs[0] - io["last_hidden_state"]).abs().max() <= TOLERANCE
    with pytest.raises(AssertionError, match="pooler_output"):
        assert_every_output_matches(outputs, io, ["last_hidden_state", "pooler_output"])


def test_bert_padding_mask_matters():
    weights, io = reference("hf_bert_tiny")
    model = specc.build(SPECS / "bert.yaml", weights=weights, weights_map="strict")
    unmasked = outputs_of(model, [io["input_ids"], torch.ones_like(io["attention_mask"])])
    assert (unmasked[0][1] - io["last_hidden_state"][1]).abs().max() > 100 * TOLERANCE   # row 1 has padding
    assert (unmasked[0][0] - io["last_hidden_state"][0]).abs().max() <= TOLERANCE        # row 0 has none


def _with_layout(spec: str, layout: str) -> str:
    text = (SPECS / f"{spec}.yaml").read_text()
    changed = text.replace("max_len: $max_len, layout: hf}", f"max_len: $max_len, layout: {layout}}}")
    assert changed != text
    return changed


@pytest.mark.parametrize("spec", ["llama3", "qwen2"])
def test_auto_fuses_grouped_query_projections_into_the_fused_layout_and_splits_them_back(spec):
    """The file holds q_proj [96, 96] and k_proj/v_proj [32, 96] (and Qwen2's biases [96], [32], [32]):
    a spec with the fused layout gets them concatenated, and a fused file splits back by the sizes."""
    stem, names = LOADED[spec]
    weights, io = reference(stem)
    fused = specc.build(_with_layout(spec, "fused"), weights=weights, weights_map="auto")
    report = fused.weights_report
    assert "model.layers.1.self_attn.c_attn.weight" in report.fused and not report.unmatched_model
    assert fused.state_dict()["model.layers.0.self_attn.c_attn.weight"].shape == (96 + 32 + 32, 96)
    assert_every_output_matches(outputs_of(fused, [io["input_ids"]]), io, names)
    split = specc.build(SPECS / f"{spec}.yaml", weights=fused.state_dict(), weights_map="auto")
    assert "model.layers.0.self_attn.k_proj.weight" in split.weights_report.fused
    assert_every_output_matches(outputs_of(split, [io["input_ids"]]), io, names)
    torch.testing.assert_close(split.state_dict()["model.layers.0.self_attn.v_proj.weight"],
                               load_file(weights)["model.layers.0.self_attn.v_proj.weight"], rtol=0, atol=0)


def test_llama3_1_variant_scales_rope_as_its_config_says():
    attention = compile_spec(SPECS / "llama3.yaml", device="meta", variant="llama3_1_8b").module.get_submodule(
        "model.layers.31.self_attn")
    assert attention.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert attention.max_len == 131072 and attention.n_kv_heads == 8 and attention.head_dim == 128


@pytest.mark.parametrize("spec", ["bert", "mixtral"])
def test_port_with_check_compares_every_output_of_the_library_file(spec, tmp_path):
    from typer.testing import CliRunner

    from specc.cli import app

    stem, names = LOADED[spec]
    weights, _ = reference(stem)
    result = CliRunner().invoke(app, ["port", str(SPECS / f"{spec}.yaml"), "--weights", str(weights), "--map", "strict",
                                      "--check", str(REFERENCE / f"{stem}_io.safetensors"),
                                      "-o", str(tmp_path / "out.safetensors")])
    assert result.exit_code == 0, result.output
    for name in names:
        assert f"checked: {name} " in result.output
    assert (tmp_path / "out.safetensors").exists()


def test_summary_memory_is_the_same_every_time_when_inputs_die_early():
    """BERT's attention_mask is used once, first: the hooks' count used to lose an activation that
    took the freed input's storage key (12,288 bytes here, at random); the inputs stay alive now."""
    from specc.summary.summarize import summary

    counts = {summary(SPECS / "bert.yaml", batch_size=3).memory_bytes()["forward_backward"] for _ in range(4)}
    assert len(counts) == 1


def test_auto_stacks_the_hub_per_expert_file_into_transformers_5_layout():
    """Mixtral's Hub layout (`block_sparse_moe.experts.{e}.w1/w3/w2`) into the stacked spec: `auto`
    stacks cat(w1, w3) per expert into gate_up_proj and w2 into down_proj, layer by layer."""
    weights, io = reference("hf_mixtral_tiny")
    model = specc.build(SPECS / "mixtral.yaml", weights=hub_layout(load_file(weights)), weights_map="auto")
    report = model.weights_report
    assert report.reasons["model.layers.1.mlp.experts.gate_up_proj"] == "stacked experts (w1, w3)"
    assert not report.unmatched_model and not report.unmatched_file and not report.ambiguous
    assert_every_output_matches(outputs_of(model, [io["input_ids"]]), io, ["logits"])
    torch.testing.assert_close(model.state_dict()["model.layers.0.mlp.experts.down_proj"],
                               load_file(weights)["model.layers.0.mlp.experts.down_proj"], rtol=0, atol=0)
