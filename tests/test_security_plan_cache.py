"""The plan cache hands out nothing shared (issue 25, item 7): changing one compile's graph or spec
never changes the next compile of the same spec; an edited `imports:` module is imported again; the
documented `specc.build.plan_cache.clear()` works in a fresh process."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import specc
from specc.build.compiler import compile as compile_spec

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "specs" / "mlp.yaml"


pytestmark = pytest.mark.usefixtures("fresh_plan_cache")   # tests/conftest.py


def test_changing_a_compiled_graph_does_not_reach_the_next_compile():
    first = compile_spec(MLP, device="meta")
    expected = [(node.name, dict(node.args), node.shape) for node in first.graph.nodes]
    linear = next(node for node in first.graph.nodes if node.target == "Linear")
    linear.args["out_features"] = 12345
    linear.inputs.append("nonsense")
    first.graph.nodes.pop()
    first.graph.outputs.append("nonsense")
    second = compile_spec(MLP, device="meta")
    assert [(node.name, dict(node.args), node.shape) for node in second.graph.nodes] == expected
    assert "nonsense" not in second.graph.outputs


def test_changing_a_compiled_spec_does_not_reach_the_next_compile():
    first = compile_spec(MLP, device="meta")
    expected = first.spec.to_yaml()
    first.spec.raw["layers"].append("ReLU")
    first.spec.raw["name"] = "changed"
    second = compile_spec(MLP, device="meta")
    assert second.spec.to_yaml() == expected and second.spec.raw is not first.spec.raw


def test_an_edited_imports_module_is_imported_again(tmp_path):
    layers = tmp_path / "edited_layers.py"
    spec = tmp_path / "spec.yaml"
    spec.write_text("inputs: {x: {shape: [4]}}\nimports: [edited_layers.Scale]\nlayers: [Scale]\n")

    def write(factor: int) -> None:
        layers.write_text("from torch import nn\nclass Scale(nn.Module):\n"
                          f"    def forward(self, x):\n        return {factor} * x\n")

    write(2)
    assert torch.equal(specc.build(spec)(torch.ones(1, 4)), 2 * torch.ones(1, 4))
    write(3)
    os.utime(layers, ns=(time.time_ns(), time.time_ns() + 10**9))   # a new mtime even on a coarse clock
    assert torch.equal(specc.build(spec)(torch.ones(1, 4)), 3 * torch.ones(1, 4))


def test_the_documented_clear_works_in_a_fresh_process():
    finished = subprocess.run([sys.executable, "-c", "import specc; specc.build.plan_cache.clear(); print('cleared')"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert finished.returncode == 0 and "cleared" in finished.stdout, finished.stderr
