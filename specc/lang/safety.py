"""What a spec may make Python run, and safe mode for specs from strangers.

Two keys name Python code: `imports:` (layers) and `train.data.dataset:` (a Dataset class). Both
import the named module, which runs its code exactly as `import` would: they are meant for the
user's own code. Their dotted paths are checked here before anything is imported, so a spec can
never reach the standard library (`os.system`, `subprocess.getoutput`, even `this`, which prints on
import). Safe mode (`specc --safe`, `SPECC_SAFE=1`, `safe=True` in the API) goes further and
refuses both keys and every `train.compile` option (a mapping; `compile: true` stays allowed) outright,
like Keras's `safe_mode` refuses lambdas.
"""
from __future__ import annotations

import contextvars
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from specc.lang.errors import Problem

DOTTED_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")

_SAFE: contextvars.ContextVar[bool | None] = contextvars.ContextVar("specc_safe", default=None)


def safe_mode() -> bool:
    """True while specs are checked as untrusted input: inside `safe_scope(True)` or with SPECC_SAFE=1."""
    chosen = _SAFE.get()
    return chosen if chosen is not None else os.environ.get("SPECC_SAFE") == "1"


@contextmanager
def safe_scope(safe: bool | None) -> Iterator[None]:
    """Run the body in safe mode (`True`), out of it (`False`), or as the environment says (`None`)."""
    if safe is None or (safe is False and _SAFE.get() is True):   # an outer safe=True wins
        yield
        return
    token = _SAFE.set(bool(safe))
    try:
        yield
    finally:
        _SAFE.reset(token)


_TRUST: contextvars.ContextVar[bool | None] = contextvars.ContextVar("specc_trust_code", default=None)


def trust_code() -> bool:
    """True when specs stored in weights files and checkpoints may run code (`imports:` & co):
    inside `stored_spec_scope(True)` or with SPECC_TRUST_CODE=1 (`specc --trust-code`)."""
    chosen = _TRUST.get()
    return chosen if chosen is not None else os.environ.get("SPECC_TRUST_CODE") == "1"


@contextmanager
def stored_spec_scope(trusted: bool | None = None) -> Iterator[None]:
    """Load a spec that came inside a file (a `.safetensors` file's metadata, a checkpoint) in safe
    mode, unless the caller trusts the file's code (`trusted=True`, `trust_code=True` in the API,
    `--trust-code` or SPECC_TRUST_CODE=1). A file is trusted less than a spec: people pick
    safetensors *because* it cannot carry code."""
    if trusted is None:
        trusted = trust_code()
    token = _STORED.set(not trusted)
    try:
        with safe_scope(None if trusted else True):
            yield
    finally:
        _STORED.reset(token)


_STORED: contextvars.ContextVar[bool] = contextvars.ContextVar("specc_stored_spec", default=False)
_TRUST_HINT = ("; a spec stored in a weights file or checkpoint is loaded in safe mode: pass trust_code=True "
               "(or --trust-code) if you trust the file")


def check_code_path(dotted: Any, key: str, wanted: str) -> None:
    """Refuse a dotted path to code before anything is imported.

    Args:
        dotted: the path as written, e.g. `my_layers.SwiGLU`.
        key: the spec key, for the message (`imports`, `dataset`).
        wanted: what the path must name, e.g. "an nn.Module subclass".

    Raises:
        ValueError: not a dotted path of identifiers, or a standard-library/builtin module (which
            holds no such class and may run commands: `os.system`, `subprocess.getoutput`).
    """
    if not isinstance(dotted, str) or not DOTTED_PATH.match(dotted):
        raise ValueError(f"{key} must be the dotted path of {wanted} in your own code, e.g. my_pkg.module.Name "
                         f"(got {dotted!r})")
    top = dotted.partition(".")[0]
    # `__hello__`/`__phello__` are frozen modules that print on import, missing from stdlib_module_names
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "builtins" or top.startswith("__"):
        raise ValueError(f"{key} {dotted}: '{top}' is a standard-library module, not {wanted}; "
                         f"name a class in your own code (nothing was imported)")


def safe_mode_problems(data: dict, locate) -> list[Problem]:
    """In safe mode: a located SAFE_MODE problem for every key of `data` that would run code.

    Args:
        data: the spec as parsed (after overrides).
        locate: `SourceMap.locate`, path tuple -> Location.
    """
    if not safe_mode():
        return []
    problems = []
    imports = data.get("imports")
    if imports:
        problems.append(Problem("safe mode: `imports:` would import and run the named modules' code; safe mode "
                                "refuses every import (use torch.nn and specc layers only)", locate(("imports",)),
                                "SAFE_MODE"))
    train = data.get("train")
    data_section = train.get("data") if isinstance(train, dict) else None
    if isinstance(data_section, dict) and data_section.get("dataset") is not None:
        problems.append(Problem(f"safe mode: `dataset: {data_section['dataset']}` would import and run code; safe "
                                f"mode refuses every user Dataset (use a `source:` instead)",
                                locate(("train", "data", "dataset")), "SAFE_MODE"))
    options = train.get("compile") if isinstance(train, dict) else None
    if isinstance(options, dict) and options:   # `compile: true` names nothing the compiler runs
        problems.append(Problem(f"safe mode: compile options reach a compiler ({', '.join(map(str, options))}); "
                                f"use `compile: true` or false", locate(("train", "compile")), "SAFE_MODE"))
    if _STORED.get():
        problems = [Problem(problem.message + _TRUST_HINT, problem.location, problem.code) for problem in problems]
    return problems
