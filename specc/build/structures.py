"""How the expander expands structures (`parallel`, `residual`, `sequential`) and block uses: each
a list of items one level down, with its own names, path level and `input`.
"""
from __future__ import annotations

import keyword

from specc.lang.errors import did_you_mean
from specc.lang.spec import is_path
from specc.build.graph import Node, Scope
from specc.build.items import Item
from specc.build.registry import STRUCTURES


class StructureExpansion:
    """Mixin of `Expander`: structures and blocks. Uses the expander's `_expand_items`, `_add`, `_problem`."""

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
            inner = context.child(scope, "").child(branch_scope, prefix + names[str(branch)], inputs,
                                                   f"{context.item}.{branch}")
            layers = layers if isinstance(layers, list) else [layers]
            result = self._expand_items(layers, item.path + ("parallel", branch), inner, inputs)
            outputs.append(result[0])
            labels.append(str(branch))
            self.spec_paths[f"{context.item}.{branch}"] = result[0]
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
        body = self._expand_items(body_layers, item.path + ("residual",),
                                  outer.child(body_scope, prefix + names["body"], inputs, context.item), inputs)
        shortcut = inputs
        if item.meta.get("shortcut") is not None:
            layers = item.meta["shortcut"]
            layers = layers if isinstance(layers, list) else [layers]
            short_scope = Scope("shortcut", f"{qualified}.shortcut", "shortcut", self._locate(item.path + ("shortcut",)),
                                module=_level(prefix + names["shortcut"], prefix))
            shortcut = self._expand_items(layers, item.path + ("shortcut",), outer.child(
                short_scope, prefix + names["shortcut"], inputs, f"{context.item}.shortcut"), inputs)
        node = Node(name=f"{qualified}.add", op="merge", target="add", args={}, inputs=[body[0], shortcut[0]],
                    scopes=context.scopes + (scope,), location=self._locate(item.path), label="add",
                    meta={"branches": ["body", "shortcut"], "via": list(context.via), "item": name or "residual"})
        return [self._add(node)]

    def _expand_sequential(self, item, context, inputs, qualified, name) -> list[str]:
        prefix = self._prefix(item, context, qualified)
        scope = Scope("sequential", qualified, name or "sequential", self._locate(item.path), module=_level(prefix, context))
        layers = item.args if isinstance(item.args, list) else [item.args]
        return self._expand_items(layers, item.path + ("sequential",), context.child(scope, prefix, inputs, context.item),
                                  inputs)

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
        inner = context.child(scope, prefix, inputs, context.item, variables=inner_vars,
                              via=context.via + (f"in block '{item.op}' used at {location}",),
                              blocks=context.blocks + (item.op,))
        return self._expand_items(block.layers, ("blocks", item.op, "layers"), inner, inputs)

    def _prefix(self, item: Item, context, qualified: str) -> str:
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

    def _part_names(self, item: Item, context, parts: list[str]) -> dict[str, str]:
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


def _level(prefix: str, outer) -> str | None:
    """The module path a container's layers sit under, or None when its prefix adds no level."""
    outer_prefix = outer if isinstance(outer, str) else outer.prefix
    return prefix[:-1] if prefix and prefix != outer_prefix else None
