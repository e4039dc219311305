"""How far a spec may expand: items after blocks and repeats are multiplied out, and structures
nested in each other. `repeat: 1000000000`, a block used twice in itself 30 levels deep or a
`sequential` nested 1,000 deep would otherwise take minutes, gigabytes or the Python stack; past a
bound the expansion stops at once with a located LIMIT_EXCEEDED naming the variable that raises it.
"""
from __future__ import annotations

from typing import Callable

from specc.lang.errors import Location, Problem
from specc.lang.limits import limit, raise_hint


class ExpansionBudget:
    """Counts the items one expansion produces and checks how deep its structures nest."""

    def __init__(self) -> None:
        self.max_items = limit("MAX_ITEMS")
        self.max_depth = limit("MAX_STRUCTURE_DEPTH")
        self.items = 0

    def repeat_problem(self, count: int, location: Location) -> Problem | None:
        """A repeat count past the item bound, refused before one repetition is expanded."""
        if count <= self.max_items:
            return None
        return Problem(f"repeat: {count:,} repetitions would expand to more than {self.max_items:,} items; "
                       f"{raise_hint('MAX_ITEMS')}", location, "LIMIT_EXCEEDED")

    def item_problem(self, depth: int, locate: Callable[[], Location], blocks: tuple = (),
                     via: tuple = ()) -> Problem | None:
        """Count one expanded item at `depth` scopes inside the block uses `blocks`; a problem once
        either bound is passed (`locate`: the item's location, computed only then; `via`: its
        block-use notes)."""
        self.items += 1
        if self.items > self.max_items:
            return Problem(f"the spec expands to more than {self.max_items:,} items (blocks and repeats multiplied "
                           f"out); {raise_hint('MAX_ITEMS')}", locate(), "LIMIT_EXCEEDED", notes=list(via[-3:]))
        if depth <= self.max_depth:
            return None
        # a block name seen twice: a recursion rather than deep nesting
        recursive_block = next((block for block in blocks if blocks.count(block) > 1), None)
        what = (f"block '{recursive_block}' uses itself more than {self.max_depth} levels deep (an `if:` on its "
                f"use ends the recursion)" if recursive_block else
                f"structures nest more than {self.max_depth} levels deep (sequential, parallel, residual, blocks "
                f"and repeats inside each other)")
        return Problem(f"{what}; {raise_hint('MAX_STRUCTURE_DEPTH')}", locate(), "LIMIT_EXCEEDED",
                       notes=list(via[-3:]))


class BuildOpsExceeded(Exception):
    """Raised inside a layer's constructor once the build budget is spent (not a user-facing error)."""


class BuildBudget:
    """Tensor operations while one dry run builds the layers on meta: one `LSTM` costs ~27,
    llama2_7b 811 and mobilenet_v3_small 1,020, but `num_layers: 1000000000` or 10,000 LSTMs would
    take minutes."""

    def __init__(self) -> None:
        self.max_ops = limit("MAX_BUILD_OPS")
        self.ops = 0

    def spend(self) -> None:
        self.ops += 1
        if self.ops > self.max_ops:
            raise BuildOpsExceeded()

    def problem(self, target: str, label: str, location: Location, via: list) -> Problem:
        return Problem(f"building the layers takes more than {self.max_ops:,} tensor operations (reached at "
                       f"{target} '{label}'); {raise_hint('MAX_BUILD_OPS')}", location, "LIMIT_EXCEEDED", notes=via)
