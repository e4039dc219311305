"""Discriminative learning rates: `optimizer.groups` by parameter-name globs, with init_from/freeze."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from specc.weights.checkpoint import load_checkpoint
from specc.lang.errors import SpecError
from specc.train.training import train

torch.set_num_threads(1)  # two pytest workers share two cores


def spec(optimizer: dict, **train_keys) -> dict:
    return {"name": "groups", "inputs": {"features": {"shape": [4]}},
            "layers": [{"Linear": {"out_features": 8}, "name": "body"}, "ReLU",
                       {"Linear": {"out_features": 3}, "name": "head"}],
            "train": {"data": {"source": "sklearn:iris", "normalize": "standard"}, "loss": "CrossEntropyLoss",
                      "epochs": 2, "batch_size": 16, "seed": 1, "threads": 1, "optimizer": optimizer, **train_keys}}


def weights(result) -> dict:
    return load_checkpoint(result.last_checkpoint)["model"]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_each_group_gets_its_parameters_and_settings_and_the_rest_the_defaults():
    from specc.build.compiler import compile as compile_spec
    from specc.lang.spec import load
    from specc.train.optim import build_optimizer

    optimizer = {"SGD": {"lr": 0.1, "weight_decay": 0.01, "groups": [
        {"params": "head.*", "lr": 0.01}, {"params": ["*.bias"], "weight_decay": 0.0}]}}
    config = load(spec(optimizer))
    model = compile_spec(config, device="cpu").module
    names = {id(p): name for name, p in model.named_parameters()}
    groups = build_optimizer(config.train.optimizer, model, None).param_groups
    # the default group first (body.weight), then head.* (head.bias too: the first group wins), then *.bias
    assert [[names[id(p)] for p in group["params"]] for group in groups] == [
        ["body.weight"], ["head.weight", "head.bias"], ["body.bias"]]
    assert [(group["lr"], group["weight_decay"]) for group in groups] == [(0.1, 0.01), (0.01, 0.01), (0.1, 0.0)]


def test_a_group_with_lr_0_keeps_its_weights_and_a_group_with_the_default_lr_changes_nothing(tmp_path):
    from specc.build.compiler import compile as compile_spec

    torch.manual_seed(1)  # the run's seed: its initial weights
    initial = compile_spec(spec({"SGD": {"lr": 0.1}}), device="cpu").module.state_dict()
    still = weights(train(spec({"SGD": {"lr": 0.1, "groups": [{"params": "body.*", "lr": 0.0}]}}),
                          out=tmp_path / "still", verbose=False))
    assert torch.equal(still["body.weight"], initial["body.weight"]) and torch.equal(still["body.bias"], initial["body.bias"])
    assert not torch.equal(still["head.weight"], initial["head.weight"])
    plain = weights(train(spec({"SGD": {"lr": 0.1}}), out=tmp_path / "plain", verbose=False))
    same = weights(train(spec({"SGD": {"lr": 0.1, "groups": [{"params": "body.*"}]}}), out=tmp_path / "same",
                         verbose=False))
    assert all(torch.equal(plain[key], same[key]) for key in plain)  # a group inherits what it leaves out


@pytest.mark.parametrize("groups, message, line", [
    ([{"params": "haed.*", "lr": 0.01}], "optimizer group params 'haed.*' matches no parameter (names look like "
                                         "body.weight, body.bias, head.weight, head.bias)", 0),
    ([{"params": ["head.*", "*.bais"], "lr": 0.01}], "optimizer group params '*.bais' matches no parameter", 0),
    ([{"params": "head.*"}, {"params": "head.weight", "lr": 0.5}], "optimizer group ['head.weight']: every parameter "
                                                                  "it matches is frozen or in an earlier group", 1),
])
def test_a_group_glob_that_matches_nothing_is_located_at_its_params(tmp_path, groups, message, line):
    path = write(tmp_path, spec({"SGD": {"lr": 0.1, "groups": groups}}))
    with pytest.raises(SpecError) as error:
        train(path, out=tmp_path / "runs", verbose=False)
    problem = error.value.first
    assert message in problem.message and problem.code == "UNKNOWN_REFERENCE"
    lines = path.read_text().splitlines()
    assert lines[problem.location.line - 1].strip().startswith(("- params:", "params:"))
    params_lines = [number for number, text in enumerate(lines, 1) if "params:" in text]
    assert problem.location.line == params_lines[line]
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_a_group_of_frozen_parameters_is_an_error_naming_freeze(tmp_path):
    data = spec({"SGD": {"lr": 0.1, "groups": [{"params": "body.*", "lr": 0.01}]}}, freeze=["body.*"])
    with pytest.raises(SpecError, match=r"'body\.\*' matches only frozen parameters \(train.freeze\)"):
        train(write(tmp_path, data), out=tmp_path / "runs", verbose=False)


def test_fine_tuning_from_saved_weights_with_a_frozen_body_and_a_slower_middle(tmp_path):
    from specc.build.compiler import compile as compile_spec
    from specc.weights.loading import save_weights

    layers = [{"Linear": {"out_features": 8}, "name": "body"}, "ReLU", {"Linear": {"out_features": 8}, "name": "middle"},
              "ReLU", {"Linear": {"out_features": 3}, "name": "head"}]
    data = spec({"SGD": {"lr": 0.1, "groups": [{"params": "middle.*", "lr": 0.01}]}}, freeze=["body.*"],
                init_from={"path": str(tmp_path / "start.safetensors"), "map": "strict"})
    data["layers"] = layers
    torch.manual_seed(5)
    start = compile_spec({**data, "train": None}, device="cpu")
    save_weights(start, tmp_path / "start.safetensors")
    saved = start.module.state_dict()
    result = train(write(tmp_path, data), out=tmp_path / "runs", verbose=False)
    trained = weights(result)
    assert torch.equal(trained["body.weight"], saved["body.weight"])  # frozen
    middle = (trained["middle.weight"] - saved["middle.weight"]).abs().max()
    head = (trained["head.weight"] - saved["head.weight"]).abs().max()
    assert 0 < middle < head  # the middle moves, ten times slower than the head
    groups = load_checkpoint(result.last_checkpoint)["optimizer"]["param_groups"]
    assert [(len(group["params"]), group["lr"]) for group in groups] == [(2, 0.1), (2, 0.01)]  # no frozen ones
