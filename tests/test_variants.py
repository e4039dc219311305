"""`variants:` (issue 20): named sets of var overrides, chosen only with `--variant` / `variant=`.

A variant builds exactly what `--set` of its entries builds, `--set` applies after it, a wrong
name is a located UNKNOWN_VARIANT listing the variants (exit 2 on every command taking a spec),
and a variant's keys are checked even when it is not chosen.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn
from typer.testing import CliRunner

import specc
from specc.cli import app
from specc.lang.errors import SpecError
from specc.lang.spec import load

SPEC = """\
inputs: {x: {shape: [8]}}
vars: {width: 16, depth: 1}
variants:
  small: {width: 4}
  large: {width: 64, depth: 3, expect.params: 9026}
layers:
  - Linear: {out_features: $width}
    repeat: $depth
  - Linear: [2]
"""


def problems(text: str, **overrides) -> list:
    with pytest.raises(SpecError) as raised:
        specc.build(text, **overrides)
    return raised.value.problems


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_a_variant_builds_what_its_overrides_build():
    large = specc.build(SPEC, variant="large")
    by_hand = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 2))
    assert params(large) == params(by_hand) == 9026          # and expect.params of the variant held
    assert [tuple(p.shape) for p in large.parameters()] == [tuple(p.shape) for p in by_hand.parameters()]
    assert params(specc.build(SPEC, variant="small")) == (8 * 4 + 4) + (4 * 2 + 2)
    assert params(specc.build(SPEC)) == (8 * 16 + 16) + (16 * 2 + 2)  # no variant: the vars as written


def test_set_applies_after_the_variant():
    model = specc.build(SPEC, variant="large", depth=1, **{"expect.params": None})
    assert params(model) == (8 * 64 + 64) + (64 * 2 + 2)
    assert load(SPEC, {"variant": "small"}).vars["width"] == 4


def test_a_wrong_variant_name_lists_the_variants_at_their_line():
    [problem] = problems(SPEC, variant="lage")
    assert (problem.location.line, problem.location.column, problem.code) == (3, 1, "UNKNOWN_VARIANT")
    assert "no variant 'lage'; the spec's variants are: small, large" in problem.message
    assert problem.suggestion == "large"


def test_a_variant_is_never_guessed_from_the_file_name(tmp_path: Path):
    path = tmp_path / "model_large.yaml"
    path.write_text(SPEC)
    assert params(specc.build(path)) == (8 * 16 + 16) + (16 * 2 + 2)
    [problem] = problems(SPEC.replace("variants:\n  small: {width: 4}\n  large: {width: 64, depth: 3, expect.params: 9026}\n",
                                      ""), variant="large")
    assert problem.code == "UNKNOWN_VARIANT" and "the spec has no `variants:`" in problem.message


def test_variant_keys_are_checked_even_when_not_chosen():
    text = SPEC.replace("small: {width: 4}", "small: {widht: 4, expct.params: 1}")
    found = problems(text)
    assert [(p.location.line, p.location.column, p.code, p.suggestion) for p in found] == [
        (4, 11, "UNKNOWN_VAR", "width"), (4, 21, "UNKNOWN_KEY", "expect")]


def test_a_bad_value_in_a_variant_is_located_at_the_variant():
    problem = problems(SPEC.replace("small: {width: 4}", "small: {width: $(nope * 2)}"), variant="small")[0]
    assert (problem.location.line, problem.location.column, problem.code) == (4, 11, "UNKNOWN_VAR")


def test_variant_is_a_reserved_name(tmp_path: Path):
    [problem] = problems(SPEC.replace("vars: {width: 16, depth: 1}", "vars: {width: 16, depth: 1, variant: 2}"))
    assert problem.location.line == 2 and "'variant' is reserved" in problem.message
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    result = CliRunner().invoke(app, ["check", str(path), "--set", "variant=large"])
    assert result.exit_code == 2 and "choose a variant with --variant large" in result.output


@pytest.mark.parametrize("command", [["check"], ["summary"], ["draw", "-o", "{tmp}/m.dot"], ["codegen"],
                                     ["export", "-o", "{tmp}/m.safetensors"], ["train"]])
def test_every_command_taking_a_spec_has_variant(command: list[str], tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    args = [command[0], str(path), *[arg.format(tmp=tmp_path) for arg in command[1:]]]
    wrong = CliRunner().invoke(app, [*args, "--variant", "lage"])
    assert wrong.exit_code == 2, wrong.output
    assert f"{path}:3:1: no variant 'lage'; the spec's variants are: small, large (did you mean 'large'?)" in wrong.output
    if command[0] in ("check", "summary"):
        right = CliRunner().invoke(app, [*args, "--variant", "large"])
        assert right.exit_code == 0, right.output
        assert "9,026" in right.output


def test_the_published_tiny_configs_are_variants():
    assert params(specc.build(Path(__file__).parent.parent / "specs" / "t5_small.yaml", variant="tiny")) == 44_800
    swin = specc.compile(Path(__file__).parent.parent / "specs" / "swin_t.yaml", variant="tiny", device="meta")
    assert params(swin.module) == 136_822 and swin.graph[swin.graph.outputs[0]].feature_shape == (10,)


def test_codegen_names_the_variant_in_its_header(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    code = specc.codegen(path, variant="small", depth=2)
    assert f"generated by `specc codegen {path} --variant small --set depth=2`" in code


@pytest.mark.parametrize("variants, line, column, message", [
    ("variants: [small]", 2, 1, "variants must be a mapping like {small: {width: 32}, large: {width: 128}}"),
    ("variants: {small: 3}", 2, 12, "variant 'small' must be a mapping of var overrides like {width: 32}"),
])
def test_a_malformed_variants_section_is_located(variants, line, column, message):
    [problem] = problems(f"inputs: {{x: {{shape: [4]}}}}\n{variants}\nlayers: [ReLU]\n")
    assert (problem.location.line, problem.location.column, problem.code, problem.message) == (
        line, column, "TYPE_ERROR", message)
