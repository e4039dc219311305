"""Spec -> Graph: resolve vars, blocks, repeats, branches and references into ordered nodes.

Nothing runs here: this pass only checks names (layers, kwargs, references, vars) against what
exists, collecting every problem it finds. Sizes are checked afterwards by the dry run.
"""
from __future__ import annotations

import keyword
from collections import ChainMap
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any

from specc.lang.errors import Location, Problem, SpecError, did_you_mean, sorted_problems
from specc.lang.expressions import ExpressionError, resolve_vars, substitute
from specc.build.bounds import ExpansionBudget
from specc.build.graph import Graph, Node, Scope
from specc.build.items import Item, ItemReading
from specc.build.input_sizes import Deferred, contains_deferred, needs_input
from specc.build.tensors import FREE_TENSORS, free_tensor_args
from specc.build.registry import FUNCTION_AS_LAYER, FUNCTIONS, STRUCTURES, Registry
from specc.build.signatures import function_call_args, layer_kwargs
from specc.lang.spec import IDENTIFIER, Spec, is_path

@dataclass(frozen=True)
class Context:
    """Where an item is being expanded: visible vars and names, enclosing containers, name prefix."""

    variables: dict
    refs: ChainMap
    scopes: tuple = ()
    prefix: str = ""
    via: tuple = ()        # block uses we are inside, for error notes
    blocks: tuple = ()     # names of those blocks, to tell a recursion from deep nesting

    def child(self, scope: Scope, prefix: str, **changes) -> "Context":
        return replace(self, refs=self.refs.new_child(), scopes=self.scopes + (scope,), prefix=prefix, **changes)


class Expander(ItemReading):
    """Walks the spec's layers once, producing `Graph` nodes and collecting problems."""

    def __init__(self, spec: Spec, registry: Registry):
        self.spec = spec
        self.registry = registry
        self.source = spec.source
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}
        self.problems: list[Problem] = []
        self.budget = ExpansionBudget()
        self.module_paths: set[str] = set()      # for `_path_clash`
        self.module_prefixes: set[str] = set()

    # ----- entry point -------------------------------------------------------------------------
    def expand(self) -> Graph:
        variables = self._global_vars()
        refs: ChainMap = ChainMap({})
        for name, declared in self.spec.inputs.items():
            shape = self._input_shape(name, declared.shape, variables)
            # dims written as a var name (`shape: [seq]`) stay symbolic: any size works at run time
            symbols = {index: size for index, size in enumerate(declared.shape)
                       if isinstance(size, str) and IDENTIFIER.match(size)}
            node = Node(name=name, op="input", target="input", label=name, dtype=declared.dtype,
                        location=self.source.locate(("inputs", name)), meta={"shape": shape, "symbols": symbols})
            self._add(node)
            refs[name] = name
        context = Context(variables=variables, refs=refs)
        try:
            last = self._expand_items(self.spec.layers, ("layers",), context, [next(iter(self.spec.inputs))])
        except RecursionError:  # only when SPECC_MAX_STRUCTURE_DEPTH is raised past what Python's stack holds
            raise SpecError(Problem(f"structures nest too deeply to expand (SPECC_MAX_STRUCTURE_DEPTH="
                                    f"{self.budget.max_depth} is past what Python's stack holds)",
                                    self._locate(("layers",)), "LIMIT_EXCEEDED")) from None
        outputs = self._outputs(context, last)
        if self.problems:
            # a mistake inside a repeated item or a block used twice is reported once, with its use sites
            raise SpecError(sorted_problems(self.problems))
        return Graph(self.nodes, outputs)

    def _global_vars(self) -> dict:
        resolved: dict = {}
        for name, value in self.spec.vars.items():  # one at a time: an error points at its own var
            try:
                resolved.update(resolve_vars({name: value}, resolved))
            except ExpressionError as error:
                self._fail_var(error, ("vars", name), resolved)
                resolved[name] = value
        return resolved

    def _input_shape(self, name: str, shape: list, variables: dict) -> list:
        resolved = []
        for index, size in enumerate(shape):
            value = variables.get(size, size) if isinstance(size, str) else size
            if isinstance(size, str) and size.startswith("$"):
                value = self._substitute(size, variables, ("inputs", name, "shape", index))
            if not isinstance(value, int) or value < 1:
                self._problem(f"input '{name}': shape entry {size!r} must be a positive int or the name of an int var",
                              ("inputs", name, "shape", index), "TYPE_ERROR", did_you_mean(str(size), variables))
                value = 1
            resolved.append(value)
        return resolved

    def _outputs(self, context: Context, last: list[str]) -> list[str]:
        declared = self.spec.outputs
        if declared is None:
            return last
        names = [declared] if isinstance(declared, str) else declared
        return [self._reference(name, context, ("outputs",)) or last[0] for name in names]

    # ----- items -------------------------------------------------------------------------------
    def _expand_items(self, items: list, path: tuple, context: Context, current: list[str]) -> list[str]:
        number = 0   # an unnamed item's key: the items built before it, as nn.Sequential numbers its layers
        for index, raw in enumerate(items):
            current, built = self._expand_item(raw, path + (index,), context, current, number)
            number += built
        return current

    def _expand_item(self, raw: Any, path: tuple, context: Context, current: list[str],
                     number: int) -> tuple[list[str], bool]:
        """Expand one item; returns its output and whether it was built (a skipped item takes no number)."""
        item = self._parse_item(raw, path)
        self._count_item(path, context, item.op if item else None)   # skipped and broken items count too
        if item is None:
            return current, True
        name = self._item_name(item, context)
        if name is False:
            return current, True
        self._check_path_keys(item)
        repeat = self._repeat_count(item, context)
        item = self._resolve_op(item, context) if repeat != 0 and self._enabled(item, context) else None
        if item is None:
            if name is not None and self._claim(name, path, context):
                context.refs[name] = current[0] if current else None  # a skipped item passes its input on
            return current, False
        key = str(number) if name is None else name
        if not self._claim(key, path, context):
            return current, True
        inputs = self._item_inputs(item, context, current)
        qualified = context.prefix + key
        if repeat is None:
            output = self._expand_single(item, context, inputs, qualified, name)
        else:
            output = self._expand_repeated(item, context, inputs, qualified, name, repeat)
        self._declare_output(item, context, output)
        context.refs[key] = output[0] if output else None
        return output or current, True

    def _item_name(self, item: Item, context: Context) -> str | None | bool:
        """The item's `name:` as a string, None when unnamed, False (reported) when it is no module path."""
        if item.meta.get("name") is None:
            return None
        name = self._substitute(item.meta["name"], context.variables, item.path + ("name",))
        if name is None:
            return False              # a bad var in it, reported
        if isinstance(name, int) and not isinstance(name, bool) and name >= 0:
            return str(name)          # `name: 3`: the library's number
        if not is_path(name):
            self._problem(f"name {name!r} must be an identifier or a dotted module path like resnets.0 or "
                          f"attention.self.query (parts: letters, digits, _ or a number; no Python keyword)",
                          item.path + ("name",), "TYPE_ERROR")
            return False
        return name

    def _claim(self, key: str, path: tuple, context: Context) -> bool:
        if key in context.refs.maps[0]:
            self._problem(f"duplicate name '{key}' in the same list", path + ("name",), "DUPLICATE_NAME")
            return False
        return True

    def _expand_repeated(self, item, context, inputs, qualified, name, count) -> list[str]:
        for repetition in range(count):
            scope = Scope("repeat", qualified, f"×{count}", self._locate(item.path), repetition, count, qualified)
            inner = replace(context, variables={**context.variables, "i": repetition},
                            scopes=context.scopes + (scope,))
            if repetition:
                self._count_item(item.path, inner, item.op)
            inputs = self._expand_single(item, inner, inputs, f"{qualified}.{repetition}", name) or inputs
        return inputs

    def _expand_single(self, item: Item, context: Context, inputs: list[str], qualified: str,
                       name: str | None) -> list[str]:
        if item.op in STRUCTURES:
            return getattr(self, f"_expand_{item.op}")(item, context, inputs, qualified, name)
        if item.op in self.spec.blocks:
            return self._expand_block(item, context, inputs, qualified, name)
        known_problems = len(self.problems)
        args = self._substitute(item.args, context.variables, item.path + (item.op,), deferrable=True,
                                input_of=inputs[0] if inputs else None)
        if len(self.problems) > known_problems:
            return []  # a bad var in the args: checking the half-substituted kwargs would only add noise
        if item.op in FREE_TENSORS:
            return self._add_free_tensor(item, args, context, inputs, qualified, name)
        if item.op in FUNCTIONS:
            return self._add_function(item, args, context, inputs, qualified, name)
        op, args = self._layer_norm_axis(item, args)   # `LayerNorm: {dim: 1}` is LayerNorm2d
        layer = FUNCTION_AS_LAYER.get(op, op)
        info = self.registry.layer(layer)
        if info is None:
            self._unknown_op(item)
            return []
        if item.op == "dropout" and isinstance(args, (int, float)):
            args = {"p": args}
        kwargs, problems = layer_kwargs(info, args, self._locator(item, context))
        self.problems.extend(problems)
        if item.meta.get("share") is not None:
            return self._add_shared(item, context, inputs, qualified, name, info.name)
        node = Node(name=qualified, op="module", target=info.name, args=kwargs, inputs=inputs,
                    scopes=context.scopes, location=self._locate(item.path), label=name or info.name,
                    meta={"via": list(context.via), **_deferred_args(kwargs)})
        return [self._add(node)]

    def _add_function(self, item, args, context, inputs, qualified, name) -> list[str]:
        info = FUNCTIONS[item.op]
        kwargs, problems = function_call_args(info, args, len(inputs), self._locator(item, context))
        self.problems.extend(problems)
        sources = item.meta.get("from")
        labels = [str(source) for source in (sources if isinstance(sources, list) else [sources])] if sources else None
        node = Node(name=qualified, op="function", target=item.op, args=kwargs, inputs=inputs,
                    scopes=context.scopes, location=self._locate(item.path), label=name or item.op,
                    meta={"via": list(context.via), "from": labels, **_deferred_args(kwargs)})
        return [self._add(node)]

    def _add_free_tensor(self, item, args, context, inputs, qualified, name) -> list[str]:
        """`parameter` / `buffer` / `constant`: a tensor of the model, not computed from an input."""
        kwargs, problems = free_tensor_args(item.op, args, self._locator(item, context))
        self.problems.extend(problems)
        inputs = inputs[:1] if kwargs.get("batch") else []
        node = Node(name=qualified, op="function", target=item.op, args=kwargs, inputs=inputs,
                    scopes=context.scopes, location=self._locate(item.path), label=name or item.op,
                    meta={"via": list(context.via), **_deferred_args(kwargs)})
        return [self._add(node)]

    def _add_shared(self, item, context, inputs, qualified, name, target) -> list[str]:
        reference = self._substitute(item.meta["share"], context.variables, item.path + ("share",))
        owner = self._reference(str(reference), context, item.path + ("share",))
        if owner is None:
            return []
        owner_node = self.by_name[owner]
        if owner_node.op != "module":
            self._problem(f"share: '{reference}' is not a layer with weights", item.path + ("share",), "TYPE_ERROR")
            return []
        node = Node(name=qualified, op="module", target=owner_node.target, args=owner_node.args, inputs=inputs,
                    scopes=context.scopes, location=self._locate(item.path), label=name or owner_node.target,
                    shared_with=owner_node.shared_with or owner_node.name, meta={"via": list(context.via)})
        return [self._add(node)]

    # ----- structures ----------------------------------------------------------------------------
    def _expand_parallel(self, item, context, inputs, qualified, name) -> list[str]:
        branches = item.args
        if not isinstance(branches, dict) or not branches:
            self._problem("parallel needs a mapping of branch names to layer lists, e.g. {a: [...], b: [...]}",
                          item.path + ("parallel",), "TYPE_ERROR")
            return []
        prefix = self._prefix(item, context, qualified)
        scope = Scope("parallel", qualified, name or "parallel", self._locate(item.path), module=_level(prefix, context))
        outputs, labels = [], []
        names = self._part_names(item, context, [str(branch) for branch in branches])
        for branch, layers in branches.items():
            if keyword.iskeyword(str(branch)):   # `self.branches.as` would make the forward a SyntaxError
                self._problem(f"parallel: branch '{branch}' is a Python keyword; name the branch otherwise",
                              item.path + ("parallel", branch), "TYPE_ERROR")
                return []
            branch_scope = Scope("branch", f"{qualified}.{branch}", str(branch), self._locate(item.path + ("parallel", branch)),
                                 module=_level(prefix + names[str(branch)], prefix))
            inner = context.child(scope, "").child(branch_scope, prefix + names[str(branch)])
            layers = layers if isinstance(layers, list) else [layers]
            result = self._expand_items(layers, item.path + ("parallel", branch), inner, inputs)
            outputs.append(result[0])
            labels.append(str(branch))
        merge, merge_args = self._merge(item, context)
        node = Node(name=f"{qualified}.merge", op="merge", target=merge, args=merge_args, inputs=outputs,
                    scopes=context.scopes + (scope,), location=self._locate(item.path), label=merge,
                    meta={"branches": labels, "via": list(context.via), "item": name or "parallel",
                          "merge_at": self._locate(item.path + ("merge",)) if "merge" in item.meta else None})
        return [self._add(node)]

    def _expand_residual(self, item, context, inputs, qualified, name) -> list[str]:
        prefix, names = self._prefix(item, context, qualified), self._part_names(item, context, ["body", "shortcut"])
        scope = Scope("residual", qualified, name or "residual", self._locate(item.path), module=_level(prefix, context))
        outer = context.child(scope, "")
        body_layers = item.args if isinstance(item.args, list) else [item.args]
        body_scope = Scope("body", f"{qualified}.body", "body", self._locate(item.path + ("residual",)),
                           module=_level(prefix + names["body"], prefix))
        body = self._expand_items(body_layers, item.path + ("residual",), outer.child(body_scope, prefix + names["body"]), inputs)
        shortcut = inputs
        if item.meta.get("shortcut") is not None:
            layers = item.meta["shortcut"]
            layers = layers if isinstance(layers, list) else [layers]
            short_scope = Scope("shortcut", f"{qualified}.shortcut", "shortcut", self._locate(item.path + ("shortcut",)),
                                module=_level(prefix + names["shortcut"], prefix))
            shortcut = self._expand_items(layers, item.path + ("shortcut",), outer.child(short_scope, prefix + names["shortcut"]), inputs)
        node = Node(name=f"{qualified}.add", op="merge", target="add", args={}, inputs=[body[0], shortcut[0]],
                    scopes=context.scopes + (scope,), location=self._locate(item.path), label="add",
                    meta={"branches": ["body", "shortcut"], "via": list(context.via), "item": name or "residual"})
        return [self._add(node)]

    def _expand_sequential(self, item, context, inputs, qualified, name) -> list[str]:
        prefix = self._prefix(item, context, qualified)
        scope = Scope("sequential", qualified, name or "sequential", self._locate(item.path), module=_level(prefix, context))
        layers = item.args if isinstance(item.args, list) else [item.args]
        return self._expand_items(layers, item.path + ("sequential",), context.child(scope, prefix), inputs)

    def _expand_block(self, item, context, inputs, qualified, name) -> list[str]:
        block = self.spec.blocks[item.op]
        known_problems = len(self.problems)
        input_of = inputs[0] if inputs else None   # `$in` in a block's args is the block's input
        given = self._substitute(item.args, context.variables, item.path + (item.op,), deferrable=True, input_of=input_of)
        if len(self.problems) > known_problems:
            return []
        arguments = self._block_arguments(item, block, given, context, input_of)
        if arguments is None:
            return []
        location = self._locate(item.path)
        prefix = self._prefix(item, context, qualified)
        scope = Scope("block", qualified, item.op if name is None else f"{name}: {item.op}", location,
                      module=_level(prefix, context))
        inner_vars = {**context.variables, **arguments}
        inner = context.child(scope, prefix, variables=inner_vars,
                              via=context.via + (f"in block '{item.op}' used at {location}",),
                              blocks=context.blocks + (item.op,))
        return self._expand_items(block.layers, ("blocks", item.op, "layers"), inner, inputs)

    def _prefix(self, item: Item, context: Context, qualified: str) -> str:
        """The path prefix of an item's layers: `qualified.`, or with `flat: true` the enclosing
        one (a repeat keeps its index), so a structure or block use adds no state_dict level."""
        flat = self._substitute(item.meta.get("flat", False), context.variables, item.path + ("flat",))
        if not isinstance(flat, bool):
            self._problem(f"flat must be true or false, got {flat!r}", item.path + ("flat",), "TYPE_ERROR")
        if flat is not True:
            return f"{qualified}."
        return context.prefix + (qualified.rpartition(".")[2] + "." if "repeat" in item.meta else "")

    def _check_path_keys(self, item: Item) -> None:
        if "flat" in item.meta and item.op not in STRUCTURES and item.op not in self.spec.blocks:
            self._problem("flat applies to a block use or a structure (a layer is one path level)",
                          item.path + ("flat",), "INVALID_ITEM")
        if "names" in item.meta and item.op not in ("residual", "parallel"):
            self._problem("names applies to a residual (body, shortcut) or a parallel (its branches)",
                          item.path + ("names",), "INVALID_ITEM")

    def _part_names(self, item: Item, context: Context, parts: list[str]) -> dict[str, str]:
        """`names: {body: "", shortcut: downsample}` (a residual) or `{branch: ...}` (a parallel): the
        path level of each part; "" adds none. Default: the part's own name."""
        given = self._substitute(item.meta.get("names") or {}, context.variables, item.path + ("names",))
        names = {part: f"{part}." for part in parts}
        if not isinstance(given, dict):
            self._problem("names must be a mapping like {body: '', shortcut: downsample}", item.path + ("names",), "TYPE_ERROR")
            return names
        for part, name in given.items():
            if part not in names:
                self._problem(f"names: {item.op} has no part '{part}'", item.path + ("names", part), "UNKNOWN_KEY",
                              did_you_mean(str(part), names))
            elif name != "" and not is_path(name):
                self._problem(f"names: {part} must be an identifier, a dotted path or '' (no level), got {name!r}",
                              item.path + ("names", part), "TYPE_ERROR")
            else:
                names[part] = f"{name}." if name else ""
        return names

    # ----- parsing and references ---------------------------------------------------------------
    def _item_inputs(self, item: Item, context: Context, current: list[str]) -> list[str]:
        sources = self._substitute(item.meta.get("from"), context.variables, item.path + ("from",))
        if sources is None:
            return current
        names = sources if isinstance(sources, list) else [sources]
        resolved = [self._reference(str(name), context, item.path + ("from",)) for name in names]
        return [name for name in resolved if name is not None] or current

    def _reference(self, name: str, context: Context, path: tuple) -> str | None:
        if name in context.refs and context.refs[name] is not None:
            return context.refs[name]
        if name in self.by_name:
            return name
        self._problem(f"unknown reference '{name}': no earlier item or input has that name", path,
                      "UNKNOWN_REFERENCE", did_you_mean(name, [*context.refs, *self.by_name]))
        return None

    def _repeat_count(self, item: Item, context: Context) -> int | None:
        if "repeat" not in item.meta:
            return None
        count = self._substitute(item.meta["repeat"], context.variables, item.path + ("repeat",))
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            self._problem(f"repeat must be a positive int or 0 (0 skips the item), got {count!r}", item.path + ("repeat",),
                          "TYPE_ERROR")
            return None
        self._stop_at(self.budget.repeat_problem(count, self._locate(item.path + ("repeat",))))
        return count

    # ----- helpers -------------------------------------------------------------------------------
    def _add(self, node: Node) -> str:
        if node.name in self.by_name:
            self.problems.append(Problem(f"two items resolve to the same name '{node.name}'; give one a `name:`",
                                         node.location, "DUPLICATE_NAME"))
        elif node.op == "module" and self._path_clash(node.name):
            self.problems.append(Problem(f"'{node.name}' would sit inside another layer's path (after `flat:`); "
                                         f"give one a `name:`", node.location, "DUPLICATE_NAME"))
        self.nodes.append(node)
        self.by_name[node.name] = node
        return node.name

    def _path_clash(self, path: str) -> bool:
        """A layer's path nested in another layer's, or around one ("0" and "0.0"); sets, so 10,000
        layers cost 10,000 look-ups rather than 10,000²."""
        above = list(accumulate(path.split("."), lambda prefix, part: f"{prefix}.{part}"))[:-1]
        clash = path in self.module_prefixes or any(prefix in self.module_paths for prefix in above)
        self.module_paths.add(path)
        self.module_prefixes.update(above)
        return clash

    def _substitute(self, value: Any, variables: dict, path: tuple, deferrable: bool = False,
                    input_of: str | None = None) -> Any:
        """Resolve vars, walking containers here so a bad `$var` is located at its own key.

        A value needing an input size (`$in.channels`) becomes a `Deferred` for the dry run where
        `deferrable` (item and block args, `input_of` being the input); elsewhere it is an error.
        """
        if isinstance(value, dict):
            return {key: self._substitute(item, variables, path + (key,), deferrable, input_of)
                    for key, item in value.items()}
        if isinstance(value, list):
            return [self._substitute(item, variables, path + (index,), deferrable, input_of)
                    for index, item in enumerate(value)]
        if needs_input(value, variables):
            if deferrable:
                return Deferred(value, variables, input_of)
            self._problem(f"'{value}' depends on the input's size ($in), which is known only in an item's "
                          f"arguments and a block's args", path, "EXPRESSION_ERROR")
            return None
        try:
            return substitute(value, variables)
        except ExpressionError as error:
            self._fail_var(error, path, variables)
            return None

    def _fail_var(self, error: ExpressionError, path: tuple, variables: dict | None = None) -> None:
        code = "UNKNOWN_VAR" if error.name else "EXPRESSION_ERROR"
        suggestion = did_you_mean(error.name, variables or {}) if error.name else None
        self._problem(str(error), path, code, suggestion)

    def _locate(self, path: tuple) -> Location:
        return self.source.locate(path)

    def _locator(self, item: Item, context: Context):
        """A function turning (message, sub-path, code, suggestion) into a located Problem for this item."""
        def locate(message: str, sub_path: tuple = (), code: str = "TYPE_ERROR", suggestion: str | None = None) -> Problem:
            return Problem(message, self._locate(item.path + sub_path), code, suggestion, list(context.via))
        return locate

    def _problem(self, message: str, path: tuple, code: str, suggestion: str | None = None) -> None:
        self.problems.append(Problem(message, self._locate(path), code, suggestion))

    def _count_item(self, path: tuple, context: Context, op: str | None) -> None:
        self._stop_at(self.budget.item_problem(len(context.scopes), lambda: self._locate(path),
                                               (*context.blocks, op), context.via))

    def _stop_at(self, limit_problem: Problem | None) -> None:
        """Past an expansion bound nothing more is expanded: report what was found so far and the bound."""
        if limit_problem is not None:
            unique = {str(problem): problem for problem in [*self.problems, limit_problem]}
            raise SpecError(list(unique.values()))


def _level(prefix: str, outer: "Context | str") -> str | None:
    """The module path a container's layers sit under, or None when its prefix adds no level."""
    outer_prefix = outer if isinstance(outer, str) else outer.prefix
    return prefix[:-1] if prefix and prefix != outer_prefix else None


def _deferred_args(kwargs: dict) -> dict:
    """Node meta for args that wait for the dry run (`$in`): `{"deferred": {arg: Deferred}}`."""
    deferred = {key: value for key, value in kwargs.items() if contains_deferred(value)}
    return {"deferred": deferred} if deferred else {}
