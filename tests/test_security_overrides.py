"""Issue 15: an override (`--set`, `specc.build(..., width=128)`) that matches nothing is an error,
never silently ignored. A bare name is a var of the spec, else a top-level key (`name`, `train`);
a dotted key is a spec key path (`train.epochs`, `vars.extra`)."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import specc
from specc.cli import app
from specc.lang.errors import SpecError

MLP = Path(__file__).resolve().parent.parent / "specs" / "mlp.yaml"
IRIS = """name: iris
inputs: {x: {shape: [4]}}
vars: {width: 16}
layers:
  - Linear: [$width]
  - Linear: [3]
train: {data: {source: 'sklearn:iris'}, loss: CrossEntropyLoss, epochs: 2}
"""


def test_an_unknown_keyword_is_refused_listing_the_vars():
    with pytest.raises(SpecError) as raised:
        specc.build(MLP, widht=128)
    problem = raised.value.first
    assert problem.code == "UNKNOWN_VAR" and problem.location.file == str(MLP)
    assert "no var named 'widht' (the spec's vars: in_features, hidden, dropout, n_classes" in problem.message


def test_a_near_miss_suggests_the_var():
    with pytest.raises(SpecError) as raised:
        specc.build(MLP, hiden=64)
    assert raised.value.first.suggestion == "hidden"


def test_an_unknown_set_through_the_cli_exits_2():
    result = CliRunner().invoke(app, ["check", str(MLP), "--set", "depth=3"])
    assert result.exit_code == 2
    assert f"error: {MLP}:16:1: --set depth: no var named 'depth'" in result.output


def test_a_var_and_a_dotted_key_still_work():
    spec = specc.load(IRIS, {"width": 8, "train.epochs": 5, "train.optimizer": {"SGD": {"lr": 0.5}}})
    assert spec.vars["width"] == 8 and spec.train.epochs == 5
    assert (spec.train.optimizer.name, spec.train.optimizer.kwargs) == ("SGD", {"lr": 0.5})


def test_a_bare_top_level_key_sets_that_key_not_a_var():
    spec = specc.load(IRIS, {"train": {"data": {"source": "sklearn:iris"}, "loss": "CrossEntropyLoss", "epochs": 7},
                             "name": "iris_run2"})
    assert spec.train.epochs == 7 and spec.name == "iris_run2" and "train" not in spec.vars


def test_a_set_name_is_validated_like_the_file():
    with pytest.raises(SpecError, match="the name must be an identifier"):
        specc.load(IRIS, {"name": "../elsewhere"})


def test_vars_dot_adds_a_var_on_purpose():
    assert specc.load(IRIS, {"vars.extra": 3}).vars == {"width": 16, "extra": 3}


def test_a_dotted_key_under_no_spec_key_is_refused():
    with pytest.raises(SpecError) as raised:
        specc.load(IRIS, {"trian.epochs": 5})
    problem = raised.value.first
    assert problem.code == "UNKNOWN_KEY" and problem.suggestion == "train"
    assert "--set trian.epochs: a spec has no key 'trian'" in problem.message


def test_a_misspelled_key_under_train_is_located():
    with pytest.raises(SpecError) as raised:
        specc.load(IRIS, {"train.epoch": 5})
    assert raised.value.first.code == "UNKNOWN_KEY" and raised.value.first.suggestion == "epochs"


def test_a_var_the_spec_uses_without_declaring_it_may_be_given():
    spec = "inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: [$(width * 2)]\n"
    assert specc.build(spec, width=3).get_submodule("0").out_features == 6
    with pytest.raises(SpecError, match="no var named 'depth'"):
        specc.build(spec, width=3, depth=2)
