"""Smoke test of `make bench` (benchmarks/): every family runs with tiny repeat counts and returns
well-formed results. It checks the harness and its baselines, not the speed: the numbers of a
quick run mean nothing, and `make bench` is where the targets are judged."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not an installed package

from benchmarks import run as bench  # noqa: E402
from benchmarks.compile_cost import SMALL, llama_parameters  # noqa: E402
from benchmarks.draw_cost import generated_spec  # noqa: E402
from benchmarks.llama_reference import LlamaConfig, build_on_meta  # noqa: E402
from benchmarks.timing import Result, Target, format_seconds, interleaved, median_ratio  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from system_tools import require_tool  # noqa: E402

# families that draw with graphviz: `specc draw` (cli) and write_drawing to svg (draw) run `dot`
NEEDS_DOT = ("cli", "draw")


@pytest.mark.parametrize("family", list(bench.FAMILIES))
def test_each_family_runs_with_tiny_repeats_and_returns_well_formed_results(family):
    if family in NEEDS_DOT:
        require_tool("dot", f"the {family} family times drawings, which graphviz renders")
    function, _, quick_arguments = bench.FAMILIES[family]
    results = function(**quick_arguments)
    assert results
    for result in results:
        assert result.family == family
        if result.note.startswith(("not run: lightning is not installed", "skipped: no ")):
            assert result.target is None  # a row not measured here judges nothing
            continue  # bench-only extra (`make bench` installs it), or no CUDA / no chromium on this machine
        # a time "beyond import torch" is a difference of two noisy walls: one repeat may read below 0;
        # an accuracy difference in points (quantized or pruned minus float) may be 0 or below, and a
        # relative difference (|specc - hand-written| / hand-written) 0
        assert math.isfinite(result.value) and (result.value > 0 or "beyond" in result.case
                                                or result.unit == "points"
                                                or (result.unit == "difference" and result.value >= 0)), result
        assert result.repeats >= 1
        assert all(math.isfinite(seconds) and seconds > 0 for seconds in result.seconds.values()), result
        row = json.loads(json.dumps(result.to_dict()))
        assert row["passed"] == (None if result.target is None else result.target.met_by(result.value))
    measured = [result for result in results if not result.note.startswith("skipped: no ")]
    assert not measured or any(result.target is not None for result in measured)  # every family judges something


def test_training_family_runs_without_lightning(monkeypatch):
    from benchmarks import training

    monkeypatch.setattr(training, "lightning_installed", lambda: False)
    results = training.run(**bench.FAMILIES["train"][2])
    lightning_rows = [r for r in results if "Lightning" in r.case]
    assert lightning_rows and all(r.target is None and "not installed" in r.note for r in lightning_rows)
    assert any("hand-written" in r.case and math.isfinite(r.value) for r in results)


def test_targets_compare_and_print_like_the_issue_writes_them():
    assert Target("<=", 1.03).met_by(1.03) and not Target("<=", 1.03).met_by(1.031)
    assert Target(">=", 1.3).met_by(1.4) and not Target("<", 5.0, "s").met_by(5.0)
    assert str(Target("<=", 1.03)) == "≤ 1.03" and str(Target("<", 1000, "MB")) == "< 1000 MB"
    # train_start's first line comes before `import torch` would end: a negative difference
    assert [format_seconds(s) for s in (1.2e-5, 0.0031, 2.5, -1.2164)] == ["12.0 µs", "3.10 ms", "2.50 s", "-1.22 s"]


def test_interleaving_alternates_who_goes_first_and_ratios_pair_rounds():
    order = []
    seconds = interleaved({"a": lambda: order.append("a") or 2.0, "b": lambda: order.append("b") or 1.0}, 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert seconds == {"a": [2.0, 2.0, 2.0], "b": [1.0, 1.0, 1.0]}
    assert median_ratio([1.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0


def test_hand_written_llama_has_the_parameter_count_of_the_spec():
    assert llama_parameters() == 6_738_415_616
    model = build_on_meta(LlamaConfig(**SMALL))
    assert sum(p.numel() for p in model.parameters()) == llama_parameters(**SMALL)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_generated_draw_spec_has_the_requested_number_of_items():
    spec = yaml.safe_load(generated_spec(1000))
    leaves = sum(len(item["residual"]) if isinstance(item, dict) and "residual" in item else 1
                 for item in spec["layers"])
    assert leaves == 1000


def test_tables_show_each_verdict_and_json_output_parses(capsys):
    results = [Result("forward", "mlp", 1.1, Target("<=", 1.03), seconds={"specc": 1e-4}),
               Result("cli", "help", 0.2, Target("<=", 0.3, "s"), unit="s"),
               Result("cli", "reference", 2.0, None, unit="s")]
    table = bench.text_table(results)
    assert "MISS" in table and "PASS" in table and "100.0 µs" in table and "200.00 ms" in table
    assert bench.markdown_table(results).count("\n") == len(results) + 1
    assert bench.main(["--only", "forward", "--quick", "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["machine"]["torch"] == torch.__version__ and output["quick"] is True
    assert {row["family"] for row in output["results"]} == {"forward"}


def test_gpu_rows_say_skipped_without_cuda(monkeypatch):
    from benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = gpu.run(repeats=1, steps=1)
    assert len(results) == len(gpu.WORKLOADS) * len(gpu.MODES)
    assert all(r.note == "skipped: no CUDA" and r.target is None and r.passed is None for r in results)
    assert {bench.format_value(r) for r in results} == {"skipped"}
    assert gpu.cuda_device_name() is None


def test_gpu_rows_are_built_the_same_way_on_the_cpu():
    """The CUDA code path with device="cpu": a one-block GPT-2 under bf16 autocast, two steps."""
    from benchmarks import gpu

    tiny = gpu.Workload("gpt2_small.yaml", {"block_size": 16, "n_layers": 1, "dim": 32, "n_heads": 2,
                                            "vocab_size": 100}, "synthetic:sequence", 4, "tokens")
    results = gpu.run(repeats=1, steps=2, device="cpu", models=("gpt2_small",), modes=("amp",),
                      workloads={"gpt2_small": tiny})
    ratio, throughput = results  # no peak-memory row off CUDA
    assert ratio.case == "gpt2_small amp: training step, specc / hand-written" and ratio.target == gpu.STEP_TARGET
    assert math.isfinite(ratio.value) and ratio.value > 0 and set(ratio.seconds) == {"specc", "hand-written"}
    assert throughput.unit == "tokens/s"
    assert throughput.value == pytest.approx(4 * 16 / ratio.seconds["specc"])
    assert bench.format_value(throughput).endswith(" tokens/s")
