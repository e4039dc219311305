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


# ----- safe mode ---------------------------------------------------------------------------------
STRANGER = HEADER + """imports: [canary_layers.Layer]
layers: [ReLU]
train:
  data: {dataset: canary_layers.Data}
  compile: {backend: eager}
  loss: MSELoss
"""


@pytest.fixture
def stranger(tmp_path) -> tuple[Path, Path]:
    """A spec whose imports and dataset would create `canary` when imported."""
    canary = tmp_path / "canary"
    (tmp_path / "canary_layers.py").write_text(
        f"open({str(canary)!r}, 'w').close()\nfrom torch import nn\nfrom torch.utils.data import Dataset\n\n"
        "class Layer(nn.Module):\n    pass\n\nclass Data(Dataset):\n    pass\n")
    path = tmp_path / "stranger.yaml"
    path.write_text(STRANGER)
    return path, canary


def _located_codes(error: SpecError) -> list[tuple[str, int]]:
    return [(problem.code, problem.location.line) for problem in error.problems]


def test_safe_flag_refuses_everything_that_runs_code(stranger, monkeypatch):
    path, canary = stranger
    monkeypatch.delenv("SPECC_SAFE", raising=False)
    result = CliRunner().invoke(app, ["--safe", "check", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:2:1: safe mode: `imports:` would import and run" in result.output
    assert f"{path}:5:10: safe mode: `dataset: canary_layers.Data` would import and run code" in result.output
    assert f"{path}:6:3: safe mode: compile options reach a compiler (backend)" in result.output
    assert not canary.exists()
    assert "SPECC_SAFE" not in __import__("os").environ   # the flag lasts for its command only


def test_safe_flag_gives_the_safe_mode_code_in_json(stranger):
    path, canary = stranger
    result = CliRunner().invoke(app, ["--safe", "check", str(path), "--format", "json"])
    assert result.exit_code == 2
    assert {error["code"] for error in __import__("json").loads(result.output)["errors"]} == {"SAFE_MODE"}
    assert not canary.exists()


def test_safe_true_in_load_and_build(stranger):
    path, canary = stranger
    with pytest.raises(SpecError) as raised:
        specc.load(path, safe=True)
    assert _located_codes(raised.value) == [("SAFE_MODE", 2), ("SAFE_MODE", 5), ("SAFE_MODE", 6)]
    for call in (specc.build, specc.compile):
        with pytest.raises(SpecError) as raised:
            call(path, safe=True, device="meta")
        assert raised.value.first.code == "SAFE_MODE"
    with pytest.raises(SpecError, match="safe mode"):
        specc.compile(specc.load(path), safe=True)   # an already loaded Spec is checked again
    assert specc.load(path).imports == ["canary_layers.Layer"]   # loading imports nothing
    assert not canary.exists()


def test_safe_mode_from_the_environment(stranger, monkeypatch):
    path, canary = stranger
    monkeypatch.setenv("SPECC_SAFE", "1")
    with pytest.raises(SpecError) as raised:
        specc.build(path, device="meta")
    assert _located_codes(raised.value)[0] == ("SAFE_MODE", 2)
    assert not canary.exists()


def test_safe_mode_accepts_plain_specs():
    model = specc.build(HEADER + "layers:\n  - Linear: [4]\ntrain: {data: {source: 'sklearn:iris'}, compile: true, loss: MSELoss}\n",
                        safe=True)
    assert model(__import__("torch").ones(2, 8)).shape == (2, 4)


def test_safe_mode_refuses_an_import_even_past_load(monkeypatch, stranger):
    """The registry refuses by itself too, for callers that build from an already validated Spec."""
    path, canary = stranger
    monkeypatch.setenv("SPECC_SAFE", "1")
    with pytest.raises(ImportError, match="safe mode: imports: canary_layers.Layer"):
        import_layer("canary_layers.Layer", path.parent)
    assert not canary.exists()
