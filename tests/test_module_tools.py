"""Tools that read nn.Modules see a compiled spec as the spec is written.

The containers of a compiled spec (block uses, sequentials, parallels and their branches,
residuals, repeats) are real submodules called in forward, so torchinfo (behind
`specc.summary(nn.Module)`), torchview and forward hooks see the nesting with real shapes, while
the state_dict keys stay the spec's paths.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torchinfo
from torch import nn

import specc
from specc.build.forward import Container, SpecContainer

SPECS = Path(__file__).resolve().parents[1] / "specs"
CONTAINER_KINDS = {"block", "parallel", "branch", "residual", "shortcut", "sequential", "repeat"}
TINY_GPT2 = {"vocab_size": 64, "block_size": 16, "dim": 32, "n_layers": 2, "n_heads": 4}


def spec_rows(compiled) -> list[tuple]:
    """specc's own summary: (depth, name, output shape, params) of every layer and container row."""
    result = specc.summary(compiled.spec, expand=True, batch_size=2, input_shapes=compiled.input_shapes())
    return [(row.depth, row.name, row.shape, row.params) for row in result.rows
            if row.kind == "layer" or row.kind in CONTAINER_KINDS]


def torchinfo_rows(compiled) -> list[tuple]:
    """torchinfo's rows of the compiled module (through `specc.summary(nn.Module)`), in the summary's
    conventions: a residual's body sits right under the residual, a layer's own submodules
    (TransformerEncoderLayer.self_attn, ...) are the layer's business."""
    layers = {node.name for node in compiled.graph.nodes if node.op == "module"}
    result = specc.summary(compiled.module, input_data=list(compiled.example_inputs(2)))
    rows, bodies, inside_layer = [], [], None
    for row in result.rows[1:]:                 # rows[0] is the model itself
        if inside_layer is not None and row.depth > inside_layer:
            continue
        inside_layer = row.depth if row.path in layers else None
        while bodies and bodies[-1] >= row.depth:
            bodies.pop()
        if row.type == "Body":
            bodies.append(row.depth)
            continue
        rows.append((row.depth - 1 - len(bodies), row.name, row.shape, row.params))
    return rows


@pytest.mark.parametrize("spec, variables", [
    ("parallel_cnn", {}), ("mlp", {}), ("unet", {}), ("conv_autoencoder", {}), ("mnist_net", {}),
    ("transformer_encoder", {}), ("gpt2_small", TINY_GPT2), ("mobilenet_v3_small", {}),
])
def test_torchinfo_shows_the_hierarchy_and_shapes_of_specc_summary(spec, variables):
    compiled = specc.compile(SPECS / f"{spec}.yaml", **variables)
    expected = spec_rows(compiled)
    assert torchinfo_rows(compiled) == expected


def test_parallel_cnn_under_torchinfo_row_by_row():
    model = specc.build(SPECS / "parallel_cnn.yaml")
    statistics = torchinfo.summary(model, input_size=(2, 3, 32, 32), verbose=0, depth=10)
    rows = [(layer.class_name, layer.var_name, layer.depth, layer.output_size) for layer in statistics.summary_list]
    assert rows == [("ParallelCnn", "ParallelCnn", 0, [2, 10]),
                    ("Parallel", "branches", 1, [2, 12, 32, 32]),
                    ("Branch", "a", 2, [2, 6, 32, 32]), ("Conv2d", "0", 3, [2, 6, 32, 32]),
                    ("Branch", "b", 2, [2, 6, 32, 32]), ("Conv2d", "0", 3, [2, 6, 32, 32]),
                    ("ReLU", "1", 1, [2, 12, 32, 32]), ("MaxPool2d", "2", 1, [2, 12, 16, 16]),
                    ("Flatten", "3", 1, [2, 3072]), ("Linear", "head", 1, [2, 10])]
    assert statistics.total_params == 31_354


def test_resnet18_with_torchvision_paths_has_every_container_called():
    """`flat:` / `names:` give torchvision's paths; torchinfo then shows torchvision's nesting
    (layer1.0 is the block, its downsample a called submodule), every row with a real shape."""
    compiled = specc.compile(SPECS / "resnet18.yaml")
    statistics = torchinfo.summary(compiled.module, input_size=(1, 3, 224, 224), verbose=0, depth=10)
    assert all(layer.executed for layer in statistics.summary_list)
    paths = {name for name, _ in compiled.module.named_modules()}
    rows = {}
    for layer in statistics.summary_list[1:]:
        parents = [row for row in rows.values() if row[1] == layer.depth - 1]
        prefix = parents[-1][0] + "." if layer.depth > 1 else ""
        rows[id(layer)] = (prefix + layer.var_name, layer.depth, layer.class_name, layer.output_size)
    by_path = {path: (depth, kind, shape) for path, depth, kind, shape in rows.values()}
    assert set(by_path) == paths - {""}
    assert by_path["layer1"] == (1, "Repeat", [1, 64, 56, 56])
    assert by_path["layer2.0"] == (2, "DownBlock", [1, 128, 28, 28])
    assert by_path["layer2.0.downsample"] == (3, "Shortcut", [1, 128, 28, 28])
    assert by_path["layer4.1.conv2"] == (3, "Conv2d", [1, 512, 7, 7])
    assert statistics.total_params == 11_689_512


def test_no_container_is_left_uncalled_in_the_example_specs():
    for spec in ["mlp", "parallel_cnn", "resnet18", "unet", "mobilenet_v3_small"]:
        model = specc.build(SPECS / f"{spec}.yaml", device="meta")
        assert [name for name, module in model.named_modules() if type(module) is Container] == [], spec


def test_forward_hooks_fire_once_per_container_call():
    model = specc.build(SPECS / "mlp.yaml")
    calls = []
    for name, module in model.named_modules():
        if isinstance(module, SpecContainer):
            module.register_forward_hook(lambda module, args, output, name=name: calls.append((name, tuple(output.shape))))
    model(torch.randn(3, 784))
    assert calls == [("hidden.0", (3, 256)), ("hidden.1", (3, 256)), ("hidden.2", (3, 256)), ("hidden", (3, 256))]
    assert "self.hidden(features)" in model.code and "self.linear(x)" in model.hidden.get_submodule("0").code


NESTED = """
inputs: {x: {shape: [8]}}
blocks:
  scaled:
    layers:
      - Linear: [8]
        name: fc
      - constant: {ones: [8]}
        name: factor
      - mul:
        from: [fc, factor]
      - parameter: {shape: [8], init: ones}
        name: shift
      - add:
        from: [2, shift]
layers:
  - residual:
      - Linear: [8]
        name: a
      - relu
    shortcut:
      - Linear: [8]
        name: b
    name: res
  - scaled: {}
    name: s
  - Linear: [8]
    name: shared
  - sequential:
      - Linear: [8]
        share: shared
      - tanh
    name: reuse
  - add:
    from: [res, reuse]
"""


def test_containers_with_several_inputs_outputs_and_shared_layers_compute_the_same():
    model = specc.build(NESTED).eval()
    x = torch.randn(4, 8)
    res = model.res.body.a(x).relu() + model.res.shortcut.b(x)
    scaled = model.s.fc(res) * 1.0 + model.s.shift
    reused = model.shared(model.shared(scaled)).tanh()
    torch.testing.assert_close(model(x), res + reused)
    assert type(model.res) is not Container and type(model.res.body) is not Container
    assert "reuse" not in dict(model.named_modules())   # it calls `shared`, which lives outside it: inlined
    assert list(model.state_dict()) == ["res.body.a.weight", "res.body.a.bias", "res.shortcut.b.weight",
                                        "res.shortcut.b.bias", "s.shift", "s.fc.weight", "s.fc.bias",
                                        "shared.weight", "shared.bias"]   # the constant is not saved


def test_deepcopy_keeps_constants_out_of_the_state_dict_and_the_forward_intact():
    model = specc.build(NESTED).eval()
    copied = copy.deepcopy(model)
    assert list(copied.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 8)
    torch.testing.assert_close(copied(x), model(x))
    assert copied.s is not model.s and copied.s.fc.weight is not model.s.fc.weight


def test_torch_export_and_compile_see_through_the_containers():
    model = specc.build(SPECS / "parallel_cnn.yaml").eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_torchview_draws_one_nested_box_per_container():
    torchview = pytest.importorskip("torchview")
    compiled = specc.compile(SPECS / "parallel_cnn.yaml")
    graph = torchview.draw_graph(compiled.module, input_data=compiled.example_inputs(2), expand_nested=True, depth=10)
    source = graph.visual_graph.source
    assert re.findall(r"label=(\w+)", source) == ["Parallel", "Branch", "Branch"]   # cluster titles
    assert re.findall(r"(\w+)<BR/>depth:(\d)", source)[1:4] == [("Conv2d", "3"), ("Conv2d", "3"), ("cat", "2")]


# ----- specc.summary(nn.Module) counts every parameter ------------------------------------------
class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x)[0])


def test_module_summary_counts_submodules_that_are_never_called():
    """MultiheadAttention uses out_proj's weights without calling out_proj: they belong on its row."""
    result = specc.summary(_Attention(), input_size=(2, 5, 64))
    assert [(row.name, row.params) for row in result.rows] == [("_Attention", 16_835), ("attn", 16_640), ("head", 195)]
    assert result.total_params == 16_835 == sum(row.params for row in result.rows[1:])


def test_module_summary_counts_a_called_child_on_its_own_row_only():
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 2)))
    result = specc.summary(model, input_size=(1, 4))
    assert [(row.depth, row.params) for row in result.rows] == [(0, 58), (1, 40), (1, 18), (2, 18)]
