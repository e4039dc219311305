"""specc's mixture-of-experts layer: a router picks top-k experts per token, and each expert computes
only the tokens routed to it (sparse dispatch), so the FLOPs are top_k / n_experts of a dense layer's.

The experts' weights are held the way the checkpoint to load holds them (`layout`): transformers
5.x stacks them (`experts.gate_up_proj` [E, 2F, D], `experts.down_proj` [E, D, F]); Mixtral's Hub
files and older transformers keep one module per expert (`experts.{e}.w1/w2/w3`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specc.build.layers import ACTIVATIONS, SwiGLU

__all__ = ["MoE"]

EXPERT_LAYOUTS = ("stacked", "per_expert")


class StackedExperts(nn.Module):
    """E gated feed-forward experts in two 3-D tensors, as transformers 5.x's MixtralExperts holds them.

    Args:
        n_experts: E; dim: D; hidden_dim: F; activation: the gate's (see SwiGLU).
    """

    def __init__(self, n_experts: int, dim: int, hidden_dim: int, activation: str = "silu"):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim, dim))   # rows: gate, then up
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))
        self.act = ACTIVATIONS[activation]()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in (self.gate_up_proj, self.down_proj):   # each expert as nn.Linear initialises itself
            bound = weight.shape[-1] ** -0.5
            nn.init.uniform_(weight, -bound, bound)

    def activation_module(self) -> nn.Module:
        return self.act

    def expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Expert `index` on its tokens x (n, D): (n, D)."""
        gate, up = F.linear(x, self.gate_up_proj[index]).chunk(2, dim=-1)    # (n, F) each
        return F.linear(self.act(gate) * up, self.down_proj[index])


class PerExpertModules(nn.ModuleList):
    """E SwiGLU experts, one module each (`{e}.w1` gate, `{e}.w3` up, `{e}.w2` down), as Mixtral's files."""

    def __init__(self, n_experts: int, dim: int, hidden_dim: int, activation: str = "silu"):
        super().__init__(SwiGLU(dim, hidden_dim, activation=activation) for _ in range(n_experts))

    def activation_module(self) -> nn.Module:
        return self[0].act

    def expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self[index](x)


def load_balancing_loss(probabilities: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss as Mixtral computes it: E · Σ_e f_e · P_e, with f_e the
    share of (token, slot) choices that picked expert e and P_e the mean router probability of e.
    It is top_k when routing is uniform and grows as tokens crowd onto few experts.

    Args:
        probabilities: the router's softmax (N, E); chosen: the experts picked (N, k).
    """
    n_experts = probabilities.shape[-1]
    picked = F.one_hot(chosen, n_experts).float().mean(dim=0)       # (k, E): share of tokens per slot
    return n_experts * (picked * probabilities.mean(dim=0)).sum()


class MoE(nn.Module):
    """A sparse mixture of gated feed-forward experts (Mixtral's `block_sparse_moe` / `mlp`).

    The router `gate` scores every expert for each token; the top_k most probable run on that token
    and their outputs are summed, weighted by the router's probabilities (renormalised over the
    top_k, as Mixtral does). Tokens are grouped by expert (one gather, one index_add), so each
    expert computes only its own tokens.

    Args:
        dim: model width (inferred).
        hidden_dim: each expert's inner width (intermediate_size).
        n_experts: number of experts E (num_local_experts).
        top_k: experts per token (num_experts_per_tok).
        layout: "stacked" (`experts.gate_up_proj`, `experts.down_proj`, transformers 5.x) or
            "per_expert" (`experts.{e}.w1/w2/w3`, Mixtral's Hub files).
        activation: the experts' gate activation (see SwiGLU).
        renormalize: rescale the top_k probabilities to sum to 1 (Mixtral yes; Qwen2-MoE no).

    After a forward in training mode, `aux_loss` holds the load-balancing loss (`train:
    aux_loss_weight` adds it to the training loss).

    Shapes: (B, ..., dim) -> (B, ..., dim).
    """

    def __init__(self, dim: int, hidden_dim: int, n_experts: int, top_k: int = 2, layout: str = "stacked",
                 activation: str = "silu", renormalize: bool = True):
        super().__init__()
        if not 1 <= top_k <= n_experts or layout not in EXPERT_LAYOUTS or activation not in ACTIVATIONS:
            raise ValueError(f"MoE needs 1 <= top_k <= n_experts (got top_k={top_k}, n_experts={n_experts}), "
                             f"layout one of {list(EXPERT_LAYOUTS)} (got {layout!r}) and activation one of "
                             f"{sorted(ACTIVATIONS)} (got {activation!r})")
        self.n_experts, self.top_k, self.layout, self.renormalize = n_experts, top_k, layout, renormalize
        self.hidden_dim, self.activation = hidden_dim, activation   # as given (specc import reads them back)
        self.gate = nn.Linear(dim, n_experts, bias=False)    # the router
        experts = StackedExperts if layout == "stacked" else PerExpertModules
        self.experts = experts(n_experts, dim, hidden_dim, activation)
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])                       # (N, D)
        weights, chosen = self.route(tokens)                      # (N, k) each
        return self.dispatch(tokens, weights, chosen).view(x.shape)

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top_k experts of each token and their weights: softmax (float32), top-k, renormalise."""
        probabilities = self.gate(tokens).softmax(dim=-1, dtype=torch.float32)   # (N, E)
        weights, chosen = probabilities.topk(self.top_k, dim=-1)                  # (N, k)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.training:
            self.aux_loss = load_balancing_loss(probabilities, chosen)
        return weights.to(tokens.dtype), chosen

    def dispatch(self, tokens: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Each expert on the tokens routed to it; the weighted outputs summed per token: (N, D)."""
        flat_choice = chosen.flatten()                            # (N*k,): token n's slots at n*k..n*k+k-1
        order = flat_choice.argsort(stable=True)                  # the (token, slot) pairs grouped by expert
        token_of = order // self.top_k                            # (N*k,): the token of each grouped pair
        counts = self.tokens_per_expert(flat_choice)
        groups = tokens[token_of].split(counts)                   # one gather, then views per expert
        outputs = torch.cat([self.experts.expert(index, group)
                             for index, group in enumerate(groups) if group.shape[0]])   # (N*k, D)
        weighted = outputs * weights.flatten()[order].unsqueeze(-1)
        return torch.zeros_like(tokens).index_add_(0, token_of, weighted)

    def tokens_per_expert(self, flat_choice: torch.Tensor) -> list[int]:
        """How many (token, slot) pairs chose each expert. On meta (the dry run) there are no values to
        route by, so the pairs are split evenly: the same shapes and FLOPs as any real routing."""
        if flat_choice.is_meta:
            share, extra = divmod(flat_choice.numel(), self.n_experts)
            return [share + (index < extra) for index in range(self.n_experts)]
        return torch.bincount(flat_choice, minlength=self.n_experts).tolist()   # reads back to the host

    def expert_flops_per_token(self) -> int:
        """Forward FLOPs of one expert on one token: three D x F matrix products."""
        dim, hidden = self.gate.in_features, self.hidden_dim
        return 2 * 3 * dim * hidden

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, top_k={self.top_k}, layout={self.layout}"
