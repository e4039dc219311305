"""A second compile of the same spec reuses its plan (build/plan_cache.py) and still returns a model
of its own, equal to an uncached build; anything the plan depends on makes a new plan."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import specc
from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecWarning

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "specs" / "mlp.yaml"


pytestmark = pytest.mark.usefixtures("fresh_plan_cache")   # tests/conftest.py


def _planned(monkeypatch) -> list:
    """Record each time a compile plans (validates, expands, dry-runs) instead of reusing a plan."""
    from specc.build import compiler

    calls, plan = [], compiler._plan

    def counting(*args, **kwargs):
        calls.append(args[0])
        return plan(*args, **kwargs)

    monkeypatch.setattr(compiler, "_plan", counting)
    return calls


def test_a_rebuild_reuses_the_plan_and_returns_its_own_model(monkeypatch):
    planned = _planned(monkeypatch)
    torch.manual_seed(0)
    first = specc.build(MLP)
    torch.manual_seed(0)
    second = specc.build(MLP)
    assert len(planned) == 1
    assert first is not second and first.graph is not second.graph
    assert all(a is not b for a, b in zip(first.parameters(), second.parameters()))
    assert first.state_dict().keys() == second.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    x = compile_spec(MLP).example_inputs(3, "cpu")
    assert torch.equal(first.eval()(*x), second.eval()(*x))
    assert second.code == first.code


def test_the_rebuilt_model_equals_an_uncached_build(monkeypatch):
    specc.build(ROOT / "specs" / "resnet18.yaml", device="meta")
    torch.manual_seed(1)
    cached = specc.build(ROOT / "specs" / "resnet18.yaml")
    monkeypatch.setenv("SPECC_PLAN_CACHE", "0")
    torch.manual_seed(1)
    uncached = specc.build(ROOT / "specs" / "resnet18.yaml")
    assert [name for name, _ in cached.named_modules()] == [name for name, _ in uncached.named_modules()]
    assert [type(m).__name__ for m in cached.modules()] == [type(m).__name__ for m in uncached.modules()]
    assert all(torch.equal(a, b) for a, b in zip(cached.state_dict().values(), uncached.state_dict().values()))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(cached.eval()(x), uncached.eval()(x))


def test_editing_one_models_graph_leaves_the_next_build_alone():
    first = specc.build(MLP)
    output = next(node for node in first.graph.nodes if node.op == "output")
    first.graph.erase_node(output)
    second = specc.build(MLP)
    assert any(node.op == "output" for node in second.graph.nodes)


def test_what_the_plan_depends_on_makes_a_new_plan(tmp_path, monkeypatch):
    planned = _planned(monkeypatch)
    path = tmp_path / "net.yaml"
    path.write_text("inputs: {x: {shape: [4]}}\nvars: {width: 8}\nlayers:\n  - Linear: {out_features: $width}\n")
    assert _width(specc.build(path)) == 8
    assert _width(specc.build(path, width=5)) == 5          # another variable value
    path.write_text("inputs: {x: {shape: [4]}}\nvars: {width: 8}\nlayers:\n  - Linear: {out_features: 3}\n")
    assert _width(specc.build(path)) == 3                    # the file changed
    compile_spec(path, batch_size=4)                         # another dry-run batch size
    assert len(planned) == 4
    specc.build(path)
    assert len(planned) == 4                                 # the same again: reused


def test_a_compile_reads_the_spec_file_once(tmp_path, monkeypatch):
    # the plan is kept under the text it was made of: the key and the compile see one reading
    path = tmp_path / "net.yaml"
    path.write_text("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 3}\n")
    reads, read_text = [], Path.read_text

    def counting(self, *args, **kwargs):
        if self == path:
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    specc.build(path)
    assert len(reads) == 1


def _width(model) -> int:
    return next(layer for layer in model.modules() if isinstance(layer, torch.nn.Linear)).out_features


def test_specs_with_imports_and_the_switch_off_are_planned_each_time(monkeypatch):
    planned = _planned(monkeypatch)
    spec = ("imports: [user_layers.Scale]\ninputs: {x: {shape: [4]}}\nlayers:\n  - Scale: {initial: 2.0}\n")
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    specc.build(spec)
    specc.build(spec)
    assert len(planned) == 2
    monkeypatch.setenv("SPECC_PLAN_CACHE", "0")
    specc.build(MLP)
    specc.build(MLP)
    assert len(planned) == 4


def test_warnings_come_with_every_compile():
    spec = ("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 3}\n    name: unused\n"
            "  - Linear: {out_features: 2}\n    from: x\n")
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            specc.build(spec)
        assert any(isinstance(w.message, SpecWarning) and "never used" in str(w.message) for w in caught)


def test_train_mistakes_warned_by_summary_repeat(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("inputs: {x: {shape: [4]}}\nlayers:\n  - Linear: {out_features: 2}\n"
                    "train:\n  epochs: 1\n  optimiser: adam\n")
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile_spec(path, train_mistakes="warn")
        assert any("optimiser" in str(w.message) for w in caught)
