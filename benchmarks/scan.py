"""The `scan` item (a chunked linear recurrence) against a hand-written loop and the closed O(L²) form.

Mamba's selective scan at L = 64, 256, 1,024: `h_t = a_t * h_{t-1} + b_t` over `[B, L, D, N]`
(B = 2, D = 16 channels, N = 8 states). Contestants, all checked equal before timing:

- specc: a compiled spec whose one item is `scan: {dim: 1}` (specc/build/functional.py `linear_scan`);
- loop: the recurrence one step at a time, as Hugging Face's `MambaMixer.slow_forward` writes it;
- closed form: `h_t = Σ_{s≤t} exp(P_t - P_s) b_s` with `P` the running sum of `log a` (exact for
  a > 0): what a spec without `scan` had to write, L² intermediates.

Time: forward, one thread, no_grad, median of interleaved repeats. Peak memory: the most bytes of
tensors alive at once during a forward with autograd recording (so what autograd keeps counts),
beyond the inputs, by a dispatch mode that sees every allocation (the same figure on any device).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from benchmarks.timing import Result, Target, interleaved_calls, median_ratio, medians

TIME_TARGET = Target("<=", 2.0)      # the issue: within 2x of a hand-written loop
LENGTHS = (64, 256, 1024)
SHAPE = (2, 16, 8)                   # batch, channels, states: the closed form's L² x 256 floats fit at L = 1,024

SPEC = """
name: scan_only
inputs: {a: {shape: [$length, 16, 8]}, b: {shape: [$length, 16, 8]}}
vars: {length: 64}
layers:
  - scan: {dim: 1}
    from: [a, b]
"""


def loop(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The hand-written recurrence over dim 1."""
    h = torch.zeros_like(b[:, 0])
    states = []
    for step in range(a.shape[1]):
        h = a[:, step] * h + b[:, step]
        states.append(h)
    return torch.stack(states, dim=1)


def closed_form(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`h_t = Σ_{s≤t} (a_{s+1} ··· a_t) b_s` through running sums of log a (needs a > 0): O(L²) memory."""
    running = torch.cumsum(torch.log(a), dim=1)                          # (B, L, D, N)
    gaps = running.unsqueeze(2) - running.unsqueeze(1)                   # (B, t, s, D, N)
    later = torch.ones(a.shape[1], a.shape[1], dtype=torch.bool).tril()  # s <= t
    weights = torch.exp(gaps.masked_fill(~later[None, :, :, None, None], float("-inf")))
    return torch.einsum("btsdn,bsdn->btdn", weights, b)


class PeakMemory(TorchDispatchMode):
    """The most bytes of tensor storage alive at once among those allocated inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        inputs = {id(value.untyped_storage()) for value in tree_leaves((args, kwargs)) if isinstance(value, torch.Tensor)}
        for value in tree_leaves(output):
            if isinstance(value, torch.Tensor):
                self._track(value.untyped_storage(), inputs)
        return output

    def _track(self, storage, inputs: set[int]) -> None:
        key = id(storage)
        if key in self.tracked or key in inputs:        # already counted, or a view of an input
            return
        self.tracked.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, storage.nbytes())

    def _release(self, key: int, size: int) -> None:
        self.tracked.discard(key)
        self.live -= size


def peak_bytes(function, a: torch.Tensor, b: torch.Tensor) -> int:
    """Peak bytes of a forward with autograd recording (the output and what backward needs included)."""
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    with PeakMemory() as tracker:
        output = function(a, b)
    del output
    return tracker.peak


def inputs(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(length)
    batch, channels, states = SHAPE
    a = torch.rand(batch, length, channels, states, generator=generator) * 0.5 + 0.5   # decays in (0.5, 1)
    b = torch.randn(batch, length, channels, states, generator=generator)
    return a, b


def run(repeats: int = 7, turns: int = 6, lengths: tuple[int, ...] = LENGTHS, closed_repeats: int = 3) -> list[Result]:
    """Time and peak memory of the three contestants at each length.

    Args:
        repeats, turns: measurements of specc and the loop, and turns of each per measurement.
        lengths: sequence lengths L.
        closed_repeats: measurements of specc and the closed form (one turn each: the closed
            form takes seconds at L = 1,024).

    Returns:
        Per length: specc / loop (forward time, target ≤ 2), closed form / specc (reported), and
        specc's peak memory in MB (target: at most twice the loop's; all three in the note).
    """
    from specc.build.compiler import compile as compile_spec

    torch.set_num_threads(1)
    results = []
    for length in lengths:
        model = compile_spec(SPEC, length=length).module
        a, b = inputs(length)
        contestants = {"specc": lambda: model(a, b), "loop": lambda: loop(a, b), "closed form": lambda: closed_form(a, b)}
        with torch.no_grad():
            expected = loop(a, b)
            for name, function in contestants.items():
                torch.testing.assert_close(function(), expected, rtol=1e-4, atol=1e-4, msg=f"{name} at L={length}")
            fast = interleaved_calls({name: contestants[name] for name in ("specc", "loop")}, repeats=repeats,
                                     calls=1, turns=turns)
            slow = interleaved_calls({name: contestants[name] for name in ("specc", "closed form")},
                                     repeats=closed_repeats, calls=1, turns=1)
        times, closed_times = medians(fast), medians(slow)
        results.append(Result("scan", f"L={length}: specc / hand-written loop (forward)",
                              median_ratio(fast["specc"], fast["loop"]), TIME_TARGET, seconds=times, repeats=repeats))
        results.append(Result("scan", f"L={length}: closed O(L²) form / specc (forward)",
                              median_ratio(slow["closed form"], slow["specc"]), None, seconds=closed_times,
                              repeats=closed_repeats))
        memory = {name: peak_bytes(function, a, b) / 1e6 for name, function in
                  (("specc", lambda a, b: model(a, b)), ("loop", loop), ("closed form", closed_form))}
        note = ", ".join(f"{name} {megabytes:.1f} MB" for name, megabytes in memory.items())
        results.append(Result("scan", f"L={length}: specc peak memory (forward with autograd)", memory["specc"],
                              Target("<=", round(2 * memory["loop"], 1), "MB"), unit="MB",
                              seconds={"specc": times["specc"]}, repeats=1, note=note))
    return results
