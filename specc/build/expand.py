"""Spec -> Graph: resolve vars, blocks, repeats, branches and references into ordered nodes.

Nothing runs here: this pass only checks names (layers, kwargs, references, vars) against what
exists, collecting every problem it finds. Sizes are checked afterwards by the dry run.
"""
from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any

from specc.lang.errors import Location, Problem, SpecError, did_you_mean, sorted_problems
from specc.lang.expressions import ExpressionError, resolve_vars, substitute
from specc.build.bounds import ExpansionBudget
from specc.build.graph import Graph, Node, Scope
from specc.build.items import Item, ItemReading, join_path
from specc.build.structures import StructureExpansion
from specc.build.infer import DryRun
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
    lists: tuple = ("",)   # spec paths of the enclosing item lists, innermost last (`from:` searches them)
    item: str = ""         # spec path of the item being expanded (`enc.0` in a repeat)

    def child(self, scope: Scope, prefix: str, inputs: list | None = None, list_path: str | None = None,
              **changes) -> "Context":
        """The context of a list inside a container: its own names, `input` naming the list's input."""
        refs = self.refs.new_child({"input": inputs[0]} if inputs else {}).new_child()
        lists = self.lists if list_path is None else self.lists + (list_path,)
        return replace(self, refs=refs, scopes=self.scopes + (scope,), prefix=prefix, lists=lists, **changes)


class Expander(ItemReading, StructureExpansion):
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
        self.spec_paths: dict[str, str] = {}      # every item's spec path (`enc.conv`, `m.2`) -> its output node
        self.repeats: dict[str, list[str]] = {}   # a repeat's spec path -> each repetition's output (`from: m.*`)
        self.dry_run: DryRun | None = None        # started by the first `if:` that reads an input size
        self.warnings: list[Problem] = []
        self.named_dims = {str(size) for declared in spec.inputs.values() for size in declared.shape
                           if isinstance(size, str) and IDENTIFIER.match(size)}

    # ----- entry point -------------------------------------------------------------------------
    def expand(self) -> Graph:
        variables = self._global_vars()
        refs: ChainMap = ChainMap({}, {"input": next(iter(self.spec.inputs))})   # `from: input` at the top
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
        return Graph(self.nodes, outputs, self.warnings)

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
        item = self._resolve_op(item, context) if repeat != 0 and self._enabled(item, context, current) else None
        if item is None:
            if name is not None and name not in context.refs.maps[0]:
                # a skipped item passes its input on under its name; kept below the list's own names,
                # so a built alternative may take the name after it (`if: $se` / `if: $(not se)`)
                context.refs.maps[1][name] = current[0] if current else None
                if current:
                    self.spec_paths[join_path(context.lists[-1], name)] = current[0]
            return current, False
        key = str(number) if name is None else name
        if not self._claim(key, path, context):
            return current, True
        # a repeated item whose `from:` uses a var (`from: $(levels[i])`) reads it in each repetition
        each = repeat is not None and "$" in str(item.meta.get("from", ""))
        inputs = current if each else self._item_inputs(item, context, current)
        if inputs is None:             # an unknown `from:` name, reported: checking the item would only add noise
            context.refs[key] = None
            return current, True
        qualified = context.prefix + key
        context = replace(context, item=join_path(context.lists[-1], key))
        start = len(self.nodes)
        if repeat is None:
            output = self._expand_single(item, context, inputs, qualified, name)
        else:
            output = self._expand_repeated(item, context, inputs, qualified, name, repeat, each)
        self._declare_output(item, context, output)
        self._mark_fixed(item, context, self.nodes[start:])
        self._name_output(context, key, output)
        return output or current, True

    def _name_output(self, context: Context, key: str, output: list[str]) -> None:
        """`key` names the output in its list, and its spec path names it anywhere after (`from: enc.conv`)."""
        context.refs[key] = output[0] if output else None
        if output:
            self.spec_paths[join_path(context.lists[-1], key)] = output[0]

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

    def _expand_repeated(self, item, context, inputs, qualified, name, count, each: bool = False) -> list[str]:
        """Each repetition takes the previous one's output, or with `each` its own `from:` (read with `$i`)."""
        for repetition in range(count):
            scope = Scope("repeat", qualified, f"×{count}", self._locate(item.path), repetition, count, qualified)
            inner = replace(context, variables={**context.variables, "i": repetition},
                            scopes=context.scopes + (scope,), item=f"{context.item}.{repetition}")
            if repetition:
                self._count_item(item.path, inner, item.op)
            sources = self._item_inputs(item, inner, inputs) if each else inputs
            if sources is None:
                return inputs
            inputs = self._expand_single(item, inner, sources, f"{qualified}.{repetition}", name) or inputs
            if inputs:
                self.spec_paths[inner.item] = inputs[0]
                self.repeats.setdefault(context.item, []).append(inputs[0])
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
        if item.meta.get("share") is not None and args is None:   # the shared layer's arguments: none needed
            return self._add_shared(item, context, inputs, qualified, name, info.name, {})
        kwargs, problems = layer_kwargs(info, args, self._locator(item, context))
        self.problems.extend(problems)
        if item.meta.get("share") is not None:
            return self._add_shared(item, context, inputs, qualified, name, info.name, kwargs)
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
        if labels is not None and len(labels) != len(inputs):   # `from: [a, m.*]`: name each input
            labels = list(inputs)
        node = Node(name=qualified, op="function", target=item.op, args=kwargs, inputs=inputs,
                    scopes=context.scopes, location=self._locate(item.path), label=name or item.op,
                    meta={"via": list(context.via), "from": labels, **_deferred_args(kwargs)})
        return [self._add(node)]

    def _add_free_tensor(self, item, args, context, inputs, qualified, name) -> list[str]:
        """`parameter` / `buffer` / `constant`: a tensor of the model, not computed from an input."""
        kwargs, problems = free_tensor_args(item.op, args, self._locator(item, context))
        self.problems.extend(problems)
        self._warn_fixed_dims(item, name or qualified)
        inputs = inputs[:1] if kwargs.get("batch") else []
        node = Node(name=qualified, op="function", target=item.op, args=kwargs, inputs=inputs,
                    scopes=context.scopes, location=self._locate(item.path), label=name or item.op,
                    meta={"via": list(context.via), **_deferred_args(kwargs)})
        return [self._add(node)]

    def _add_shared(self, item, context, inputs, qualified, name, target, given: dict) -> list[str]:
        reference = self._substitute(item.meta["share"], context.variables, item.path + ("share",))
        owner = self._reference(str(reference), context, item.path + ("share",))
        if owner is None:
            return []
        owner_node = self.by_name[owner]
        if owner_node.op != "module":
            self._problem(f"share: '{reference}' is not a layer with weights", item.path + ("share",), "TYPE_ERROR")
            return []
        if owner_node.target != target:
            self._problem(f"share: '{reference}' is a {owner_node.target}, not a {target}", item.path + ("share",),
                          "TYPE_ERROR")
            return []
        for key, value in given.items():   # arguments written anyway must be the shared layer's
            if key in owner_node.args and owner_node.args[key] != value:
                self._problem(f"share: '{reference}' has {key}={owner_node.args[key]!r}, not {value!r}; "
                              f"leave the arguments out", item.path + (item.op,), "TYPE_ERROR")
                return []
        node = Node(name=qualified, op="module", target=owner_node.target, args=owner_node.args, inputs=inputs,
                    scopes=context.scopes, location=self._locate(item.path), label=name or owner_node.target,
                    shared_with=owner_node.shared_with or owner_node.name, meta={"via": list(context.via)})
        return [self._add(node)]

    # ----- parsing and references ---------------------------------------------------------------
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


def _deferred_args(kwargs: dict) -> dict:
    """Node meta for args that wait for the dry run (`$in`): `{"deferred": {arg: Deferred}}`."""
    deferred = {key: value for key, value in kwargs.items() if contains_deferred(value)}
    return {"deferred": deferred} if deferred else {}
