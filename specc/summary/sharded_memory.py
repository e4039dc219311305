"""`specc summary --strategy fsdp --nproc 8`: what one process holds while training, before any starts.

Parameters, gradients and optimizer state are divided by the processes under `fsdp` (each holds a
shard) and not under `ddp`; FSDP also gathers one unit's full weights at a time (two, with its
prefetch). Activations are measured: one forward on the `meta` device records the bytes autograd
saves for backward, per unit (block) and in total, for the per-process batch. With
`activation_checkpointing: blocks` a unit keeps only its input, and recomputes its own saved tensors
in backward, one unit at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from specc.build.compiled import Compiled
from specc.build.units import block_units

# optimizer state per trainable parameter, in parameters' worth (fp32 moments)
OPTIMIZER_STATES = {"Adam": 2, "AdamW": 2, "NAdam": 2, "RAdam": 2, "Adamax": 2, "Adagrad": 1, "RMSprop": 1,
                    "Adadelta": 2, "SGD": 0, "ASGD": 2, "Rprop": 2}


@dataclass
class MemoryEstimate:
    """Bytes one process holds during a training step."""

    strategy: str
    nproc: int
    batch_size: int                # per process
    optimizer: str
    parameters: int
    gradients: int
    optimizer_state: int
    gathered: int                  # fsdp: the full weights of the two largest units, gathered in turn
    activations: int               # saved for backward, without checkpointing
    checkpointed_activations: int  # with activation_checkpointing: blocks

    def total(self, checkpointing: bool) -> int:
        """Everything above, with or without activation checkpointing."""
        return (self.parameters + self.gradients + self.optimizer_state + self.gathered
                + (self.checkpointed_activations if checkpointing else self.activations))

    def lines(self, unit: str = "GiB") -> list[tuple[str, str]]:
        """`(label, value)` rows for the console."""
        scale = {"GiB": 2**30, "MiB": 2**20}[unit]
        shown = [("parameters", self.parameters), ("gradients", self.gradients),
                 (f"optimizer state ({self.optimizer})", self.optimizer_state)]
        if self.strategy == "fsdp":
            shown.append(("gathered units (full weights in flight)", self.gathered))
        shown += [("activations", self.activations),
                  ("activations with activation_checkpointing: blocks", self.checkpointed_activations),
                  ("total", self.total(False)), ("total with activation checkpointing", self.total(True))]
        return [(label, f"{value / scale:,.2f} {unit}") for label, value in shown]

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__} | {
            "total": self.total(False), "total_checkpointed": self.total(True)}


def estimate(compiled: Compiled, strategy: str, nproc: int, batch_size: int, optimizer: str = "Adam",
             activation_bytes: int | None = None) -> MemoryEstimate:
    """Per-process training memory of `compiled` (built on meta) under `strategy` on `nproc` processes.

    Args:
        compiled: the spec compiled on `meta`.
        strategy: "fsdp" or "ddp".
        nproc: processes training together.
        batch_size: examples per process per step.
        optimizer: the optimizer's class name (its state per parameter: OPTIMIZER_STATES).
        activation_bytes: the summary's "forward/backward pass size" for this batch (its saved-tensor
            rules know fused attention and shared storage); the units' shares are measured here.
            None: the bytes measured here.
    """
    module = compiled.module
    parameters = {id(p): p for p in module.parameters()}.values()
    weight_bytes = sum(p.numel() * p.element_size() for p in parameters)
    trainable = sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)
    states = OPTIMIZER_STATES.get(optimizer, 2) * sum(p.numel() * 4 for p in parameters if p.requires_grad)
    units = block_units(compiled)
    divide = nproc if strategy == "fsdp" else 1
    unit_bytes = sorted((sum(p.numel() * p.element_size() for p in module.get_submodule(path).parameters())
                         for path in units), reverse=True)
    total, per_unit, inputs = saved_bytes(compiled, units, batch_size)
    if activation_bytes is not None and total:
        per_unit = {path: size * activation_bytes // total for path, size in per_unit.items()}
        total = activation_bytes
    checkpointed = total - sum(per_unit.values()) + sum(inputs.values()) + max(per_unit.values(), default=0)
    return MemoryEstimate(strategy, nproc, batch_size, optimizer, -(-weight_bytes // divide), -(-trainable // divide),
                          -(-states // divide), sum(unit_bytes[:2]) if strategy == "fsdp" else 0, total, checkpointed)


def saved_bytes(compiled: Compiled, units: list[str], batch_size: int) -> tuple[int, dict[str, int], dict[str, int]]:
    """One forward on meta: bytes autograd saves in total, per unit, and each unit's input bytes.
    The parameters themselves (saved by every matmul) are weights, not activations: not counted."""
    module = compiled.module
    weights = {id(p) for p in module.parameters()}
    per_unit, inputs, stack, seen = {path: 0 for path in units}, {path: 0 for path in units}, [], set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        base = tensor._base if tensor._base is not None else tensor
        if id(base) in weights or id(tensor) in seen:
            return tensor
        seen.add(id(tensor))
        size = tensor.numel() * tensor.element_size()
        total += size
        if stack:
            per_unit[stack[0]] += size
        return tensor

    def enter(path: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if not stack:
                inputs[path] += sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))
            stack.append(path)
        return hook

    handles = [module.get_submodule(path).register_forward_pre_hook(enter(path)) for path in units]
    handles += [module.get_submodule(path).register_forward_hook(lambda *_: stack.pop() and None) for path in units]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            module(*compiled.example_inputs(batch_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return total, per_unit, inputs


def estimate_spec(spec_or_path: Any, strategy: str, nproc: int, batch_size: int, activation_bytes: int | None = None,
                  **variables: Any) -> MemoryEstimate:
    """`estimate` for a spec: compiled on meta (nothing allocated), its `train.optimizer` (default Adam).

    Raises:
        SpecError: an invalid spec. ValueError: an unknown strategy or a process count below 1.
    """
    from specc.build.compiler import compile as compile_spec

    if strategy not in ("fsdp", "ddp"):
        raise ValueError(f"--strategy {strategy}: choose fsdp or ddp")
    if nproc < 1:
        raise ValueError("--nproc must be 1 or more")
    compiled = compile_spec(spec_or_path, device="meta", symbolic=False, train_mistakes="warn", **variables)
    train = compiled.spec.train
    return estimate(compiled, strategy, nproc, batch_size, train.optimizer.name if train is not None else "Adam",
                    activation_bytes)


def render_estimate(result: MemoryEstimate) -> str:
    """The estimate as the console shows it, under the summary table."""
    lines = [f"Memory per process: strategy {result.strategy}, {result.nproc} processes, batch {result.batch_size} "
             f"per process (fp32 weights and Adam-style fp32 moments; activations as above, split by block)"]
    width = max(len(label) for label, _ in result.lines())
    lines += [f"  {label:<{width}}  {value:>12}" for label, value in result.lines()]
    return "\n".join(lines)
