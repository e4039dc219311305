"""The package layout stays true: one subpackage per stage, imports only downward, no circles.

Every import counts — module level, inside functions, under `TYPE_CHECKING` — because a circle
that only closes at call time still means no module can be read or changed alone.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "specc"

# Stage of each subpackage: data flows from lower to higher numbers. Stages of equal rank sit side
# by side and never import each other.
STAGES = {"lang": 0, "build": 1, "weights": 2, "summary": 3, "draw": 3, "train": 3, "export": 3}
TOP = {"specc", "specc.cli", "specc.__main__"}   # the public surface, above every stage
BASE = {"specc._callable"}                        # tiny helpers any stage may use


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


TOP |= {name for name in _modules() if name.startswith("specc.cli.")}   # the CLI's own modules


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """specc modules that `path` imports, resolved to the most specific known module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    # `from specc.x import y` also yields `specc.x`: keep only the most specific module per import
    return {t for t in found if not any(other.startswith(t + ".") for other in found)} | \
           {t for t in found if t in TOP | BASE}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_every_module_belongs_to_a_stage():
    loose = [m for m in _modules() if m not in TOP | BASE and _stage(m) is None]
    assert loose == [], f"modules outside the stage folders: {loose}"


def test_imports_run_downward_only():
    wrong = []
    for module, targets in _graph().items():
        if module in TOP:
            continue
        for target in targets:
            if target in BASE:
                continue
            if target in TOP:
                wrong.append(f"{module} -> {target} (the public surface is above every stage)")
                continue
            source_stage, target_stage = _stage(module), _stage(target)
            if module in BASE:
                wrong.append(f"{module} -> {target} (base helpers import no stage)")
            elif source_stage != target_stage and STAGES[target_stage] >= STAGES[source_stage]:
                wrong.append(f"{module} -> {target} ({source_stage} may not import {target_stage})")
    assert wrong == [], "imports against the data flow:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}   # 1 = on the stack, 2 = done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import circles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("name", ["build", "compile", "load", "summary", "draw", "train", "evaluate", "predict",
                                  "export", "codegen", "json_schema", "SpecError", "Compiled", "Spec"])
def test_public_api_names_resolve(name):
    import specc

    assert getattr(specc, name) is not None


def test_callable_stage_packages_stay_callable_after_their_modules_load():
    """`specc.summary` is both a function users call and the summary stage's package."""
    import importlib

    import specc

    for package in ("summary.summarize", "draw.drawing", "train.training", "export.exporter", "build.compiler",
                    "weights.building"):
        importlib.import_module(f"specc.{package}")
    for name in ("summary", "draw", "train", "export", "build"):
        assert callable(getattr(specc, name)), name
