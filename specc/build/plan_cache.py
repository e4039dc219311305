"""Compiling a spec this process has compiled before: reuse its plan, construct only the layers.

Validating, expanding and dry-running a spec, and generating its forwards, is about four times the
work of constructing its layers (a warm Llama-2-7B build: ~90 ms of planning, ~20 ms of
`nn.Linear(...)` calls). None of it depends on anything but the spec text and the options, so a
second compile of the same text with the same options (a notebook cell run again, a sweep that
builds each variant several times) takes the plan from here and only builds fresh layers: every
compile still returns its own modules, parameters and fx graph, and its own copy of the plan's spec
and graph (the compiler copies them), so changing one compiled model's never changes the next.

The key is everything the plan depends on: the spec text and its file name, the variables, the
batch size, input shapes and symbolic labelling, safe mode, the `SPECC_*` limits and torch's default
dtype. A spec with `imports:` is never cached (its classes' files may change between compiles),
nor is a compile that warned (its warnings would not repeat). `SPECC_PLAN_CACHE=0` turns the cache
off; `clear()` empties it.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specc.build.forward import ModulePlan
from specc.build.graph import Graph
from specc.build.registry import Registry
from specc.lang.errors import SpecError
from specc.lang.safety import safe_mode
from specc.lang.source import SpecText, read_spec_text
from specc.lang.spec import Spec

MAX_PLANS = 16   # each is the spec, its graph and generated code: kilobytes, not weights


@dataclass(frozen=True)
class CompilePlan:
    """What a compile works out before constructing layers; compiles take copies of its spec and graph."""

    spec: Spec
    registry: Registry
    graph: Graph
    module_plan: ModulePlan


_plans: OrderedDict[tuple, CompilePlan] = OrderedDict()
_lock = threading.Lock()


def plan_key(spec_or_path: Any, options: tuple) -> tuple[tuple | None, Any]:
    """The cache key of a compile of `spec_or_path` (YAML text or a path) with `options`, and what
    to compile: the text the key was made of (a file is read once, so a plan is never kept under
    text it was not made from). The key is None when nothing is cached (a parsed dict or Spec, an
    unreadable file, the cache turned off); then `spec_or_path` is compiled as given."""
    if os.environ.get("SPECC_PLAN_CACHE", "1") == "0" or not isinstance(spec_or_path, (str, Path)) \
            or not _plain(options):
        return None, spec_or_path
    try:
        text, file = read_spec_text(spec_or_path)
    except SpecError:
        return None, spec_or_path   # the compile itself reports it
    place = str(Path(file).resolve()) if file != "<spec>" else file
    limits = tuple(sorted((name, value) for name, value in os.environ.items() if name.startswith("SPECC_")))
    key = text, file, place, repr(options), safe_mode(), limits, torch.get_default_dtype()
    return key, SpecText(text, file)


def _plain(value: Any) -> bool:
    """Values whose repr tells them apart (a numpy array's repr may elide its middle)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(key) and _plain(item) for key, item in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def cached_plan(key: tuple | None) -> CompilePlan | None:
    if key is None:
        return None
    with _lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
        return plan


def keep_plan(key: tuple | None, plan: CompilePlan) -> None:
    if key is None or plan.spec.imports:
        return
    with _lock:
        _plans[key] = plan
        _plans.move_to_end(key)
        while len(_plans) > MAX_PLANS:
            _plans.popitem(last=False)


def clear() -> None:
    """Forget every plan (the next compile of each spec plans it again)."""
    with _lock:
        _plans.clear()
