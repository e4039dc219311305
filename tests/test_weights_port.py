"""Published weights in: specs that reproduce a library's key names (`flat:`, `names:`), and
checkpoints of torchvision / Hugging Face models loaded by name or by structure.

The reference files were written by the real libraries (see shared/reference/README.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
# shared/ lies beside the clone (CI, /work/main); a git worktree sits one folder deeper
REFERENCES = [Path(__file__).resolve().parents[depth] / "shared" / "reference" for depth in (2, 3)]


def reference(name: str) -> Path:
    path = next((folder / name for folder in REFERENCES if (folder / name).exists()), REFERENCES[0] / name)
    if not path.exists():
        pytest.skip(f"reference file {name} is absent (CI lays shared/ beside the clone)")
    return path


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
    ("names: {bdy: ''}", "UNKNOWN_KEY", "a residual has no part 'bdy'"),
    ("names: {body: 'a.b'}", "TYPE_ERROR", "must be an identifier or ''"),
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
