"""Will it fit? Sizes known before allocating (from the meta dry run, or from data sizes), checked
against the memory the chosen device has free, so an oversized spec is a located error instead of
an allocator crash. The meta device allocates nothing and is never refused.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from specc.lang.errors import Location, Problem, SpecError


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device` in bytes (CPU: MemAvailable), or None when it cannot be told."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def format_bytes(count: float) -> str:
    """`1.2 GB`, `4.0 TB` (decimal units, as disk and memory sizes are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"


def check_fits(needed: int, device: torch.device, what: str, where: Location | None, code: str) -> None:
    """Refuse `needed` bytes on `device` when more than its free memory.

    Raises:
        SpecError: `code`, saying what needs how much and how much is free.
    """
    if device.type == "meta":
        return
    free = available_bytes(device)
    if free is not None and needed > free:
        raise SpecError(Problem(f"{what} need {format_bytes(needed)} but {device} has {format_bytes(free)} free; "
                                f"nothing was allocated (use a smaller size, or `specc check`/summary on meta)",
                                where, code))


def tensor_bytes(module: nn.Module, dtype: torch.dtype | None = None, seen: set | None = None) -> int:
    """Bytes of a (meta) module's parameters and buffers; `dtype` overrides floating ones; tensors
    in `seen` (shared weights) are counted once."""
    seen = set() if seen is None else seen
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        size = torch.empty((), dtype=dtype).element_size() if dtype and tensor.is_floating_point() \
            else tensor.element_size()
        total += tensor.numel() * size
    return total


def check_weights_fit(modules: dict[str, nn.Module], device: torch.device, dtype: torch.dtype | None,
                      locations: dict[str, Location | None]) -> None:
    """The model's weights, counted on the meta dry run's modules, fit `device` before any is made.

    Args:
        modules: the dry run's modules by node name.
        device, dtype: where and how they would be materialised.
        locations: node name -> spec location; the error points at the largest layer.

    Raises:
        SpecError: LAYER_ERROR with the size the weights would need.
    """
    if device.type == "meta":
        return
    seen: set = set()
    sizes = {name: tensor_bytes(module, dtype, seen) for name, module in modules.items()}
    if sizes:
        largest = max(sizes, key=sizes.get)
        check_fits(sum(sizes.values()), device, f"the model's weights (the largest, {largest}: "
                   f"{format_bytes(sizes[largest])})", locations.get(largest), "LAYER_ERROR")
