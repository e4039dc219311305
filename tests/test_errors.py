"""Every kind of mistake is reported at its file:line:column, with a stable code, a message that
says what is wrong and, for misspelled names, the name that was meant. The CLI turns them into
`error: file:L:C: message` lines on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SPECC = Path(sys.executable).parent / "specc"   # the console script installed in the venv


@dataclass
class Mistake:
    """A spec with one mistake and what its first reported problem must say."""

    id: str
    text: str
    line: int
    column: int
    code: str
    words: tuple[str, ...]        # must all appear in the message
    suggestion: str | None = None


MISTAKES = [
    Mistake("yaml_syntax", "inputs:\n  x: {shape: [3, 32, 32]\nlayers:\n  - ReLU\n",
            3, 1, "YAML_SYNTAX", ("YAML syntax error", "flow mapping")),
    Mistake("unknown_top_level_key", "inputs:\n  x: {shape: [4]}\nlayers:\n  - ReLU\noutput: [x]\n",
            5, 1, "UNKNOWN_KEY", ("unknown key 'output'",), "outputs"),
    Mistake("unknown_layer", "inputs:\n  x: {shape: [3, 8, 8]}\nlayers:\n  - Conv2D: {out_channels: 4, kernel_size: 3}\n",
            4, 5, "UNKNOWN_LAYER", ("unknown layer 'Conv2D'",), "Conv2d"),
    Mistake("unknown_kwarg", "inputs:\n  x: {shape: [3, 8, 8]}\nlayers:\n  - Conv2d: {out_channel: 4, kernel_size: 3}\n",
            4, 14, "UNKNOWN_KWARG", ("Conv2d has no argument 'out_channel'",), "out_channels"),
    Mistake("wrong_type", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: ten}\n",
            4, 14, "TYPE_ERROR", ("'out_features' must be int", "'ten'")),
    Mistake("missing_required_arg", "inputs:\n  x: {shape: [3, 8, 8]}\nlayers:\n  - Conv2d: {out_channels: 4}\n",
            4, 5, "MISSING_ARGUMENT", ("Conv2d needs 'kernel_size'",)),
    Mistake("unknown_var", "inputs:\n  x: {shape: [4]}\nvars: {width: 8}\nlayers:\n  - Linear: {out_features: $widht}\n",
            5, 14, "UNKNOWN_VAR", ("unknown var '$widht'",), "width"),
    Mistake("bad_expression", "inputs:\n  x: {shape: [4]}\nvars: {width: 8}\nlayers:\n  - Linear: {out_features: $(width * )}\n",
            5, 14, "EXPRESSION_ERROR", ("cannot parse expression", "$(width * )")),
    Mistake("expression_is_not_python", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: \"$(__import__('os'))\"}\n",
            4, 14, "EXPRESSION_ERROR", ("may only use numbers, strings, true/false, vars",)),
    Mistake("unknown_from_reference",
            "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 8}\n    name: fc1\n"
            "  - Linear: {out_features: 8}\n    from: fc2\n",
            7, 5, "UNKNOWN_REFERENCE", ("unknown reference 'fc2'",), "fc1"),
    Mistake("duplicate_name",
            "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 8}\n    name: fc\n"
            "  - Linear: {out_features: 8}\n    name: fc\n",
            7, 5, "DUPLICATE_NAME", ("duplicate name 'fc'",)),
    Mistake("unknown_block_arg",
            "inputs:\n  x: {shape: [4]}\nblocks:\n  dense:\n    args: {width: null}\n"
            "    layers: [Linear: {out_features: $width}, ReLU]\nlayers:\n  - dense: {widht: 8}\n",
            8, 13, "UNKNOWN_KWARG", ("block 'dense' has no arg 'widht'",), "width"),
    Mistake("missing_block_arg",
            "inputs:\n  x: {shape: [4]}\nblocks:\n  dense:\n    args: {width: null}\n"
            "    layers: [Linear: {out_features: $width}, ReLU]\nlayers:\n  - dense\n",
            8, 5, "MISSING_ARGUMENT", ("block 'dense' needs arg 'width'",)),
    Mistake("residual_add_mismatch",
            "inputs:\n  x: {shape: [8, 16, 16]}\nlayers:\n  - residual:\n"
            "      - Conv2d: {out_channels: 16, kernel_size: 3, stride: 2, padding: 1}\n",
            4, 5, "SHAPE_MISMATCH", ("cannot add body [B, 16, 8, 8] and shortcut [B, 8, 16, 16]", "sizes differ in dim 1")),
    Mistake("linear_in_features_wrong",
            "inputs:\n  x: {shape: [3, 8, 8]}\nlayers:\n  - Flatten\n  - Linear: {in_features: 100, out_features: 10}\n",
            5, 5, "SHAPE_MISMATCH", ("in_features=100", "[192]", "drop in_features to infer it")),
    # issue 20: `repeat: 0` skips the item (tests/test_language.py); a negative count is still an error
    Mistake("repeat_negative", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\n    repeat: -1\n",
            5, 5, "TYPE_ERROR", ("repeat must be a positive int or 0", "-1")),
    Mistake("repeat_not_a_number", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\n    repeat: two\n",
            5, 5, "TYPE_ERROR", ("repeat must be a positive int", "'two'")),
    Mistake("unknown_merge",
            "inputs:\n  x: {shape: [4]}\nlayers:\n  - parallel:\n      a: [Linear: {out_features: 4}]\n"
            "      b: [Linear: {out_features: 4}]\n    merge: concat\n",
            7, 5, "UNKNOWN_KEY", ("unknown merge 'concat'", "cat, add, mul"), "cat"),
    Mistake("item_with_two_layers", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\n    ReLU: {}\n",
            5, 5, "INVALID_ITEM", ("several layers", "Linear", "ReLU")),
    Mistake("import_of_a_function", "inputs:\n  x: {shape: [4]}\nimports: [user_layers.make_scale]\nlayers:\n  - ReLU\n",
            3, 11, "IMPORT_ERROR", ("'user_layers.make_scale' is not an nn.Module subclass",)),
    Mistake("import_of_a_missing_module", "inputs:\n  x: {shape: [4]}\nimports: [no_such_package.Layer]\nlayers:\n  - ReLU\n",
            3, 11, "IMPORT_ERROR", ("cannot import 'no_such_package'",)),
    Mistake("tie_to_a_missing_parameter",
            "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\n    name: a\n"
            "  - Linear: {out_features: 4}\n    name: b\ntie: {b.weight: a.wieght}\n",
            8, 7, "UNKNOWN_REFERENCE", ("tie: no parameter 'a.wieght'",), "a.weight"),
    Mistake("tie_of_different_shapes",
            "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\n    name: a\n"
            "  - Linear: {out_features: 2}\n    name: b\ntie: {b.weight: a.weight}\n",
            8, 7, "SHAPE_MISMATCH", ("b.weight [2, 4]", "a.weight [4, 4]")),
    Mistake("init_unknown_function", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\ninit: {Linear: kaiming_normla}\n",
            5, 8, "UNKNOWN_KEY", ("unknown initialisation 'kaiming_normla'",), "kaiming_normal"),
    Mistake("init_matches_nothing", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\ninit: {Conv2d: zeros}\n",
            5, 8, "UNKNOWN_REFERENCE", ("'Conv2d' matches no layer type or parameter",)),
    Mistake("expect_params_mismatch", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\nexpect: {params: 21}\n",
            5, 10, "EXPECT_FAILED", ("expect.params: expected 21, got 20",)),
    Mistake("empty_file", "", 1, 1, "TYPE_ERROR", ("must be a YAML mapping", "inputs:", "layers:")),
    Mistake("missing_inputs", "layers:\n  - ReLU\n", 1, 1, "MISSING_KEY", ("missing required key 'inputs'",)),
    Mistake("unknown_input_dtype", "inputs:\n  x: {shape: [4], dtype: float}\nlayers:\n  - ReLU\n",
            2, 19, "TYPE_ERROR", ("inputs.x.dtype", "'float32'", "'float'")),
    Mistake("function_kwarg_typo", "inputs:\n  x: {shape: [4, 4]}\nlayers:\n  - softmax: {dims: 1}\n",
            4, 15, "UNKNOWN_KWARG", ("softmax has no argument 'dims'",), "dim"),
    Mistake("meta_key_typo", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: 4}\n    nmae: fc\n",
            5, 5, "UNKNOWN_KEY", ("unknown key 'nmae'",), "name"),
    Mistake("layer_rejects_its_args", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_features: -3}\n",
            4, 5, "LAYER_ERROR", ("Linear 'Linear' cannot be built", "out_features=-3", "negative dimension")),
    Mistake("too_many_positional_args", "inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: [4, true, 7]\n",
            4, 5, "TYPE_ERROR", ("Linear takes at most 2 positional args (out_features, bias), got 3",)),
    Mistake("two_input_function_given_one", "inputs:\n  x: {shape: [4]}\nlayers:\n  - matmul\n",
            4, 5, "MISSING_ARGUMENT", ("matmul needs two inputs",)),
    Mistake("layer_gets_the_wrong_rank", "inputs:\n  x: {shape: [3, 8, 8]}\nlayers:\n  - Flatten\n  - Conv2d: [4, 3]\n",
            5, 5, "SHAPE_MISMATCH", ("Conv2d cannot take input [192]",)),
]


@pytest.fixture
def write_spec(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))   # so `imports: [user_layers.X]` resolves

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


def first_problem(path: Path):
    with pytest.raises(SpecError) as raised:
        compile_spec(path, device="meta")
    return raised.value.first


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda mistake: mistake.id)
def test_located_error(mistake, write_spec):
    path = write_spec(mistake.text)
    problem = first_problem(path)
    assert (problem.location.file, problem.location.line, problem.location.column) == (str(path), mistake.line, mistake.column)
    assert problem.code == mistake.code
    for word in mistake.words:
        assert word in problem.message
    assert problem.suggestion == mistake.suggestion
    if mistake.suggestion:
        assert f"(did you mean '{mistake.suggestion}'?)" in str(problem)


def test_enough_kinds_of_mistake_are_covered():
    assert len({mistake.code for mistake in MISTAKES}) >= 12 and len(MISTAKES) >= 15


def test_cat_of_branches_of_different_sizes_names_both_branches():
    path = ROOT / "specs" / "errors" / "parallel_cnn_mismatch.yaml"
    problem = first_problem(path)
    assert problem.code == "SHAPE_MISMATCH"
    assert str(problem).endswith("parallel_cnn_mismatch.yaml:21:5: cat of branches a [B, 6, 28, 28] and b [B, 6, 30, 30]: "
                                 "sizes differ in dim 2")


def test_missing_file():
    with pytest.raises(SpecError) as raised:
        compile_spec(ROOT / "specs" / "no_such_spec.yaml")
    assert raised.value.first.code == "FILE_NOT_FOUND" and "no_such_spec.yaml" in raised.value.first.message


def test_every_mistake_in_a_spec_is_reported_at_once():
    problems = _problems(ROOT / "specs" / "errors" / "typos.yaml")
    located = [(problem.location.line, problem.location.column, problem.code, problem.suggestion) for problem in problems]
    assert located[:3] == [(19, 5, "UNKNOWN_LAYER", "Conv2d"), (20, 14, "UNKNOWN_KWARG", "out_channels"),
                           (22, 14, "UNKNOWN_VAR", "width")]


def test_unknown_var_is_the_only_problem(write_spec):
    # a var that cannot be resolved must not also make the layer look like it lacks that argument
    path = write_spec("inputs: {x: {shape: [4]}}\nvars: {width: 8}\nlayers:\n  - Linear: {out_features: $widht}\n")
    assert [problem.code for problem in _problems(path)] == ["UNKNOWN_VAR"]


def test_mistake_inside_a_block_points_at_the_block_and_notes_where_it_is_used(write_spec):
    path = write_spec("inputs: {x: {shape: [4]}}\n"
                      "blocks:\n"
                      "  dense:\n"
                      "    args: {width: null}\n"
                      "    layers:\n"
                      "      - Linear: {out_feature: $width}\n"
                      "layers:\n"
                      "  - dense: {width: 8}\n")
    problem = first_problem(path)
    assert (problem.location.line, problem.location.column, problem.code) == (6, 18, "UNKNOWN_KWARG")
    assert problem.suggestion == "out_features"
    assert any(f"in block 'dense' used at {path}:8:5" in note for note in problem.notes)


def _problems(path: Path):
    with pytest.raises(SpecError) as raised:
        compile_spec(path, device="meta")
    return raised.value.problems


# ----- through the command line --------------------------------------------------------------------
def run_specc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPECC), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_reports_the_located_error_without_traceback():
    result = run_specc("check", "specs/errors/parallel_cnn_mismatch.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: specs/errors/parallel_cnn_mismatch.yaml:21:5: cat of branches "
                                     "a [B, 6, 28, 28] and b [B, 6, 30, 30]: sizes differ in dim 2")
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_json_format_gives_codes_and_positions():
    result = run_specc("check", "specs/errors/typos.yaml", "--format", "json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    first = report["errors"][0]
    assert (first["code"], first["line"], first["column"], first["suggestion"]) == ("UNKNOWN_LAYER", 19, 5, "Conv2d")
    assert {"UNKNOWN_LAYER", "UNKNOWN_KWARG", "UNKNOWN_VAR"} <= {error["code"] for error in report["errors"]}


def test_cli_missing_file_exits_2():
    result = run_specc("check", "specs/no_such_spec.yaml")
    assert result.returncode == 2
    assert "no_such_spec.yaml" in result.stderr and "Traceback" not in result.stderr


def test_cli_set_of_a_misspelled_var_suggests_the_var():
    result = run_specc("check", "specs/mlp.yaml", "--set", "hiden=64")
    assert result.returncode == 2
    assert "no var named 'hiden'" in result.stderr and "did you mean 'hidden'?" in result.stderr


def test_item_of_only_misspelled_meta_keys_reports_each_key(write_spec):
    path = write_spec("inputs: {x: {shape: [4]}}\nlayers:\n  - nmae: a\n    repat: 2\n  - ReLU\n")
    problems = _problems(path)
    assert [(p.code, p.suggestion, p.location.line) for p in problems] == [
        ("UNKNOWN_KEY", "name", 3), ("UNKNOWN_KEY", "repeat", 4)]
