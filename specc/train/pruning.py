"""Gradual magnitude pruning during training (`train.prune:`), done by `torch.nn.utils.prune`.

Zhu & Gupta (2017, "To prune, or not to prune"): the sparsity rises along a cubic curve, fast at
first while many weights are redundant, slowly near the end so the network can recover from each
cut. specc cuts once at the start of each epoch from `schedule.start_epoch` to `schedule.end_epoch`:
with k cuts, cut j (1..k) brings the sparsity to `amount · (1 − (1 − j/k)³)`; the last reaches
`amount`, and later epochs fine-tune with the masks fixed.

Each cut prunes, by magnitude, the weights (or, for `ln_structured`, the channels) still alive, so a
weight once cut stays cut. While training, a pruned tensor is torch's reparametrisation
(`weight_orig` × `weight_mask`); checkpoints store the plain masked `weight`, which every reader of a
checkpoint loads as usual, plus the masks under `prune`, which `--resume` puts back. At the end
`prune.remove` makes the pruning permanent, so the model is a plain module again.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import prune

from specc.lang.errors import Location, Problem, SpecError, did_you_mean
from specc.lang.prune_config import PruneConfig


@dataclass
class PrunedTensor:
    """One parameter being pruned: `module.<attribute>` is `name` in the model's state_dict."""

    name: str
    module: nn.Module
    attribute: str

    @property
    def pruned(self) -> bool:
        return hasattr(self.module, f"{self.attribute}_mask")   # torch.nn.utils.prune's reparametrisation

    @property
    def mask(self) -> torch.Tensor | None:
        return getattr(self.module, f"{self.attribute}_mask", None)

    def weight(self) -> torch.Tensor:
        """The weight as the model uses it now (the masked one once pruned), never stale."""
        if self.pruned:
            return getattr(self.module, f"{self.attribute}_orig").detach() * self.mask
        return getattr(self.module, self.attribute).detach()

    def zeros(self) -> int:
        return int((self.weight() == 0).sum())


class Pruner:
    """Applies `train.prune:` to a model: which tensors, which sparsity each epoch, and the masks."""

    def __init__(self, config: PruneConfig, model: nn.Module, epochs: int, locate: Callable[[tuple], Location | None]):
        self.config, self.model = config, model
        self.start = config.schedule.start_epoch
        self.end = config.schedule.end_epoch or epochs
        self.tensors = select_tensors(model, config, locate)

    # ----- the schedule --------------------------------------------------------------------------
    def target(self, epoch: int) -> float | None:
        """The sparsity the cut at the start of `epoch` reaches, or None when `epoch` does not cut."""
        if not self.start <= epoch <= self.end:
            return None
        cuts, done = self.end - self.start + 1, epoch - self.start + 1
        return self.config.amount * (1 - (1 - done / cuts) ** 3)

    def step(self, epoch: int) -> float | None:
        """Cut at the start of `epoch` if the schedule says so; returns the target reached (or None).

        A cut only adds zeros to reach the target, so repeating one (a run resumed in the middle of
        the epoch that made it) changes nothing."""
        target = self.target(epoch)
        if target is None:
            return None
        with torch.no_grad():
            if self.config.scope == "global":
                self._cut_globally(target)
            else:
                for tensor in self.tensors:
                    self._cut(tensor, target)
        return target

    def _cut(self, tensor: PrunedTensor, target: float) -> None:
        importance = tensor.weight()
        if self.config.method == "ln_structured":
            dim = self.config.dim % importance.dim()
            others = [d for d in range(importance.dim()) if d != dim]
            dead = int((importance.abs().sum(others) == 0).sum())
            wanted = round(target * importance.shape[dim])
            if wanted > dead:   # the container ranks only the channels still alive
                prune.ln_structured(tensor.module, tensor.attribute, amount=wanted - dead, n=self.config.n,
                                    dim=dim, importance_scores=importance)
            return
        wanted, dead = round(target * importance.numel()), int((importance == 0).sum())
        if wanted > dead:
            prune.l1_unstructured(tensor.module, tensor.attribute, amount=wanted - dead, importance_scores=importance)

    def _cut_globally(self, target: float) -> None:
        scores = {(t.module, t.attribute): t.weight() for t in self.tensors}
        total = sum(score.numel() for score in scores.values())
        dead = sum(int((score == 0).sum()) for score in scores.values())
        wanted = round(target * total)
        if wanted > dead:
            prune.global_unstructured(list(scores), pruning_method=prune.L1Unstructured, amount=wanted - dead,
                                      importance_scores=scores)

    # ----- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The masks of the tensors pruned so far (bool, to keep checkpoints small)."""
        return {"masks": {t.name: t.mask.bool().cpu() for t in self.tensors if t.pruned}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put saved masks back on the plain weights loaded from the same checkpoint."""
        by_name = {t.name: t for t in self.tensors}
        for name, mask in state["masks"].items():
            tensor = by_name.get(name)
            if tensor is None:
                raise ValueError(f"the checkpoint prunes '{name}', which train.prune does not select")
            weight = getattr(tensor.module, tensor.attribute)
            prune.custom_from_mask(tensor.module, tensor.attribute, mask.to(device=weight.device, dtype=weight.dtype))

    def make_permanent(self) -> None:
        """`prune.remove` on every pruned tensor: the zeros stay, the model is plain again."""
        for tensor in self.tensors:
            if tensor.pruned:
                prune.remove(tensor.module, tensor.attribute)

    def sparsity(self) -> float:
        """The fraction of zeros across the selected tensors."""
        total = sum(t.weight().numel() for t in self.tensors)
        return sum(t.zeros() for t in self.tensors) / total


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every pruning reparametrisation folded back: `x.weight` =
    `x.weight_orig` × `x.weight_mask`, so a checkpoint loads into the plain model."""
    state = model.state_dict()
    for key in [key for key in state if key.endswith("_orig") and f"{key[:-5]}_mask" in state]:
        base = key[:-5]
        state[base] = state.pop(key) * state.pop(f"{base}_mask")
    return state


def select_tensors(model: nn.Module, config: PruneConfig, locate: Callable[[tuple], Location | None]) -> list[PrunedTensor]:
    """The parameters `params` names, of 2 dims or more (matrices and kernels: pruning a norm's scale
    or a bias removes no multiply). A pattern that selects nothing is an error, never ignored."""
    names = dict(model.named_parameters())
    selected: list[PrunedTensor] = []
    for index, pattern in enumerate(config.params):
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        usable = [name for name in matched if names[name].dim() >= 2]
        if not usable:
            why = (f"matches only tensors of one dim ({', '.join(matched[:4])}), which pruning leaves alone"
                   if matched else "matches no parameter")
            suggestion = did_you_mean(pattern, list(names))
            raise SpecError(Problem(f"prune params '{pattern}' {why}", locate(("train", "prune", "params", index)),
                                    "UNKNOWN_REFERENCE", suggestion))
        for name in usable:
            if all(t.name != name for t in selected):
                module_name, _, attribute = name.rpartition(".")
                selected.append(PrunedTensor(name, model.get_submodule(module_name), attribute))
    if config.method == "ln_structured":
        for tensor in selected:
            if not -tensor.weight().dim() <= config.dim < tensor.weight().dim():
                raise SpecError(Problem(f"prune dim {config.dim} is outside '{tensor.name}' "
                                        f"({tensor.weight().dim()} dims)", locate(("train", "prune", "dim")), "TYPE_ERROR"))
    return selected
