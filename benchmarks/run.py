"""`make bench`: specc against hand-written PyTorch, with a target per number (see docs/performance.md).

    python benchmarks/run.py                       # every benchmark (a few minutes): table with PASS/MISS
    python benchmarks/run.py --only forward train  # some families
    python benchmarks/run.py --json                # machine-readable results
    python benchmarks/run.py --markdown            # the table for docs/performance.md
    python benchmarks/run.py --quick               # tiny repeat counts: checks the harness, not the speed

Families: forward (per-call overhead of the compiled module), compile (Llama 2 7B on meta),
cli (`specc --help`, `specc summary`, a small spec's check/summary/draw), train (per-epoch loop
cost), draw (1,000-item spec to SVG and as the HTML viewer in headless Chromium), stream (a
streamed epoch against a hand-written DataLoader loop, and against the in-memory path), gpu
(training steps on CUDA with amp and torch.compile; "skipped: no CUDA" without one), scan (the `scan`
item against a hand-written loop and the closed O(L²) form at L = 64, 256, 1,024: time and peak memory),
fsdp (peak memory per process of `strategy: fsdp` against ddp, and its step against a hand-written FSDP2
loop, on 2 CPU processes), quantize (torchao and onnxruntime int8 against float, and pruning at 50% and 80%:
size, latency and accuracy), lm (specs/gpt_char.yaml on Python's documentation against a hand-written
nanoGPT loop: time per step and val loss; generation tokens/s with and without the KV cache), moe (a
mixture-of-experts forward against a hand-written sparse-dispatch MoE).
Exit status 0 unless `--strict` and a target is missed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/run.py` from anywhere

from benchmarks import (cli_cost, compile_cost, draw_cost, forward, gpu, language_model, moe, quantization,  # noqa: E402
                        scan, sharded, streaming, train_start, training)
from benchmarks.timing import SPECS, Result, format_seconds, machine  # noqa: E402

# family -> (run function, keyword arguments of a full run, of a --quick run)
FAMILIES: dict[str, tuple[Callable[..., list[Result]], dict, dict]] = {
    "forward": (forward.run, {}, {"repeats": 2, "turn_seconds": 0.0005, "turns": 4}),
    "compile": (compile_cost.run, {}, {"repeats": 1, "small": True}),
    "cli": (cli_cost.run, {}, {"repeats": 1, "summary_spec": SPECS / "mlp.yaml"}),
    "train": (training.run, {}, {"repeats": 1, "models": ("mlp",)}),
    "train_start": (train_start.run, {}, {"repeats": 1}),
    "draw": (draw_cost.run, {}, {"repeats": 1, "items": 40, "cli": False, "published": False}),
    "stream": (streaming.run, {}, {"repeats": 1, "rows": 4000}),
    "gpu": (gpu.run, {}, {"repeats": 1, "steps": 2}),
    "scan": (scan.run, {}, {"repeats": 1, "turns": 1, "lengths": (64,), "closed_repeats": 1}),
    "fsdp": (sharded.run, {}, {"repeats": 1, "steps": 1, "size": "small"}),
    "quantize": (quantization.run, {}, {"repeats": 1, "epochs": 3, "bert_layers": 1, "prune_amounts": (0.5,),
                                   "turns": 2}),
    "lm": (language_model.run, {}, {"repeats": 1, "steps": 2, "generation_repeats": 1, "new_tokens": 8}),
    "moe": (moe.run, {}, {"repeats": 1, "turn_seconds": 0.0005, "turns": 2,
                          "sizes": {"dim": 16, "hidden": 24, "n_experts": 4, "top_k": 2, "tokens": 12}}),
}


def run_families(names: list[str], quick: bool = False, progress: Callable[[str], None] = lambda line: None
                 ) -> list[Result]:
    """Run the named benchmark families in order; `progress` gets one line per family."""
    results = []
    for name in names:
        function, full, quick_arguments = FAMILIES[name]
        start = time.perf_counter()
        family_results = function(**(quick_arguments if quick else full))
        progress(f"{name}: {len(family_results)} results in {time.perf_counter() - start:.0f} s")
        results += family_results
    return results


def format_value(result: Result) -> str:
    """1.031 for a ratio, '0.42 s' for seconds, '317 MB' for memory; 'skipped' for a row not run here."""
    if result.note.startswith("skipped:"):
        return "skipped"
    if result.unit == "s":
        return format_seconds(result.value)
    if result.unit == "MB":
        return f"{result.value:.0f} MB"
    if result.unit == "points":   # a difference of two accuracies, in percentage points
        return f"{result.value:+.2f} points"
    if result.unit == "difference":   # a relative difference, |a - b| / b
        return f"{result.value:.4f}"
    if result.unit.endswith("/s"):
        return f"{result.value:,.0f} {result.unit}"
    return f"{result.value:.3f}"


def verdict(result: Result) -> str:
    return {True: "PASS", False: "MISS", None: "-"}[result.passed]


def times_text(result: Result) -> str:
    return ", ".join(f"{name} {format_seconds(seconds)}" for name, seconds in result.seconds.items())


def text_table(results: list[Result]) -> str:
    """A fixed-width table: what, measured, target, PASS/MISS, times, notes."""
    header = ("benchmark", "measured", "target", "result", "median times", "note")
    rows = [(f"{r.family}: {r.case}", format_value(r), str(r.target or "-"), verdict(r), times_text(r), r.note)
            for r in results]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(4)]
    lines = []
    for row in [header, *rows]:
        fixed = "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths))
        lines.append(f"{fixed}  {row[4]}" + (f"  ({row[5]})" if row[5] else ""))
    return "\n".join(lines)


def markdown_table(results: list[Result]) -> str:
    lines = ["| benchmark | measured | target | result | median times | note |", "|---|---|---|---|---|---|"]
    for r in results:
        cells = (f"{r.family}: {r.case}", format_value(r), str(r.target or "-"), verdict(r), times_text(r), r.note)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def machine_text(info: dict) -> str:
    return (f"{info['cpu']}, {info['cores']} cores, load {info['load']}; GPU: {info['gpu']}; "
            f"Python {info['python']}, torch {info['torch']}, {info['system']}")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmarks, print the results; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(FAMILIES), default=list(FAMILIES), help="families to run")
    parser.add_argument("--quick", action="store_true", help="tiny repeat counts: checks the harness, not the speed")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the results as JSON")
    output.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/performance.md)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    arguments = parser.parse_args(argv)

    info = machine()
    log = (lambda line: print(line, file=sys.stderr)) if arguments.json else print
    if not arguments.json:
        print(f"machine: {machine_text(info)}")
    start = time.perf_counter()
    results = run_families(arguments.only, arguments.quick, log)
    elapsed = time.perf_counter() - start
    misses = [r for r in results if r.passed is False]
    if arguments.json:
        print(json.dumps({"machine": info, "quick": arguments.quick, "seconds": round(elapsed, 1),
                          "results": [r.to_dict() for r in results]}, indent=2))
    else:
        print()
        print(markdown_table(results) if arguments.markdown else text_table(results))
        print(f"\n{len(results) - len(misses)} of {len(results)} rows pass or have no target; "
              f"{len(misses)} missed; {elapsed:.0f} s")
    return 1 if arguments.strict and misses else 0


if __name__ == "__main__":
    sys.exit(main())
