"""Every example in specs/ is documentation and a test: it opens with a comment on how to run it,
compiles, runs forward with the shapes the dry run promised, and the classic models have their
exact published parameter counts. specs/errors/ holds mistakes that must fail as their header says.

The list of specs is globbed at collection time, so a spec added to specs/ is tested too.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from specc.build.compiler import compile as compile_spec
from specc.lang.errors import SpecError
from specc.build.expect import count_parameters

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC_FILES = sorted(SPECS.glob("*.yaml"))
ERROR_SPEC_FILES = sorted((SPECS / "errors").glob("*.yaml"))

# Above this many parameters a spec is only built on the meta device (llama2_7b would need 27 GB).
META_ONLY_PARAMETERS = 1e9
# Above this many, the CPU forward uses one example instead of two (gpt2_small: seconds per example).
SINGLE_EXAMPLE_PARAMETERS = 1e8

# Exact counts, worked out by hand (weights + biases), so a change in the spec language that alters
# a model shows up here.
PARAMETER_COUNTS = {
    # conv1 1*32*9+32, conv2 32*64*9+64, fc1 9216*128+128, fc2 128*10+10 (PyTorch examples' Net)
    "mnist_net": 1_199_882,
    # torchvision.models.resnet18(): sum(p.numel() for p in model.parameters())
    "resnet18": 11_689_512,
    # 784*256+256, 2 * (256*256+256), 256*10+10
    "mlp": 335_114,
    # branch a 3*6*25+6, branch b 3*6*9+6, head 12*16*16*10+10
    "parallel_cnn": 31_354,
    # embedding 10000*100, LSTM layer 1 4*128*(100+128)+2*4*128, layer 2 4*128*(128+128)+2*4*128, head 128*2+2
    "lstm_classifier": 1_250_114,
}


@lru_cache(maxsize=None)
def parameter_count_on_meta(path: Path) -> int:
    return count_parameters(compile_spec(path, device="meta").module)


def spec_id(path: Path) -> str:
    return path.stem


@pytest.mark.parametrize("path", SPEC_FILES, ids=spec_id)
def test_spec_compiles_and_runs_forward_with_dry_run_shapes(path):
    parameters = parameter_count_on_meta(path)
    device = "meta" if parameters > META_ONLY_PARAMETERS else "cpu"
    batch_size = 1 if parameters > SINGLE_EXAMPLE_PARAMETERS else 2
    compiled = compile_spec(path, device=device, batch_size=batch_size)
    model = compiled.module.eval()
    with torch.no_grad():
        outputs = model(*compiled.example_inputs(batch_size=batch_size))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    promised = [compiled.graph[name].shape for name in compiled.graph.outputs]
    assert [tuple(output.shape) for output in outputs] == promised
    assert all(output.device.type == device for output in outputs)
    if device == "cpu":
        assert all(torch.isfinite(output).all() for output in outputs if output.is_floating_point())


@pytest.mark.parametrize("path", SPEC_FILES, ids=spec_id)
def test_spec_opens_with_a_comment_on_how_to_run_it(path):
    header = _header(path)
    assert header, f"{path.name} must open with a comment saying what it is"
    assert re.search(rf"specc \w+ specs/{re.escape(path.name)}", header), "show a `specc <command> specs/...` line"


@pytest.mark.parametrize("name, expected", PARAMETER_COUNTS.items())
def test_exact_parameter_counts(name, expected):
    compiled = compile_spec(SPECS / f"{name}.yaml", device="meta")
    assert count_parameters(compiled.module) == expected


def test_mnist_net_output_is_ten_scores():
    compiled = compile_spec(SPECS / "mnist_net.yaml", device="meta")
    assert [compiled.graph[name].feature_shape for name in compiled.graph.outputs] == [(10,)]


def test_resnet18_at_224_runs_on_cpu_with_imagenet_classes():
    model = compile_spec(SPECS / "resnet18.yaml").module.eval()
    with torch.no_grad():
        scores = model(torch.randn(1, 3, 224, 224))
    assert scores.shape == (1, 1000)


def test_unet_output_keeps_the_image_size_and_its_skips_are_concatenations():
    compiled = compile_spec(SPECS / "unet.yaml", device="meta", image_size=32)
    assert compiled.graph[compiled.graph.outputs[0]].feature_shape == (2, 32, 32)
    skip_inputs = [node.inputs for node in compiled.graph.nodes if node.target == "cat"]
    assert len(skip_inputs) == 2 and all(len(inputs) == 2 for inputs in skip_inputs)


def test_conv_autoencoder_reconstructs_the_input_shape_in_unit_range():
    compiled = compile_spec(SPECS / "conv_autoencoder.yaml")
    image = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        reconstruction = compiled.module(image)
    assert reconstruction.shape == image.shape
    assert 0 <= reconstruction.min() and reconstruction.max() <= 1


# ----- specs/errors: each must fail with the error its header quotes -------------------------------
@pytest.mark.parametrize("path", ERROR_SPEC_FILES, ids=spec_id)
def test_error_spec_fails_with_the_errors_its_header_shows(path):
    quoted = _quoted_errors(path)
    assert quoted, f"{path.name}: quote the expected error(s) in the header comment"
    with pytest.raises(SpecError) as raised:
        compile_spec(path, device="meta")
    reported = [_as_in_header(problem, path) for problem in raised.value.problems]
    assert reported[0] == quoted[0]
    assert set(quoted) <= set(reported)


def test_the_error_specs_exist():
    # the glob above would silently collect nothing if specs/errors moved
    assert {"parallel_cnn_mismatch.yaml", "typos.yaml"} <= {path.name for path in ERROR_SPEC_FILES}


def _as_in_header(problem, path: Path) -> str:
    """`/abs/specs/errors/x.yaml:3:5: message` -> `x.yaml:3:5: message` (first line only)."""
    assert Path(problem.location.file).name == path.name
    return str(problem).replace(problem.location.file, path.name, 1).splitlines()[0]


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# ").rstrip())
    return "\n".join(header)


def _quoted_errors(path: Path) -> list[str]:
    """Lines in the header shaped like `file.yaml:L:C: message`."""
    pattern = re.compile(rf"{re.escape(path.name)}:\d+:\d+: .+")
    return [match.group(0).strip() for line in _header(path).splitlines() if (match := pattern.search(line))]
