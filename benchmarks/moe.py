"""Mixture-of-experts forward: specc's `MoE` item (a compiled spec) vs a hand-written sparse-dispatch
MoE with the same weights: Mixtral's block as transformers' eager experts run it (softmax router,
top-k, renormalise, a loop over the experts that were hit, each on the rows `where` finds for it,
`index_add_` back). Both compute only the routed tokens, so the ratio is the cost of specc's
dispatch (one sort and gather) and generated forward against the library's loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.timing import Result, Target, forward_against_hand_written, median_ratio, medians

TARGET = Target("<=", 1.10)
SIZES = {"dim": 256, "hidden": 512, "n_experts": 8, "top_k": 2, "tokens": 256}   # Mixtral's 8 experts, top 2

SPEC = """
name: moe
inputs: {{x: {{shape: [{tokens}, {dim}]}}}}
layers:
  - MoE: {{hidden_dim: {hidden}, n_experts: {n_experts}, top_k: {top_k}}}
    name: mlp
"""


class HandWrittenMoE(nn.Module):
    """Mixtral's sparse block with stacked experts, written as transformers' eager path runs it."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int):
        super().__init__()
        self.top_k, self.n_experts = top_k, n_experts
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        probabilities = F.softmax(self.gate(tokens), dim=-1, dtype=torch.float)
        weights, chosen = torch.topk(probabilities, self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(tokens.dtype)
        out = torch.zeros_like(tokens)
        mask = F.one_hot(chosen, self.n_experts).permute(2, 1, 0)          # (E, k, N)
        for expert in torch.nonzero(mask.sum(dim=(-1, -2)) > 0).flatten().tolist():
            slot, token = torch.where(mask[expert])
            gate, up = F.linear(tokens[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.down_proj[expert]) * weights[token, slot, None]
            out.index_add_(0, token, y)
        return out.view(x.shape)


def equivalent_pair(sizes: dict) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """The compiled spec, the hand-written MoE with its weights, and a batch-1 input (checked equal)."""
    from specc.build.compiler import compile as compile_spec

    torch.manual_seed(0)
    compiled = compile_spec(SPEC.format(**sizes))
    specc_model = compiled.module.eval()
    hand_model = HandWrittenMoE(sizes["dim"], sizes["hidden"], sizes["n_experts"], sizes["top_k"]).eval()
    state = specc_model.state_dict()
    hand_model.load_state_dict({"gate.weight": state["mlp.gate.weight"],
                                "gate_up_proj": state["mlp.experts.gate_up_proj"],
                                "down_proj": state["mlp.experts.down_proj"]})
    example = torch.randn(1, sizes["tokens"], sizes["dim"])
    with torch.no_grad():
        torch.testing.assert_close(specc_model(example), hand_model(example), atol=1e-5, rtol=1e-4)
    return specc_model, hand_model, example


def run(repeats: int = 7, turn_seconds: float = 0.05, turns: int = 10, sizes: dict | None = None) -> list[Result]:
    """Time the MoE forward, specc against hand-written, taking turns (1 thread, no_grad, CPU time).

    Returns:
        One Result: specc seconds / hand-written seconds per call (the median over the repeats).
    """
    sizes = sizes or SIZES
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        specc_model, hand_model, example = equivalent_pair(sizes)
        seconds, noise, _ = forward_against_hand_written(specc_model, hand_model, example, repeats, turn_seconds,
                                                         turns)
    finally:
        torch.set_num_threads(threads)
    shape = ", ".join(f"{key} {value}" for key, value in sizes.items())
    return [Result("moe", "MoE forward: specc / hand-written sparse dispatch",
                   median_ratio(seconds["specc"], seconds["hand-written"]), TARGET, seconds=medians(seconds),
                   repeats=repeats, note=f"{shape}; 1 thread, no_grad, CPU time; hand-written / itself {noise:.3f}")]
