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
from specc.build.tensors import initial_values, value_init, values_problem


def apply_init(module: nn.Module, graph: Graph, spec: Spec, apply: bool = True) -> None:
    """`init: {Linear: kaiming_normal, bias: zeros, dfl.weight: {arange: 16}}`: layer types set their
    weights, names/patterns set parameters (or buffers, when no parameter matches). Keys, functions
    and value counts are checked on every device; `apply=False` (meta) stops there.

    Raises:
        SpecError: located at the `init:` key: it matches nothing, an unknown function, values that
            do not fit the tensor.
    """
    layer_types = {node.target for node in graph.nodes if node.op == "module"}
    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for key, how in spec.init.items():
            location = spec.source.locate(("init", key))
            initialise = _initializer(how, location)
            chosen = _chosen(module, graph, key, layer_types, parameters)
            if not chosen:
                raise SpecError(Problem(f"init: '{key}' matches no layer type or parameter, nor a buffer", location,
                                        "UNKNOWN_REFERENCE", did_you_mean(key, [*layer_types, "weight", "bias"])))
            for tensor in chosen:
                _check_values(how, tensor, key, location)
            for tensor in chosen if apply else []:
                try:
                    initialise(tensor)
                except ValueError as error:
                    raise SpecError(Problem(f"init: {key}: {error}", location, "TYPE_ERROR")) from None


def _chosen(module: nn.Module, graph: Graph, key: str, layer_types: set, parameters: dict) -> list[torch.Tensor]:
    if key in layer_types:
        targets = [node.name for node in graph.nodes if node.target == key and not node.shared_with]
        return [p for name in targets if (p := getattr(module.get_submodule(name), "weight", None)) is not None]
    for tensors in (parameters, dict(module.named_buffers())):
        chosen = [tensor for name, tensor in tensors.items()
                  if fnmatch.fnmatchcase(name, key) or name.rsplit(".", 1)[-1] == key]
        if chosen:
            return chosen
    return []


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
    known = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    if function_name not in known:
        raise SpecError(Problem(f"init: unknown initialisation '{name}'", location, "UNKNOWN_KEY",
                                (did_you_mean(function_name, known) or "").rstrip("_") or None))
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
