"""Auxiliary losses that layers compute during the forward and the training loop adds to the loss:
the mixture-of-experts load-balancing loss (`train: aux_loss_weight`)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from specc.build.moe_layers import MoE
from specc.lang.errors import Location, Problem, SpecError


def auxiliary_loss(model: nn.Module, weight: float, where: Location | None) -> Callable[[], torch.Tensor] | None:
    """A function giving `weight` × the mean load-balancing loss of the model's MoE layers in the
    last training forward; None when `weight` is 0.

    Raises:
        SpecError: a weight is set but the model has no MoE layer (a weight that would do nothing).
    """
    if not weight:
        return None
    layers = [module for module in model.modules() if isinstance(module, MoE)]
    if not layers:
        raise SpecError(Problem(f"aux_loss_weight {weight}: the model has no MoE layer, whose load-balancing loss "
                                f"it would weigh; remove it", where, "TYPE_ERROR"))

    def weighted() -> torch.Tensor:
        return weight * torch.stack([layer.aux_loss for layer in layers]).mean()
    return weighted
