"""JSON Schema of the spec format, for editors (`specc schema > spec.schema.json`).

The top-level keys come from the pydantic models; the items (`layers:` and every nested list) are
described here: meta keys, structures, merge values and — from a catalogue that the build stage
reads off torch.nn, specc's layers and the function allow-list — every layer and function with
its arguments. So yaml-language-server flags `Conv2D`, `paddding`, `repet` and `merge: concat`.

What a static schema cannot know: the spec's own block names and `imports:` classes. Lowercase
keys are taken as block uses (anything goes in them), CamelCase ones must be known layers, so a
layer from `imports:` is flagged by the editor (specc itself accepts it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Item keys that are not the operation (specc.build.items.META_KEYS; a test keeps them equal).
META_KEYS = ("name", "from", "repeat", "merge", "shortcut", "share", "if", "flat", "names", "batch_dim", "outputs",
             "trainable")

_VAR = {"type": "string", "pattern": r"^\$"}          # `$width`, `$(width * 2)`, `$in.channels`
_PATH = r"^([A-Za-z_][A-Za-z0-9_]*|[0-9]+)(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$|\$"   # a name, a dotted path, or a var
_BLOCK_KEY = r"^[a-z_][A-Za-z0-9_]*$"                 # a use of one of the spec's blocks


@dataclass
class ItemCatalogue:
    """What items can name: `{layer or function name: JSON Schema of its kwargs mapping}`, plus the
    structure and merge names."""

    layers: dict[str, dict] = field(default_factory=dict)
    functions: dict[str, dict] = field(default_factory=dict)
    structures: tuple[str, ...] = ("parallel", "residual", "sequential")
    merges: tuple[str, ...] = ("cat", "add", "mul", "stack", "mean", "max", "list")


def json_schema(catalogue: ItemCatalogue | None = None) -> dict:
    """The JSON Schema of a spec file; with a `catalogue`, items are checked name by name."""
    from specc.lang.spec import Spec

    schema = Spec.model_json_schema()
    schema["title"] = "specc model spec"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    definitions = schema.setdefault("$defs", {})
    definitions.update(_item_definitions(catalogue or ItemCatalogue()))
    items = {"type": "array", "items": {"$ref": "#/$defs/item"}, "description": (
        "Items: a layer name ('ReLU'), a name with kwargs ({'Linear': {'out_features': 10}}), a positional list "
        "({'Linear': [10]}) or one scalar, plus meta keys (name, from, repeat, share, if, flat, names); "
        "structures parallel/residual/sequential; block names; allow-listed lowercase functions.")}
    schema["properties"]["layers"] = {**items, "minItems": 1}
    definitions["BlockSpec"]["properties"]["layers"] = {**items, "minItems": 1}
    return schema


def _item_definitions(catalogue: ItemCatalogue) -> dict:
    ops = {**catalogue.layers, **catalogue.functions}
    known = sorted({*ops, *catalogue.structures})
    # a list of items or one item; conditional (not anyOf) so an error points inside the list
    item_list = {"if": {"type": "array"}, "then": {"items": {"$ref": "#/$defs/item"}}, "else": {"$ref": "#/$defs/item"}}
    structures = {
        "parallel": {"type": "object", "minProperties": 1, "additionalProperties": item_list,
                     "description": "branches, each a list of items, all seeing the same input"},
        "residual": {**item_list, "description": "the body; its output is added to the input (or `shortcut:`)"},
        "sequential": {**item_list, "description": "items grouped under one name"},
    }
    properties = {**{name: _args(schema) for name, schema in ops.items()},
                  **{name: structures.get(name, {}) for name in catalogue.structures},
                  **_meta_properties(catalogue, item_list)}
    return {"item": {
        "description": "One item: an operation key (layer, function, structure or block) and meta keys",
        "type": ["string", "object"],
        # a bare string: a known layer or function, a block (lowercase) or a layer-valued var (`$act`)
        "if": {"type": "string", "not": {"anyOf": [{"pattern": _BLOCK_KEY}, {"pattern": r"^\$"}]}},
        "then": {"enum": known},
        "else": {
            "properties": properties,
            "patternProperties": {_BLOCK_KEY: {}, r"^\$": {}},
            "additionalProperties": False,
            "minProperties": 1,
            # next to a known operation every other key must be a meta key (`repet` is flagged)
            "dependentSchemas": {name: {"propertyNames": {"enum": [name, *META_KEYS]}} for name in known},
        },
    }}


def _args(kwargs: dict) -> dict:
    """An operation's value: a kwargs mapping (checked), a positional list, one scalar, or nothing."""
    return {**kwargs, "type": ["object", "array", "string", "number", "boolean", "null"]}


def _meta_properties(catalogue: ItemCatalogue, item_list: dict) -> dict:
    merge_names = {"enum": list(catalogue.merges)}
    return {
        "name": {"description": "the item's name: its submodule path (dotted, as resnets.0 or attention.self.query), "
                                "state_dict prefix and label",
                 "anyOf": [{"type": "string", "pattern": _PATH}, {"type": "integer", "minimum": 0}]},
        "from": {"description": "earlier item(s) or input(s) to consume",
                 "anyOf": [{"type": ["string", "integer"]}, {"type": "array", "items": {"type": ["string", "integer"]}}]},
        "repeat": {"description": "repeat N times in sequence ($i is the index); 0 skips the item",
                   "anyOf": [{"type": "integer", "minimum": 0}, _VAR]},
        "share": {"type": "string", "description": "call the same module (same weights) as this earlier item"},
        "if": {"description": "false skips the item (its input passes through)", "anyOf": [{"type": "boolean"}, _VAR]},
        "flat": {"description": "add no path level for this structure or block use", "anyOf": [{"type": "boolean"}, _VAR]},
        "names": {"type": "object", "additionalProperties": {"type": "string"},
                  "description": "path level of a residual's body/shortcut or of a parallel's branches"},
        "batch_dim": {"description": "where this item's output has the batch dim, or false for none (the dry run checks it)",
                      "anyOf": [{"type": "integer"}, {"const": False}, _VAR]},
        "outputs": {"const": "all", "description": "keep the layer's whole output tuple (LSTM: output, (h, c))"},
        "trainable": {"description": "false: the weights of every layer and parameter of the item stay fixed",
                      "anyOf": [{"type": "boolean"}, _VAR]},
        "shortcut": {**item_list, "description": "a residual's shortcut (default: the identity)"},
        "merge": {"description": f"how a parallel's branches combine: {', '.join(catalogue.merges)}",
                  "type": ["string", "object"],
                  "if": {"type": "string", "not": {"pattern": r"^\$"}}, "then": merge_names,
                  "minProperties": 1, "maxProperties": 1, "propertyNames": merge_names},
    }
