"""The spec's natural units of work: each block use and each repetition of a `repeat:`.

FSDP shards them one by one (specc.train.sharding), activation checkpointing recomputes them, and
`specc summary --strategy fsdp` estimates memory per unit (specc.summary.sharded_memory).
"""
from __future__ import annotations

from specc.build.compiled import Compiled


def block_units(compiled: Compiled) -> list[str]:
    """Module paths of the spec's natural sharding units: every block use and every repetition of a
    `repeat:`, outermost first (a block inside a block belongs to the outer one)."""
    units: list[str] = []
    paths = {name for name, _ in compiled.module.named_modules()}
    for node in compiled.graph.nodes:
        for scope in node.scopes:
            path = _unit_path(scope)
            if path is not None and path in paths:
                if path not in units:
                    units.append(path)
                break
    return units


def _unit_path(scope) -> str | None:
    if scope.kind == "block" and scope.module:
        return scope.module
    if scope.kind == "repeat" and scope.module and scope.index is not None:
        return f"{scope.module}.{scope.index}"
    return None
