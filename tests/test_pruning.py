"""`train.prune:`: gradual magnitude pruning with torch.nn.utils.prune, exact resume, plain checkpoints."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import prune

import specc.train.loop
from specc.weights.checkpoint import load_checkpoint
from specc.lang.errors import SpecError
from specc.lang.prune_config import PruneConfig
from specc.train.pruning import Pruner, plain_state_dict
from specc.train.training import evaluate, train

torch.set_num_threads(1)  # two pytest workers share two cores

SPEC = {
    "name": "pruned_digits",
    "inputs": {"image": {"shape": [1, 8, 8]}},
    "layers": [{"Conv2d": {"out_channels": 8, "kernel_size": 3, "padding": 1}}, "BatchNorm2d", "ReLU",
               "Flatten", {"Dropout": {"p": 0.2}}, {"Linear": {"out_features": 32}}, "ReLU",
               {"Linear": {"out_features": 10}, "name": "head"}],
    "train": {"data": {"source": "sklearn:digits", "normalize": "standard"}, "epochs": 5, "batch_size": 64,
              "loss": "CrossEntropyLoss", "metrics": ["accuracy"], "optimizer": {"AdamW": {"lr": 0.003}},
              "prune": {"amount": 0.5, "schedule": {"start_epoch": 2, "end_epoch": 4}}},
}
PRUNED = ["0.weight", "5.weight", "head.weight"]   # the tensors of 2+ dims that "*.weight" selects


def spec_with(**prune_keys):
    spec = copy.deepcopy(SPEC)
    spec["train"]["prune"].update(prune_keys)
    return spec


def zeros(state, name):
    return int((state[name] == 0).sum())


def test_the_cubic_schedule_reaches_the_amount_at_end_epoch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    pruner = Pruner(PruneConfig(amount=0.8, schedule={"start_epoch": 2, "end_epoch": 5}), model, 10, lambda path: None)
    targets = [pruner.target(epoch) for epoch in range(1, 8)]
    assert targets[0] is None and targets[5:] == [None, None]
    assert targets[1:5] == pytest.approx([0.8 * (1 - (1 - j / 4) ** 3) for j in range(1, 5)])
    assert targets[4] == pytest.approx(0.8)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    return train(SPEC, out=tmp_path_factory.mktemp("runs"), verbose=False)


def test_a_trained_model_has_the_stated_sparsity_and_plain_checkpoints(pruned_run):
    result = pruned_run
    assert result.status == "completed"
    best = load_checkpoint(result.best_checkpoint)
    assert best["epoch"] >= 4                       # best.pt waits for the final sparsity
    state = best["model"]
    assert not any(key.endswith(("_orig", "_mask")) for key in state)   # a plain state_dict
    for name in PRUNED:
        assert zeros(state, name) == round(0.5 * state[name].numel()), name
    assert zeros(state, "1.weight") == 0            # a BatchNorm scale has one dim: left alone
    assert [round(r["sparsity"], 3) for r in result.history][:4] == [0.0, pytest.approx(0.352, abs=0.002),
                                                                      pytest.approx(0.481, abs=0.002), 0.5]
    masks = load_checkpoint(result.last_checkpoint)["prune"]["masks"]
    assert sorted(masks) == sorted(PRUNED) and all(mask.dtype == torch.bool for mask in masks.values())
    # readers of checkpoints need nothing special: evaluate loads best.pt into the plain model
    assert evaluate(SPEC, result.best_checkpoint, split="test")["accuracy"] > 0.8


def test_global_scope_reaches_the_amount_over_all_tensors_together(tmp_path):
    result = train(spec_with(scope="global", amount=0.6), out=tmp_path, verbose=False)
    state = load_checkpoint(result.last_checkpoint)["model"]
    total = sum(state[name].numel() for name in PRUNED)
    assert sum(zeros(state, name) for name in PRUNED) == round(0.6 * total)
    per_tensor = {name: zeros(state, name) / state[name].numel() for name in PRUNED}
    assert max(per_tensor.values()) - min(per_tensor.values()) > 0.05   # one threshold, not one per tensor


def test_ln_structured_removes_whole_output_channels(tmp_path):
    result = train(spec_with(method="ln_structured", amount=0.5, params=["0.weight", "5.weight"]), out=tmp_path,
                   verbose=False)
    state = load_checkpoint(result.last_checkpoint)["model"]
    conv_channels_dead = (state["0.weight"].abs().sum((1, 2, 3)) == 0).sum()
    linear_rows_dead = (state["5.weight"].abs().sum(1) == 0).sum()
    assert int(conv_channels_dead) == 4 and int(linear_rows_dead) == 16
    assert zeros(state, "head.weight") == 0


def test_a_run_interrupted_mid_epoch_resumes_to_the_same_pruned_weights(tmp_path, monkeypatch):
    straight = train(SPEC, out=tmp_path / "a", verbose=False)
    original, calls = specc.train.loop.train_step, []

    def interrupted_step(session, *args):
        calls.append(1)
        if len(calls) == 50:   # in epoch 3, after the cuts of epochs 2 and 3 (20 steps per epoch): as Ctrl-C does
            session.stop_requested = True
        return original(session, *args)

    monkeypatch.setattr(specc.train.loop, "train_step", interrupted_step)
    stopped = train(SPEC, out=tmp_path / "b", verbose=False)
    assert stopped.status == "interrupted"
    monkeypatch.setattr(specc.train.loop, "train_step", original)
    resumed = train(SPEC, resume=stopped.run_dir / "interrupted.pt", verbose=False)
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert all(torch.equal(a["prune"]["masks"][key], b["prune"]["masks"][key]) for key in a["prune"]["masks"])
    assert [r["val_loss"] for r in straight.history] == [r["val_loss"] for r in resumed.history]


def test_plain_state_dict_folds_the_mask_into_the_weight():
    layer = torch.nn.Linear(3, 2)
    prune.l1_unstructured(layer, "weight", amount=3)
    state = plain_state_dict(layer)
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], layer.weight_orig * layer.weight_mask)
    assert int((state["weight"] == 0).sum()) == 3


@pytest.mark.parametrize(("prune_keys", "message"), [
    ({"amout": 0.5}, "did you mean 'amount'"),
    ({"method": "l1_unstructed"}, "l1_unstructured"),
    ({"amount": 1.5}, "amount"),
    ({"schedule": {"start_epoch": 3, "end_epoch": 9}}, "end_epoch 9 is after the last epoch (5)"),
    ({"scope": "global", "method": "ln_structured"}, "works with method: l1_unstructured only"),
])
def test_bad_prune_keys_are_located_errors(prune_keys, message, tmp_path):
    spec = copy.deepcopy(SPEC)
    spec["train"]["prune"] = {"amount": 0.5, **prune_keys}
    if "amout" in prune_keys:
        del spec["train"]["prune"]["amount"]
    with pytest.raises(SpecError) as error:
        train(spec, out=tmp_path, verbose=False)
    assert message in str(error.value)
    assert not any(tmp_path.iterdir())   # nothing written


def test_a_pattern_that_selects_nothing_is_an_error_with_a_suggestion(tmp_path):
    with pytest.raises(SpecError) as error:
        train(spec_with(params=["hed.weight"]), out=tmp_path, verbose=False)
    assert "prune params 'hed.weight' matches no parameter" in str(error.value)
    assert "did you mean 'head.weight'" in str(error.value)
    with pytest.raises(SpecError) as error:
        train(spec_with(params=["1.*"]), out=tmp_path, verbose=False)
    assert "matches only tensors of one dim" in str(error.value)


def test_summary_shows_a_checkpoints_sparsity_per_tensor_and_in_total(pruned_run, tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from specc.cli import app

    spec = tmp_path / "pruned.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    result = CliRunner().invoke(app, ["summary", str(spec), "--checkpoint", str(pruned_run.best_checkpoint)])
    assert result.exit_code == 0, result.output
    total = sum(numel for numel in (8 * 9, 32 * 512, 10 * 32))
    assert f"Weight sparsity: 50.00% ({round(total / 2):,} of {total:,} values in 3 weight tensors are zero)" in \
        " ".join(result.output.split())
    assert "head.weight" in result.output and "50.00%" in result.output
    result = CliRunner().invoke(app, ["summary", str(spec), "--checkpoint", str(pruned_run.best_checkpoint),
                                      "--format", "json"])
    payload = json.loads(result.output)          # one document: the summary and the sparsity
    assert payload["sparsity"]["total"] == total and payload["sparsity"]["zeros"] == round(total / 2)
    assert [t["name"] for t in payload["sparsity"]["tensors"]] == PRUNED
