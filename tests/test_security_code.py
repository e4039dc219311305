"""Issue 13: what a spec may make Python import and run. `imports:` paths are checked before any
import (no standard-library module is ever imported for a spec), and safe mode (`specc --safe`,
SPECC_SAFE=1, `safe=True`) refuses `imports:`, `dataset:` and `compile:` with a located SAFE_MODE
error. Every test that could run code uses a canary file and asserts it is never created.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import specc
from specc.build.registry import import_layer
from specc.cli import app
from specc.lang.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
HEADER = "inputs: {x: {shape: [8]}}\n"


def test_this_is_refused_before_it_is_imported(tmp_path):
    """`import this` prints the Zen of Python: a fresh process shows whether it was imported."""
    path = tmp_path / "zen.yaml"
    path.write_text(HEADER + "imports: [this.X]\nlayers: [ReLU]\n")
    finished = subprocess.run([sys.executable, "-m", "specc", "check", str(path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
    assert finished.returncode == 2
    assert "Beautiful is better than ugly" not in finished.stdout + finished.stderr
    assert f"{path}:2:11: imports this.X: 'this' is a standard-library module" in finished.stderr
    assert "nothing was imported" in finished.stderr


@pytest.mark.parametrize("dotted", ["os.system", "subprocess.Popen", "builtins.eval", "__phello__.X", "sys.modules",
                                    "antigravity.X"])
def test_standard_library_paths_are_refused_without_importing(dotted):
    already = set(sys.modules)
    with pytest.raises(ImportError, match="is a standard-library module, not an nn.Module subclass"):
        import_layer(dotted)
    assert set(sys.modules) - already == set()


@pytest.mark.parametrize("dotted", ["Linear", "my layers.X", "a..b", "a.b.", 5])
def test_malformed_import_paths_are_refused(dotted):
    with pytest.raises(ImportError, match="imports must be the dotted path of an nn.Module subclass"):
        import_layer(dotted)


def test_a_refused_import_is_located_in_the_spec():
    with pytest.raises(SpecError) as raised:
        specc.build(HEADER + "imports:\n  - user_layers.Scale\n  - subprocess.getoutput\nlayers: [ReLU]\n")
    problem = raised.value.first
    assert (problem.code, problem.location.line, problem.location.column) == ("IMPORT_ERROR", 4, 5)
    assert "'subprocess' is a standard-library module" in problem.message


def test_the_users_own_module_still_imports(monkeypatch, tmp_path):
    (tmp_path / "own_layers_for_security.py").write_text(
        "from torch import nn\n\nclass Twice(nn.Module):\n    def forward(self, x):\n        return 2 * x\n")
    path = tmp_path / "spec.yaml"
    path.write_text(HEADER + "imports: [own_layers_for_security.Twice]\nlayers: [Twice]\n")
    assert type(specc.build(path).get_submodule("0")).__name__ == "Twice"
