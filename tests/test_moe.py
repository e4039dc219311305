"""specc's mixture-of-experts layer (issue #27): equal to a hand-written sparse-dispatch MoE (the loop
transformers' eager Mixtral experts run), experts see only their routed tokens, both weight layouts,
the exact FLOP and saved-tensor rules, and the load-balancing loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.moe import HandWrittenMoE   # Mixtral's sparse dispatch written out, the benchmark's baseline too
from specc.build.compiler import compile as compile_spec
from specc.build.flop_rules import module_flops
from specc.build.moe_layers import MoE, load_balancing_loss
from specc.summary.rows import SavedForBackward
from specc.summary.saved_blocks import BLOCK_RULES


def _pair(dim=16, hidden=24, n_experts=4, top_k=2, seed=0):
    torch.manual_seed(seed)
    reference = HandWrittenMoE(dim, hidden, n_experts, top_k).eval()
    with torch.no_grad():   # the reference's experts start empty (the benchmark loads specc's weights into them)
        for stacked in (reference.gate_up_proj, reference.down_proj):
            stacked.copy_(torch.randn_like(stacked) * 0.1)
    layer = MoE(dim, hidden, n_experts, top_k).eval()
    layer.load_state_dict({"gate.weight": reference.gate.weight, "experts.gate_up_proj": reference.gate_up_proj,
                           "experts.down_proj": reference.down_proj}, strict=True)
    return layer, reference


@pytest.mark.parametrize("n_experts, top_k", [(4, 2), (8, 2), (4, 1), (3, 3)])
def test_moe_equals_hand_written_sparse_dispatch(n_experts, top_k):
    layer, reference = _pair(n_experts=n_experts, top_k=top_k)
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), atol=1e-6, rtol=1e-5)


def test_per_expert_layout_holds_mixtrals_names_and_computes_the_same():
    layer, _ = _pair()
    per_expert = MoE(16, 24, 4, 2, layout="per_expert").eval()
    state = {"gate.weight": layer.gate.weight}
    for e in range(4):
        gate, up = layer.experts.gate_up_proj[e].chunk(2)
        state |= {f"experts.{e}.w1.weight": gate, f"experts.{e}.w3.weight": up,
                  f"experts.{e}.w2.weight": layer.experts.down_proj[e]}
    per_expert.load_state_dict(state, strict=True)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        torch.testing.assert_close(per_expert(x), layer(x))


def test_each_expert_computes_only_the_tokens_routed_to_it():
    layer = MoE(16, 24, 4, 2, layout="per_expert").eval()
    x = torch.randn(2, 10, 16)
    rows: dict[int, torch.Tensor] = {}
    hooks = [expert.register_forward_hook(lambda module, args, out, e=e: rows.__setitem__(e, args[0]))
             for e, expert in enumerate(layer.experts)]
    with torch.no_grad():
        layer(x)
    for hook in hooks:
        hook.remove()
    tokens = x.reshape(-1, 16)
    chosen = layer.gate(tokens).softmax(-1).topk(2, dim=-1).indices
    assert sum(len(seen) for seen in rows.values()) == 20 * 2                 # N * k rows in all, not N * E
    for e, seen in rows.items():
        torch.testing.assert_close(seen, tokens[(chosen == e).any(-1)])      # exactly its tokens, in order


def test_flops_count_only_routed_tokens():
    layer, _ = _pair(dim=16, hidden=24, n_experts=8, top_k=2)
    x = torch.randn(3, 5, 16)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    dense_experts = 15 * 8 * (2 * 3 * 16 * 24)
    router = 2 * 15 * 16 * 8
    assert counter.get_total_flops() == router + dense_experts * 2 // 8
    assert module_flops(layer.to("meta"), (x.to("meta"),)) == counter.get_total_flops()


@pytest.mark.parametrize("layout", ["stacked", "per_expert"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_saved_tensor_rule_equals_what_autograd_saves_for_a_real_routing(layout, renormalize):
    torch.manual_seed(1)
    layer = MoE(16, 24, 4, 2, layout=layout, renormalize=renormalize).train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    with SavedForBackward(layer, (x,)) as saved:
        out = layer(x)
    ruled = BLOCK_RULES[MoE](layer, x, out, True)
    assert ruled[0] is x                                      # the input: counted once, as the Input line
    assert sum(t.untyped_storage().nbytes() for t in ruled[1:]) == saved.bytes


def test_load_balancing_loss_is_mixtrals():
    layer, _ = _pair()
    layer.train()
    x = torch.randn(4, 6, 16)
    layer(x)
    probabilities = layer.gate(x.reshape(-1, 16)).softmax(-1)
    chosen = probabilities.topk(2, dim=-1).indices
    # transformers' load_balancing_loss_func, no attention mask: E * sum(mean one-hot (k, E) * mean prob (E))
    expected = 4 * torch.sum(F.one_hot(chosen, 4).float().mean(0) * probabilities.mean(0).unsqueeze(0))
    torch.testing.assert_close(layer.aux_loss, expected)
    uniform = torch.full((8, 4), 0.25)
    assert load_balancing_loss(uniform, torch.tensor([[0, 1], [2, 3]] * 4)).item() == pytest.approx(2.0)   # top_k
    layer.eval()
    layer.aux_loss = None
    layer(x)
    assert layer.aux_loss is None                             # computed only in training


def test_moe_item_compiles_and_summarizes_on_meta():
    spec = "inputs: {x: {shape: [12, 16]}}\nlayers:\n  - MoE: {hidden_dim: 24, n_experts: 8, top_k: 2}\n"
    compiled = compile_spec(spec, device="meta")
    assert compiled.graph[compiled.graph.outputs[0]].shape[1:] == (12, 16)
    with pytest.raises(Exception, match="top_k"):
        compile_spec(spec.replace("top_k: 2", "top_k: 9"), device="meta")


MOE_CLASSIFIER = {
    "name": "moe_iris",
    "inputs": {"x": {"shape": [4]}},
    "layers": [{"Linear": {"out_features": 16}}, {"MoE": {"hidden_dim": 8, "n_experts": 4, "top_k": 2}},
               {"Linear": {"out_features": 3}, "name": "head"}],
    "train": {"data": {"source": "sklearn:iris", "split": {"val": 0.2, "test": 0, "seed": 0}},
              "batch_size": 200, "epochs": 1, "loss": "CrossEntropyLoss", "optimizer": {"SGD": {"lr": 0.0}},
              "seed": 0},
}


def _train_loss(tmp_path, weight: float, layers=None) -> float:
    import copy

    from specc.train.training import train

    spec = copy.deepcopy(MOE_CLASSIFIER)
    spec["train"]["aux_loss_weight"] = weight
    spec["layers"] = layers or spec["layers"]
    result = train(spec, out=tmp_path / str(weight), verbose=False)
    return result.history[-1]["train_loss"]


def test_training_adds_the_weighted_load_balancing_loss(tmp_path):
    """lr 0 and one full batch: the same weights and routing each time, so the logged loss grows by
    exactly weight x the layer's loss, linearly in the weight."""
    plain, half, full = (_train_loss(tmp_path, weight) for weight in (0.0, 0.5, 1.0))
    assert half > plain
    assert full - plain == pytest.approx(2 * (half - plain), rel=1e-4)
    assert 1.0 < (full - plain) < 4.0                        # one layer's loss, near top_k = 2


def test_a_weight_without_moe_layers_is_a_located_error(tmp_path):
    from specc.lang.errors import SpecError

    with pytest.raises(SpecError, match="no MoE layer"):
        _train_loss(tmp_path, 0.5, layers=[{"Linear": {"out_features": 3}, "name": "head"}])
