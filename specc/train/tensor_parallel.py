"""`parallel: {tensor: N}`: split each feed-forward layer over N processes (DTensor `parallelize_module`).

Megatron's plan, as torchtitan applies it: the first projection(s) of a feed-forward layer are split
by output features (`ColwiseParallel`), the last by input features (`RowwiseParallel`), so the hidden
activation stays split and one all-reduce per layer joins the result. Layers are recognised by their
attributes, not their class, so any layer with the same projections (a user's own MLP) is split too.
The processes of one tensor-parallel group see the same batch; FSDP shards over the other mesh dim.

Attention stays whole on every process of the group for now: specc's `CausalSelfAttention` makes
q, k and v with one fused projection, whose rows a column split would cut across q/k/v.
"""
from __future__ import annotations

from torch import nn

from specc.lang.errors import Location, Problem, SpecError

# attribute names of a layer's projections -> how each is split
PLANS = (
    {"c_fc": "colwise", "c_proj": "rowwise"},                            # specc's MLP (GPT-2)
    {"w1": "colwise", "w3": "colwise", "w2": "rowwise"},                 # specc's SwiGLU (Llama)
    {"gate_proj": "colwise", "up_proj": "colwise", "down_proj": "rowwise"},  # Hugging Face names
)


def plans_for(model: nn.Module) -> dict[str, dict[str, str]]:
    """`{module path: {attribute: colwise|rowwise}}` for every layer that carries a plan's projections."""
    found = {}
    for path, module in model.named_modules():
        for plan in PLANS:
            if all(isinstance(getattr(module, name, None), nn.Linear) for name in plan):
                found[path] = plan
                break
    return found


def parallelize(model: nn.Module, mesh, where: Location | None) -> list[str]:
    """Apply the column/row-wise plan to every matching layer of `model` (on meta, before FSDP).

    Returns:
        The module paths split.

    Raises:
        SpecError: the model has no layer to split.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    found = plans_for(model)
    if not found:
        raise SpecError(Problem("parallel.tensor: the model has no feed-forward layer to split (MLP, SwiGLU, or a "
                                "layer with c_fc/c_proj, w1/w2/w3 or gate_proj/up_proj/down_proj projections)",
                                where, "TYPE_ERROR"))
    for path, plan in found.items():
        parallelize_module(model.get_submodule(path), mesh, {name: styles[style]() for name, style in plan.items()})
    return list(found)
