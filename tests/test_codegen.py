"""`specc codegen`: for every spec in specs/, the generated file passes pyflakes, imports nothing but
torch, has the compiled model's state_dict keys, builds the same weights from the same seed, and
computes the same outputs; plus the spec features the examples do not use, and the command."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from specc.cli import app
from specc.export.eject import codegen
from specc.build.compiler import class_name, compile
from specc.build.expect import count_parameters

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
TESTS = Path(__file__).resolve().parent

# Specs too big to build on the CPU in a test are compared numerically at a smaller size (the
# full size is still generated and built on meta).
SHRINK = {
    "gpt2_small": {"n_layers": 2, "dim": 32, "n_heads": 4, "vocab_size": 100, "block_size": 16},
    "vit_b_16": {"image_size": 32, "n_layers": 2, "dim": 64, "n_heads": 4, "mlp_dim": 128, "n_classes": 10,
                 "expect.params": None},
    "t5_small": {"vocab_size": 100, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
                 "num_heads": 4, "expect.params": None},
    "llama2_7b": {"n_layers": 2, "dim": 64, "n_heads": 4, "hidden_dim": 96, "vocab_size": 100, "max_len": 16},
}
CPU_PARAMETER_LIMIT = 50_000_000
ALLOWED_IMPORTS = {"__future__", "fnmatch", "torch", "torch.nn", "torch.nn.functional"}


def load_generated(code: str, folder: Path, name: str = "generated_model"):
    """Write the code to a file and import it as a module, the way a user would."""
    path = folder / f"{name}.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def assert_same_model(compiled, code: str, folder: Path, seed: int) -> None:
    """The generated class: same keys and order, same seeded weights, same outputs with loaded weights."""
    module, path = load_generated(code, folder)
    torch.manual_seed(seed)
    generated = getattr(module, class_name(compiled.spec))()
    reference = compiled.module
    assert list(generated.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(generated.state_dict()[key], value), f"{key}: a seeded build differs"
    generated.load_state_dict(reference.state_dict())
    generated.eval(), reference.eval()
    inputs = compiled.example_inputs(3)
    with torch.no_grad():
        expected, actual = reference(*inputs), generated(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = actual if isinstance(actual, tuple) else (actual,)
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert torch.equal(want, got)


def assert_clean(path: Path) -> None:
    """pyflakes finds nothing, and the file imports only torch (and the standard library's fnmatch)."""
    result = subprocess.run([sys.executable, "-m", "pyflakes", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    tree = ast.parse(path.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


@pytest.mark.parametrize("spec_path", SPECS, ids=[path.stem for path in SPECS])
def test_every_example_spec_round_trips(spec_path: Path, tmp_path: Path) -> None:
    full = compile(spec_path, device="meta")
    full_code = codegen(full)
    module, path = load_generated(full_code, tmp_path, "full_size")
    assert_clean(path)
    with torch.device("meta"):
        generated = getattr(module, class_name(full.spec))()
    shapes = {key: tuple(value.shape) for key, value in full.module.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in generated.state_dict().items()} == shapes
    assert "# (B, " in full_code                      # shape comments in forward

    overrides = SHRINK.get(spec_path.stem, {})
    if not overrides:
        assert count_parameters(full.module) <= CPU_PARAMETER_LIMIT, f"add a SHRINK entry for {spec_path.stem}"
    torch.manual_seed(0)
    compiled = compile(spec_path, **overrides)
    assert_same_model(compiled, codegen(spec_path, **overrides), tmp_path, seed=0)


def test_sizes_are_written_out_and_blocks_become_classes() -> None:
    code = codegen(ROOT / "specs" / "resnet18.yaml", image_size=64)
    assert "class BasicBlock(nn.ModuleDict):" in code
    assert "def __init__(self, channels: int) -> None:" in code          # the block's arg
    assert "class DownBlock(nn.ModuleDict):" in code
    assert "def __init__(self, in_channels: int, channels: int) -> None:" in code   # differs between uses
    assert "self.fc = nn.Linear(512, 1000)" in code
    assert "DownBlock(in_channels=64, channels=128)" in code
    assert "x = self.layer2(x)  # (B, 128, 8, 8)" in code
    assert "h = self.conv1(x)  # (B, channels, ?, ?)" in code   # a dim that differs per use; torchvision names


def test_plain_chains_become_sequentials_and_skips_keep_their_names() -> None:
    code = codegen(ROOT / "specs" / "unet.yaml")
    assert "class DoubleConv(nn.Sequential):" in code
    assert "down1 = self.down1(image)  # (B, 16, 64, 64)" in code
    assert "x = torch.cat([x, down1], dim=1)  # (B, 32, 64, 64)" in code


FEATURES = """
name: features_tour
imports: [user_layers.Scale]
inputs:
  a: {shape: [8, 16]}
  b: {shape: [16]}
vars: {dim: 16}
blocks:
  mixer:
    args: {width: null}
    layers:
      - Linear: {out_features: $width}
        name: proj
      - chunk: {chunks: 2, dim: -1}
      - getitem: 0
        name: first
      - mul: {other: 2.0}
      - add: {}
        from: [first, 3]
  gate:                      # functions only: no module, written inline
    layers:
      - sigmoid
      - mul: {}
        from: [a, 0]
  fuse:                      # two inputs, and a repeat whose count is a block arg
    args: {n: 1}
    layers:
      - Linear: {out_features: 16}
        repeat: $n
        name: stack
      - add: {}
        from: [stack, b]
      - Scale: {}
layers:
  - MultiheadAttention: {num_heads: 2, batch_first: true}
    name: attn
  - mixer: {width: $(dim * 2)}
    name: mix
  - gate
  - Linear: {out_features: 16}
    name: shared_proj
  - Linear: {out_features: 16}
    share: shared_proj
    name: again
  - parallel:
      left: [mean: {dim: 1}]
      right: [amax: {dim: 1}]
    merge: list
    name: pools
  - getitem: 1
    from: pools
  - fuse: {n: 1}
  - fuse: {n: 2}
  - parallel:
      p: [Linear: {out_features: 4}]
      q: [Linear: {out_features: 4}, ReLU]
    merge: max
    name: maxed
  - reshape: [2, 2]
  - permute: [0, 2, 1]
  - softmax: {dim: -1}
    name: probs
  - Linear: {out_features: 3}
    repeat: 3
    name: rep
  - Linear: {out_features: 3, bias: false}
    name: head
outputs: [probs, head, attn]
tie: {head.weight: rep.2.weight}
init: {Linear: xavier_uniform, bias: zeros, "rep.*": {normal: {std: 0.02}}}
"""


def test_the_spec_features_the_examples_do_not_use(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))          # `imports: [user_layers.Scale]`
    torch.manual_seed(1)
    compiled = compile(FEATURES)
    code = codegen(FEATURES)
    assert_same_model(compiled, code, tmp_path, seed=1)
    result = subprocess.run([sys.executable, "-m", "pyflakes", str(tmp_path / "generated_model.py")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "from user_layers import Scale" in code
    assert "class Fuse(nn.ModuleDict):" in code and "class Fuse2(nn.ModuleDict):" in code   # 1 vs 2 layers
    assert "def forward(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:" in code
    assert "attn = self.attn(a, a, a, need_weights=False)[0]" in code
    assert "again = self.shared_proj(x)" in code   # `share:` calls the same module
    assert "self.head.weight = self.rep[2].weight" in code
    assert "nn.init.normal_(parameter, std=0.02)" in code


FREE_TENSORS = """
name: free_tensors
inputs: {x: {shape: [4, 8]}, index: {shape: [4, 2], dtype: long}}
vars: {extra: false}
blocks:
  scaled:                        # a block holding a buffer: its class registers it
    args: {n: null}
    layers:
      - Identity:
        name: given
      - buffer: {ones: [$n]}
        name: scale
      - mul: {}
        from: [given, scale]
layers:
  - parameter: {shape: [1, 1, 8], init: {normal: {std: 0.5}}, batch: true}
    name: token
  - cat: 1
    from: [token, x]
  - Linear: {out_features: 8}
    name: proj
  - Linear: {out_features: 8}
    if: $extra                   # skipped: nothing of it is written
  - constant: {value: [[1.0, 0.0], [0.0, 2.0]], dtype: float32}
    name: mix
  - expand: [2, 2]
    name: mixes
  - constant: {zeros: [5, 8]}
    name: offset
  - add: {}
    from: [proj, offset]
    name: shifted
  - gather: {dim: 2}
    from: [shifted, index]
    name: picked
  - einsum: "bij,bjk->bik"
    from: [picked, mixes]
  - to: float64
  - scaled: {n: 2}
    name: scaled
  - attention: {heads: 2, scale: 1.0}
    from: [proj, proj, proj]
    name: attended
outputs: [scaled, attended]
"""


def test_free_tensors_attention_and_if_are_written(tmp_path: Path) -> None:
    torch.manual_seed(3)
    compiled = compile(FREE_TENSORS)
    code = codegen(FREE_TENSORS)
    assert_same_model(compiled, code, tmp_path, seed=3)
    assert_clean(tmp_path / "generated_model.py")
    assert 'self.register_parameter("token", nn.Parameter(nn.init.normal_(torch.zeros(1, 1, 8), std=0.5)))' in code
    assert 'self.register_buffer("mix", torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float32).unsqueeze(0), ' \
           'persistent=False)' in code
    assert 'self.register_buffer("scale", torch.ones(n))' in code     # the block's arg, exactly as written
    assert "token = self.token.expand(x.shape[0], *self.token.shape[1:])  # (B, 1, 8)" in code
    assert "torch.gather(" in code and 'torch.einsum("bij,bjk->bik", ' in code and ".to(torch.float64)" in code
    assert "def attention(q: torch.Tensor" in code            # the helper the Attention layer calls
    assert list(compiled.module.state_dict()) == ["token", "proj.weight", "proj.bias", "scaled.scale"]


def test_block_args_written_in_the_spec_stay_args(tmp_path: Path) -> None:
    spec = """
name: blocks
inputs: {x: {shape: [3, 16, 16]}}
blocks:
  conv_bn:
    args: {out: null, k: 3}
    layers:
      - Conv2d: {out_channels: $out, kernel_size: $k, padding: same}
      - BatchNorm2d
      - ReLU
layers:
  - conv_bn: {out: 8}
  - conv_bn: {out: 8}
  - conv_bn: {out: 16, k: 5}
"""
    code = codegen(spec)
    assert "class ConvBn(nn.Sequential):" in code
    assert "def __init__(self, in_channels: int, out: int, k: int) -> None:" in code
    assert "nn.Conv2d(in_channels, out, k, padding=\"same\")" in code
    assert "nn.BatchNorm2d(out)" in code                           # inferred: follows `out`
    assert 'self["2"] = ConvBn(in_channels=8, out=16, k=5)' in code
    torch.manual_seed(0)
    assert_same_model(compile(spec), code, tmp_path, seed=0)


def test_cli_writes_or_prints_the_code(tmp_path: Path) -> None:
    runner = CliRunner()
    output = tmp_path / "model.py"
    spec = str(ROOT / "specs" / "mlp.yaml")
    result = runner.invoke(app, ["codegen", spec, "-o", str(output), "--set", "hidden=32"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    assert output.read_text() == codegen(spec, hidden=32)
    assert "--set hidden=32" in output.read_text()                # the header says how it was made
    printed = runner.invoke(app, ["codegen", spec])
    assert printed.exit_code == 0 and "class Mlp(nn.ModuleDict):" in printed.output


def test_cli_reports_spec_errors_at_their_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("inputs:\n  x: {shape: [4]}\nlayers:\n  - Linear: {out_feature: 3}\n")
    result = CliRunner().invoke(app, ["codegen", str(broken)])
    assert result.exit_code == 2
    assert f"{broken}:4:" in result.output and "out_features" in result.output


def test_specc_codegen_is_callable_in_any_import_order() -> None:
    import specc
    import specc.export.eject  # noqa: F401 - a submodule import must not hide the function

    assert specc.codegen(ROOT / "specs" / "mlp.yaml") == codegen(ROOT / "specs" / "mlp.yaml")
