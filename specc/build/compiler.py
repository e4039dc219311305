"""Spec -> plain `nn.Module`: expand, dry-run on meta, materialise, and generate `forward` with torch.fx.

The generated forward is straight-line Python (see `print(model.code)`), so a compiled spec runs
as fast as the same module written by hand and works with torch.compile, torch.export and
state_dict save/load.
"""
from __future__ import annotations

import fnmatch
import functools
import gc
import operator
import re
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from specc.lang.errors import Problem, SpecError, did_you_mean
from specc.build.compiled import Compiled
from specc.build.expand import Expander
from specc.build.graph import Graph, Node
from specc.build.infer import DTYPES, call_inputs, dry_run, list_argument
from specc.build.weights import INPUT_SHAPES_KEY, apply_weights, load_into, load_state, load_weights
from specc.build.registry import FUNCTIONS, TUPLE_OUTPUT_LAYERS, Registry, import_layer
from specc.build.memory import check_weights_fit
from specc.build.functional import batch_expand
from specc.build.tensors import FREE_TENSORS, FreeTensor, make_free_tensor
from specc.lang.spec import Spec, load


def _without_cyclic_gc(function):
    """Run `function` with the cyclic garbage collector paused (restored after, even on errors).

    A compile allocates thousands of small objects that stay alive (nodes, arg dicts, layers), so
    the collector's passes found nothing to free yet cost ~20% of a warm 7B build. Reference
    counting still frees everything; a cycle made meanwhile waits for the next collection.
    """
    @functools.wraps(function)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()
    return paused


@_without_cyclic_gc
def compile(spec_or_path: str | Path | dict | Spec, *, device: str | torch.device = "cpu",
            dtype: torch.dtype | str | None = None, batch_size: int = 2,
            input_shapes: dict[str, list[int]] | None = None, symbolic: bool = True,
            **variables: Any) -> Compiled:
    """Validate, expand, dry-run and build a spec.

    Args:
        spec_or_path: YAML path or text, a parsed dict, or a `Spec`.
        device: where the weights are materialised; "meta" allocates nothing.
        dtype: floating dtype for the weights (default: torch's default, float32).
        batch_size: batch size of the dry run (shapes in `graph` carry it as dim 0).
        input_shapes: override the spec's input shapes (without batch dim), by input name.
        symbolic: label output dims that follow named input dims (`seq/2`) with a second dry run.
        **variables: overrides of the spec's `vars` (`width=128`) or dotted keys (`train.epochs`).

    Returns:
        A `Compiled` with `.module`, `.graph` and `.spec`.

    Raises:
        SpecError: every problem found, each at file:line:column.
    """
    spec = load(spec_or_path, variables)
    registry = Registry(_imports(spec))
    graph = Expander(spec, registry).expand()
    for node in graph.inputs:  # overridden shapes become the model's own (example_inputs, summaries)
        if input_shapes and node.name in input_shapes:
            node.meta["shape"] = list(input_shapes[node.name])
    meta_modules = dry_run(graph, registry, batch_size, input_shapes)
    if symbolic and any(node.meta.get("symbols") for node in graph.inputs) and not input_shapes:
        from specc.build.symbolic import label_symbolic_dims

        label_symbolic_dims(graph, registry, batch_size)
    device = torch.device(device)
    if dtype is not None:
        dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    check_weights_fit(meta_modules, device, dtype, {node.name: node.location for node in graph.nodes})
    modules = meta_modules if device.type == "meta" else _materialise(graph, registry, device)
    if dtype is not None:
        for module in modules.values():
            module.to(dtype)
    module = _graph_module(graph, modules, spec)
    _apply_init(module, graph, spec, apply=device.type != "meta")
    _apply_ties(module, spec)
    compiled = Compiled(spec, graph, module, device, batch_size, meta_modules,
                        meta_builder=lambda: _meta_twin(graph, meta_modules, spec))
    if spec.expect is not None:
        from specc.build.expect import check_expectations

        check_expectations(compiled)
    return compiled


def build(spec_or_path: str | Path | dict | Spec, *, device: str | torch.device = "cpu",
          dtype: torch.dtype | str | None = None, weights: Any = None, weights_map: Any = None,
          allow_missing: Any = (), **variables: Any) -> nn.Module:
    """Compile a spec and return just the `nn.Module` (see `compile` for the arguments).

    `spec_or_path` may also be a `.safetensors` file written by `specc export`: it carries its
    spec, so the trained model is rebuilt from the file alone. `weights` loads a state_dict, a
    `.safetensors` file or a `specc train` checkpoint into the built model.

    With `weights_map` ("strict", "auto" or a mapping of rename rules), `weights` may be any
    PyTorch weight file (see `specc.build.weights.load_into`); the load's `WeightsReport` is the
    module's `weights_report` attribute. `allow_missing` lists globs of tensors that may stay
    unmatched.
    """
    if isinstance(spec_or_path, (str, Path)) and str(spec_or_path).endswith(".safetensors"):
        return build_from_safetensors(spec_or_path, device=device, dtype=dtype, **variables)
    compiled = compile(spec_or_path, device=device, dtype=dtype, symbolic=False, **variables)
    module = compiled.module
    if weights is not None and weights_map is None and not allow_missing:
        apply_weights(module, weights)
    elif weights is not None:
        order = [node.name for node in compiled.graph.nodes if node.op == "module" and not node.shared_with]
        module.weights_report = load_into(module, weights, weights_map or "strict", allow_missing, order)
    return module


def _meta_twin(graph: Graph, meta_modules: dict[str, nn.Module], spec: Spec) -> nn.Module:
    """The compiled model again on the meta device, from the dry run's modules."""
    module = _graph_module(graph, meta_modules, spec)
    _apply_ties(module, spec)
    return module


def build_from_safetensors(path: str | Path, *, device: str | torch.device = "cpu", dtype: Any = None,
                           **variables: Any) -> nn.Module:
    """Rebuild a trained model from a `.safetensors` file written by `specc export`.

    Args:
        path: the file; its metadata holds the resolved spec.
        device, dtype: as in `specc.build`.
        **variables: var overrides (they must leave the weights' shapes unchanged).

    Returns:
        The model with the file's weights, in eval mode.

    Raises:
        SpecError: unreadable file, or weights that do not fit the spec (CHECKPOINT_ERROR).
    """
    spec, state = load_weights(path)
    input_shapes = spec.pop(INPUT_SHAPES_KEY, None)
    module = compile(spec, device=device, dtype=dtype, input_shapes=input_shapes, symbolic=False, **variables).module
    load_state(module, state, path)
    return module.eval()


def class_name(spec: Spec) -> str:
    """`parallel_cnn` -> `ParallelCnn`, the compiled module's class name."""
    words = re.split(r"[^0-9A-Za-z]+", spec.display_name)
    name = "".join(word[:1].upper() + word[1:] for word in words if word)
    return name if name[:1].isalpha() else f"Model{name}"


def _imports(spec: Spec) -> dict[str, type]:
    imported, problems = {}, []
    folder = Path(spec.file).parent if spec.file != "<spec>" else None   # my_layers.py next to the spec
    for index, dotted in enumerate(spec.imports):
        try:
            cls = import_layer(dotted, folder)
        except (ImportError, TypeError) as error:
            problems.append(Problem(str(error), spec.source.locate(("imports", index)), "IMPORT_ERROR"))
            continue
        imported[dotted.rpartition(".")[2]] = cls
    if problems:
        raise SpecError(problems)
    return imported


def _materialise(graph: Graph, registry: Registry, device: torch.device) -> dict[str, nn.Module]:
    """Build every layer for real, in spec order (so a seeded build matches a hand-written one)."""
    modules = {}
    for node in graph.nodes:
        if node.op == "module" and not node.shared_with:
            with torch.device(device):
                modules[node.name] = registry.layer(node.target).cls(**node.args)
        elif node.op == "function" and node.target in FREE_TENSORS:
            modules[node.name] = FreeTensor(node.target, make_free_tensor(node.target, node.args, device))
    return modules


class _DirectChildren:
    """Mixin: child modules are also plain instance attributes.

    The generated forward reaches a layer as `getattr(self, "3").body.conv`; through
    nn.Module.__getattr__ each step costs about a microsecond, which made a 4-layer MLP 15% slower
    than the same model written by hand. With the children in `__dict__` each step is a dict hit.
    Every way a child can change (setattr, delattr, add_module) keeps the copy in sync.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self._sync_child(name)

    def __delattr__(self, name: str) -> None:
        was_child = name in self._modules
        super().__delattr__(name)
        if was_child:
            self.__dict__.pop(name, None)

    def add_module(self, name: str, module: nn.Module | None) -> None:
        super().add_module(name, module)
        self._sync_child(name)

    def register_module(self, name: str, module: nn.Module | None) -> None:
        self.add_module(name, module)

    def _sync_child(self, name: str) -> None:
        children = self.__dict__.get("_modules")
        if children is not None and name in children:
            self.__dict__[name] = children[name]


class Container(_DirectChildren, nn.Module):
    """Holds the layers of one spec item (a block use, a branch, a repeat) under its name."""


class SpecModule(_DirectChildren, fx.GraphModule):
    """The compiled model: a torch.fx GraphModule whose forward is generated from the spec."""


def _graph_module(graph: Graph, modules: dict[str, nn.Module], spec: Spec) -> fx.GraphModule:
    root = nn.Module()
    for name, module in modules.items():
        _set_submodule(root, name, module)
    fx_graph = fx.Graph()
    values: dict[str, Any] = {}
    for node in graph.nodes:
        values[node.name] = _emit(fx_graph, node, values)
    outputs = [values[name] for name in graph.outputs]
    fx_graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    fx_graph.lint()
    # GraphModule(root, graph) would rebuild every holder module on the way to each layer (a
    # third of a warm 7B build); starting empty and adopting root's top-level children keeps them.
    module = SpecModule(root, fx.Graph(), class_name=class_name(spec))
    for name, child in root._modules.items():
        module.add_module(name, child)
    for name, tensor in [*root._parameters.items(), *root._buffers.items()]:  # free tensors at the top level
        if name in root._parameters:
            module.register_parameter(name, tensor)
        else:
            module.register_buffer(name, tensor, persistent=name not in root._non_persistent_buffers_set)
    module.graph = fx_graph
    for name, holder in modules.items():   # fx copies buffers as persistent ones: constants are not
        if isinstance(holder, FreeTensor) and holder.op == "constant":
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._non_persistent_buffers_set.add(leaf)
    for holder in [module, *module.modules()]:
        if type(holder) is nn.Module:  # fx made the intermediate holders plain Modules
            holder.__class__ = Container
        if isinstance(holder, _DirectChildren):
            for name in list(holder._modules):
                holder._sync_child(name)
    return module


def _emit(fx_graph: fx.Graph, node: Node, values: dict) -> Any:
    inputs = [values[name] for name in node.inputs]
    if node.op == "input":
        return fx_graph.placeholder(node.name)
    if node.op == "module":
        args, kwargs = call_inputs(node, inputs)
        result = fx_graph.call_module(node.shared_with or node.name, args, kwargs)
        return fx_graph.call_function(operator.getitem, (result, 0)) if node.target in TUPLE_OUTPUT_LAYERS else result
    if node.op == "function" and node.target in FREE_TENSORS:   # a parameter/buffer of the model itself
        tensor = fx_graph.get_attr(node.name)
        return fx_graph.call_function(batch_expand, (tensor, inputs[0])) if node.args.get("batch") else tensor
    if node.op == "function":
        info = FUNCTIONS[node.target]
        if info.name == "getitem":
            return fx_graph.call_function(operator.getitem, (inputs[0], node.args["index"]))
        args = (list_argument(inputs),) if info.takes_list else tuple(inputs)
        return fx_graph.call_function(info.call, args, dict(node.args))
    return _emit_merge(fx_graph, node, inputs)


def _emit_merge(fx_graph: fx.Graph, node: Node, inputs: list) -> Any:
    if node.target == "list":
        return tuple(inputs)
    if node.target in ("cat", "stack"):
        return fx_graph.call_function(getattr(torch, node.target), (list(inputs),), {"dim": node.args["dim"]})
    combine = {"add": operator.add, "mean": operator.add, "mul": operator.mul, "max": torch.maximum}[node.target]
    result = inputs[0]
    for value in inputs[1:]:
        result = fx_graph.call_function(combine, (result, value))
    if node.target == "mean":
        result = fx_graph.call_function(operator.truediv, (result, len(inputs)))
    return result


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    owner = root
    for part in parents:
        if part not in owner._modules:
            owner.add_module(part, nn.Module())
        owner = owner._modules[part]
    if isinstance(module, FreeTensor):
        module.attach(owner, leaf)
    else:
        owner.add_module(leaf, module)


def _apply_ties(module: nn.Module, spec: Spec) -> None:
    """`tie: {head.weight: embed.weight}` makes head.weight the very same Parameter as embed.weight."""
    parameters = dict(module.named_parameters(remove_duplicate=False))
    problems = []
    for target, source in spec.tie.items():
        for path in (target, source):
            if path not in parameters:
                problems.append(Problem(f"tie: no parameter '{path}'", spec.source.locate(("tie", target)),
                                        "UNKNOWN_REFERENCE", did_you_mean(path, parameters)))
        if target in parameters and source in parameters and parameters[target].shape != parameters[source].shape:
            problems.append(Problem(f"tie: {target} {list(parameters[target].shape)} and {source} "
                                    f"{list(parameters[source].shape)} differ in shape",
                                    spec.source.locate(("tie", target)), "SHAPE_MISMATCH"))
    if problems:
        raise SpecError(problems)
    for target, source in spec.tie.items():
        owner_path, _, attribute = target.rpartition(".")
        setattr(module.get_submodule(owner_path), attribute, module.get_parameter(source))


def _apply_init(module: nn.Module, graph: Graph, spec: Spec, apply: bool = True) -> None:
    """`init: {Linear: kaiming_normal, bias: zeros}`: layer types set their weights, names/patterns set
    parameters. Keys and functions are checked on every device; `apply=False` (meta) stops there."""
    layer_types = {node.target for node in graph.nodes if node.op == "module"}
    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for key, how in spec.init.items():
            location = spec.source.locate(("init", key))
            initialise = _initializer(how, location)
            if key in layer_types:
                targets = [node.name for node in graph.nodes if node.target == key and not node.shared_with]
                chosen = [p for name in targets if (p := getattr(module.get_submodule(name), "weight", None)) is not None]
            else:
                chosen = [p for name, p in parameters.items()
                          if fnmatch.fnmatchcase(name, key) or name.rsplit(".", 1)[-1] == key]
            if not chosen:
                raise SpecError(Problem(f"init: '{key}' matches no layer type or parameter", location,
                                        "UNKNOWN_REFERENCE", did_you_mean(key, [*layer_types, "weight", "bias"])))
            for parameter in chosen if apply else []:
                try:
                    initialise(parameter)
                except ValueError as error:
                    raise SpecError(Problem(f"init: {key}: {error}", location, "TYPE_ERROR")) from None


def _initializer(how: str | dict, location) -> Any:
    name, kwargs = (how, {}) if isinstance(how, str) else next(iter(how.items()))
    function_name = name if name.endswith("_") else f"{name}_"
    known = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    if function_name not in known:
        raise SpecError(Problem(f"init: unknown initialisation '{name}'", location, "UNKNOWN_KEY",
                                (did_you_mean(function_name, known) or "").rstrip("_") or None))
    function = getattr(nn.init, function_name)
    return lambda parameter: function(parameter, **(kwargs or {}))
