"""Draw cost: a generated spec of 1,000 layer items rendered to SVG.

The spec repeats a unit of four items (Linear, ReLU and a residual around Linear, ReLU), each
written out (no `repeat:`, which would fold into one box), so the drawing has 1,000 boxes,
250 residual frames and their skip edges. Timed twice: `specc.draw.drawing.write_drawing` in this
process (imports already paid), and the `specc draw` command in a fresh process.

The HTML viewer's file of the same spec (`specc draw ... -o x.html`), and of specs/llama2_7b.yaml,
are then opened in headless Chromium (tests/browser.py drives it), a fresh browser per repeat: the
time is the page's own clock (`performance.now()`, from the start of navigation) at the first
animation frame where the viewer is interactive — `window.speccViewer` set up and its boxes in the page.
"""
from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.cli_cost import specc_command
from benchmarks.timing import ROOT, Result, Target, interleaved, medians, run_command

TARGET = Target("<", 5.0, "s")
BROWSER_TARGET = Target("<", 0.5, "s")         # the 1,000-item page
PUBLISHED_BROWSER_TARGET = Target("<", 0.3, "s")   # a published model's page: Llama 2 7B
PUBLISHED = ROOT / "specs" / "llama2_7b.yaml"
# Runs in the page before its own scripts: note when the viewer first answers with boxes drawn.
READY_PROBE = """(() => { const check = () => { const viewer = window.speccViewer;
  if (viewer && viewer.nodeCount() > 0) window.__speccReadyMs = performance.now();
  else requestAnimationFrame(check); }; requestAnimationFrame(check); })();"""
ITEMS_PER_UNIT = 4


def generated_spec(items: int = 1000, width: int = 16) -> str:
    """A valid spec with `items` layer items (a multiple of 4) as YAML text."""
    unit = [
        {"Linear": {"out_features": width}},
        "ReLU",
        {"residual": [{"Linear": {"out_features": width}}, "ReLU"]},
    ]
    layers = [item for _ in range(items // ITEMS_PER_UNIT) for item in unit]
    spec = {"name": f"generated_{items}", "inputs": {"x": {"shape": [width]}}, "layers": layers}
    return yaml.safe_dump(spec, sort_keys=False)


def count_boxes(svg: str) -> int:
    """Graphviz writes one `class="node"` group per box."""
    return svg.count('class="node"')


def run(repeats: int = 7, items: int = 1000, cli: bool = True, published: bool = True) -> list[Result]:
    """Render the generated spec to SVG, in process and through the CLI, interleaved.

    Args:
        repeats: renders per way.
        items: layer items in the generated spec (a multiple of 4).
        cli: also time the `specc draw` command in a fresh process.
        published: also time llama2_7b's viewer page.

    Returns:
        Seconds of each way against the target.

    Raises:
        AssertionError: a drawing has fewer boxes than the spec has items.
    """
    from specc.draw.drawing import write_drawing

    with tempfile.TemporaryDirectory() as folder:
        spec_path = Path(folder) / f"generated_{items}.yaml"
        spec_path.write_text(generated_spec(items))
        api_svg, cli_svg = Path(folder) / "api.svg", Path(folder) / "cli.svg"

        def in_process() -> float:
            start = time.perf_counter()
            write_drawing(spec_path, api_svg)
            return time.perf_counter() - start

        def command() -> float:
            return run_command([*specc_command(), "draw", str(spec_path), "-o", str(cli_svg)])[0]

        in_process()  # warm-up: imports and graphviz's first start
        ways = {"write_drawing": in_process, **({"specc draw": command} if cli else {})}
        seconds = medians(interleaved(ways, repeats))
        boxes = {path.name: count_boxes(path.read_text()) for path in (api_svg, cli_svg) if path.exists()}
        for name, count in boxes.items():
            if count < items:
                raise AssertionError(f"{name} has {count} boxes for {items} items")
        viewers = [browser_result(spec_path, Path(folder) / "viewer.html", f"{items}-item spec", repeats,
                                  BROWSER_TARGET)]
        if published:
            viewers.append(browser_result(PUBLISHED, Path(folder) / "llama2_7b.html", "llama2_7b", repeats,
                                          PUBLISHED_BROWSER_TARGET))
    note = f"{items} items, {boxes['api.svg']} boxes in the SVG"
    labels = {"write_drawing": "specc.draw.drawing.write_drawing (in process)", "specc draw": "`specc draw` (fresh process)"}
    return [Result("draw", f"{items}-item spec to SVG, {labels[way]}", value, TARGET, unit="s", seconds={way: value},
                   repeats=repeats, note=note)
            for way, value in seconds.items()] + viewers


def browser_result(spec_path: Path, page: Path, name: str, repeats: int, target: Target) -> Result:
    """Seconds until the HTML viewer of `spec_path` is interactive in headless Chromium (median)."""
    from specc.draw.drawing import write_drawing

    case = f"{name}, HTML viewer open and interactive in headless Chromium"
    browser_module = _browser_driver()
    executable = browser_module.find_chromium()
    if executable is None:
        return Result("draw", case, 0.0, None, unit="s", note="skipped: no chromium")
    write_drawing(spec_path, page)
    seconds = [_time_to_interactive(browser_module.Browser(executable), page) for _ in range(repeats)]
    value = statistics.median(seconds)
    return Result("draw", case, value, target, unit="s", seconds={"page": value}, repeats=repeats,
                  note=f"{page.stat().st_size / 1e6:.1f} MB page; fresh browser each time, its start not counted")


def _time_to_interactive(browser, page: Path) -> float:
    try:
        browser.send("Page.enable")
        browser.send("Page.addScriptToEvaluateOnNewDocument", source=READY_PROBE)
        browser.send("Page.navigate", url=page.resolve().as_uri())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = browser.evaluate("window.__speccReadyMs ?? null")
            if ready is not None:
                return ready / 1000
            time.sleep(0.05)
        raise TimeoutError(f"{page} never became interactive")
    finally:
        browser.close()


def _browser_driver():
    """tests/browser.py: the small DevTools-protocol driver the viewer tests use."""
    specification = importlib.util.spec_from_file_location("specc_bench_browser", ROOT / "tests" / "browser.py")
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module
