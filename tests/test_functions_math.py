"""The element-wise math, ordering and indexing functions (`sin`, `topk`, `scatter`, `one_hot`,
`cumsum`, ...): each equals the torch call it names on real values (topk and sort on ties too), its
shape rule equals the meta kernel, its FLOPs equal FlopCounterMode's, a missing or misspelled arg is
reported at its line, the JSON Schema knows its args, and codegen writes it as plain torch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import specc
from specc.build import infer
from specc.build.flop_rules import predicted_node
from specc.build.compiler import class_name
from specc.build.graph import Node
from specc.build.registry import FUNCTIONS
from specc.build.shape_functions import function_output
from specc.export.eject import codegen
from specc.lang.errors import SpecError
from specc.summary.rows import flop_counter
from test_codegen import load_generated
from test_shape_rules import layout

# Inputs of every case: x [B, 4, 6] floats, y [B, 4, 6] positive floats, index [B, 4, 6] in 0..5,
# ints [B, 4, 6] in -7..7.
PREAMBLE = ("inputs: {x: {shape: [4, 6]}, y: {shape: [4, 6]}, index: {shape: [4, 6], dtype: long}, "
            "ints: {shape: [4, 6], dtype: long}}\nlayers:\n")

CASES = [
    ("sin:", lambda v: v["x"].sin()),
    ("cos:", lambda v: v["x"].cos()),
    ("sqrt:\n    from: y", lambda v: v["y"].sqrt()),
    ("rsqrt:\n    from: y", lambda v: v["y"].rsqrt()),
    ("exp:", lambda v: v["x"].exp()),
    ("log:\n    from: y", lambda v: v["y"].log()),
    ("tanh:", lambda v: v["x"].tanh()),
    ("erf:", lambda v: torch.erf(v["x"])),
    ("softplus:", lambda v: F.softplus(v["x"])),
    ("softplus: {beta: 2.0, threshold: 1.0}", lambda v: F.softplus(v["x"], beta=2.0, threshold=1.0)),
    ("remainder: 0.75", lambda v: torch.remainder(v["x"], 0.75)),
    ("remainder: 3\n    from: ints", lambda v: torch.remainder(v["ints"], 3)),
    ("remainder:\n    from: [x, y]", lambda v: torch.remainder(v["x"], v["y"])),
    ("floor_divide: 2\n    from: ints", lambda v: torch.floor_divide(v["ints"], 2)),
    ("floor_divide:\n    from: [x, y]", lambda v: torch.floor_divide(v["x"], v["y"])),
    ("abs:", lambda v: v["x"].abs()),
    ("sign:", lambda v: v["x"].sign()),
    ("sign:\n    from: ints", lambda v: v["ints"].sign()),
    ("reciprocal:\n    from: y", lambda v: v["y"].reciprocal()),
    ("clamp: {min: -0.5}", lambda v: v["x"].clamp(min=-0.5)),
    ("topk: 3", lambda v: torch.topk(v["x"], 3)),
    ("topk: {k: 2, dim: 1, largest: false}", lambda v: torch.topk(v["x"], 2, dim=1, largest=False)),
    ("sort: {dim: -1, descending: true, stable: true}", lambda v: torch.sort(v["x"], dim=-1, descending=True, stable=True)),
    ("argsort: {dim: 1, stable: true}", lambda v: torch.argsort(v["x"], dim=1, stable=True)),
    ("argmax: -1", lambda v: v["x"].argmax(-1)),
    ("argmin: {dim: 1, keepdim: true}", lambda v: v["x"].argmin(1, keepdim=True)),
    ("gather: 2\n    from: [x, index]", lambda v: v["x"].gather(2, v["index"])),
    ("scatter: 2\n    from: [x, index, y]", lambda v: v["x"].scatter(2, v["index"], v["y"])),
    ("scatter_add: {dim: 2}\n    from: [x, index, y]", lambda v: v["x"].scatter_add(2, v["index"], v["y"])),
    ("getitem: \"[:, :3]\"\n    from: y\n    name: three\n  - constant: {value: [3, 0, 3], dtype: long}\n"
     "  - squeeze: 0\n    name: rows\n  - index_add: 1\n    from: [x, rows, three]",
     lambda v: v["x"].index_add(1, torch.tensor([3, 0, 3]), v["y"][:, :3])),
    ("one_hot: 6\n    from: index", lambda v: F.one_hot(v["index"], 6)),
    ("cumsum: 1", lambda v: v["x"].cumsum(1)),
    ("cumprod: {dim: -1}", lambda v: v["x"].cumprod(-1)),
]
IDS = [case[0].replace("\n", " ")[:40] for case in CASES]


def values(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(batch, 4, 6, generator=generator),
            "y": torch.rand(batch, 4, 6, generator=generator) + 0.1,
            "index": torch.randint(0, 6, (batch, 4, 6), generator=generator),
            "ints": torch.randint(-7, 8, (batch, 4, 6), generator=generator)}


def spec(item: str) -> str:
    sources = "" if "from:" in item.split("\n  - ")[-1] else "    from: x\n"
    return PREAMBLE + f"  - {item}\n" + sources


def run(model, inputs: dict) -> object:
    return model(*(inputs[name] for name in ("x", "y", "index", "ints")))


@pytest.mark.parametrize("item, expected", CASES, ids=IDS)
def test_function_equals_torch(item, expected):
    model = specc.build(spec(item))
    inputs = values()
    got, want = run(model, inputs), expected(inputs)
    assert layout(got) == layout(want)
    for got_part, want_part in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(got_part, want_part, rtol=0, atol=0)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_picks_the_same_values_and_indices_as_torch_on_ties(largest, k):
    text = (f"inputs: {{scores: {{shape: [16, 8]}}}}\nlayers:\n  - topk: {{k: {k}, largest: {str(largest).lower()}}}\n"
            "    name: best\n  - getitem: 1\n    name: chosen\n  - getitem: 0\n    from: best\n    name: weights\n"
            "outputs: [weights, chosen]\n")
    model = specc.build(text)
    scores = torch.randint(0, 3, (4, 16, 8)).float()          # many ties in every row
    scores[0, 0] = 1.0                                        # a row of equal values
    weights, chosen = model(scores)
    reference = torch.topk(scores, k, largest=largest)
    assert torch.equal(weights, reference.values) and torch.equal(chosen, reference.indices)


def test_topk_routes_like_a_hand_written_mixture_router():
    """Top-2 of 4 experts, weights renormalised: the router of a Mixtral layer."""
    text = ("inputs: {h: {shape: [10, 16]}}\nlayers:\n  - Linear: {out_features: 4, bias: false}\n    name: gate\n"
            "  - softmax: -1\n  - topk: 2\n    name: top\n  - getitem: 0\n  - sum: {dim: -1, keepdim: true}\n    name: total\n"
            "  - getitem: 0\n    from: top\n    name: weights\n  - div:\n    from: [weights, total]\n    name: routing\n"
            "  - getitem: 1\n    from: top\n  - one_hot: 4\n    name: mask\noutputs: [routing, mask]\n")
    model = specc.build(text)
    h = torch.randn(2, 10, 16)
    routing, mask = model(h)
    probabilities = F.softmax(h @ model.gate.weight.T, dim=-1)
    weights, experts = torch.topk(probabilities, 2, dim=-1)
    torch.testing.assert_close(routing, weights / weights.sum(-1, keepdim=True))
    assert torch.equal(mask, F.one_hot(experts, 4))


def _node(item: str) -> tuple[Node, list]:
    compiled = specc.compile(spec(item), device="meta", batch_size=2)
    node = compiled.graph.nodes[-1]
    inputs = [torch.empty(compiled.graph[name].shape, dtype=_dtype(compiled.graph[name].dtype), device="meta")
              for name in node.inputs]
    return node, inputs


def _dtype(name):
    return infer.DTYPES[name] if isinstance(name, str) else name


@pytest.mark.parametrize("item", [case[0] for case in CASES], ids=IDS)
def test_shape_rule_equals_the_meta_kernel_and_flops_equal_the_counter(item):
    node, inputs = _node(item)
    ruled = function_output(node.target, inputs, node.args)
    real = infer.run_function(node, inputs)
    if ruled is not None:                        # the plain cases are ruled; the rest runs the kernel
        assert layout(ruled) == layout(real)
        assert type(ruled) is type(real)          # topk/sort: torch's named (values, indices)
    concrete = [torch.ones(value.shape, dtype=value.dtype) for value in inputs]
    with flop_counter() as counter:
        infer.run_function(node, concrete)
    predicted = predicted_node(node, inputs, module=None)
    assert predicted is None or predicted[1] == counter.get_total_flops() == 0


def test_the_common_cases_have_rules():
    for item in ("sin:", "softplus:", "topk: 3", "sort: {dim: -1, descending: true, stable: true}", "argmax: -1",
                 "cumsum: 1", "gather: 2\n    from: [x, index]", "scatter: 2\n    from: [x, index, y]",
                 "one_hot: 6\n    from: index", "remainder: 0.75"):
        node, inputs = _node(item)
        assert function_output(node.target, inputs, node.args) is not None, item


@pytest.mark.parametrize("item, line, column, message", [
    ("topk: {dim: 1}", 3, 5, "topk needs 'k'"),
    ("topk: {kk: 2}", 3, 12, "topk has no argument 'kk' (did you mean 'k'?)"),
    ("argmax:", 3, 5, "argmax needs 'dim'"),
    ("one_hot:\n    from: index", 3, 5, "one_hot needs 'num_classes'"),
    ("scatter: 1\n    from: [x, index]", 4, 5, "scatter needs at least three inputs"),
    ("topk: 9", 3, 5, "k not in range"),
    ("one_hot: 6", 3, 5, "one_hot is only applicable to index tensor"),
])
def test_mistakes_are_located(item, line, column, message):
    with pytest.raises(SpecError) as caught:
        specc.compile(spec(item), device="meta")
    problem = caught.value.problems[0]
    assert (problem.location.line, problem.location.column) == (line, column)
    assert message in str(problem)


def test_schema_knows_the_functions_and_their_args():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(specc.json_schema())
    import yaml
    good = yaml.safe_load(spec("topk: {k: 2, dim: 1, largest: false, sorted: true}"))
    assert not list(validator.iter_errors(good))
    bad = yaml.safe_load(spec("cumsum: {dims: 1}"))
    assert any("'dims' was unexpected" in error.message for error in validator.iter_errors(bad))
    for item in ("topk: {k: two}", "sort: {descending: maybe}", "one_hot: {num_classes: 0}"):
        assert list(validator.iter_errors(yaml.safe_load(spec(item)))), item
    assert not list(validator.iter_errors(yaml.safe_load(spec("topk: {k: $k, largest: false}"))))
    new = {"sin", "cos", "sqrt", "erf", "softplus", "remainder", "floor_divide", "sign", "reciprocal", "topk",
           "sort", "argsort", "argmax", "argmin", "scatter", "scatter_add", "index_add", "one_hot", "cumsum", "cumprod"}
    assert new <= set(FUNCTIONS)


def test_codegen_writes_each_function_as_torch(tmp_path: Path):
    items = "".join(f"  - {item}\n" + ("" if "from:" in item.split("\n  - ")[-1] else "    from: x\n") +
                    f"    name: out{number}\n" for number, (item, _) in enumerate(CASES))
    outputs = [f"out{number}" for number in range(len(CASES))]
    text = PREAMBLE + items + f"outputs: [{', '.join(outputs)}]\n"
    code = codegen(text)
    module, _ = load_generated(code, tmp_path)
    generated = getattr(module, class_name(specc.compile(text, device="meta").spec))()
    inputs = values()
    for got, (_, expected) in zip(run(generated, inputs), CASES):
        want = expected(inputs)
        for got_part, want_part in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(got_part, want_part, rtol=0, atol=0)
    assert "torch.scatter_add(" in code and "torch.topk(" in code and "F.one_hot(" in code


class _UsesTheFunctions(torch.nn.Module):
    """A module calling the new functions the ways PyTorch code does (functions, methods, operators)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 6)

    def forward(self, x):
        h = F.softplus(self.proj(x), beta=2.0).cumsum(1) % 0.5 + torch.floor_divide(x, 0.3)
        top = torch.topk(h, 2, dim=-1)[0]       # (values, indices)[0]; `.values` is not read back
        return torch.sin(top) + torch.cos(h).sum(-1, keepdim=True), F.one_hot(torch.argmax(h, -1), 6)


def test_import_reads_them_back(tmp_path: Path):
    module = _UsesTheFunctions().eval()
    x = torch.randn(2, 4, 6)
    text = specc.from_module(module, x)
    for name in ("softplus", "cumsum", "remainder", "floor_divide", "topk", "sin", "cos", "argmax", "one_hot"):
        assert f"{name}:" in text or f"- {name}\n" in text, name
    rebuilt = specc.build(text).eval()
    rebuilt.load_state_dict(module.state_dict())
    with torch.no_grad():
        for got, want in zip(rebuilt(x), module(x)):
            torch.testing.assert_close(got, want)


SAVED_CASES = ["relu:", "sigmoid:", "tanh:", "exp:", "sqrt:", "rsqrt:", "reciprocal:", "softmax: -1", "log_softmax: -1",
               "silu:", "gelu:", "log:", "sin:", "cos:", "erf:", "abs:", "softplus: {beta: 2.0}", "neg:", "sign:",
               "floor:", "sub: 1.0", "mul: 0.5", "div: 3.0"]


@pytest.mark.parametrize("item", SAVED_CASES)
@pytest.mark.parametrize("after_a_layer", [True, False])
def test_saved_tensor_rules_count_what_autograd_saves(item, after_a_layer, monkeypatch):
    """The summary's rule for a one-input function (summary/saved_rules.py) gives the bytes the
    saved-tensor hooks count; on a model input (no gradient) it saves nothing."""
    from test_saved_rules import _by_hooks, _uses_rules
    positive = "  - exp:\n" if item.split(":")[0] in ("sqrt", "rsqrt", "log") else ""
    first = "  - Linear: {out_features: 8}\n" if after_a_layer else ""
    text = f"inputs: {{x: {{shape: [5, 8]}}}}\nlayers:\n{first}{positive}  - {item}\n  - Linear: {{out_features: 3}}\n"
    ruled, hooked = specc.summary(text, batch_size=3), _by_hooks(monkeypatch, text, batch_size=3)
    assert _uses_rules(text)
    assert ruled.memory_bytes() == hooked.memory_bytes()
