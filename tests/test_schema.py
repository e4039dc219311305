"""The JSON Schema (`specc schema`) describes items, checked with a real JSON Schema validator: an
editor running yaml-language-server flags the same typos as `specc check`, and the example specs
validate clean."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import specc
from specc.build.items import META_KEYS
from specc.build.registry import FUNCTIONS, Registry
from specc.cli import app
from specc.lang import schema as lang_schema

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    schema = specc.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, data) -> dict[tuple, str]:
    """{path of the error: its message}."""
    return {tuple(error.absolute_path): error.message for error in validator.iter_errors(data)}


def spec_with(*items: str, blocks: str = "") -> dict:
    text = "inputs: {x: {shape: [3, 8, 8]}}\nvars: {k: 3}\n" + blocks + "layers:\n" + "".join(items)
    return yaml.safe_load(text)


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_every_example_spec_validates_clean(validator, path: Path):
    assert errors(validator, yaml.safe_load(path.read_text())) == {}


def test_each_typo_of_typos_yaml_is_flagged_where_it_is(validator):
    found = errors(validator, yaml.safe_load((ROOT / "specs" / "errors" / "typos.yaml").read_text()))
    assert set(found) == {("layers", 0), ("layers", 1, "Conv2d"), ("layers", 4, "merge"), ("layers", 5),
                          ("layers", 6, "Conv1d")}      # `$widht` is a var: only specc check knows vars
    assert "'Conv2D'" in found[("layers", 0)]
    assert "'out_channel' was unexpected" in found[("layers", 1, "Conv2d")]
    assert "'concat' is not one of ['cat', 'add', 'mul', 'stack', 'mean', 'max', 'list']" in found[("layers", 4, "merge")]
    assert found[("layers", 5)].startswith("'repet' is not one of ['Linear', 'name', 'from', 'repeat'")
    assert "'paddding' was unexpected" in found[("layers", 6, "Conv1d")]


def test_bare_names_known_layers_blocks_and_layer_valued_vars(validator):
    found = errors(validator, spec_with("  - Conv2D\n  - ReLU\n  - flatten\n  - my_block\n  - $act\n"))
    assert list(found) == [("layers", 0)] and found[("layers", 0)].startswith("'Conv2D' is not one of")


def test_kwarg_types_come_from_the_constructor(validator):
    found = errors(validator, spec_with("  - Conv2d: {out_channels: 8, kernel_size: three}\n",
                                        "  - Conv2d: {out_channels: $(k * 2), kernel_size: $k, padding: same}\n",
                                        "  - Conv2d: [8, 3]\n  - Dropout: 0.5\n  - ReLU:\n",
                                        "  - Linear: {out_features: 4, bias: maybe}\n",
                                        "  - LayerNorm: {dim: 1}\n  - LayerNorm: {dim: 2}\n"))
    assert set(found) == {("layers", 0, "Conv2d", "kernel_size"), ("layers", 5, "Linear", "bias"),
                          ("layers", 7, "LayerNorm", "dim")}


def test_meta_values_functions_and_free_tensors_are_checked(validator):
    found = errors(validator, spec_with(
        "  - Linear: [4]\n    repeat: -1\n",
        "  - Linear: [4]\n    if: sometimes\n",
        "  - attention: {heads: 2, casual: true}\n",
        "  - parameter: {shap: [4]}\n",
        "  - permute: {dim: [0, 2, 1]}\n",
        "  - residual: [Linear: [4]]\n    shortcut: [Lineer: [4]]\n",
        "  - parallel: {a: [ReLU], b: [Conv2D: [4, 3]]}\n    merge: {cat: {dim: 1}}\n"))
    assert set(found) == {("layers", 0, "repeat"), ("layers", 1, "if"), ("layers", 2, "attention"),
                          ("layers", 3, "parameter"), ("layers", 4, "permute"), ("layers", 5, "shortcut", 0),
                          ("layers", 6, "parallel", "b", 0)}
    assert "'casual' was unexpected" in found[("layers", 2, "attention")]


def test_items_inside_blocks_are_checked_and_block_uses_take_anything(validator):
    blocks = "blocks:\n  conv:\n    args: {out: null}\n    layers:\n      - Conv2d: {out_chanels: $out}\n"
    found = errors(validator, spec_with("  - conv: {out: 8, anything: [1, 2]}\n    repeat: 2\n", blocks=blocks))
    assert list(found) == [("blocks", "conv", "layers", 0, "Conv2d")]


def test_the_catalogue_has_every_layer_and_function_and_the_meta_keys_agree():
    schema = specc.json_schema()
    properties = schema["$defs"]["item"]["else"]["properties"]
    assert set(Registry().layers) | set(FUNCTIONS) | {"attention", "dropout", "parameter", "buffer", "constant",
                                                      "parallel", "residual", "sequential"} <= set(properties)
    assert lang_schema.META_KEYS == META_KEYS
    conv = properties["Conv2d"]["properties"]
    assert {"in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"} <= set(conv)
    assert "device" not in conv and "dtype" not in conv      # set by specc itself


def test_cli_prints_the_schema():
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == specc.json_schema()
