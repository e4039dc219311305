"""A compiled model's starting state: the spec's `init:` (nn.init functions, or values: `arange`, a
list, a constant) and the items marked `trainable: false` (fixed weights, YOLOv8's DFL `arange`).
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable

import torch
from torch import nn

from specc.lang.errors import Location, Problem, SpecError, did_you_mean
from specc.lang.spec import Spec
from specc.build.graph import Graph
from specc.build.tensors import INIT_FUNCTIONS, init_problem, initial_values, value_init, values_problem


def apply_init(module: nn.Module, graph: Graph, spec: Spec, apply: bool = True) -> None:
    """`init: {Linear: kaiming_normal, bias: zeros, dfl.weight: {arange: 16}}`: layer types set their
    weights, names/patterns set parameters (or buffers, when no parameter matches). Keys, functions,
    kwargs and value counts are checked on every device; `apply=False` (meta) stops there."""
    with torch.no_grad():
        for key, location, initialise, names in init_targets(module, graph, spec):
            for name in names if apply else []:
                try:
                    initialise(tensor_named(module, name))
                except ValueError as error:
                    raise SpecError(Problem(f"init: {key}: {error}", location, "TYPE_ERROR")) from None


def init_targets(module: nn.Module, graph: Graph, spec: Spec,
                 every_name: bool = False) -> list[tuple[str, Any, Any, list[str]]]:
    """`(key, location, initialise, tensor names)` per `init:` key, in the order a build applies
    them (a sharded build replays it, see specc.build.materialize). `every_name`: a tied parameter
    under each of its names, as it was before `tie:` joined them.

    Raises:
        SpecError: an unknown initialisation or kwarg, a key that matches nothing, values that do not
            fit a tensor it matches.
    """
    layer_types = {node.target for node in graph.nodes if node.op == "module"}
    parameters = dict(module.named_parameters(remove_duplicate=not every_name))
    buffers = dict(module.named_buffers())
    targets = []
    for key, how in spec.init.items():
        location = spec.source.locate(("init", key))
        initialise = _initializer(how, location)
        if key in layer_types:
            modules = [node.name for node in graph.nodes if node.target == key and not node.shared_with]
            chosen = [f"{name}.weight" for name in modules
                      if isinstance(getattr(module.get_submodule(name), "weight", None), nn.Parameter)]
        else:
            chosen = _matching(parameters, key) or _matching(buffers, key)
        if not chosen:
            raise SpecError(Problem(f"init: '{key}' matches no layer type or parameter, nor a buffer", location,
                                    "UNKNOWN_REFERENCE", did_you_mean(key, [*layer_types, "weight", "bias"])))
        for name in chosen:
            _check_values(how, tensor_named(module, name), key, location)
        targets.append((key, location, initialise, chosen))
    return targets


def tensor_named(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter, or else the buffer, at `name`."""
    owner, _, leaf = name.rpartition(".")
    holder = module.get_submodule(owner)
    return holder._parameters[leaf] if leaf in holder._parameters else holder._buffers[leaf]


def _matching(tensors: dict, key: str) -> list[str]:
    return [name for name in tensors if fnmatch.fnmatchcase(name, key) or name.rsplit(".", 1)[-1] == key]


def _check_values(how: Any, tensor: torch.Tensor, key: str, location: Location | None) -> None:
    form = value_init(how)
    problem = values_problem(form, tensor.numel()) if form is not None else None
    if problem is not None:
        raise SpecError(Problem(f"init: {key} {list(tensor.shape)}: {problem}", location, "SHAPE_MISMATCH"))


def _initializer(how: str | dict, location: Location | None) -> Callable[[torch.Tensor], Any]:
    values = value_init(how)
    if values is not None:
        return lambda tensor: tensor.copy_(initial_values(values, tensor.shape, tensor.dtype))
    if not isinstance(how, (str, dict)) or (isinstance(how, dict) and len(how) != 1):
        raise SpecError(Problem(f"init: expected an nn.init name, {{name: {{kwargs}}}} or values "
                                f"({{arange: N}}, {{value: [...]}}, {{constant: x}}), got {how!r}", location, "TYPE_ERROR"))
    name, kwargs = (how, {}) if isinstance(how, str) else next(iter(how.items()))
    function_name = name if name.endswith("_") else f"{name}_"
    problem = init_problem(how)
    if problem is not None and function_name not in INIT_FUNCTIONS:
        raise SpecError(Problem(f"init: unknown initialisation '{name}'", location, "UNKNOWN_KEY",
                                (did_you_mean(function_name, list(INIT_FUNCTIONS)) or "").rstrip("_") or None))
    if problem is not None:   # a kwarg the function does not take is refused before any call (or codegen)
        raise SpecError(Problem(f"init: {problem}", location, "UNKNOWN_KWARG"))
    function = getattr(nn.init, function_name)
    return lambda tensor: function(tensor, **(kwargs or {}))


def apply_trainable(module: nn.Module, graph: Graph) -> None:
    """Items marked `trainable: false`: their parameters get `requires_grad = False` (the optimizer and
    the summary's trainable count leave them out), and a BatchNorm with all its parameters fixed keeps
    normalising with its own statistics in training too (as `freeze:`)."""
    for node in graph.nodes:
        if node.meta.get("trainable") is not False:
            continue
        if node.op == "module":
            layer = module.get_submodule(node.shared_with or node.name)
            layer.requires_grad_(False)
            for norm in layer.modules():
                if isinstance(norm, nn.modules.batchnorm._BatchNorm) and list(norm.parameters()):
                    norm.register_forward_pre_hook(_keep_eval)
        elif node.op == "function" and node.target == "parameter":
            module.get_parameter(node.name).requires_grad_(False)


def _keep_eval(norm: nn.Module, inputs: Any) -> None:
    norm.training = False
