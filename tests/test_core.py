"""Core pieces: vars and expressions, source positions, overrides, named dims, sharing, schema."""
from __future__ import annotations

import json

import pytest
import torch

import specc
from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecError
from specc.lang.expressions import ExpressionError, evaluate, resolve_vars, substitute
from specc.lang.source import load_yaml
from specc.lang.spec import parse_override


# ----- expressions ------------------------------------------------------------------------------
@pytest.mark.parametrize("expression, expected", [
    ("width * 4", 256), ("width / 2", 32), ("width // 3", 21), ("width % 10", 4), ("2 ** 3", 8),
    ("-width + 1", -63), ("max(width, 100) // 2", 50), ("min(3, 4) * 2", 6), ("round(2.6)", 3),
    ("(width + 2) * 2", 132), ("width / 3", 64 / 3),
    # comparisons, and/or/not and conditionals (issue 20)
    ("width == 64", True), ("width != 64", False), ("1 < width <= 64", True), ("width > 64", False),
    ("width >= 65 or width < 0", False), ("width > 1 and width % 2 == 0", True), ("not width", False),
    ("width if width > 100 else 100", 100), ("8 if true else 4", 8), ("false", False),
    ("'gelu' if width > 32 else 'relu'", "gelu"), ("'a' * 3 == 'aaa'", True), ("0 or width", 64),
])
def test_expressions_evaluate_arithmetic(expression, expected):
    assert evaluate(expression, {"width": 64}) == expected


@pytest.mark.parametrize("expression", [
    "__import__('os')", "width.bit_length()", "[1, 2]", "open('x')", "lambda: 1",
    "width if 1 else open('x')",  # the whole expression is checked, not only the branch taken
    "'%d' % width",               # % formats strings: numbers only
])
def test_expressions_refuse_anything_but_arithmetic(expression):
    with pytest.raises(ExpressionError):
        evaluate(expression, {"width": 64})


def test_substitute_keeps_types_and_formats_inside_strings():
    variables = resolve_vars({"dim": 64, "hidden": "$(dim * 4)", "tag": "layer_$dim"})
    assert variables == {"dim": 64, "hidden": 256, "tag": "layer_64"}
    assert substitute({"a": ["$dim", "${dim}x"], "b": "$(hidden / 2)"}, variables) == {"a": [64, "64x"], "b": 128}


def test_unknown_var_names_the_var():
    with pytest.raises(ExpressionError) as raised:
        substitute("$(widht * 2)", {"width": 1})
    assert raised.value.name == "widht"


# ----- source positions ---------------------------------------------------------------------------
def test_source_map_points_at_keys_and_items():
    text = "inputs:\n  x: {shape: [3]}\nlayers:\n  - ReLU\n  - Linear: {out_features: 2}\n"
    data, source = load_yaml(text, "m.yaml")
    assert data["layers"][1] == {"Linear": {"out_features": 2}}
    assert str(source.locate(("layers", 1))) == "m.yaml:5:5"
    assert str(source.locate(("layers", 1, "Linear", "out_features"))) == "m.yaml:5:14"
    assert str(source.locate(("layers", 1, "Linear", "nothing"))) == "m.yaml:5:5"  # falls back to the key


def test_overrides_parse_yaml_values():
    assert parse_override("width=128") == ("width", 128)
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_override("shape=[1, 28, 28]") == ("shape", [1, 28, 28])
    assert parse_override("name=abc") == ("name", "abc")


def test_dotted_override_sets_any_key():
    spec = specc.load("inputs: {x: {shape: [4]}}\nlayers: [ReLU]\n", {"expect.params": 3, "inputs.x.shape": [8]})
    assert spec.inputs["x"].shape == [8] and spec.expect.params == 3


# ----- named dims -----------------------------------------------------------------------------------
NAMED_DIMS = """
inputs:
  tokens: {shape: [seq], dtype: long}
vars: {seq: 16, dim: 32}
layers:
  - Embedding: [100, $dim]
  - transpose: [1, 2]
  - Conv1d: {out_channels: 8, kernel_size: 2, stride: 2}
  - mean: {dim: 1}
"""


def test_named_dims_are_labelled_and_free_at_run_time():
    compiled = compile_spec(NAMED_DIMS)
    labels = [node.meta["symbolic_shape"] for node in compiled.graph]
    assert labels == [["B", "seq"], ["B", "seq", 32], ["B", 32, "seq"], ["B", 8, "seq/2"], ["B", "seq/2"]]
    assert compiled.module(torch.randint(0, 100, (3, 40))).shape == (3, 20)


def test_a_tuple_outputs_shapes_keep_their_named_dims():
    """`chunk` and `split` give several tensors: each has its named dims, in the graph and the summary."""
    spec = """
inputs: {x: {shape: [seq, 12]}}
vars: {seq: 10}
layers:
  - chunk: {chunks: 2, dim: -1}
    name: halves
  - getitem: 0
  - split: {split_size_or_sections: [2, 4], dim: -1}
    name: parts
  - getitem: 1
"""
    compiled = compile_spec(spec)
    halves, parts = compiled.graph["halves"], compiled.graph["parts"]
    assert halves.meta["symbolic_shapes"] == [["B", "seq", 6], ["B", "seq", 6]]
    assert parts.meta["symbolic_shapes"] == [["B", "seq", 2], ["B", "seq", 4]]
    rows = {row.name: row for row in specc.summary(spec).rows}
    assert rows["halves"].shape == [[1, "seq", 6], [1, "seq", 6]] and rows["parts"].shape == [[1, "seq", 2], [1, "seq", 4]]
    assert rows["3"].shape == [1, "seq", 4]


# ----- sharing, several inputs and outputs ----------------------------------------------------------
SIAMESE = """
inputs: {left: {shape: [8]}, right: {shape: [8]}}
layers:
  - Linear: [4]
    name: encoder
  - Linear: [4]
    share: encoder
    from: right
    name: encoder_right
  - sub: {}
    from: [encoder, encoder_right]
    name: difference
outputs: [difference, encoder]
"""


def test_shared_layer_has_one_copy_of_its_weights():
    model = specc.build(SIAMESE)
    assert list(model.state_dict()) == ["encoder.weight", "encoder.bias"]
    left, right = torch.randn(2, 8), torch.randn(2, 8)
    difference, encoded = model(left, right)
    torch.testing.assert_close(difference, model.encoder(left) - model.encoder(right))
    torch.testing.assert_close(encoded, model.encoder(left))


def test_generated_forward_is_plain_code():
    model = specc.build("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: [3]\n    name: fc\n  - relu\n")
    assert "self.fc(x)" in model.code and "torch.relu" in model.code


# ----- expect ------------------------------------------------------------------------------------------
def test_expect_checks_every_key():
    right = {"params": 36, "trainable_params": 36, "output_shape": [4], "flops": 64}
    spec = "inputs: {x: {shape: [8]}}\nlayers: [Linear: [4]]\nexpect: %s\n"
    compile_spec(spec % json.dumps(right))
    for key, wrong in [("params", 35), ("trainable_params", 1), ("output_shape", [5]), ("flops", 100)]:
        text = spec % json.dumps({**right, key: wrong})
        with pytest.raises(SpecError) as raised:
            compile_spec(text)
        assert raised.value.first.code == "EXPECT_FAILED" and f"expect.{key}" in raised.value.first.message


# ----- schema ------------------------------------------------------------------------------------------
def test_json_schema_describes_the_spec():
    schema = specc.json_schema()
    assert {"inputs", "layers", "vars", "blocks", "train", "expect"} <= set(schema["properties"])
    assert schema["required"] == ["inputs", "layers"]
    json.dumps(schema)


# ----- the package's public names -----------------------------------------------------------------
def test_public_functions_stay_callable_whatever_was_imported_first():
    import importlib

    for module in ("specc.build.compiler", "specc.summary.summarize", "specc.draw.drawing", "specc.train.training",
                   "specc.train.evaluation", "specc.export.exporter", "specc.export.eject"):
        importlib.import_module(module)
    for name in ("load", "compile", "build", "summary", "draw", "train", "evaluate", "predict", "export", "codegen"):
        assert callable(getattr(specc, name)), name


def test_named_dim_without_its_var_is_a_located_error():
    with pytest.raises(SpecError) as raised:
        compile_spec("inputs:\n  tokens: {shape: [seqlen], dtype: long}\nvars: {seq_len: 8}\nlayers: [ReLU]\n")
    problem = raised.value.first
    assert problem.code == "TYPE_ERROR" and problem.suggestion == "seq_len"
    assert (problem.location.line, problem.location.column) == (2, 20)


def test_every_error_code_used_is_declared_and_documented():
    import re
    from pathlib import Path

    from specc.lang.errors import CODES

    root = Path(__file__).resolve().parent.parent
    source = "\n".join(path.read_text() for path in (root / "specc").rglob("*.py"))
    used = {code for code in re.findall(r'"([A-Z]+(?:_[A-Z]+)+)"', source) if not code.startswith("MAX_")  # limits
            and code.endswith(("_ERROR", "_KEY", "_LAYER", "_KWARG", "_ARGUMENT", "_REFERENCE",
                                                    "_VAR", "_NAME", "_ITEM", "_MISMATCH", "_FAILED", "_SYNTAX", "_FOUND"))}
    assert len(used) >= 15 and used <= set(CODES), used - set(CODES)
    documented = (root / "docs" / "errors.md").read_text()
    assert all(f"`{code}`" in documented for code in CODES)
