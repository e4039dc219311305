"""How the expander reads one item: its parts (`Item`), its layer name (`- $act`), `if:`, block args
and `merge:` — the checks on what an item says, apart from the walk over the spec in expand.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import re

from specc.lang.errors import Problem, SpecError, did_you_mean, sorted_problems
from specc.lang.expressions import ExpressionError
from specc.build.infer import DryRun
from specc.build.input_sizes import Deferred, needs_input, resolve
from specc.build.registry import FUNCTION_AS_LAYER, FUNCTIONS, MERGES, STRUCTURES, TUPLE_OUTPUT_LAYERS

META_KEYS = ("name", "from", "repeat", "merge", "shortcut", "share", "if",
             "flat", "names",  # flat/names: path levels, so state_dict keys can match another library's
             "batch_dim", "outputs",  # batch_check.py: where the output's batch dim is; keep a layer's whole tuple
             "trainable")             # false: the item's weights stay fixed (requires_grad False)


@dataclass
class Item:
    """One parsed spec item: the operation, its args and its meta keys."""

    op: str
    args: Any
    meta: dict
    path: tuple            # data path of the item in the spec (for locations)


class ItemReading:
    """Mixin of `Expander`: reading items. Uses the expander's `spec`, `registry` and `_problem`."""

    def _block_arguments(self, item, block, given, context, input_of: str | None) -> dict | None:
        declared = dict(block.args)
        if given is None:
            given = {}
        elif isinstance(given, list):
            if len(given) > len(declared):
                self._problem(f"block '{item.op}' takes {len(declared)} args, got {len(given)}", item.path + (item.op,), "TYPE_ERROR")
                return None
            given = dict(zip(declared, given))
        elif not isinstance(given, dict):
            given = dict(zip(declared, [given])) if declared else {}
        ok = True
        for key in given:
            if key not in declared:
                self._problem(f"block '{item.op}' has no arg '{key}'", item.path + (item.op, key), "UNKNOWN_KWARG",
                              did_you_mean(str(key), declared))
                ok = False
        if not ok:   # a misspelt arg also leaves the real one missing: one mistake, one report
            return None
        defaults = self._substitute(declared, context.variables, ("blocks", item.op, "args"), deferrable=True,
                                    input_of=input_of)
        arguments = {**(defaults or {}), **given}
        for key, value in arguments.items():
            if value is None and block.args.get(key) is None and key not in given:
                self._problem(f"block '{item.op}' needs arg '{key}'", item.path + (item.op,), "MISSING_ARGUMENT")
                ok = False
        return arguments if ok else None

    def _item_inputs(self, item: Item, context, current: list[str]) -> list[str] | None:
        """The item's inputs: `from:` names resolved, `m.*` standing for every output of the repeat `m`;
        None when a name is unknown (reported)."""
        raw = item.meta.get("from")
        if raw is None:
            return current
        if "input" not in context.variables:   # `$input` is another way to write `input`
            raw = ["input" if name == "$input" else name for name in raw] if isinstance(raw, list) else (
                "input" if raw == "$input" else raw)
        sources = self._substitute(raw, context.variables, item.path + ("from",))
        if sources is None:
            return None
        resolved: list[str | None] = []
        for name in (sources if isinstance(sources, list) else [sources]):
            if isinstance(name, str) and name.endswith(".*"):
                resolved.extend(self._repeat_outputs(name[:-2], context, item.path + ("from",)) or [None])
            else:
                resolved.append(self._reference(str(name), context, item.path + ("from",)))
        return None if None in resolved else resolved

    def _reference(self, name: str, context, path: tuple) -> str | None:
        """An earlier item's output by name: in the current list, then the enclosing ones (ChainMap), then
        by its path relative to each enclosing list, innermost first (`enc.conv`), then by its full name."""
        if name in context.refs and context.refs[name] is not None:
            return context.refs[name]
        for list_path in reversed(context.lists):
            found = self.spec_paths.get(join_path(list_path, name))
            if found is not None:
                return found
        if name in self.by_name:
            return name
        self._problem(f"unknown reference '{name}': no earlier item or input has that name", path,
                      "UNKNOWN_REFERENCE", did_you_mean(name, [*context.refs, *self.spec_paths]))
        return None

    def _repeat_outputs(self, name: str, context, path: tuple) -> list[str] | None:
        """`from: m.*`: the output of each repetition of the earlier repeated item `m`, in order."""
        for list_path in reversed(context.lists):
            found = self.repeats.get(join_path(list_path, name))
            if found:
                return found
        self._problem(f"'{name}.*' needs '{name}' to be an earlier item with `repeat:`", path, "UNKNOWN_REFERENCE",
                      did_you_mean(name, [key.rpartition(".")[2] for key in self.repeats] + list(self.repeats)))
        return None

    def _condition_from_sizes(self, item: Item, context, current: list[str]) -> Any:
        """`if: $(in.channels != out)`: the items built so far run on meta now (once each, however many
        such `if:`s follow), giving the size of the item's input; None when a mistake is reported."""
        sources = self._item_inputs(item, context, current) if "from" in item.meta else current
        if not sources or self.problems:   # the mistakes found so far are reported rather than run
            return None
        if self.dry_run is None:
            self.dry_run = DryRun(self.registry)
        try:
            self.dry_run.advance(self.nodes)
        except SpecError as error:
            raise SpecError(sorted_problems([*self.problems, *error.problems])) from None
        try:
            return resolve(Deferred(item.meta["if"], context.variables, sources[0]), self.dry_run.feature_shape)
        except ExpressionError as error:
            self._fail_var(error, item.path + ("if",), context.variables)
            return None

    def _warn_fixed_dims(self, item: Item, label: str) -> None:
        """A free tensor sized by a named dim (`constant: {arange: $seq}`) is built once, at the dry run's
        size: the compiled model then takes only that size for the dim. Say so, naming the dim."""
        used = sorted(self.named_dims & _referenced_names(item.args))
        if used:
            dims = ", ".join(f"'{dim}'" for dim in used)
            self.warnings.append(Problem(
                f"{item.op} '{label}' is sized by the named dim {dims}: it is built once at the dry run's size, so "
                f"the model accepts only that size for {dims}; give the dim a number in `inputs:` to say so",
                self._locate(item.path), "FIXED_DIM"))

    def _merge(self, item, context) -> tuple[str, dict]:
        raw = self._substitute(item.meta.get("merge"), context.variables, item.path + ("merge",))
        if raw is None:
            return "cat", {"dim": 1}
        if isinstance(raw, dict) and len(raw) == 1:
            op, args = next(iter(raw.items()))
        else:
            op, args = raw, None
        if not isinstance(op, str) or op not in MERGES:
            self._problem(f"unknown merge '{op}'; use one of {', '.join(MERGES)}", item.path + ("merge",),
                          "UNKNOWN_KEY", did_you_mean(str(op), MERGES))
            return "cat", {"dim": 1}
        if isinstance(args, int):
            args = {"dim": args}
        args = dict(args or {})
        if op in ("cat", "stack"):
            args.setdefault("dim", 1)
        unknown = [key for key in args if key != "dim" or op not in ("cat", "stack")]
        for key in unknown:
            self._problem(f"merge '{op}' takes no arg '{key}'", item.path + ("merge",), "UNKNOWN_KWARG",
                          "dim" if op in ("cat", "stack") else None)
        return op, {key: value for key, value in args.items() if key not in unknown}

    def _parse_item(self, raw: Any, path: tuple) -> Item | None:
        if isinstance(raw, str):
            return Item(raw, None, {}, path)
        if not isinstance(raw, dict):
            self._problem(f"an item must be a layer name or a mapping like 'Linear: {{out_features: 10}}', got {raw!r}",
                          path, "INVALID_ITEM")
            return None
        meta = {key: value for key, value in raw.items() if key in META_KEYS}
        ops = [key for key in raw if key not in META_KEYS]
        if len(ops) == 1:
            return Item(str(ops[0]), raw[ops[0]], meta, path)
        if not ops:
            self._problem("item has no layer: add a layer name next to its meta keys", path, "INVALID_ITEM")
            return None
        misspelled_meta = [op for op in ops if not self._is_known(str(op)) and did_you_mean(str(op), META_KEYS)]
        for key in misspelled_meta:
            self._problem(f"unknown key '{key}' in an item", path + (key,), "UNKNOWN_KEY", did_you_mean(str(key), META_KEYS))
        layers = [op for op in ops if op not in misspelled_meta]
        if len(layers) > 1:
            self._problem(f"item has several layers: {', '.join(map(str, layers))} (one per list entry)",
                          path + (layers[1],), "INVALID_ITEM")
            return None
        if not layers:
            return None
        # a misspelled meta key is reported; still check the layer itself
        return Item(str(layers[0]), raw[layers[0]], meta, path)

    def _is_known(self, op: str) -> bool:
        return (op in STRUCTURES or op in self.spec.blocks or op in FUNCTIONS or op in FUNCTION_AS_LAYER
                or self.registry.layer(op) is not None)

    def _unknown_op(self, item: Item) -> None:
        choices = [*self.registry.names(), *self.spec.blocks, *STRUCTURES]
        kind = "layer" if item.op[:1].isupper() else "layer, function or block"
        location_path = item.path + (item.op,) if item.args is not None else item.path
        self._problem(f"unknown {kind} '{item.op}'", location_path, "UNKNOWN_LAYER", did_you_mean(item.op, choices))

    def _enabled(self, item: Item, context, current: list[str]) -> bool:
        """`if:` — false (or a `$(condition)` that is false) skips the item; one reading `$in` (or a block
        arg defaulted from it) is decided by the sizes the items built so far give."""
        if "if" not in item.meta:
            return True
        if needs_input(item.meta["if"], context.variables):
            condition = self._condition_from_sizes(item, context, current)
        else:
            condition = self._substitute(item.meta["if"], context.variables, item.path + ("if",))
        if not isinstance(condition, bool):
            if condition is not None:  # None: a bad var, reported already
                self._problem(f"if must be true, false or a $(condition), got {condition!r}", item.path + ("if",),
                              "TYPE_ERROR")
            return False
        return condition

    def _mark_fixed(self, item: Item, context, nodes: list) -> None:
        """`trainable: false`: every layer and parameter the item built keeps its values in training."""
        if "trainable" not in item.meta:
            return
        value = self._substitute(item.meta["trainable"], context.variables, item.path + ("trainable",))
        if not isinstance(value, bool):
            if value is not None:
                self._problem(f"trainable must be true or false, got {value!r}", item.path + ("trainable",), "TYPE_ERROR")
            return
        for node in nodes if value is False else []:
            node.meta["trainable"] = False

    def _declare_output(self, item: Item, context, output: list[str]) -> None:
        """`batch_dim:` and `outputs:` describe the node the item ends with (batch_check.py reads the first)."""
        node = self.by_name.get(output[0]) if output else None
        if node is None:
            return
        if "batch_dim" in item.meta:
            value = self._substitute(item.meta["batch_dim"], context.variables, item.path + ("batch_dim",))
            if value is not False and (not isinstance(value, int) or isinstance(value, bool)):
                self._problem(f"batch_dim must be false (no batch dim) or the dim holding the batch, got {value!r}",
                              item.path + ("batch_dim",), "TYPE_ERROR")
            else:
                node.meta["batch_dim"] = value
        if "outputs" in item.meta:
            value = item.meta["outputs"]
            if value not in ("all", "first"):
                self._problem(f"outputs must be 'all' (the layer's whole tuple) or 'first', got {value!r}",
                              item.path + ("outputs",), "TYPE_ERROR", did_you_mean(str(value), ["all", "first"]))
            elif node.op != "module" or node.target not in TUPLE_OUTPUT_LAYERS:
                self._problem(f"outputs: only {', '.join(sorted(TUPLE_OUTPUT_LAYERS))} return several outputs, "
                              f"not {item.op}", item.path + ("outputs",), "TYPE_ERROR")
            else:
                node.meta["outputs"] = value

    def _resolve_op(self, item: Item, context) -> Item | None:
        """`- $act` / `- $act: {inplace: true}`: a var naming a layer, block or function is the item."""
        if not item.op.startswith("$"):
            return item
        value = self._substitute(item.op, context.variables, item.path)
        args = item.args
        if isinstance(value, dict) and len(value) == 1 and args is None:   # act: {LeakyReLU: 0.1}
            value, args = next(iter(value.items()))
        if value is None:
            return None
        if not isinstance(value, str) or not value or value.startswith("$"):
            self._problem(f"'{item.op}' must name a layer, block or function, got {value!r}", item.path, "TYPE_ERROR")
            return None
        return replace(item, op=value, args=args)

    def _layer_norm_axis(self, item: Item, args: Any) -> tuple[str, Any]:
        """`LayerNorm: {dim: 1}` normalises the channels of `[C, H, W]` maps: it is `LayerNorm2d`
        (same `weight`/`bias`); `dim: -1` is the default, the last dim. Other layers pass through."""
        if item.op != "LayerNorm" or not isinstance(args, dict) or "dim" not in args:
            return item.op, args
        args = dict(args)
        dim = args.pop("dim")
        if dim == 1 and not isinstance(dim, bool):
            return "LayerNorm2d", args
        if dim != -1 or isinstance(dim, bool):
            self._problem(f"LayerNorm: dim must be 1 (the channels of channels-first maps, as LayerNorm2d) or -1 "
                          f"(the last dim, the default), got {dim!r}", item.path + ("LayerNorm", "dim"), "TYPE_ERROR")
        return item.op, args


def join_path(path: str, name: str) -> str:
    """`enc` + `conv` -> `enc.conv`; at the top level the name alone."""
    return f"{path}.{name}" if path else name


def _referenced_names(value: Any) -> set[str]:
    """The words of every string holding a `$` reference, through lists and mappings."""
    if isinstance(value, dict):
        return set().union(*map(_referenced_names, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_referenced_names, value)) if value else set()
    return set(re.findall(r"[A-Za-z_]\w*", value)) if isinstance(value, str) and "$" in value else set()
