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
}
# spec, variant -> the library's parameter count
FULL_SIZE = {
    ("llama3", "llama3_8b"): 8_030_261_248,     # Meta-Llama-3-8B
    ("qwen2", "qwen2_7b"): 7_615_616_512,        # Qwen2-7B
    ("gemma", "gemma_7b"): 8_537_680_896,        # gemma-7b (tied head)
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
    assert_every_output_matches(outputs_of(model, [io["input_ids"]]), io, names)


@pytest.mark.parametrize("spec", LOADED)
def test_a_wrong_tensor_shows_in_the_outputs(spec):
    """The comparison can fail: two layers' same-shape tensors swapped move the logits past the tolerance."""
    stem, names = LOADED[spec]
    weights, io = reference(stem)
    state = load_file(weights)
    first, second = (f"model.layers.{i}.mlp.up_proj.weight" for i in (0, 1))
    state[first], state[second] = state[second], state[first]
    model = specc.build(SPECS / f"{spec}.yaml", weights=state, weights_map="strict")
    (logits,) = outputs_of(model, [io["input_ids"]])
    assert (logits - io[names[0]]).abs().max() > 100 * TOLERANCE


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
