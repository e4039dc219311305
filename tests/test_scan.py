"""The `scan` item: `h_t = a_t * h_{t-1} + b_t` along a dim, by a chunked scan. Equal to a Python loop
(values and gradients) for every length (whole chunks or a tail), dim, broadcast, initial state and
direction; O(L) memory; counted exactly by the dry run and the summary; written out by codegen."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import specc
from specc.build.compiler import class_name
from specc.build.functional import _chunk_size, linear_scan
from specc.build.infer import run_compiled_node
from specc.export.eject import codegen
from specc.lang.errors import SpecError
from specc.summary.rows import flop_counter
from test_codegen import load_generated


def loop(a, b, initial=None, dim=1, reverse=False):
    """The recurrence as it is written in papers: one step at a time."""
    a, b = torch.broadcast_tensors(a, b)
    steps = range(a.shape[dim] - 1, -1, -1) if reverse else range(a.shape[dim])
    h = torch.zeros_like(b.select(dim, 0)) if initial is None else initial.expand_as(b.select(dim, 0))
    states = {}
    for step in steps:
        h = a.select(dim, step) * h + b.select(dim, step)
        states[step] = h
    return torch.stack([states[step] for step in range(a.shape[dim])], dim)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 16, 31, 64, 97, 100, 257])
def test_equals_the_loop_at_every_length(length):
    generator = torch.Generator().manual_seed(length)
    a = torch.rand(2, length, 3, 4, generator=generator, dtype=torch.float64) * 2 - 1   # negative decays too
    b = torch.randn(2, length, 3, 4, generator=generator, dtype=torch.float64)
    h = linear_scan(a, b)
    torch.testing.assert_close(h, loop(a, b), rtol=1e-12, atol=1e-12)
    assert h.is_contiguous() and h.shape == a.shape


def test_chunks_take_far_fewer_steps_than_the_length():
    for length in (64, 256, 1024, 4096):
        size = _chunk_size(length)
        assert length % size == 0 and 2 * size + length // size <= 3 * length ** 0.5
    assert _chunk_size(1021) == 31            # a prime: sqrt-sized chunks and a tail of 30 steps


@pytest.mark.parametrize("dim, reverse, with_initial", [(1, False, True), (-1, False, False), (2, True, True),
                                                         (0, False, False)])
def test_dims_broadcasting_initial_state_and_reverse(dim, reverse, with_initial):
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(3, 9, 1, 5, generator=generator, dtype=torch.float64)      # broadcast over dim 2
    b = torch.randn(3, 9, 4, 5, generator=generator, dtype=torch.float64)
    step_shape = list(b.shape)
    del step_shape[dim]
    initial = torch.randn(step_shape, generator=generator, dtype=torch.float64) if with_initial else None
    torch.testing.assert_close(linear_scan(a, b, initial, dim=dim, reverse=reverse),
                               loop(a, b, initial, dim=dim, reverse=reverse), rtol=1e-12, atol=1e-12)


def test_gradients_equal_the_loops():
    generator = torch.Generator().manual_seed(2)
    a = (torch.rand(2, 50, 3, generator=generator, dtype=torch.float64) * 0.9).requires_grad_()
    b = torch.randn(2, 50, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    initial = torch.randn(2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 50, 3, generator=generator, dtype=torch.float64)
    ours = torch.autograd.grad((linear_scan(a, b, initial) * weights).sum(), (a, b, initial))
    theirs = torch.autograd.grad((loop(a, b, initial) * weights).sum(), (a, b, initial))
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


SPEC = """
inputs: {x: {shape: [$length, 8]}, delta: {shape: [$length, 8]}}
vars: {length: 40}
layers:
  - parameter: {shape: [8], init: {uniform: {a: -2.0, b: -0.5}}}
    name: rate
  - mul:
    from: [delta, rate]
  - exp:
    name: decay
  - mul:
    from: [delta, x]
    name: drive
  - scan: {dim: 1}
    from: [decay, drive]
    name: states
"""


def test_scan_item_equals_the_loop_and_is_a_weightless_layer():
    model = specc.build(SPEC)
    x, delta = torch.randn(2, 40, 8), torch.rand(2, 40, 8)
    rate = model.rate.reshape(-1)
    torch.testing.assert_close(model(x, delta), loop((delta * rate).exp(), delta * x))
    assert type(model.states).__name__ == "LinearScan" and not list(model.states.parameters())
    assert "dim=1, reverse=False" in repr(model.states)


def test_summary_counts_the_scan_exactly_on_meta_and_on_cpu():
    compiled = specc.compile(SPEC, device="meta", batch_size=2)
    assert compiled.graph["states"].shape == (2, 40, 8)
    for device in ("meta", "cpu"):
        result = specc.summary(SPEC, device=device, batch_size=2)
        row = next(row for row in result.rows if row.type == "LinearScan")
        assert list(row.shape) == [2, 40, 8]
        assert row.flops == 0
    node = compiled.graph["states"]
    a, b = torch.rand(2, 40, 8), torch.randn(2, 40, 8)
    with flop_counter() as counter:            # FlopCounterMode counts no matrix product in the scan
        run_compiled_node(node, [a, b], specc.build(SPEC))
    assert counter.get_total_flops() == 0


def test_memory_grows_linearly_with_the_length():
    """Bytes autograd keeps for backward: O(L): a and b themselves and about two copies of the states."""
    kept = {}
    for length in (256, 1024):
        a = torch.rand(2, length, 16, requires_grad=True)
        b = torch.randn(2, length, 16, requires_grad=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            linear_scan(a, b)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
        kept[length] = sum(storages.values())
    assert kept[1024] <= 4.5 * kept[256]
    assert kept[1024] <= 4 * (2 * 1024 * 16 * 4)             # at most four copies of the states


def test_mistakes_are_located():
    text = SPEC.replace("scan: {dim: 1}", "scan: {dim: 1, revers: true}")
    with pytest.raises(SpecError) as caught:
        specc.compile(text, device="meta")
    assert "LinearScan has no argument 'revers' (did you mean 'reverse'?)" in str(caught.value)
    text = SPEC.replace("from: [decay, drive]", "from: [decay, y]").replace(
        "delta: {", "y: {shape: [$length, 5]}, delta: {")
    with pytest.raises(SpecError) as caught:
        specc.compile(text, device="meta")
    problem = caught.value.problems[0]
    assert (problem.location.line, problem.location.column) == (14, 5)
    assert "LinearScan 'states' cannot take input [40, 8], [40, 5]" in problem.message


def test_codegen_copies_the_scan(tmp_path: Path):
    code = codegen(SPEC)
    module, _ = load_generated(code, tmp_path)
    compiled = specc.compile(SPEC)
    generated = getattr(module, class_name(compiled.spec))()
    generated.load_state_dict(compiled.module.state_dict())
    x, delta = torch.randn(2, 40, 8), torch.rand(2, 40, 8)
    torch.testing.assert_close(generated(x, delta), compiled.module(x, delta))
    assert "def linear_scan(" in code and "class LinearScan(" in code


def test_an_absurd_length_is_refused_at_once_where_it_is_written():
    text = ("inputs: {a: {shape: [10000000000000], dtype: long}, b: {shape: [10000000000000], dtype: long}}\n"
            "layers:\n  - scan: {dim: 1}\n    from: [a, b]\n")
    with pytest.raises(SpecError) as caught:        # int inputs have no shape rule: the scan itself runs on meta
        specc.compile(text, device="meta")
    problem = caught.value.problems[0]
    assert (problem.location.line, problem.location.column) == (3, 5)
    assert "scan over 10,000,000,000,000 steps: at most 2,147,483,648" in problem.message
