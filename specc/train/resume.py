"""`--resume`: which spec a resumed run trains with, what changed, and applying the changes for real.

By default a run resumes with the resolved spec stored in its checkpoint. A spec file or `--set`
given on resume is compared with it; each difference is printed, and differences that the restored
training state would otherwise undo (optimizer and scheduler arguments) are written into it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from specc.weights.checkpoint import is_sharded, load_checkpoint, read_sharded_state, require_keys
from specc.lang.errors import Problem, SpecError
from specc.lang.train_config import Call
from specc.train.optim import Schedulers

# what `Session.restore` reads; a checkpoint without one of them cannot be resumed
RESUME_KEYS = ("spec", "epoch", "model", "optimizer", "schedulers", "scaler", "swa", "rng", "trackers", "history",
               "normalizer")
MISSING = object()


def read_resume_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint to resume from, with every key a resume needs.

    Raises:
        SpecError: CHECKPOINT_ERROR for an unreadable, corrupted or incomplete checkpoint.
    """
    if is_sharded(path):  # its tensors are read later, each rank its own shards
        state = read_sharded_state(path)
        require_keys(state, tuple(key for key in RESUME_KEYS if key not in ("model", "optimizer")), path, "--resume")
        return state
    state = load_checkpoint(path)
    require_keys(state, RESUME_KEYS, path, "--resume")
    return state


def spec_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`["train.optimizer.AdamW.lr: 0.003 -> 0.01", ...]`: every leaf that differs, dotted."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in list(old) + [key for key in new if key not in old]:
            path = f"{prefix}.{key}" if prefix else str(key)
            changes += spec_changes(old.get(key, MISSING), new.get(key, MISSING), path)
        return changes
    if old == new:
        return []
    shown = ["(none)" if value is MISSING else repr(value) for value in (old, new)]
    return [f"{prefix}: {shown[0]} -> {shown[1]}"]


def check_resumable(old_spec: dict, new_spec: dict, state: dict, path: str | Path) -> None:
    """An interrupted.pt continues mid-epoch: the batches of that epoch must stay the same.

    Raises:
        SpecError: CHECKPOINT_ERROR when batch size or data changed under a mid-epoch checkpoint.
    """
    if not state.get("interrupted"):
        return
    old_train, new_train = old_spec.get("train", {}), new_spec.get("train", {})
    for key in ("batch_size", "data", "seed"):
        if old_train.get(key) != new_train.get(key):
            raise SpecError(Problem(f"{path} stopped in the middle of epoch {state['interrupted']['epoch']}: "
                                    f"train.{key} cannot change when resuming it (resume from last.pt instead)",
                                    None, "CHECKPOINT_ERROR"))


def apply_changes(optimizer: torch.optim.Optimizer, schedulers: Schedulers, old: dict, new: dict) -> None:
    """Write changed optimizer and scheduler arguments into the restored state.

    `optimizer.load_state_dict` brings back the old hyperparameters (the old lr, say); a new value
    in the spec would be recorded but not trained with. Groups that set a key themselves keep it.
    """
    old_call, new_call = (Call.parse(spec.get("train", {}).get("optimizer", "Adam"), "optimizer")
                          for spec in (old, new))
    new_groups, old_groups = new_call.kwargs.get("groups", []), old_call.kwargs.get("groups", [])
    offset = len(optimizer.param_groups) - len(new_groups)  # the default group comes first, if any
    for index, group in enumerate(optimizer.param_groups):
        wanted = _group_arguments(new_call.kwargs, new_groups, index - offset)
        before = _group_arguments(old_call.kwargs, old_groups, index - offset)
        for key, value in wanted.items():
            if before.get(key, MISSING) != value:
                group[key] = tuple(value) if isinstance(value, list) else value
                if key == "lr":  # schedulers anneal from the new rate, too
                    group["initial_lr"] = value
                    for entry in schedulers.entries:
                        if hasattr(entry.scheduler, "base_lrs"):
                            entry.scheduler.base_lrs[index] = value
    _apply_scheduler_changes(schedulers, old, new)


def _group_arguments(kwargs: dict, groups: list, index: int) -> dict:
    base = {key: value for key, value in kwargs.items() if key != "groups"}
    if 0 <= index < len(groups):
        base.update({key: value for key, value in groups[index].items() if key != "params"})
    return base


def _apply_scheduler_changes(schedulers: Schedulers, old: dict, new: dict) -> None:
    old_calls, new_calls = (_scheduler_calls(spec) for spec in (old, new))
    for entry, old_call, new_call in zip(schedulers.entries, old_calls, new_calls):
        if old_call.name != new_call.name:
            continue
        for key, value in new_call.kwargs.items():
            if key not in ("interval", "monitor") and old_call.kwargs.get(key, MISSING) != value \
                    and hasattr(entry.scheduler, key):
                setattr(entry.scheduler, key, value)


def _scheduler_calls(spec: dict) -> list[Call]:
    value = spec.get("train", {}).get("scheduler")
    if value is None:
        return []
    return [Call.parse(item, "scheduler") for item in (value if isinstance(value, list) else [value])]
