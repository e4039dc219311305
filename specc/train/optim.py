"""Optimizer (with parameter groups by name pattern) and chained LR schedulers from `train:` names."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from specc.lang.errors import Location, Problem, SpecError, did_you_mean
from specc.lang.train_config import Call, TrainConfig, monitor_mode


def build_optimizer(call: Call, model: nn.Module, where: Location | None,
                    locate_group: Callable[[int], Location | None] | None = None) -> torch.optim.Optimizer:
    """`{SGD: {lr: 0.1, groups: [{params: "head.*", lr: 0.01}]}}` -> an SGD over the model's parameters.

    Each group takes the trainable parameters whose names match its pattern(s) (first group wins);
    the rest form the default group, listed first so `lr` in the logs is the base learning rate.

    Raises:
        SpecError: a group pattern matches nothing (at that group's `params` when `locate_group`
            gives positions), or torch rejects an argument.
    """
    kwargs = dict(call.kwargs)
    every = list(model.named_parameters())
    named = [(name, p) for name, p in every if p.requires_grad]
    taken: set[int] = set()
    groups = []
    for index, group in enumerate(kwargs.pop("groups", [])):
        patterns = [group["params"]] if isinstance(group["params"], str) else list(group["params"])
        where_group = locate_group(index) if locate_group else where
        for pattern in patterns:
            _check_pattern(pattern, every, where_group)
        members = [p for name, p in named
                   if id(p) not in taken and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]
        if not members:
            raise SpecError(Problem(f"optimizer group {patterns}: every parameter it matches is frozen or in an "
                                    f"earlier group (the first matching group wins)", where_group, "UNKNOWN_REFERENCE"))
        taken.update(id(p) for p in members)
        groups.append({**{key: value for key, value in group.items() if key != "params"}, "params": members})
    rest = [p for _, p in named if id(p) not in taken]
    if rest:
        groups.insert(0, {"params": rest})
    try:
        return getattr(torch.optim, call.name)(groups, **kwargs)
    except (TypeError, ValueError) as error:
        raise SpecError(Problem(f"optimizer {call.name}: {error}", where, "TYPE_ERROR")) from None


def _check_pattern(pattern: str, named: list[tuple[str, nn.Parameter]], where: Location | None) -> None:
    """Each glob of a group must name parameters, and trainable ones: a typo would silently leave
    those parameters at the default learning rate."""
    matched = [p for name, p in named if fnmatch.fnmatchcase(name, pattern)]
    if not matched:
        names = [name for name, _ in named]
        raise SpecError(Problem(f"optimizer group params '{pattern}' matches no parameter "
                                f"(names look like {', '.join(names[:4])})", where, "UNKNOWN_REFERENCE",
                                did_you_mean(pattern, names)))
    if not any(p.requires_grad for p in matched):
        raise SpecError(Problem(f"optimizer group params '{pattern}' matches only frozen parameters "
                                f"(train.freeze): they get no gradient to step", where, "UNKNOWN_REFERENCE"))


@dataclass
class _Entry:
    scheduler: Any
    interval: str          # "epoch" | "step"
    monitor: str | None    # ReduceLROnPlateau only


class Schedulers:
    """A chain of LR schedulers: each steps in turn, per epoch or per batch.

    ReduceLROnPlateau is stepped with its monitor's value (default: the checkpoint monitor).
    """

    def __init__(self, entries: list[_Entry]):
        self.entries = entries

    @classmethod
    def build(cls, config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
              locate: Callable[[int], Location | None]) -> "Schedulers":
        """Schedulers for `train.scheduler`; `locate(i)` points errors at the i-th one."""
        entries = []
        for index, call in enumerate(config.schedulers):
            kwargs = {key: value for key, value in call.kwargs.items() if key not in ("interval", "monitor")}
            interval = call.kwargs.get("interval", "step" if call.name == "OneCycleLR" else "epoch")
            steps = config.epochs * (steps_per_epoch if interval == "step" else 1)
            monitor = None
            if call.name == "CosineAnnealingLR":
                kwargs.setdefault("T_max", steps)
            elif call.name == "OneCycleLR" and "epochs" not in kwargs:
                kwargs.setdefault("total_steps", steps)
            elif call.name == "ReduceLROnPlateau":
                monitor = call.kwargs.get("monitor") or _checkpoint_monitor(config)
                kwargs.setdefault("mode", monitor_mode(monitor))
            try:
                scheduler = getattr(torch.optim.lr_scheduler, call.name)(optimizer, **kwargs)
            except (TypeError, ValueError) as error:
                raise SpecError(Problem(f"scheduler {call.name}: {error}", locate(index), "TYPE_ERROR")) from None
            entries.append(_Entry(scheduler, interval, monitor))
        return cls(entries)

    def step_batch(self) -> None:
        for entry in self.entries:
            if entry.interval == "step":
                entry.scheduler.step()

    def step_epoch(self, record: dict[str, float]) -> None:
        for entry in self.entries:
            if entry.monitor is not None:
                entry.scheduler.step(record[entry.monitor])
            elif entry.interval == "epoch":
                entry.scheduler.step()

    def state_dict(self) -> list[dict]:
        return [entry.scheduler.state_dict() for entry in self.entries]

    def load_state_dict(self, states: list[dict]) -> None:
        for entry, state in zip(self.entries, states, strict=True):
            entry.scheduler.load_state_dict(state)


def _checkpoint_monitor(config: TrainConfig) -> str:
    return config.checkpoint.monitor or config.default_monitor()
