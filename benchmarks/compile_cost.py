"""Compile cost: `specc.build(specs/llama2_7b.yaml, device="meta")` vs a hand-written Llama on meta.

Each build runs in a fresh interpreter (`python -m benchmarks.compile_cost --child <who>`), so
both sides pay the same one-time costs: importing torch, and torch's lazy set-up of the meta
device on first use. The child reports, as one JSON line:

- `import_torch`: seconds to `import torch`;
- `build`: seconds from there to a built model (specc: including importing specc);
- `rebuild`: a second build in the same process, with every import and lazy set-up already paid
  (specc reuses the first build's plan: build/plan_cache.py);
- `replan`: specc only, a third build with the plan cache off (`SPECC_PLAN_CACHE=0`): what a warm
  build of a spec not compiled before in this process costs;
- `peak_rss_mb`: the child's peak resident memory (`resource.getrusage`).
"""
from __future__ import annotations

import json
import statistics
import sys
import time

from benchmarks.timing import SPECS, Result, Target, interleaved, median_ratio, run_command

RATIO_TARGET = Target("<=", 1.5)
RSS_TARGET = Target("<", 1000, "MB")
LLAMA = SPECS / "llama2_7b.yaml"
# --small (the smoke test): a two-block Llama, to check the harness in a second
SMALL = {"vocab_size": 100, "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128}


def llama_parameters(vocab_size=32000, dim=4096, n_layers=32, hidden_dim=11008, **_) -> int:
    """Embedding and head, per block 4 attention and 3 SwiGLU matrices and 2 norms, a final norm."""
    return 2 * vocab_size * dim + n_layers * (4 * dim * dim + 3 * dim * hidden_dim + 2 * dim) + dim


def _build_specc(sizes: dict):
    from specc.weights.building import build

    return build(LLAMA, device="meta", **sizes)


def _build_hand_written(sizes: dict):
    from benchmarks.llama_reference import LlamaConfig, build_on_meta

    return build_on_meta(LlamaConfig(**sizes))


BUILDERS = {"specc": _build_specc, "hand-written": _build_hand_written}


def child(who: str, small: bool = False) -> dict[str, float]:
    """Runs in the fresh interpreter: time the import, the first build and a rebuild."""
    import resource

    sizes = SMALL if small else {}
    start = time.perf_counter()
    import torch  # timed: the one-time cost both sides pay

    imported = time.perf_counter()
    model = BUILDERS[who](sizes)
    built = time.perf_counter()
    BUILDERS[who](sizes)
    rebuilt = time.perf_counter()
    replan = _replan_seconds(who, sizes)
    parameters, expected = sum(parameter.numel() for parameter in model.parameters()), llama_parameters(**sizes)
    if parameters != expected:
        raise AssertionError(f"{who} built {parameters:,} parameters, expected {expected:,}")
    peak_kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {"import_torch": imported - start, "build": built - imported, "rebuild": rebuilt - built,
            "peak_rss_mb": peak_kilobytes / 1024, "torch": torch.__version__, "replan": replan}


def _replan_seconds(who: str, sizes: dict) -> float:
    """A warm specc build that plans again (the cache off); the hand-written build has nothing to plan."""
    import os

    os.environ["SPECC_PLAN_CACHE"] = "0"
    try:
        start = time.perf_counter()
        BUILDERS[who](sizes)
        return time.perf_counter() - start
    finally:
        del os.environ["SPECC_PLAN_CACHE"]


def run(repeats: int = 7, small: bool = False) -> list[Result]:
    """Build Llama 2 7B on meta in fresh processes, specc and hand-written in turn.

    Args:
        repeats: processes per side.
        small: build a two-block Llama instead (to check the harness quickly).

    Returns:
        Ratios (specc / hand-written) of the build without `import torch`, of the whole process
        and of a warm rebuild, and specc's peak RSS.
    """
    reports: dict[str, list[dict]] = {who: [] for who in BUILDERS}

    def repeat(who: str):
        def one() -> float:
            command = [sys.executable, "-m", "benchmarks.compile_cost", "--child", who, *(["--small"] if small else [])]
            wall, output = run_command(command)
            report = json.loads(output.strip().splitlines()[-1])
            # the process measure is one cold build: leave out the rebuild the child also did
            reports[who].append({**report, "process": wall - report["rebuild"] - report["replan"]})
            return wall
        return one

    interleaved({who: repeat(who) for who in BUILDERS}, repeats)
    model = "llama2, 2 small blocks," if small else "llama2_7b"
    return [
        _ratio(reports, "build", f"{model} on meta, build excluding `import torch`"),
        _ratio(reports, "process", f"{model} on meta, whole process (python + import torch + build)"),
        _ratio(reports, "rebuild", f"{model} on meta, warm rebuild (imports and meta set-up paid, plan reused)"),
        _ratio(reports, "replan", f"{model} on meta, warm build planned again (plan cache off)", judged=False),
        _peak_rss(reports, model),
    ]


def _ratio(reports: dict[str, list[dict]], key: str, label: str, judged: bool = True) -> Result:
    # the hand-written side of `replan` is its warm rebuild: it has no plan to make
    hand_key = "rebuild" if key == "replan" else key
    specc = [report[key] for report in reports["specc"]]
    hand = [report[hand_key] for report in reports["hand-written"]]
    import_seconds = statistics.median(r["import_torch"] for r in reports["specc"] + reports["hand-written"])
    return Result("compile", f"{label}: specc / hand-written", median_ratio(specc, hand), RATIO_TARGET if judged else None,
                  seconds={"specc": statistics.median(specc), "hand-written": statistics.median(hand)},
                  repeats=len(specc), note=f"fresh process each; import torch {import_seconds:.2f} s (median)")


def _peak_rss(reports: dict[str, list[dict]], model: str) -> Result:
    specc = statistics.median(r["peak_rss_mb"] for r in reports["specc"])
    hand = statistics.median(r["peak_rss_mb"] for r in reports["hand-written"])
    return Result("compile", f"{model} on meta, peak RSS of the specc process", specc, RSS_TARGET, unit="MB",
                  repeats=len(reports["specc"]), note=f"hand-written process: {hand:.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--child" and sys.argv[2] in BUILDERS:
        print(json.dumps(child(sys.argv[2], small=sys.argv[3:] == ["--small"])))
    else:
        sys.exit("usage: python -m benchmarks.compile_cost --child specc|hand-written [--small] "
                 "(benchmarks/run.py runs the benchmark)")
