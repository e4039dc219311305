"""Fine-tuning: start from saved weights (`train: {init_from: ...}`) and keep parts fixed (`freeze:`).

A frozen parameter gets `requires_grad = False`, so the optimizer never sees it. A BatchNorm whose
parameters are all frozen also stays in eval mode while the rest trains: it keeps normalising with
the statistics it was loaded with instead of drifting to the new data's.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Callable

from torch import nn

from specc.build.compiled import Compiled
from specc.weights.loading import load_into
from specc.lang.errors import Location, Problem, SpecError, did_you_mean


def init_from(compiled: Compiled, config: Any, base_dir: Path, location: Location | None) -> Any:
    """Load `init_from` (a path, or {path, map, allow_missing}) into the compiled model.

    Returns:
        The `WeightsReport`.

    Raises:
        SpecError: located at `init_from` when the file is unreadable or a tensor stays unmatched.
    """
    path, weights_map, allow_missing = (config, "auto", []) if isinstance(config, str) else (
        config.path, config.map, config.allow_missing)
    path = Path(path).expanduser()
    path = path if path.is_absolute() else base_dir / path
    order = [node.name for node in compiled.graph.nodes if node.op == "module" and not node.shared_with]
    try:
        return load_into(compiled.module, path, weights_map, allow_missing, order)
    except SpecError as error:
        raise SpecError([Problem(f"init_from: {problem.message}", problem.location or location, problem.code)
                         for problem in error.problems]) from None


def freeze(module: nn.Module, patterns: list[str], locate: Callable[[int], Location | None]) -> list[str]:
    """Freeze the parameters whose names match a glob (or sit under a matching module path).

    Returns:
        The frozen parameter names.

    Raises:
        SpecError: UNKNOWN_REFERENCE, at the glob, for one that matches no parameter.
    """
    names = [name for name, _ in module.named_parameters()]
    frozen: list[str] = []
    for index, pattern in enumerate(patterns):
        chosen = [name for name in names if _matches(name, pattern)]
        if not chosen:
            raise SpecError(Problem(f"freeze: '{pattern}' matches no parameter", locate(index), "UNKNOWN_REFERENCE",
                                    did_you_mean(pattern, names)))
        frozen.extend(name for name in chosen if name not in frozen)
    for name, parameter in module.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    for norm in module.modules():
        own = list(norm.parameters(recurse=False))
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and own and not any(p.requires_grad for p in own):
            norm.register_forward_pre_hook(_keep_eval)
    return frozen


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern.rstrip(".*") + ".*")


def _keep_eval(norm: nn.Module, inputs: Any) -> None:
    """A frozen BatchNorm normalises with its loaded statistics, in training too."""
    norm.training = False
