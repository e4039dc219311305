"""`specc.from_module`: an existing `nn.Module` as a readable spec.

The module is traced with torch.fx (torch.nn layers are leaves, the user's classes are traced
through) and run once on the example inputs for the shapes. Its calls are grouped by module
path, so the spec's items nest like the module's attributes and its `state_dict` keys are the
module's own: a submodule becomes a `sequential` (or a `residual` / `parallel` where its forward
is one: `x + body(x)`, `cat([a(x), b(x)])`), identical submodules one block used several times.
Tensors the forward uses directly are free tensors (import_tensors.py); a function computed
between two calls into a submodule joins that submodule's list. A submodule whose forward has no
spec form (data-dependent control flow, an op specc lacks, layers of two submodules called in
turn) is kept whole, as its class under `imports:`; nothing is dropped.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import yaml
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from specc.build.infer import DTYPES
from specc.build.registry import FUNCTION_AS_LAYER
from specc.export.import_functions import function_item
from specc.export.import_ops import (Unsupported, example_values, fit_constructor, is_tuple_layer, layer_item,
                                     stand_in, torch_base)
from specc.export.import_tensors import free_tensor_item
from specc.export.import_trace import CONTAINERS, Tracer, failing_module, refuse_unwritable_names, specc_layer
from specc.export.import_tree import Group as _Group, ListWriter

_AS_FUNCTION = {layer: function for function, layer in FUNCTION_AS_LAYER.items() if function in ("attention", "scan")}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items() if name not in ("int64",)}


def from_module(module: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor, name: str | None = None,
                check: bool = True) -> str:
    """The spec (YAML text) of `module`.

    Args:
        module: any nn.Module.
        example_inputs: tensors it is called with (batch dim first); their shapes become `inputs:`.
        name: the spec's name (default: the class name in snake_case).
        check: build the spec on `meta` and compare its state_dict keys and shapes with the module's.

    Returns:
        YAML that `specc.build` turns into a model with the same `state_dict` keys and shapes,
        which computes the same outputs once given the module's weights.

    Raises:
        ValueError: the module's own forward has no spec form (the reason says which op).
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    refuse_unwritable_names(module)
    opaque: set[str] = set()
    for _ in range(100):
        try:
            spec = _Importer(module, inputs, opaque).spec(name or _snake(type(module).__name__))
            break
        except _Opaque as error:
            if error.path == "" or error.path in opaque:
                raise ValueError(f"cannot import {type(module).__name__}: {error.reason}") from None
            opaque.add(error.path)
    text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=100)
    if check:
        _check(text, module)
    return text


def _check(text: str, module: nn.Module) -> None:
    """The spec builds, with the module's state_dict keys and shapes."""
    from specc.weights.building import build
    from specc.lang.errors import SpecError

    try:
        built = build(text, device="meta")
    except SpecError as error:
        raise ValueError(f"the imported spec does not compile: {error}") from None
    shapes = lambda model: {key: tuple(value.shape) for key, value in model.state_dict().items()}  # noqa: E731
    wanted, got = shapes(module), shapes(built)
    if wanted != got:
        differing = sorted(set(wanted) ^ set(got)) or [key for key in wanted if wanted[key] != got[key]]
        raise ValueError(f"the imported spec's weights differ from the module's: {', '.join(differing[:5])}")


def import_target(target: str, arguments: str | None, input_shapes: list[str], dtype: str = "float32",
                  name: str | None = None) -> str:
    """`specc import`: build `pkg.module:Callable(*args)` and write its spec.

    Args:
        target: `module:callable` (a class or a function returning an nn.Module), importable
            from the current directory or sys.path.
        arguments: JSON: a list of positional args, or an object of keyword args.
        input_shapes: one shape per input without the batch dim, like `3,32,32`.
        dtype: the inputs' dtype (`long` for token ids).

    Raises:
        ValueError: a target, argument or shape that does not work, said in one line.
    """
    import importlib
    import json
    import sys

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"'{target}' is not module:callable, e.g. torchvision.models:resnet18")
    sys.path.insert(0, ".")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {target}: {error}") from None
    finally:
        sys.path.remove(".")
    parsed = json.loads(arguments) if arguments else []
    if not isinstance(parsed, (list, dict)):
        raise ValueError("--args must be a JSON list (positional) or object (keyword args)")
    module = factory(*parsed) if isinstance(parsed, list) else factory(**parsed)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{target} returned {type(module).__name__}, not an nn.Module")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    inputs = []
    for text in input_shapes:
        try:
            shape = [int(size) for size in text.split(",")]
        except ValueError:
            raise ValueError(f"--input-shape {text}: sizes must be integers like 3,32,32") from None
        kind = DTYPES[dtype]
        inputs.append(torch.randn(2, *shape) if kind.is_floating_point else torch.zeros(2, *shape, dtype=kind))
    if not inputs:
        raise ValueError("give the input shape(s) with --input-shape 3,32,32 (without the batch dim)")
    return from_module(module.eval(), inputs, name)


class _Opaque(Exception):
    """The module at `path` has no spec form (`reason`): import its class instead."""

    def __init__(self, path: str, reason: str):
        super().__init__(reason)
        self.path, self.reason = path, reason


class _Importer:
    def __init__(self, module: nn.Module, inputs: tuple, opaque: set[str]):
        self.module, self.opaque = module, opaque
        tracer = Tracer(opaque)
        try:
            graph = tracer.trace(module)
        except Exception as error:  # noqa: BLE001 - any tracing failure: find the module that caused it
            raise _Opaque(failing_module(module, opaque), f"torch.fx cannot trace it ({error})") from None
        self.traced = fx.GraphModule(tracer.root, graph)
        modes = {submodule: submodule.training for submodule in module.modules()}
        module.eval()   # the example run must not move the user's BatchNorm statistics
        try:
            with torch.no_grad():
                ShapeProp(self.traced).propagate(*inputs)
        finally:
            for submodule, training in modes.items():
                submodule.training = training
        self.graph, self.inputs = graph, inputs
        self.imports: list[str] = []
        self.blocks: dict[str, dict] = {}
        self.container_of: dict[fx.Node, str] = {}
        self.called = {path for node in graph.nodes for path, _ in node.meta.get("nn_module_stack", {}).values()}
        self.first_call: dict[str, str] = {}
        self.pinned: set[fx.Node] = set()        # layers' first calls: their place is their path

    # ----- the spec ----------------------------------------------------------------------------
    def spec(self, name: str) -> dict:
        placeholders = [node for node in self.graph.nodes if node.op == "placeholder"]
        inputs = {}
        for node, tensor in zip(placeholders, self.inputs):
            declared = {"shape": list(tensor.shape[1:])}
            if tensor.dtype != torch.float32:
                declared["dtype"] = _DTYPE_NAMES[tensor.dtype]
            inputs[node.name] = declared
            self.container_of[node] = ""
        root = self._group_tree()
        writer = ListWriter(self)
        layers, last = writer.items(root, "", placeholders[0])
        writer.make_blocks()
        spec = {"name": name, "inputs": inputs}
        if self.imports:
            spec["imports"] = sorted(set(self.imports))
        if writer.blocks:
            spec["blocks"] = writer.blocks
        spec["layers"] = layers
        ties, first = {}, {}
        for path, parameter in self.module.named_parameters(remove_duplicate=False):
            if id(parameter) in first:
                ties[path] = first[id(parameter)]      # one Parameter under two names (a tied head)
            else:
                first[id(parameter)] = path
        if ties:
            spec["tie"] = ties
        outputs = self._outputs(writer)
        if outputs is not None and outputs != [writer.reference_of(last)]:
            spec["outputs"] = outputs[0] if len(outputs) == 1 else outputs
        return spec

    def _outputs(self, writer) -> list[str] | None:
        output = next(node for node in self.graph.nodes if node.op == "output")
        value = output.args[0]
        values = list(value) if isinstance(value, (tuple, list)) else [value]
        return [writer.reference_of(self.value_node(item)) for item in values]

    # ----- grouping calls by module path --------------------------------------------------------
    def _group_tree(self) -> _Group:
        root = _Group("")
        groups, called = {"": root}, set()
        for node in self.graph.nodes:
            if node.op in ("placeholder", "output") or self.is_size(node) or self.is_folded(node):
                continue
            path = self._container(node, called)
            self.container_of[node] = path
            self._open(groups, path, node).entries.append(node)
        return root

    def _open(self, groups: dict, path: str, node: fx.Node) -> _Group:
        """The group for `path`, opened along the way. A group that was left and is used again
        takes the functions computed since into its list (their inputs are named wherever they
        are); a layer or tensor registered in between means the module's calls interleave with
        others': its parent has no spec form."""
        if path in groups:
            group = groups[path]
            if path and not _is_last(groups, path):
                self._reenter(groups, path)
            return group
        parent_path = path.rpartition(".")[0]
        parent = self._open(groups, parent_path, node)
        group = groups[path] = _Group(path)
        parent.entries.append(group)
        return group

    def _reenter(self, groups: dict, path: str) -> None:
        """Move the entries that follow the groups on the way to `path` into them, so `path` is
        the last group open again. Only function calls move: a layer's first call and a tensor
        of the module are where their names (and state_dict keys) say."""
        parts = path.split(".")
        for depth in range(len(parts)):
            outer, inner = groups[".".join(parts[:depth])], groups[".".join(parts[:depth + 1])]
            position = next(index for index, entry in enumerate(outer.entries) if entry is inner)
            after = outer.entries[position + 1:]
            if any(isinstance(entry, _Group) or entry in self.pinned or entry.op == "get_attr" for entry in after):
                raise _Opaque(self._owner(path.rpartition(".")[0]), f"calls into {path} interleave with other calls")
            del outer.entries[len(outer.entries) - len(after):]
            inner.entries.extend(after)
            for entry in after:
                self.container_of[entry] = inner.path

    def _container(self, node: fx.Node, called: set) -> str:
        """Where a node's item goes: a layer's first call under its module's parent path; a
        function (or a layer called again) where its inputs are, inside the module whose forward
        called it."""
        if node.op == "call_module" and node.target not in called:
            called.add(node.target)
            self.pinned.add(node)
            return node.target.rpartition(".")[0]
        stack = [entry for entry in node.meta.get("nn_module_stack", {}).values() if entry[0] != node.target]
        caller = stack[-1][0] if stack else ""
        sources = [self.container_of[source] for source in self.tensor_inputs(node) if source in self.container_of]
        if node.op == "get_attr":
            return node.target.rpartition(".")[0]
        common = _common_path(sources) if sources else caller
        if not _under(common, caller):
            return caller
        # deeper than the caller only through modules that never run a forward of their own
        # (ModuleDicts, the holders of generated code): a called module's list is its forward
        place = caller
        for part in common[len(caller):].strip(".").split(".") if common != caller else []:
            deeper = f"{place}.{part}" if place else part
            if deeper in self.called:
                break
            place = deeper
        return place

    def cannot(self, path: str, reason: str) -> "_Opaque":
        """The error that keeps the module around `path` whole (as an import)."""
        return _Opaque(self._owner(path), reason)

    def _owner(self, path: str) -> str:
        """The nearest module above `path` that is not a container (the one whose forward to keep)."""
        while path and isinstance(self.module.get_submodule(path), CONTAINERS):
            path = path.rpartition(".")[0]
        return path

    # ----- node helpers (used by the writer) ------------------------------------------------------
    def is_size(self, node: fx.Node) -> bool:
        """`x.size(0)`, `x.shape`: sizes only feed reshape args, which are read from the shapes."""
        if node.op == "call_method" and node.target in ("size", "dim"):
            return True
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "getattr":
            return True
        if node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node) and self.is_size(node.args[0]):
            return True
        return False

    def is_folded(self, node: fx.Node) -> bool:
        """`lstm(x)[0]`, `attention(x, x, x)[0]`: the spec passes element 0 on by itself."""
        if node.op != "call_function" or getattr(node.target, "__name__", "") != "getitem":
            return False
        source = node.args[0]
        return (isinstance(source, fx.Node) and source.op == "call_module" and node.args[1] == 0
                and is_tuple_layer(self.module.get_submodule(source.target)))

    def value_node(self, node: fx.Node) -> fx.Node:
        return node.args[0] if self.is_folded(node) else node

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        found = []

        def visit(value: Any) -> None:
            if isinstance(value, fx.Node):
                if not self.is_size(value):
                    found.append(self.value_node(value))
            elif isinstance(value, (list, tuple)):
                for item in value:
                    visit(item)
            elif isinstance(value, dict):
                for item in value.values():
                    visit(item)
        visit(node.args)
        visit(node.kwargs)
        return list(dict.fromkeys(found))

    def shape_of(self, node: Any) -> list | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return list(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def layer(self, node: fx.Node) -> tuple[str, dict]:
        """A call_module node's layer and kwargs; a user class is imported."""
        submodule = self.module.get_submodule(node.target)
        if node.target not in self.opaque and torch_base(type(submodule)) is not None:
            try:   # a library's subclass of a torch.nn layer: the layer it computes the same as
                return stand_in(submodule, example_values(self.tensor_inputs(node)))
            except Unsupported as error:
                raise _Opaque(node.target, str(error)) from None     # kept as an import instead
        try:
            layer, kwargs = layer_item(submodule, infer=node.target not in self.opaque)
        except Unsupported as error:
            raise _Opaque(self._owner(node.target), str(error)) from None
        shapes = [tuple(shape) for value in self.tensor_inputs(node) if (shape := self.shape_of(value))]
        if specc_layer(type(submodule)) and node.target not in self.opaque:
            try:       # flags kept only as the presence of a tensor (`bias=False`) are found by trying
                kwargs = fit_constructor(submodule, kwargs, shapes)
            except Unsupported as error:
                raise _Opaque(node.target, str(error)) from None      # the copy is imported instead
            layer = _AS_FUNCTION.get(layer, layer)       # `Attention` is the spec's `attention` item
        if node.target in self.opaque:
            cls = type(submodule)
            if cls.__module__ in ("__main__", "builtins") or "<locals>" in cls.__qualname__:
                raise ValueError(f"{node.target}: {cls.__qualname__} cannot be traced and is not importable "
                                 f"(define it in a module)")
            try:
                kwargs = fit_constructor(submodule, kwargs, shapes)
            except Unsupported as error:
                raise ValueError(f"{node.target}: {error}") from None
            self.imports.append(f"{cls.__module__}.{cls.__qualname__}")
        return layer, kwargs

    def function(self, node: fx.Node) -> tuple[Any, list[fx.Node]]:
        try:
            return function_item(node, self.tensor_inputs(node), self.shape_of)
        except Unsupported as error:
            raise _Opaque(self._owner(self._caller(node)), str(error)) from None

    def free_tensor(self, node: fx.Node) -> dict:
        try:
            return free_tensor_item(self.module, node.target)
        except Unsupported as error:
            raise _Opaque(self._owner(self._caller(node)), str(error)) from None

    def _caller(self, node: fx.Node) -> str:
        stack = list(node.meta.get("nn_module_stack", {}).values())
        return stack[-1][0] if stack else ""


def _is_last(groups: dict, path: str) -> bool:
    parent = groups[path.rpartition(".")[0]]
    return bool(parent.entries) and parent.entries[-1] is groups[path] and (
        not path.rpartition(".")[0] or _is_last(groups, path.rpartition(".")[0]))


def _common_path(paths: list[str]) -> str:
    parts = [path.split(".") if path else [] for path in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _under(path: str, ancestor: str) -> bool:
    return not ancestor or path == ancestor or path.startswith(ancestor + ".")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
