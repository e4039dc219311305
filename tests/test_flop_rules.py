"""FLOP formulas of the ruled layers (build/flop_rules.py) equal torch's FlopCounterMode: for each
layer of the shape-rule zoo, and for every item of every spec in specs/ as `specc summary` and the
HTML viewer count them; and summarising a small spec, checking it or drawing its viewer page imports
no sympy or torch._dynamo, nor does summarising Llama or GPT-2 (the summary's memory count takes
summary/saved_rules.py for that)."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from specc.build import flop_rules
from specc.build.compiler import compile as compile_spec
from specc.build.flop_rules import _COUNTED, matmul_flops, module_flops
from specc.draw.figures import node_figures
from specc.summary.rows import SavedForBackward, eval_mode, flop_counter
from specc.summary.spec_rows import _run_nodes
from test_shape_rules import FUNCTION_ZOO, SPECS, ZOO, _call, layout

ROOT = Path(__file__).resolve().parents[1]


def _counted(call) -> int:
    with flop_counter() as counter:
        call()
    return counter.get_total_flops()


@pytest.mark.parametrize("module, inputs", ZOO, ids=lambda value: repr(value).replace("\n", "")[:60]
                         if isinstance(value, nn.Module) else "")
def test_layer_formula_matches_flop_counter(module, inputs):
    module = copy.deepcopy(module).to("meta").eval()   # the zoo is shared: test_shape_rules runs it in training mode
    args, kwargs = _call(module, inputs)
    formula = module_flops(module, args)
    if type(module) in (nn.LSTM, nn.GRU, nn.RNN) or args[0].dim() == 1:
        assert formula is None  # fused kernels, or a vector through Linear (mv): always measured
        return
    assert formula is not None, f"{module} has a shape rule but no FLOP count"
    assert formula == _counted(lambda: module(*args, **kwargs))
    if type(module) in _COUNTED:
        assert formula > 0


@pytest.mark.parametrize("inputs", [inputs for target, inputs, _ in FUNCTION_ZOO if target == "matmul"])
def test_matmul_formula_matches_flop_counter(inputs):
    assert matmul_flops(*inputs) == _counted(lambda: torch.matmul(*inputs))


@pytest.fixture
def without_formulas(monkeypatch):
    def measure_everything():
        monkeypatch.setattr(flop_rules, "predicted_node", lambda *args: None)
    return measure_everything


@pytest.mark.parametrize("path", SPECS, ids=lambda path: path.stem)
def test_summary_and_viewer_counts_of_every_spec_item(path, without_formulas):
    compiled = compile_spec(path, device="meta", batch_size=2)

    def figures():
        with eval_mode(compiled.module), SavedForBackward(compiled.module) as saved:
            outputs, flops = _run_nodes(compiled.graph, compiled.module, compiled.device, saved)
        shapes = {name: shape for name, (shape, _) in outputs.items()}
        return flops, shapes, node_figures(compiled.graph, compiled.module)

    ruled = figures()
    without_formulas()
    assert ruled == figures()


@pytest.mark.parametrize("command", [["summary", "specs/mlp.yaml"], ["summary", "specs/digits_cnn.yaml"],
                                     ["summary", "specs/llama2_7b.yaml", "--set", "n_layers=2"],
                                     ["summary", "specs/gpt2_small.yaml", "--set", "n_layers=2"],
                                     ["check", "specs/digits_cnn.yaml"],
                                     ["draw", "specs/resnet18.yaml", "-o", "{tmp}/resnet18.html"]])
def test_summary_and_viewer_need_no_dynamo(command, tmp_path):
    arguments = [part.format(tmp=tmp_path) for part in command]
    code = ("import runpy, sys; sys.argv = ['specc', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('specc', run_name='__main__')\n"
            "except SystemExit as stop:\n    assert not stop.code, stop.code\n"
            "print(sorted(name for name in ('sympy', 'torch._dynamo') if name in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_layout_helper_sees_strides():
    assert layout(torch.empty(2, 3, device="meta").t()) == ((3, 2), torch.float32, (1, 3))
