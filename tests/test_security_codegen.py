"""`specc codegen` never writes spec text as code (issue 25, item 1).

Kwarg keys reached the generated model.py unescaped: a key `a=__import__('os').system(...),b` on
`Identity`, in an `init:` function's kwargs or a free tensor's `init:` passed `specc --safe check`,
and instantiating the generated class ran the command. Now the check refuses every kwarg key that is
not a parameter of the callee (or, through `**kwargs`, a plain identifier), and codegen writes only
checked names and `literal` values, so a spec that slips past the check is refused there too.
"""
from __future__ import annotations

import ast
import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import specc
from specc.build.compiler import compile
from specc.cli import app
from specc.export.eject import codegen
from specc.lang.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
HEADER = "inputs: {x: {shape: [8]}}\n"


def _payload(canary: Path) -> str:
    return f"__import__('os').system('touch {canary}')"


def _injections(canary: Path) -> dict[str, tuple[str, int]]:
    """Specs whose kwarg keys carry a command, and the line each must be refused at."""
    payload = _payload(canary)
    return {
        "identity_kwargs": (HEADER + f'layers:\n  - Identity: {{"a={payload},b": 1}}\n', 3),
        "init_kwargs": (HEADER + f'init:\n  Linear: {{xavier_uniform_: {{"gain={payload} or 1,generator": null}}}}\n'
                        "layers:\n  - Linear: [4]\n", 3),
        "free_tensor_init": (HEADER + f'layers:\n  - parameter: {{shape: [8], init: {{normal: {{"std={payload} or 1,'
                             f'generator": null}}}}}}\n    name: p\n  - add: {{}}\n    from: [x, p]\n', 3),
        "function_kwargs": (HEADER + f'layers:\n  - softmax: {{"dim=-1,x={payload}": 1}}\n', 3),
        "block_arg_name": (HEADER + f'blocks:\n  b:\n    args: {{"w=({payload})": 4}}\n    layers: [ReLU]\n'
                           "layers: [b]\n", 4),
    }


@pytest.mark.parametrize("case", ["identity_kwargs", "init_kwargs", "free_tensor_init", "function_kwargs",
                                  "block_arg_name"])
def test_safe_check_refuses_a_kwarg_key_that_is_code(tmp_path, case):
    canary = tmp_path / "canary"
    text, line = _injections(canary)[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    for command in (["--safe", "check", str(spec)], ["codegen", str(spec), "-o", str(tmp_path / "model.py")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert f"spec.yaml:{line}:" in result.output, result.output
        assert "Traceback" not in result.output and "internal error" not in result.output
    assert not (tmp_path / "model.py").exists() and not canary.exists()


def test_a_kwargs_layer_still_takes_identifier_keys():
    """`**kwargs` callees keep plain identifier keys (Identity ignores them; user layers may need them)."""
    model = specc.build(HEADER + "layers:\n  - Identity: {scale: 2}\n")
    assert isinstance(model[0] if hasattr(model, "__getitem__") else model, torch.nn.Module)
    with pytest.raises(SpecError, match="has no argument"):
        specc.load(HEADER + 'layers:\n  - Identity: {"not a name": 1}\n')
        specc.build(HEADER + 'layers:\n  - Identity: {"not a name": 1}\n')


def _poisoned(tmp_path: Path, where: str):
    """A compiled spec whose graph (or init:) holds a code key, as if something skipped the check."""
    canary = tmp_path / "canary"
    key = f"a={_payload(canary)},b"
    compiled = compile(HEADER + "init: {Linear: {normal: {std: 0.02}}}\nlayers:\n  - Identity\n  - Linear: [4]\n"
                       "  - softmax: {dim: -1}\n", device="meta")
    compiled = copy.copy(compiled)
    if where == "module":
        compiled.graph.nodes[1].args[key] = 1       # the Identity
    elif where == "function":
        compiled.graph.nodes[-1].args[key] = 1      # the softmax
    else:
        compiled.spec.init["Linear"] = {"normal": {key: 1}}
    return compiled, canary


@pytest.mark.parametrize("where", ["module", "function", "init"])
def test_codegen_refuses_code_that_slipped_past_the_check(tmp_path, where):
    compiled, canary = _poisoned(tmp_path, where)
    with pytest.raises(SpecError, match="codegen"):
        codegen(compiled)
    assert not canary.exists()


def _run_generated(code: str, folder: Path) -> torch.nn.Module:
    ast.parse(code)
    path = folder / "generated_model.py"
    path.write_text(code)
    module_spec = importlib.util.spec_from_file_location("generated_model_security", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    classes = [value for value in vars(module).values()
               if isinstance(value, type) and issubclass(value, torch.nn.Module) and value.__module__ == module.__name__]
    return classes[-1]()


def test_quotes_and_newlines_in_the_file_name_and_set_stay_in_the_docstring(tmp_path):
    canary = tmp_path / "canary"
    payload = f'x"""\nimport os; os.system("touch {canary}")\n"""'
    spec = tmp_path / 'm"""\nraise SystemExit(7)\n#.yaml'    # the file's stem is the class's display name
    spec.write_text(HEADER + "vars: {tag: hi}\nlayers:\n  - Linear: [4]\n")
    code = codegen(specc.load(spec), tag=payload)
    model = _run_generated(code, tmp_path)
    assert model(torch.randn(2, 8)).shape == (2, 4)
    assert not canary.exists()
    assert "raise SystemExit(7)" in code and "\nraise SystemExit" not in code   # kept, escaped, in the docstring


def test_import_refuses_a_submodule_name_with_a_newline():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("a\nb", torch.nn.Linear(4, 4))

        def forward(self, x):
            return getattr(self, "a\nb")(x)

    with pytest.raises(ValueError, match="not letters, digits and _"):
        specc.from_module(Odd(), torch.randn(2, 4))


def test_generated_code_runs_no_payload_in_a_fresh_process(tmp_path):
    """End to end as a user would: `specc codegen` of a refused spec writes nothing; of a clean spec,
    a file that imports and runs."""
    spec = tmp_path / "clean.yaml"
    spec.write_text(HEADER + "layers:\n  - Identity: {scale: 2}\n  - Linear: [4]\n")
    out = tmp_path / "model.py"
    finished = subprocess.run([sys.executable, "-m", "specc", "--safe", "codegen", str(spec), "-o", str(out)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr
    ast.parse(out.read_text())
    assert _run_generated(out.read_text(), tmp_path)(torch.randn(3, 8)).shape == (3, 4)
