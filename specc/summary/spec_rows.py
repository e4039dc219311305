"""Summary rows for a spec: one per spec item, nested the way the spec nests them.

The compiled graph is run one node at a time under a single FlopCounterMode, so every item gets
the FLOPs of its own call: a module reused with `share:` is counted at each call, and function
items (`matmul`, ...) count too. The sum equals FlopCounterMode on the whole compiled module.
"""
from __future__ import annotations

import operator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from specc.build.compiler import compile as compile_spec, load_model_spec
# the dry run's own helpers, so each item computes exactly what the compiled forward does
from specc.build.flop_rules import run_measured
from specc.build.infer import DTYPES
from specc.summary.rows import (Collected, InputInfo, LayerRow, SavedForBackward, count_parameters, flop_counter,
                                kernel_size, train_mode)
from specc.summary.saved_rules import run_by_rules

if TYPE_CHECKING:
    from specc.build.graph import Graph, Node, Scope


def collect_spec(spec: Any, batch_size: int, device: str | torch.device, input_shapes: Any,
                 variables: dict) -> Collected:
    """Compile the spec (vars overridden, inputs reshaped), run it item by item, nest the rows.

    Raises:
        SpecError: the spec does not compile.
        ValueError: `input_shapes` names an input the spec does not have.
    """
    loaded = load_model_spec(spec, variables, train_mistakes="warn")   # summaries never train
    compiled = compile_spec(loaded, device=device, batch_size=batch_size,
                            input_shapes=_named_shapes(input_shapes, list(loaded.inputs)))
    with _training_step_mode(compiled.module):
        outputs, flops, saved_bytes = _run_and_count(compiled.graph, compiled.module, compiled.device)
    root = _spec_tree(compiled.graph, compiled.module, outputs, flops)
    root.name = compiled.spec.display_name
    inputs = [InputInfo(node.name, list(node.shape), node.dtype) for node in compiled.graph.inputs]
    return Collected(root, compiled.module, inputs, sum(flops.values()), str(compiled.device), batch_size,
                     saved_bytes=saved_bytes)


def _run_and_count(graph: "Graph", module: nn.Module, device: torch.device) -> tuple[dict, dict, int]:
    """Outputs, FLOPs and the bytes autograd saves for backward: by rule where every item has one
    (saved_rules.py: no meta kernel runs, so no sympy/torch._dynamo import), else by running each
    item's kernels under saved-tensor hooks."""
    if device.type == "meta":
        saved = SavedForBackward(module)

        def model_input(node: "Node") -> torch.Tensor:
            value = _input_value(node, device)
            saved.exclude(value)   # the Input line counts it
            return value

        ruled = run_by_rules(graph, module, saved.add, model_input)
        if ruled is not None:
            values, flops = ruled
            outputs = {name: (_shape_of(value), _bytes_of(value)) for name, value in values.items()}
            return outputs, flops, saved.bytes
    with SavedForBackward(module) as saved, _fused_attention(device):
        outputs, flops = _run_nodes(graph, module, device, saved)
    return outputs, flops, saved.bytes


@contextmanager
def _training_step_mode(module: nn.Module) -> Iterator[None]:
    """Training mode, so the count of what autograd saves includes dropout's masks, as in a training
    step; batch norms stay in eval mode, so a batch of one still runs (they save the same input)."""
    with train_mode(module):
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()
        yield


@contextmanager
def _fused_attention(device: torch.device) -> Iterator[None]:
    """On meta, `scaled_dot_product_attention` takes the math path, which saves the T x T attention
    weights for backward; a real CPU or GPU runs a fused kernel that saves the output and its
    log-sum-exp only. Send it to CPU's fused kernel (same output, same FLOPs) so the count of what
    autograd saves is what a real device keeps."""
    if device.type != "meta":
        yield
        return
    from torch.overrides import TorchFunctionMode

    fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    class FusedAttention(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            names = ("attn_mask", "dropout_p", "is_causal", "scale")
            given = dict(zip(names, args[3:]), **kwargs)
            mask = given.get("attn_mask")
            # the fused CPU kernel has no gradient for a mask: a learned bias (T5's) takes the math path
            if func is torch.nn.functional.scaled_dot_product_attention and not kwargs.get("enable_gqa") \
                    and all(tensor.dim() == 4 for tensor in args[:3]) \
                    and not (isinstance(mask, torch.Tensor) and mask.requires_grad):
                return fused(*args[:3], given.get("dropout_p", 0.0), given.get("is_causal", False),
                             attn_mask=given.get("attn_mask"), scale=given.get("scale"))[0]
            return func(*args, **kwargs)

    with FusedAttention():
        yield


def _named_shapes(shapes: Any, input_names: list[str]) -> dict[str, list[int]] | None:
    """`[3, 64, 64]` means the only input; `{"x": [3, 64, 64]}` names it."""
    if shapes is None:
        return None
    if not isinstance(shapes, dict):
        if len(input_names) != 1:
            raise ValueError(f"the spec has inputs {', '.join(input_names)}: name the one to reshape (x=3,64,64)")
        shapes = {input_names[0]: shapes}
    unknown = [name for name in shapes if name not in input_names]
    if unknown:
        raise ValueError(f"no input named '{unknown[0]}'; the spec's inputs: {', '.join(input_names)}")
    return {name: [int(size) for size in shape] for name, shape in shapes.items()}


def _run_nodes(graph: "Graph", module: nn.Module, device: torch.device,
               saved: SavedForBackward) -> tuple[dict[str, tuple], dict[str, int]]:
    """Run the graph one node at a time, so each node gets the FLOPs of its own call (a module reused
    with `share:` is counted at each call, function items count too).

    Returns:
        `{node: (output shape, output bytes)}` and `{node: FLOPs}`.
    """
    last_use = {name: index for index, node in enumerate(graph.nodes) for name in node.inputs}
    values, outputs, flops = {}, {}, {}
    # Grad stays on: under no_grad, eval-mode MultiheadAttention and TransformerEncoderLayer take
    # PyTorch's fused inference fast path, whose kernels FlopCounterMode cannot count.
    for index, node in enumerate(graph.nodes):
        if node.op == "input":
            value, flops[node.name] = _input_value(node, device), 0
            saved.exclude(value)
        else:  # run for real (autograd saves what it saves), FLOPs by formula where flop_rules.py has one
            value, flops[node.name] = run_measured(node, [values[name] for name in node.inputs], module, flop_counter)
        outputs[node.name] = (_shape_of(value), _bytes_of(value))
        values[node.name] = value
        for name in set(node.inputs):
            if last_use[name] == index:
                del values[name]  # on a real device, keep only the activations still needed
    return outputs, flops


def _input_value(node: "Node", device: torch.device) -> torch.Tensor:
    dtype = DTYPES[node.dtype]
    if device.type == "meta":
        return torch.empty(node.shape, dtype=dtype, device=device)  # no values; zeros on meta costs a decomposition
    if dtype.is_floating_point:
        return torch.randn(node.shape, dtype=dtype, device=device)
    return torch.zeros(node.shape, dtype=dtype, device=device)  # token id 0 fits any vocabulary


def _spec_tree(graph: "Graph", module: nn.Module, outputs: dict, flops: dict) -> LayerRow:
    """Rows nested the way the spec is written; a merge's figures go to its container's row."""
    root = LayerRow(path="", name="", type="model", kind="model")
    containers, counted = {"": root}, set()
    unused = {node.name for node in graph.unused()}
    for node in graph.nodes:
        if node.op == "input":
            continue
        chain, enclosing = [root], ""
        for scope in node.scopes:
            if scope.kind != "body":  # a residual's body items sit right under the residual's row
                chain.append(containers.get(scope.path) or _add_container(containers, chain[-1], scope, enclosing))
            enclosing = scope.module or enclosing
        shape, output_bytes = outputs[node.name]
        shape = (_with_named_dims(shape, node.meta.get("symbolic_shape")) if node.shape is not None
                 else _with_named_dims_each(shape, node.meta.get("symbolic_shapes")))
        for container in chain[1:]:
            container.shape = shape  # a container outputs what its last item outputs
        if node.op == "merge":
            chain[-1].flops += flops[node.name]
            chain[-1].output_bytes += output_bytes
            continue
        row = LayerRow(node.name, _row_name(node), node.target,
                       "layer" if node.op == "module" else "function", shape=shape,
                       input_shape=_input_shape(node, outputs), flops=flops[node.name], output_bytes=output_bytes,
                       args=dict(node.args), unused=node.name in unused)
        if node.op == "module":
            layer = module.get_submodule(node.shared_with or node.name)
            row.kernel_size = kernel_size(layer)
            count_parameters(row, layer.parameters(), counted)
        elif node.target == "parameter" and node.op == "function":
            count_parameters(row, [operator.attrgetter(node.name)(module)], counted)
        chain[-1].children.append(row)
    return root


def _row_name(node: "Node") -> str:
    """What a layer's row shows: its index or name in its list; a dotted `name:` (`attention.self.query`) whole."""
    if "." in node.label and node.name.endswith("." + node.label) or node.name == node.label:
        return node.label
    return node.name.rpartition(".")[2]


def _with_named_dims(shape: list | None, labels: list | None) -> list | None:
    """`[1, 128, 64]` -> `[1, "seq", 64]` where the dim follows a named input dim (`shape: [seq]`)."""
    if not labels or not isinstance(shape, list) or len(shape) != len(labels):
        return shape
    return [shape[0], *(label if isinstance(label, str) else size for size, label in zip(shape[1:], labels[1:]))]


def _with_named_dims_each(shapes: list | None, labels: list | None) -> list | None:
    """A tuple output's shapes, each with its named dims (`chunk` of `[1, seq, 64]`: two `[1, seq, 32]`)."""
    if not labels or not isinstance(shapes, list) or len(shapes) != len(labels):
        return shapes
    return [_with_named_dims(shape, shape_labels) for shape, shape_labels in zip(shapes, labels)]


def _input_shape(node: "Node", outputs: dict) -> list | None:
    """The shape of the node's input; a list of shapes when it takes several."""
    shapes = [outputs[name][0] for name in node.inputs if name in outputs]
    return shapes[0] if len(shapes) == 1 else (shapes or None)


def _add_container(containers: dict[str, LayerRow], parent: LayerRow, scope: "Scope", enclosing: str) -> LayerRow:
    """A container's row at the module path its layers' state_dict keys use (`names: {shortcut:
    downsample}` -> `downsample`); one that adds no path level (`flat: true`, `names: {branch: ""}`) has
    no module of its own, so its row says so: `(flat)`, at path `layer2.0 (residual, flat)` (the
    enclosing module's path and the structure)."""
    kind_type = scope.label.rpartition(": ")[2] if scope.kind == "block" else scope.kind
    if scope.module is None:
        own = _own_name(scope, kind_type)   # `expand1x1`: tells apart two flat branches of one parallel
        name = f"{own} (flat)" if own else "(flat)"
        marked = f"({kind_type} {own}, flat)" if own else f"({kind_type}, flat)"
        path = f"{enclosing} {marked}" if enclosing else marked
    else:
        path = scope.module
        name = path.rpartition(".")[2]
    row = LayerRow(path, name, kind_type, scope.kind)
    containers[scope.path] = row
    parent.children.append(row)
    return row


def _own_name(scope: "Scope", kind_type: str) -> str:
    """The name the spec gives a container (`name:`, a branch's key); "" when it has none."""
    if scope.kind == "repeat":
        return ""   # its label is the count (`×3`)
    if scope.kind == "block":   # `name: op`, or just `op` when unnamed
        return scope.label.partition(": ")[0] if ": " in scope.label else ""
    return "" if scope.label == kind_type else scope.label


def _shape_of(value: Any) -> list | None:
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shape_of(item) for item in value]
    return None


def _bytes_of(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_bytes_of(item) for item in value)
    return 0
