"""The intermediate representation between the spec and the nn.Module.

Expanding a spec (vars, blocks, repeats, branches) gives a flat, topologically ordered list of
`Node`s. Each node remembers where it came from (`location`) and which containers it sits in
(`scopes`), so summary and draw can nest rows and clusters the way the spec was written, and
the dry run fills in `shape`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from specc.lang.errors import Location


@dataclass(frozen=True)
class Scope:
    """A container an item sits in: a block use, a parallel item or one of its branches, a residual, a repeat."""

    kind: str                 # "block" | "parallel" | "branch" | "residual" | "body" | "shortcut" | "sequential" | "repeat"
    path: str                 # qualified name of the container, e.g. "stem" or "2.body"
    label: str                # what a person reads: block name, branch name, "×3"
    location: Location | None = None
    index: int | None = None  # for "repeat": which repetition (0-based)
    count: int | None = None  # for "repeat": how many repetitions
    module: str | None = None # the module path holding its layers; None when it adds no path level (flat:, names: "")


@dataclass
class Node:
    """One operation of the compiled graph."""

    name: str                 # unique qualified name; for modules also the submodule path (state_dict prefix)
    op: str                   # "input" | "module" | "function" | "merge"
    target: str               # layer class ("Conv2d"), function ("flatten") or merge op ("cat")
    args: dict[str, Any] = field(default_factory=dict)   # module: constructor kwargs (inferred ones included); function/merge: call kwargs
    inputs: list[str] = field(default_factory=list)      # names of the nodes this one consumes, in call order
    scopes: tuple[Scope, ...] = ()                        # outermost container first
    location: Location | None = None
    label: str = ""           # the item's name as written in the spec (or its layer type when unnamed)
    inferred: list[str] = field(default_factory=list)    # constructor kwargs filled in by the dry run
    shape: tuple[int, ...] | None = None                  # dry-run output shape, batch dim first; None for non-tensors
    dtype: str | None = None
    shared_with: str | None = None                        # module nodes reusing another node's module (same weights)
    meta: dict[str, Any] = field(default_factory=dict)   # extras: merge branch labels, block-use notes, input shape

    @property
    def feature_shape(self) -> tuple[int, ...] | None:
        """The output shape without the batch dimension."""
        return None if self.shape is None else tuple(self.shape[1:])


@dataclass
class Graph:
    """The expanded spec: inputs, ordered nodes and the names of the outputs."""

    nodes: list[Node]
    outputs: list[str]
    warnings: list = field(default_factory=list)   # Problems found while expanding that do not stop it

    def __iter__(self):
        return iter(self.nodes)

    def __getitem__(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def inputs(self) -> list[Node]:
        return [node for node in self.nodes if node.op == "input"]

    def copy(self) -> "Graph":
        """A graph of its own: nodes, args, meta and lists copied (scopes and locations are frozen, so
        shared). Each compile hands one out, so changing a compiled graph never reaches another."""
        nodes = [replace(node, args=copy.deepcopy(node.args), inputs=list(node.inputs), inferred=list(node.inferred),
                         meta=copy.deepcopy(node.meta)) for node in self.nodes]
        return Graph(nodes, list(self.outputs))

    def unused(self) -> list[Node]:
        """Items whose output reaches no model output: built, run and counted for nothing."""
        inputs_of = {node.name: node.inputs for node in self.nodes}
        live, pending = set(), list(self.outputs)
        while pending:
            name = pending.pop()
            if name not in live:
                live.add(name)
                pending.extend(inputs_of.get(name, ()))
        return [node for node in self.nodes if node.name not in live and node.op != "input"]
