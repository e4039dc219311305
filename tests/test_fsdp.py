"""`strategy: fsdp` on two gloo processes: sharded weights built on meta, DCP checkpoints, activation
checkpointing. One launch through torchrun's Python API runs every 2-process training (as
tests/test_distributed.py does); the 1-process references run in the test process.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from specc.weights.checkpoint import load_checkpoint
from specc.train import launch as launcher

torch.set_num_threads(1)  # two pytest workers share two cores
SPECS = Path(__file__).resolve().parents[1] / "specs"

# GPT-2's spec, tiny: every sharded dim is even, so each rank holds exactly half of every tensor.
# SGD, not Adam: Adam divides by the root of tiny second moments, which turns float rounding into
# visible weight differences. No dropout: two ranks with batches of 8 compute what one process computes with 16.
# PyTorch's default initialisation, which these tolerances were set on: gpt2_small's published N(0, 0.02)
# init trains to weights whose float rounding under tensor parallel's other summation order differs by 2e-5.
TINY_GPT = {**yaml.safe_load((SPECS / "gpt2_small.yaml").read_text()), "name": "fsdp_gpt", "init": {}}
TINY_GPT["vars"] = {**TINY_GPT["vars"], "vocab_size": 32, "block_size": 8, "dim": 16, "n_layers": 2, "n_heads": 2}
TINY_GPT["train"] = {"data": {"source": "synthetic:sequence", "args": {"samples": 200},
                              "split": {"val": 0.1, "test": 0.1}},
                     "batch_size": 8, "epochs": 2, "loss": "CrossEntropyLoss", "metrics": ["accuracy"],
                     "optimizer": {"SGD": {"lr": 0.2, "momentum": 0.9}}, "strategy": "fsdp", "threads": 1, "log_every": 5}


def gpt(**train_keys) -> dict:
    spec = copy.deepcopy(TINY_GPT)
    spec["train"].update(train_keys)
    return spec


def rank_scenarios(out: str, from_one: str, facts: str) -> dict:
    """Each rank: the fsdp trainings, in one process group; writes what it measured."""
    from specc.train.prepare import build_model
    from specc.lang.spec import load
    from specc.train.training import train

    dist.init_process_group("gloo")
    try:
        compiled = build_model(load(gpt()), torch.device("cpu"), 0)
        local = sum(parameter.to_local().numel() for parameter in compiled.module.parameters())
        Path(facts, f"rank{dist.get_rank()}.json").write_text(json.dumps({"local": local}))
        results = {"fsdp": train(gpt(), out=out, verbose=False),
                   "three": train(gpt(epochs=3), out=out, verbose=False),
                   "checkpointed": train(gpt(activation_checkpointing="blocks"), out=out, verbose=False)}
        results["from_one"] = train(None, out=out, verbose=False, resume=from_one, epochs=3, batch_size=8)
        results["tensor"] = train(gpt(parallel={"tensor": 2}), out=out, verbose=False)  # a 1 x 2 mesh
        results["init_from"] = train(gpt(init_from=str(Path(out) / "start.pt"), epochs=1), out=out, verbose=False)
        return results
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from specc.train.training import train

    out, facts = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("facts")
    # written by one process (fsdp keeps DCP checkpoints there too), resumed below by two
    one = train(gpt(batch_size=16), out=out / "one", verbose=False)
    torch.save(weights(one.last_checkpoint), out / "start.pt")  # a plain state_dict for init_from
    results = launcher.launch(rank_scenarios, (str(out), str(one.last_checkpoint), str(facts)), nproc=2)
    return {**results, "one": one, "out": out, "facts": facts}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint)["model"]


def assert_same_training(sharded, single, rel=1e-5) -> None:
    assert sharded.status == single.status == "completed"
    assert len(sharded.history) == len(single.history)
    for together, alone in zip(sharded.history, single.history):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert together[key] == pytest.approx(alone[key], rel=rel), key


def assert_same_weights(first: dict, second: dict, atol=1e-5) -> None:
    assert sorted(first) == sorted(second)
    for key in first:
        difference = (first[key] - second[key]).abs().max().item()
        assert torch.allclose(first[key], second[key], rtol=1e-4, atol=atol), (key, difference)


def test_sharded_start_equals_one_process_build():
    """The same seed, the same full model: each rank fills its shards from per-layer draws."""
    from specc.build.compiler import compile as compile_spec
    from specc.build.materialize import initial_values
    from specc.lang.spec import load
    from specc.train.prepare import build_model

    spec = load(gpt())
    built = build_model(spec, torch.device("cpu"), 0).module.state_dict()
    compiled = compile_spec(spec, device="meta", symbolic=False)
    replayed = {}
    for name, tensor in initial_values(compiled, 0):
        if name not in spec.tie:
            replayed[name] = tensor
    for key, value in built.items():
        assert torch.equal(value, replayed[spec.tie.get(key, key)]), key  # a tied weight is its source


def test_each_rank_holds_half_of_the_parameters(runs):
    from specc.lang.spec import load
    from specc.train.prepare import build_model

    whole = sum(p.numel() for p in build_model(load(gpt()), torch.device("cpu"), 0).module.parameters())
    held = [json.loads((runs["facts"] / f"rank{rank}.json").read_text())["local"] for rank in (0, 1)]
    assert held == [whole // 2, whole // 2]


def test_fsdp_trains_like_one_process_with_the_global_batch(runs, tmp_path):
    from specc.train.training import train

    single = train(gpt(batch_size=16, strategy=None), out=tmp_path, verbose=False)
    assert_same_training(runs["fsdp"], single)
    assert runs["fsdp"].last_checkpoint.name == "last.dcp" and single.last_checkpoint.name == "last.pt"
    assert_same_weights(weights(runs["fsdp"].last_checkpoint), weights(single.last_checkpoint))


def test_activation_checkpointing_trains_the_same(runs):
    assert_same_training(runs["checkpointed"], runs["fsdp"], rel=1e-6)
    assert_same_weights(weights(runs["checkpointed"].last_checkpoint), weights(runs["fsdp"].last_checkpoint),
                        atol=1e-6)


@pytest.mark.filterwarnings("error:torch.distributed is:UserWarning")   # DCP's "assuming one process" is not news
def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    from specc.train.training import train

    copied = tmp_path / "last.dcp"  # a resume writes into the checkpoint's folder: leave the run as it is
    shutil.copytree(runs["fsdp"].last_checkpoint.resolve(), copied)
    resumed = train(None, out=tmp_path, verbose=False, resume=copied, epochs=3, batch_size=16)
    assert [record["epoch"] for record in resumed.history] == [1, 2, 3]
    assert_same_training(resumed, runs["three"])
    assert_same_weights(weights(resumed.last_checkpoint), weights(runs["three"].last_checkpoint))


def test_a_one_process_checkpoint_resumes_in_two(runs):
    assert [record["epoch"] for record in runs["from_one"].history] == [1, 2, 3]
    assert_same_training(runs["from_one"], runs["three"])
    assert_same_weights(weights(runs["from_one"].last_checkpoint), weights(runs["three"].last_checkpoint))


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: its children, theirs, ...)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_tensor_parallel_with_fsdp_trains_like_one_process(runs, tmp_path):
    """`parallel: {tensor: 2}` on 2 processes: a 1 x 2 mesh (FSDP over 1, the MLPs split over 2); both
    processes see the same batches of 8, so one process with batches of 8 is the reference."""
    from specc.train.training import train

    single = train(gpt(strategy=None), out=tmp_path, verbose=False)
    assert_same_training(runs["tensor"], single)
    assert_same_weights(weights(runs["tensor"].last_checkpoint), weights(single.last_checkpoint))


def test_init_from_loads_each_process_s_shards(runs, tmp_path):
    from specc.train.training import train

    single = train(gpt(init_from=str(runs["out"] / "start.pt"), epochs=1, batch_size=16, strategy=None),
                   out=tmp_path, verbose=False)
    assert single.history[0]["train_loss"] < runs["fsdp"].history[0]["train_loss"]  # it did start trained
    assert_same_training(runs["init_from"], single)
    assert_same_weights(weights(runs["init_from"].last_checkpoint), weights(single.last_checkpoint))


def test_tensor_parallel_splits_the_feed_forward_layers():
    from specc.build.compiler import compile as compile_spec
    from specc.train.tensor_parallel import parallelize, plans_for

    model = compile_spec(gpt(), device="meta", symbolic=False).module
    assert plans_for(model) == {f"h.{index}.feed_forward.body.mlp": {"c_fc": "colwise", "c_proj": "rowwise"}
                                for index in (0, 1)}
    llama = compile_spec(SPECS / "llama2_7b.yaml", device="meta", symbolic=False, n_layers=1, dim=64, n_heads=4,
                         hidden_dim=128, vocab_size=32, max_len=16).module
    assert plans_for(llama) == {"layers.0.feed_forward.body.mlp": {"w1": "colwise", "w3": "colwise", "w2": "rowwise"}}
    with pytest.raises(Exception, match="no feed-forward layer to split"):
        parallelize(torch.nn.Sequential(torch.nn.Linear(2, 2)), None, None)


def test_checkpointed_blocks_give_the_same_gradients():
    """`activation_checkpointing: blocks` recomputes each block in backward: same loss, same gradients."""
    from specc.lang.spec import load
    from specc.train.prepare import build_model

    plain = build_model(load(gpt(strategy=None)), torch.device("cpu"), 0).module
    checkpointed = build_model(load(gpt(strategy=None, activation_checkpointing="blocks")), torch.device("cpu"), 0).module
    wrapped = [name for name, module in checkpointed.named_modules() if type(module).__name__ == "CheckpointWrapper"]
    assert wrapped == ["h.0", "h.1"]
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # checkpoints keep their names
    tokens = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(1))
    for model in (plain, checkpointed):
        model(tokens).logsumexp(-1).mean().backward()
    gradients = {name: p.grad for name, p in plain.named_parameters()}
    for name, parameter in checkpointed.named_parameters():
        assert torch.equal(parameter.grad, gradients[name.replace("._checkpoint_wrapped_module", "")]), name


def test_a_run_killed_with_sigkill_resumes_from_its_dcp_checkpoint_bit_identically(runs, tmp_path):
    """`kill -9` of every process mid-epoch 2: last.dcp (epoch 1) is whole, and the resumed run ends with
    the very weights of the uninterrupted 3-epoch run."""
    spec = tmp_path / "fsdp_gpt.yaml"
    spec.write_text(yaml.safe_dump(gpt(epochs=3, data={**TINY_GPT["train"]["data"],
                                                       "args": {"samples": 200}})))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "specc", "train", str(spec), "--nproc", "2", "--out",
                                str(tmp_path / "runs")], env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith("epoch 1/3"):
                break
        for pid in [process.pid, *descendants(process.pid)]:  # the launcher and both training processes
            os.kill(pid, signal.SIGKILL)
    finally:
        process.wait()
    last = next((tmp_path / "runs" / "fsdp_gpt").iterdir()) / "last.dcp"
    assert load_checkpoint(last)["epoch"] == 1
    resumed = subprocess.run([sys.executable, "-m", "specc", "train", "--nproc", "2", "--resume", str(last)],
                             env=environment, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final, straight = weights(last), weights(runs["three"].last_checkpoint)
    assert load_checkpoint(last)["epoch"] == 3
    for key in straight:
        assert torch.equal(final[key], straight[key]), key


def test_summary_estimates_memory_per_process_without_starting_any(tmp_path):
    """`specc summary --strategy fsdp --nproc 8`: weights, gradients and Adam's two moments divided by 8;
    activation checkpointing keeps a block's input instead of its saved tensors."""
    from typer.testing import CliRunner

    from specc.build.compiler import compile as compile_spec
    from specc.cli import app
    from specc.summary.sharded_memory import estimate

    spec = gpt(optimizer={"AdamW": {"lr": 0.01}})
    compiled = compile_spec(spec, device="meta", symbolic=False)
    weights_bytes = 4 * sum(p.numel() for p in compiled.module.parameters())
    sharded, replicated = (estimate(compiled, strategy, 8, 4, "AdamW") for strategy in ("fsdp", "ddp"))
    assert (sharded.parameters, sharded.gradients, sharded.optimizer_state) == (
        weights_bytes // 8, weights_bytes // 8, 2 * weights_bytes // 8)
    assert (replicated.parameters, replicated.optimizer_state, replicated.gathered) == (
        weights_bytes, 2 * weights_bytes, 0)
    block = 4 * sum(p.numel() for p in compiled.module.get_submodule("h.0").parameters())
    assert sharded.gathered == 2 * block  # h.0 and h.1 gathered in turn
    assert 0 < sharded.checkpointed_activations < sharded.activations == replicated.activations
    path = tmp_path / "gpt.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["summary", str(path), "--strategy", "fsdp", "--nproc", "8", "--format", "json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["memory_per_process"]   # one JSON document: the summary and the estimate
    assert figures["parameters"] == weights_bytes // 8 and figures["nproc"] == 8 and figures["optimizer"] == "AdamW"
    refused = CliRunner().invoke(app, ["summary", str(path), "--strategy", "zero3"])
    assert refused.exit_code == 2 and "choose fsdp or ddp" in refused.output


def test_evaluate_and_export_read_a_sharded_run(runs, tmp_path):
    """One process, no process group: best.dcp evaluates to the run's own test figures, and last.dcp
    exports to one safetensors file holding the full weights."""
    import specc
    from typer.testing import CliRunner

    from specc.cli import app

    run = runs["fsdp"]
    evaluated = specc.evaluate(None, run.best_checkpoint, split="test")
    assert evaluated["loss"] == pytest.approx(run.metrics["test"]["loss"], rel=1e-5)
    assert evaluated["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    exported = tmp_path / "gpt.safetensors"
    result = CliRunner().invoke(app, ["export", str(run.run_dir / "spec.yaml"), "--checkpoint",
                                      str(run.last_checkpoint), "-o", str(exported)])
    assert result.exit_code == 0, result.output
    rebuilt, full = specc.build(exported).state_dict(), weights(run.last_checkpoint)
    assert sorted(rebuilt) == sorted(full)
    for key in full:
        assert torch.equal(rebuilt[key], full[key]), key


def test_a_damaged_sharded_checkpoint_is_refused(runs, tmp_path):
    from specc.lang.errors import SpecError

    copy_of = tmp_path / "last.dcp"
    shutil.copytree(runs["fsdp"].last_checkpoint.resolve(), copy_of)
    shard = next(copy_of.glob("__0_*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(SpecError, match="corrupted or incomplete"):
        load_checkpoint(copy_of)


def test_units_are_the_spec_s_blocks_unless_shard_globs_say_otherwise():
    from specc.build.compiler import compile as compile_spec
    from specc.build.units import block_units
    from specc.lang.errors import SpecError
    from specc.lang.spec import load
    from specc.train.sharding import chosen_units

    spec = load(gpt(fsdp={"shard": ["nothing.*"]}))
    compiled = compile_spec(spec, device="meta", symbolic=False)
    assert block_units(compiled) == ["h.0", "h.1"]
    assert chosen_units(compiled, [], None) == ["h.0", "h.1"]
    assert chosen_units(compiled, ["h.*.attention", "h.*"], None) == ["h.0", "h.1"]  # outermost matches win
    assert chosen_units(compiled, ["h", "ln_f"], None) == ["h", "ln_f"]
    resnet = compile_spec(SPECS / "resnet18.yaml", device="meta", symbolic=False)
    assert block_units(resnet)[:3] == ["layer1.0", "layer1.1", "layer2.0"] and len(block_units(resnet)) == 8
    with pytest.raises(SpecError) as error:
        chosen_units(compiled, spec.train.fsdp.shard,
                     lambda index: spec.source.locate(("train", "fsdp", "shard", index)))
    assert "fsdp.shard: 'nothing.*' matches no module" in str(error.value) and ":" in str(error.value.problems[0].location)
