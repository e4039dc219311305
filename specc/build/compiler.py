"""Spec -> plain `nn.Module`: expand, dry-run on meta, materialise, and generate `forward` with torch.fx.

The generated forward is straight-line Python (see `print(model.code)`), so a compiled spec runs
as fast as the same module written by hand and works with torch.compile, torch.export and
state_dict save/load.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import gc
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.lang.errors import Problem, SpecError, SpecWarning, did_you_mean, sorted_problems
from specc.build.batch_check import BatchWatch
from specc.build.compiled import Compiled
from specc.build.expand import Expander
from specc.build.graph import Graph
from specc.build import plan_cache
from specc.build.forward import assemble, plan_spec_module
from specc.build.infer import DTYPES, SkipInitOnMeta, dry_run
from specc.build.initial_values import apply_init, apply_trainable
from specc.build.plan_cache import CompilePlan
from specc.build.registry import Registry, import_layer
from specc.build.memory import check_weights_fit
from specc.build.tensors import FREE_TENSORS, FreeTensor, make_free_tensor
from specc.lang.safety import safe_scope
from specc.lang.spec import Spec, load
from specc.lang.tokenizer_vars import stand_in_warnings


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
            safe: bool | None = None, train_mistakes: str = "error", **variables: Any) -> Compiled:
    """Validate, expand, dry-run and build a spec.

    Args:
        spec_or_path: YAML path or text, a parsed dict, or a `Spec`.
        device: where the weights are materialised; "meta" allocates nothing.
        dtype: floating dtype for the weights (default: torch's default, float32).
        batch_size: batch size of the dry run (shapes in `graph` carry it as dim 0).
        input_shapes: override the spec's input shapes (without batch dim), by input name.
        symbolic: label output dims that follow named input dims (`seq/2`) with a second dry run.
        safe: True refuses `imports:`, `dataset:` and compile options (SAFE_MODE), for strangers' specs;
            default: safe when SPECC_SAFE=1.
        train_mistakes: "warn" turns mistakes confined to `train:` into SpecWarnings (summary, draw).
        **variables: overrides of the spec's `vars` (`width=128`) or dotted keys (`train.epochs`).

    Returns:
        A `Compiled` with `.module`, `.graph` and `.spec`.

    Raises:
        SpecError: every problem found, each at file:line:column.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    with safe_scope(safe):
        return _compile(spec_or_path, device, dtype, batch_size, input_shapes, symbolic, variables, train_mistakes)


def _compile(spec_or_path, device, dtype, batch_size, input_shapes, symbolic, variables, train_mistakes) -> Compiled:
    key, source = plan_cache.plan_key(spec_or_path, (batch_size, input_shapes, symbolic, train_mistakes, variables))
    plan = plan_cache.cached_plan(key)
    if plan is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan, meta_modules = _plan(source, batch_size, input_shapes, symbolic, variables, train_mistakes)
        for warning in caught:   # shown as they would have been; a compile that warns is planned each time
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if not caught:
            plan_cache.keep_plan(key, plan)
    else:
        meta_modules = _build_layers(plan.graph, plan.registry, torch.device("meta"))
    # every compile owns its spec and graph: a caller changing them must not change the next compile's
    spec, graph = copy.deepcopy(plan.spec), plan.graph.copy()
    device = torch.device(device)
    if dtype is not None:
        dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    check_weights_fit(meta_modules, device, dtype, {node.name: node.location for node in graph.nodes})
    modules = meta_modules if device.type == "meta" else _build_layers(graph, plan.registry, device)
    if dtype is not None:
        for module in modules.values():
            module.to(dtype)
    module = assemble(plan.module_plan, modules)
    apply_init(module, graph, spec, apply=device.type != "meta")
    _apply_ties(module, spec)
    apply_trainable(module, graph)
    compiled = Compiled(spec, graph, module, device, batch_size, meta_modules,
                        meta_builder=lambda: _meta_twin(plan, meta_modules),
                        warnings=[*graph.warnings, *unused_items(graph), *stand_in_warnings(spec)])
    for problem in compiled.warnings:
        warnings.warn(SpecWarning(problem), stacklevel=2)
    if spec.expect is not None:
        from specc.build.expect import check_expectations

        check_expectations(compiled)
    return compiled


def _plan(spec_or_path, batch_size, input_shapes, symbolic, variables, train_mistakes) -> tuple[CompilePlan, dict]:
    """Validate, expand and dry-run the spec and generate its forwards: the plan, and the dry run's
    layers (on meta)."""
    spec = load_model_spec(spec_or_path, variables, train_mistakes=train_mistakes)
    registry = Registry(_imports(spec))
    graph = Expander(spec, registry).expand()
    for node in graph.inputs:  # overridden shapes become the model's own (example_inputs, summaries)
        if input_shapes and node.name in input_shapes:
            node.meta["shape"] = list(input_shapes[node.name])
    batch_watch = BatchWatch(batch_size)   # the batch dim stays the batch (batch_check.py)
    meta_modules = dry_run(graph, registry, batch_size, input_shapes, on_node=batch_watch.observe)
    batch_watch.confirm(graph, meta_modules)
    if symbolic and any(node.meta.get("symbols") for node in graph.inputs) and not input_shapes:
        from specc.build.symbolic import label_symbolic_dims

        label_symbolic_dims(graph, registry, batch_size)
    module_plan = plan_spec_module(graph, set(meta_modules), class_name(spec))
    return CompilePlan(spec, registry, graph, module_plan), meta_modules


def unused_items(graph: Graph) -> list[Problem]:
    """A warning per item whose output nothing uses (no later item, not an output): it is still built,
    run in forward and counted, which is rarely meant — a missing `from:` or `outputs:` entry."""
    return [Problem(f"the output of '{node.name}' ({node.target}) is never used: no later item takes it and it "
                    f"is not an output, yet it is built, run and counted; use it (`from:`), list it in `outputs:`, "
                    f"or remove it", node.location, "UNUSED_ITEM") for node in graph.unused()]


def load_model_spec(spec_or_path: Any, variables: dict | None = None, *, train_mistakes: str = "error") -> Spec:
    """`lang.spec.load`, reporting every independent mistake at once: when the schema problems lie
    outside the model (`train:`, `expect:`, an unknown top-level key), the model is checked without
    those sections too. With `train_mistakes="warn"`, mistakes confined to `train:` become warnings
    and the spec without `train:` is returned (summary and draw never train).

    Raises:
        SpecError: every problem, sorted by position.
    """
    try:
        return load(spec_or_path, variables)
    except SpecError as error:
        if error.partial is None:
            raise
        if train_mistakes == "warn" and error.failed_sections == {"train"}:
            for problem in error.problems:
                warnings.warn(SpecWarning(f"{problem} (train: is left out here; specc train refuses it)"),
                              stacklevel=3)
            return error.partial
        raise with_model_problems(error) from None


def with_model_problems(error: SpecError) -> SpecError:
    """`error`'s schema problems plus those of its partial spec's model (expansion and dry run)."""
    problems = list(error.problems)
    if error.partial is not None:
        try:
            registry = Registry(_imports(error.partial))
            graph = Expander(error.partial, registry).expand()
            watch = BatchWatch(2)
            watch.confirm(graph, dry_run(graph, registry, 2, on_node=watch.observe))
        except SpecError as model_error:
            problems += model_error.problems
    return SpecError(sorted_problems(problems))


def _meta_twin(plan: CompilePlan, meta_modules: dict[str, nn.Module]) -> nn.Module:
    """The compiled model again on the meta device, from the dry run's modules."""
    module = assemble(plan.module_plan, meta_modules)
    _apply_ties(module, plan.spec)
    apply_trainable(module, plan.graph)
    return module


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


def _build_layers(graph: Graph, registry: Registry, device: torch.device) -> dict[str, nn.Module]:
    """Build every layer, in spec order (so a seeded build matches a hand-written one); on meta
    without initialising (no values to set, and its decompositions would import torch._dynamo)."""
    modules = {}
    skip_init = SkipInitOnMeta() if device.type == "meta" else contextlib.nullcontext()
    for node in graph.nodes:
        if node.op == "module" and not node.shared_with:
            with torch.device(device), skip_init:
                modules[node.name] = registry.layer(node.target).cls(**node.args)
        elif node.op == "function" and node.target in FREE_TENSORS:
            modules[node.name] = FreeTensor(node.target, make_free_tensor(node.target, node.args, device))
    return modules


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


def spec_registry(spec: Spec) -> Registry:
    """The layers a spec may use: torch.nn, specc's own and its `imports:`."""
    return Registry(_imports(spec))
