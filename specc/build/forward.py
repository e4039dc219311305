"""The compiled module and its generated `forward`: one torch.fx GraphModule per container.

Every spec container that owns a path level (a block use, a sequential, a parallel and its
branches, a residual and its named parts, a repeat) becomes a submodule whose own generated
forward runs the items inside it, and the enclosing forward calls it. Tools that hook module
calls (torchinfo, torchview, forward hooks) therefore see the spec's nesting with real shapes,
while the state_dict keys stay exactly the spec's paths. A container that cannot own its items
(its layers are `share:`d from outside it, or `flat:`/`names:` put them elsewhere) is inlined
into the enclosing forward instead.
"""
from __future__ import annotations

import copy
import keyword
import operator
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from specc.build.graph import Graph, Node, Scope
from specc.build.infer import call_inputs, list_argument
from specc.build.registry import FUNCTIONS, passes_first_output
from specc.build.functional import batch_expand
from specc.build.tensors import FREE_TENSORS, FreeTensor

_KIND_CLASSES = {"parallel": "Parallel", "branch": "Branch", "residual": "Residual", "body": "Body",
                 "shortcut": "Shortcut", "sequential": "Sequential", "repeat": "Repeat"}


class _DirectChildren:
    """Mixin: child modules are also plain instance attributes.

    The generated forward reaches a layer as `getattr(self, "3").conv`; through
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
    """A path level no forward calls (the intermediate module of an inlined container)."""


class _Generated(_DirectChildren, fx.GraphModule):
    """A GraphModule called like any nn.Module, keeping its non-persistent buffers on deepcopy."""

    def _recompile_submodules(self) -> list:
        return []   # the containers inside have their own generated forwards already

    def recompile(self):
        code = super().recompile()
        # fx routes each call through a wrapper that only reformats errors: a Python frame per
        # container call, which a forward with several containers would feel. Without it the call
        # is nn.Module.__call__, looked up at call time (tools like torchview patch it).
        if "__call__" in vars(type(self)):
            del type(self).__call__
        return code

    def __deepcopy__(self, memo: dict) -> "_Generated":
        copied = super().__deepcopy__(memo)
        copied._non_persistent_buffers_set = set(self._non_persistent_buffers_set)  # fx re-registers them persistent
        return copied


class SpecModule(_Generated):
    """The compiled model: a torch.fx GraphModule whose forward is generated from the spec."""


class SpecContainer(_DirectChildren, nn.Module):
    """A spec container (block use, parallel, branch, residual, sequential, repeat), called in forward.

    Its class holds the forward torch.fx generated for it (`code` shows it). Identical containers
    — the layers of a repeat — share one class, so a 32-layer model generates a few forwards, not
    hundreds (fx's code generation would otherwise double the build of Llama-2-7B).
    """

    code: str = ""
    _globals: dict = {}

    def __deepcopy__(self, memo: dict) -> "SpecContainer":
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return copied

    def __reduce__(self):
        """Pickled as its code and state, like a GraphModule (the class is made at build time)."""
        from torch.fx.graph_module import _format_import_block
        from torch.package import sys_importer

        imports = _format_import_block(type(self)._globals, sys_importer)
        return _rebuild_container, (type(self).__name__, imports, type(self).code, self.__dict__)


_CONTAINER_TYPES: dict[tuple, type] = {}   # (class name, graph signature) -> class with that forward


def _container_type(class_name: str, fx_graph: fx.Graph) -> type:
    key = (class_name, _signature(fx_graph))
    if key not in _CONTAINER_TYPES:
        fx_graph.lint()
        python_code = fx_graph.python_code(root_module="self")
        _CONTAINER_TYPES[key] = _make_type(class_name, python_code.src, dict(python_code.globals))
    return _CONTAINER_TYPES[key]


def _make_type(class_name: str, code: str, namespace: dict) -> type:
    scope = dict(namespace)
    exec(compile(code, f"<specc {class_name}>", "exec"), scope)   # noqa: S102 - code torch.fx generated
    return type(class_name, (SpecContainer,), {"forward": scope["forward"], "code": code, "_globals": namespace,
                                               "__module__": __name__})


def _rebuild_container(class_name: str, imports: str, code: str, state: dict) -> SpecContainer:
    namespace: dict = {}
    exec(compile(imports, f"<specc {class_name} imports>", "exec"), namespace)   # noqa: S102
    cls = _make_type(class_name, code, namespace)
    container = cls.__new__(cls)
    container.__setstate__(state)
    return container


def _signature(fx_graph: fx.Graph) -> tuple:
    """What the generated code depends on: each node's op, target and arguments (nodes by position)."""
    positions = {node: index for index, node in enumerate(fx_graph.nodes)}

    def plain(value: Any) -> Any:
        if isinstance(value, fx.Node):
            return ("node", positions[value])
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, *map(plain, value))
        if isinstance(value, dict):
            return ("dict", *((key, plain(item)) for key, item in value.items()))
        return value if isinstance(value, (int, float, str, bool, type(None))) else (type(value).__name__, repr(value))

    return tuple((node.op, node.target if isinstance(node.target, str) else id(node.target), plain(node.args),
                  plain(node.kwargs)) for node in fx_graph.nodes)


@dataclass
class _Group:
    """The nodes of one container, in order, with the containers nested in it."""

    scope: Scope | None
    items: list = field(default_factory=list)   # Node | _Group
    callable: bool = False

    @property
    def key(self) -> tuple | None:
        return None if self.scope is None else (self.scope.kind, self.scope.path)  # a repeat's repetitions share it

    def nodes(self) -> list[Node]:
        return [node for item in self.items for node in (item.nodes() if isinstance(item, _Group) else [item])]


@dataclass
class ModulePlan:
    """How to assemble the compiled model from its layers: everything `build_spec_module` works out
    from the graph alone (which containers are called, the class of each one's generated forward,
    the model's own forward graph), so a rebuild of the same spec only constructs layers."""

    tree: "_Group"
    containers: list[tuple[str, type]]   # (path, class) of each called container, inner ones first
    root_graph: fx.Graph                 # the model's forward; copied for each module
    class_name: str


def build_spec_module(graph: Graph, modules: dict[str, nn.Module], class_name: str) -> SpecModule:
    """The compiled model: `modules` (by path) placed in their containers, forwards generated from `graph`."""
    return assemble(plan_spec_module(graph, set(modules), class_name), modules)


def plan_spec_module(graph: Graph, layer_paths: set[str], class_name: str) -> ModulePlan:
    """Generate the forwards of `graph`'s containers and of the model (`layer_paths`: the paths of its
    layers and free tensors, which no container may take as its own level)."""
    tree = _group_tree(graph)
    _choose_callable(tree, "", layer_paths, set())
    flow = _Flow.of(graph)
    fx_graph = fx.Graph()
    values: dict[str, Any] = {}
    for node in graph.inputs:
        values[node.name] = fx_graph.placeholder(_python_name(node.name))
    containers: list[tuple[str, type]] = []
    _emit_items(tree, fx_graph, values, "", containers, flow)
    outputs = [values[name] for name in graph.outputs]
    fx_graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    fx_graph.lint()
    return ModulePlan(tree, containers, fx_graph, class_name)


def assemble(plan: ModulePlan, modules: dict[str, nn.Module]) -> SpecModule:
    """Place `modules` (by path) in the plan's containers, in spec order, under a new model."""
    holders: dict[str, nn.Module] = {"": nn.Module()}
    _place(plan.tree, modules, holders)
    for path, container_class in plan.containers:
        container = _adopt(container_class(), holders[path])
        parent_path, _, leaf = path.rpartition(".")
        holders[parent_path]._modules[leaf] = container   # same place in the parent's order
        holders[path] = container
    root_graph = fx.Graph()
    root_graph.output(root_graph.graph_copy(plan.root_graph, {}))   # each model owns (and may edit) its graph
    module = _generated(SpecModule, holders[""], root_graph, plan.class_name)
    for holder in module.modules():
        if type(holder) is nn.Module:   # the path levels of inlined containers
            holder.__class__ = Container
        if isinstance(holder, _DirectChildren):
            for name in list(holder._modules):
                holder._sync_child(name)
    return module


def _group_tree(graph: Graph) -> _Group:
    """Nodes grouped by their scopes: consecutive nodes in the same container share one group."""
    root = _Group(None)
    for node in graph.nodes:
        if node.op == "input":
            continue
        group = root
        for scope in node.scopes:
            last = group.items[-1] if group.items else None
            if isinstance(last, _Group) and last.key == (scope.kind, scope.path):
                group = last
            else:
                group.items.append(_Group(scope))
                group = group.items[-1]
        group.items.append(node)
    return root


def _choose_callable(group: _Group, owner: str, layer_paths: set[str], taken: set[str]) -> None:
    """Mark the groups that become called submodules: those whose layers all sit under their own
    path level inside the enclosing called container (`owner`)."""
    for item in group.items:
        if not isinstance(item, _Group):
            continue
        path = item.scope.module
        item.callable = (path is not None and path not in taken and path not in layer_paths
                         and (owner == "" or path.startswith(owner + "."))
                         and all(target.startswith(path + ".") for target in _targets(item)))
        if item.callable:
            taken.add(path)
        _choose_callable(item, path if item.callable else owner, layer_paths, taken)


def _targets(group: _Group) -> list[str]:
    """The module and tensor paths the group's nodes use."""
    return [node.shared_with or node.name for node in group.nodes()
            if node.op == "module" or (node.op == "function" and node.target in FREE_TENSORS)]


def _place(group: _Group, modules: dict[str, nn.Module], holders: dict[str, nn.Module]) -> None:
    """Build the module tree in spec order: each called container's level first, then its layers."""
    for item in group.items:
        if isinstance(item, _Group):
            if item.callable:
                _holder(item.scope.module, holders)
            _place(item, modules, holders)
        elif item.name in modules:
            owner_path, _, leaf = item.name.rpartition(".")
            owner = _holder(owner_path, holders)
            module = modules[item.name]
            if isinstance(module, FreeTensor):
                module.attach(owner, leaf)
            else:
                owner.add_module(leaf, module)


def _holder(path: str, holders: dict[str, nn.Module]) -> nn.Module:
    if path not in holders:
        parent_path, _, leaf = path.rpartition(".")
        parent = _holder(parent_path, holders)
        if leaf not in parent._modules:
            parent.add_module(leaf, nn.Module())
        holders[path] = parent._modules[leaf]
    return holders[path]


@dataclass
class _Flow:
    """Where each value is made and last used (graph order; the model's outputs are used last)."""

    made: dict[str, int]
    last_use: dict[str, int]

    @classmethod
    def of(cls, graph: Graph) -> "_Flow":
        made, last_use = {}, {}
        for index, node in enumerate(graph.nodes):
            made[node.name] = index
            for name in node.inputs:
                last_use[name] = index
        for name in graph.outputs:
            last_use[name] = len(graph.nodes)
        return cls(made, last_use)


def _emit_items(group: _Group, fx_graph: fx.Graph, values: dict, owner: str, containers: list, flow: _Flow) -> None:
    for item in group.items:
        if isinstance(item, Node):
            values[item.name] = _emit(fx_graph, item, [values[name] for name in item.inputs], owner)
        elif item.callable:
            _emit_call(item, fx_graph, values, owner, containers, flow)
        else:
            _emit_items(item, fx_graph, values, owner, containers, flow)


def _emit_call(group: _Group, fx_graph: fx.Graph, values: dict, owner: str, containers: list, flow: _Flow) -> None:
    """Generate the group's own forward (a container class, added to `containers`) and call it from
    the enclosing forward."""
    nodes = group.nodes()
    inside = {node.name for node in nodes}
    inputs = list(dict.fromkeys(name for node in nodes for name in node.inputs if name not in inside))
    end = flow.made[nodes[-1].name]
    outputs = [node.name for node in nodes if flow.last_use.get(node.name, -1) > end] or [nodes[-1].name]
    inner_graph, inner_values = fx.Graph(), {}
    for name, argument in zip(inputs, ["x"] if len(inputs) == 1 else _argument_names(inputs)):
        inner_values[name] = inner_graph.placeholder(argument)
    path = group.scope.module
    _emit_items(group, inner_graph, inner_values, path, containers, flow)
    results = [inner_values[name] for name in outputs]
    inner_graph.output(results[0] if len(results) == 1 else tuple(results))
    containers.append((path, _container_type(_container_class(group.scope), inner_graph)))
    call = _call_module(fx_graph, _relative(path, owner), tuple(values[name] for name in inputs))
    for index, name in enumerate(outputs):
        values[name] = call if len(outputs) == 1 else fx_graph.call_function(operator.getitem, (call, index))


def _generated(cls: type, holder: nn.Module, fx_graph: fx.Graph, class_name: str) -> _Generated:
    """A GraphModule over `holder`'s children, parameters and buffers, all of them in their order
    (fx alone would copy only what the graph uses, in the order it uses them)."""
    # Built over an empty graph: given the real one, fx would rebuild every holder module on the
    # way to each layer it calls (a third of a warm 7B build) only for us to replace them below.
    module = _adopt(cls(holder, fx.Graph(), class_name=class_name), holder)
    module.graph = fx_graph   # generates the forward
    return module


def _adopt(module: nn.Module, holder: nn.Module) -> nn.Module:
    for attribute in ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set"):
        module.__dict__[attribute] = holder.__dict__[attribute]
    for name in module._modules:
        module._sync_child(name)
    return module


def _container_class(scope: Scope) -> str:
    """`Parallel`, `Residual`, ...; a block use is named after its block (`basic_block` -> `BasicBlock`)."""
    if scope.kind != "block":
        return _KIND_CLASSES.get(scope.kind, scope.kind.title())
    words = re.split(r"[^0-9A-Za-z]+", scope.label.rpartition(": ")[2])
    name = "".join(word[:1].upper() + word[1:] for word in words if word)
    return name if name[:1].isalpha() else f"Block{name}"


def _argument_names(values: list[str]) -> list[str]:
    """A container forward's parameters: each input's last name part where that is a free, unique
    identifier (two inputs both called `out` in different containers become `out` and `x1`)."""
    names: list[str] = []
    for index, value in enumerate(values):
        name = re.sub(r"\W", "_", value.rpartition(".")[2])
        usable = name.isidentifier() and not keyword.iskeyword(name) and name != "self"
        if not usable or name in names:
            name = f"x{index}"
            while name in names or name in values:
                name += "_"
        names.append(name)
    return names


def _python_name(name: str) -> str:
    """`self` is the forward's own first parameter: a value or module called `self` is named `self_`
    in generated code (torch.fx would otherwise write `self = self.self(x)`)."""
    return "self_" if name == "self" else name


def _call_module(fx_graph: fx.Graph, target: str, args: tuple, kwargs: dict | None = None) -> fx.Node:
    return fx_graph.create_node("call_module", target, tuple(args), dict(kwargs or {}),
                                name=_python_name(target) if target == "self" else None)


def _relative(path: str, owner: str) -> str:
    return path[len(owner) + 1:] if owner else path


def _emit(fx_graph: fx.Graph, node: Node, inputs: list, owner: str) -> Any:
    if node.op == "module":
        args, kwargs = call_inputs(node, inputs)
        result = _call_module(fx_graph, _relative(node.shared_with or node.name, owner), args, kwargs)
        return fx_graph.call_function(operator.getitem, (result, 0)) if passes_first_output(node) else result
    if node.op == "function" and node.target in FREE_TENSORS:   # a parameter/buffer of the model itself
        target = _relative(node.name, owner)
        tensor = fx_graph.create_node("get_attr", target, name="self_" if target == "self" else None)
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
