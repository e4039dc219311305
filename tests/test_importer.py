"""`specc.from_module` / `specc import`: an existing nn.Module as a spec, round trip exact.

The imported spec builds a model with the module's parameter count, state_dict keys (in order)
and shapes, and with the module's weights computes the same outputs. Tried on hand-written
modules in the style of torchvision's ResNet and MobileNet and of nanoGPT (tests/import_models.py)
and on every `specc codegen` output of specs/.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import specc
from specc.build.compiler import class_name, compile
from specc.export.eject import codegen

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import import_models as models  # noqa: E402
from test_codegen import SHRINK, SPECS  # noqa: E402


def assert_round_trip(original: nn.Module, inputs: tuple, ordered: bool = True) -> dict:
    """Import, build, load the original's weights: same keys (in order unless `ordered` is False:
    a spec registers layers in the order they are called), shapes, count and outputs. Returns the spec."""
    original.eval()
    text = specc.from_module(original, inputs)
    built = specc.build(text).eval()
    shapes = lambda model: [(key, tuple(value.shape)) for key, value in model.state_dict().items()]  # noqa: E731
    if ordered:
        assert shapes(built) == shapes(original)
    assert dict(shapes(built)) == dict(shapes(original))
    assert sum(p.numel() for p in built.parameters()) == sum(p.numel() for p in original.parameters())
    built.load_state_dict(original.state_dict())
    with torch.no_grad():
        expected, actual = original(*inputs), built(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = actual if isinstance(actual, tuple) else (actual,)
    for want, got in zip(expected, actual, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    return yaml.safe_load(text)


def test_resnet_style_blocks_become_one_block_repeated_and_residuals_with_downsample():
    torch.manual_seed(0)
    spec = assert_round_trip(models.TinyResNet(), (torch.randn(2, 3, 32, 32),))
    layers = {item.get("name"): item for item in spec["layers"] if isinstance(item, dict)}
    assert layers["conv1"] == {"Conv2d": {"out_channels": 8, "kernel_size": 7, "stride": 2, "padding": 3, "bias": False},
                               "name": "conv1"}                       # in_channels left to inference
    assert layers["layer1"] == {"basic_block": {}, "repeat": 2, "name": "layer1"}
    residual = spec["blocks"]["basic_block"]["layers"][0]
    assert residual["flat"] is True and residual["names"] == {"body": ""}
    assert [part.get("name") for part in residual["residual"]] == ["conv1", "bn1", "relu", "conv2", "bn2"]
    downsampling = layers["layer2"]["sequential"][0]["sequential"][0]
    assert downsampling["names"] == {"body": "", "shortcut": "downsample"}
    assert downsampling["shortcut"] == [{"Conv2d": {"out_channels": 16, "kernel_size": 1, "stride": 2, "bias": False}},
                                        "BatchNorm2d"]
    assert "flatten" in spec["layers"]


def test_mobilenet_style_depthwise_hardswish_squeeze_excitation_and_inverted_residuals():
    torch.manual_seed(0)
    spec = assert_round_trip(models.TinyMobileNet(), (torch.randn(2, 3, 32, 32),))
    text = yaml.safe_dump(spec)
    assert "groups: 16" in text and "Hardswish" in text and "Hardsigmoid" in text
    inverted = spec["layers"][0]["sequential"][1]["sequential"][0]     # features.1: x + block(x)
    assert inverted["flat"] is True and inverted["names"] == {"body": ""}
    squeeze = inverted["residual"][0]["sequential"][2]["sequential"]   # features.1.block.2: the SE module
    assert squeeze[-1] == {"mul": {}, "from": ["scale_activation", "features.1.block.1.2"]}


def test_nanogpt_style_keeps_the_attention_class_it_cannot_express_as_an_import():
    torch.manual_seed(0)
    spec = assert_round_trip(models.TinyGPT(), (torch.randint(0, 64, (2, 16)),))
    assert spec["inputs"] == {"idx": {"shape": [16], "dtype": "long"}}
    assert spec["imports"] == ["import_models.CausalSelfAttention"]   # scaled_dot_product_attention: no spec function
    block = spec["blocks"]["block"]["layers"]
    assert block[0]["residual"][1] == {"CausalSelfAttention": {"n_embd": 32, "n_head": 4}, "name": "attn"}
    assert block[1]["residual"][1] == {"mlp": {}, "name": "mlp"}       # the MLP class, one block used twice
    assert spec["layers"][0]["sequential"][2] == {"block": {}, "repeat": 2, "name": "h"}
    assert spec["tie"] == {"lm_head.weight": "transformer.wte.weight"}


def test_untraceable_control_flow_stays_an_import_of_its_class():
    torch.manual_seed(0)
    spec = assert_round_trip(models.GatedMLP(), (torch.randn(2, 6),))
    assert spec["imports"] == ["import_models.SignGate"]
    assert spec["layers"][1] == {"SignGate": {"features": 8}, "name": "gate"}


def test_functional_ops_become_spec_functions():
    torch.manual_seed(0)
    spec = assert_round_trip(models.Functional(), (torch.randn(2, 3, 8, 8),))
    ops = [next(iter(item)) if isinstance(item, dict) else item for item in spec["layers"]]
    assert ops == ["Conv2d", "gelu", "Conv2d", "sigmoid", "mul", "cat", "permute", "contiguous", "view", "Linear", "softmax"]
    assert spec["layers"][1] == {"gelu": {"approximate": "tanh"}}
    assert spec["layers"][2]["from"] == "x" and spec["layers"][4] == {"mul": {"other": 0.5}}
    assert spec["layers"][5] == {"cat": {}, "from": ["1", "4"]}
    assert spec["layers"][8] == {"view": [512]}                         # without the batch dim


def test_importing_leaves_the_module_as_it_was():
    model = models.TinyResNet().train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    specc.from_module(model, (torch.randn(2, 3, 32, 32),))
    assert model.training and all(module.training for module in model.modules())
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_a_class_that_cannot_be_imported_is_a_clear_error():
    class Local(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    wrapper = nn.Sequential(nn.Linear(2, 2), Local())
    with pytest.raises(ValueError, match="1: .*Local cannot be traced and is not importable"):
        specc.from_module(wrapper, (torch.randn(2, 2),))


# Specs whose codegen output the importer cannot express yet, as {stem: reason}: strict xfails
# (none today: every spec in specs/ round-trips).
IMPORT_PENDING: dict[str, str] = {
    "diffusion_unet": "the importer writes no dotted names yet: calls into mid_block.resnets interleave with "
                      "mid_block.attentions (diffusers' run order)",
}


@pytest.mark.parametrize("spec_path", [
    pytest.param(path, marks=pytest.mark.xfail(strict=True, reason=IMPORT_PENDING[path.stem]))
    if path.stem in IMPORT_PENDING else path for path in SPECS], ids=[path.stem for path in SPECS])
def test_codegen_then_import_gives_the_same_model(spec_path: Path, tmp_path: Path):
    overrides = SHRINK.get(spec_path.stem, {})
    torch.manual_seed(0)
    compiled = compile(spec_path, **overrides)
    code_path = tmp_path / f"generated_{spec_path.stem}.py"
    code_path.write_text(codegen(spec_path, **overrides))
    loader = importlib.util.spec_from_file_location(code_path.stem, code_path)
    generated = importlib.util.module_from_spec(loader)
    sys.modules[code_path.stem] = generated
    loader.loader.exec_module(generated)
    original = getattr(generated, class_name(compiled.spec))()
    original.load_state_dict(compiled.module.state_dict())
    # llama2_7b's generated FeedForward registers w1, w2, w3 and calls w1, w3, w2
    assert_round_trip(original, compiled.example_inputs(2), ordered=spec_path.stem != "llama2_7b")


def test_cli_writes_a_spec_that_builds(tmp_path: Path):
    output = tmp_path / "resnet.yaml"
    environment = {"PYTHONPATH": f"{TESTS.parent}:{TESTS}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "specc", "import", "import_models:TinyResNet", "--args",
                             '{"n_classes": 5}', "--input-shape", "3,32,32", "-o", str(output)],
                            capture_output=True, text=True, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {output}")
    model = specc.build(output)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("arguments, message", [
    (["nope:Model", "--input-shape", "3"], "cannot import nope:Model"),
    (["import_models", "--input-shape", "3"], "is not module:callable"),
    (["import_models:TinyResNet", "--input-shape", "3,x"], "sizes must be integers"),
    (["import_models:TinyResNet", "--input-shape", "3,32,32", "--args", "7"], "--args must be a JSON list"),
])
def test_cli_mistakes_exit_2_with_one_line(arguments, message, tmp_path: Path):
    environment = {"PYTHONPATH": f"{TESTS.parent}:{TESTS}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "specc", "import", *arguments], capture_output=True, text=True,
                            env=environment, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_codegen_branches_and_residuals_come_back_as_parallel_and_residual(tmp_path: Path):
    """codegen writes containers as ModuleDicts it never calls; the import finds the structures again."""
    spec = """
name: shapes
inputs: {x: {shape: [3, 8, 8]}}
layers:
  - parallel:
      a: [Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}]
      b: [Conv2d: {out_channels: 4, kernel_size: 1}, ReLU]
    merge: {cat: {dim: 1}}
    name: branches
  - residual:
      - Conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
      - relu
    name: res
  - residual:
      - Conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
    shortcut:
      - Conv2d: {out_channels: 8, kernel_size: 1}
    name: down
"""
    code_path = tmp_path / "generated_shapes.py"
    code_path.write_text(codegen(spec))
    loader = importlib.util.spec_from_file_location(code_path.stem, code_path)
    generated = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(generated)
    torch.manual_seed(0)
    imported = assert_round_trip(generated.Shapes(), (torch.randn(2, 3, 8, 8),))
    assert imported["layers"] == yaml.safe_load(spec)["layers"]      # the very spec it came from


def test_the_written_spec_is_checked_against_the_module(monkeypatch):
    """from_module builds what it wrote on meta: a layer read back wrong is an error, not a quiet difference."""
    import specc.export.importer as importer

    def forgetful(module, infer=True):
        layer, kwargs = read_back(module, infer)
        kwargs.pop("bias", None)
        return layer, kwargs

    read_back = importer.layer_item
    monkeypatch.setattr(importer, "layer_item", forgetful)
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    with pytest.raises(ValueError, match="the imported spec's weights differ from the module's: 0.bias"):
        specc.from_module(model, (torch.randn(2, 4),))
    assert "bias" not in specc.from_module(model, (torch.randn(2, 4),), check=False)


def test_a_function_between_a_submodules_calls_moves_into_its_list():
    torch.manual_seed(0)
    spec = assert_round_trip(models.Interleaved(), (torch.randn(2, 8),))
    # x + norm(x), at the top level of the forward, joins block's list: there it is a residual
    residual = {"residual": [{"LayerNorm": {}, "name": "norm"}], "flat": True, "names": {"body": ""}}
    assert spec["layers"][0] == {"sequential": [residual, {"Linear": {"out_features": 8}, "name": "proj"}],
                                 "name": "block"}


def test_layers_of_two_submodules_called_in_turn_are_a_clear_error():
    with pytest.raises(ValueError, match="cannot import Alternating: calls into a interleave with other calls"):
        specc.from_module(models.Alternating(), (torch.randn(2, 4),))


def test_tensors_used_directly_become_parameters_and_buffers():
    torch.manual_seed(0)
    spec = assert_round_trip(models.Tokens(), (torch.randn(2, 3, 4),))
    layers = spec["layers"]
    # parameters and buffers keep their exact shapes: the module's state_dict is the spec's
    assert layers[1] == {"parameter": {"shape": [1, 1, 8], "batch": True}, "from": "proj", "name": "token"}
    assert {"parameter": {"shape": [1, 4, 8]}, "name": "scale"} in layers
    assert {"buffer": {"value": [[0.0, 1.0, 2.0, 3.0]]}, "name": "positions"} in layers
    # a [8] weight used directly (RMSNorm's, GRN's) is a parameter of that shape: the class is traced through
    assert "imports" not in spec
    assert layers[-1]["name"] == "norm" and {"parameter": {"shape": [8]}, "name": "weight"} in layers[-1]["sequential"]


def test_a_numbered_layer_after_other_items_keeps_its_path():
    torch.manual_seed(0)
    spec = assert_round_trip(models.NumberedAfterFunctions(), (torch.randn(2, 8),))
    gathered, numbered = spec["layers"]
    assert gathered["flat"] is True and [item["name"] for item in gathered["sequential"]] == ["inp", "relu", "mul"]
    assert numbered == {"Linear": {"out_features": 8}}                # layers.1: state_dict key 1.weight


def test_codegens_copy_of_specc_attention_comes_back_as_the_attention_item(tmp_path: Path):
    spec = """
name: attn
inputs: {x: {shape: [6, 8]}}
layers:
  - Linear: {out_features: 8}
    name: q
  - Linear: {out_features: 8}
    from: x
    name: k
  - attention: {heads: 2, causal: true}
    from: [q, k, k]
"""
    code_path = tmp_path / "generated_attn.py"
    code_path.write_text(codegen(spec))
    loader = importlib.util.spec_from_file_location(code_path.stem, code_path)
    generated = importlib.util.module_from_spec(loader)
    sys.modules[code_path.stem] = generated           # imported, as `specc import` does: its source is found
    loader.loader.exec_module(generated)
    torch.manual_seed(0)
    imported = assert_round_trip(generated.Attn(), (torch.randn(2, 6, 8),))
    assert "imports" not in imported
    assert imported["layers"][2] == {"attention": {"heads": 2, "causal": True}, "from": ["q", "k", "k"]}


# ----- other libraries' subclasses of torch.nn layers (timm's LayerNorm, LayerNorm2d) ----------------------
def test_library_subclasses_of_torch_layers_import_as_the_layer_they_compute():
    torch.manual_seed(0)
    model = models.ConvNeXtLike()
    for parameter in model.parameters():      # norm weights not at 1, biases not at 0
        parameter.data.add_(torch.randn_like(parameter) * 0.1)
    spec = assert_round_trip(model, (torch.randn(2, 3, 32, 32),), ordered=False)
    assert "imports" not in spec
    text = yaml.safe_dump(spec, default_flow_style=None)
    assert text.count("LayerNorm2d: {eps: 1.0e-06}") == 2        # stem and downsample: specc's LayerNorm2d
    assert text.count("LayerNorm: {eps: 1.0e-06}") == 3          # two blocks and the head: nn.LayerNorm
    assert "shape: [8]" in text and "shape: [16]" in text          # the [C] layer scales, their exact shapes
    assert text.count("- {unsqueeze: 0}") == 2                     # gamma.reshape(1, -1, 1, 1), as unsqueezes


def test_a_subclass_that_computes_something_else_is_kept_as_an_import():
    torch.manual_seed(0)
    spec = assert_round_trip(models.ScaledHead(), (torch.randn(2, 8),))
    assert spec["imports"] == ["import_models.LibraryScaledLinear"]
    assert spec["layers"][-1] == {"LibraryScaledLinear": {"in_features": 8, "out_features": 4}, "name": "head"}


@pytest.mark.parametrize("library, name, shape", [
    ("torchvision.models", "resnet18", (3, 64, 64)),
    ("torchvision.models", "mobilenet_v3_small", (3, 64, 64)),
    ("timm", "resnet50d", (3, 64, 64)),
    ("timm", "convnext_tiny", (3, 64, 64)),
])
def test_published_models_round_trip(library: str, name: str, shape: tuple):
    """specc import -> build: the same keys, parameter count and outputs as the library's model."""
    package = pytest.importorskip(library.split(".")[0], reason=f"{library.split('.')[0]} is not installed")
    torch.manual_seed(0)
    if library == "timm":
        model = package.create_model(name, pretrained=False)
    else:
        model = getattr(importlib.import_module(library), name)()
    assert_round_trip(model, (torch.randn(2, *shape),), ordered=False)
