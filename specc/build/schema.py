"""The spec's JSON Schema with every item checked by name: the catalogue of layers (torch.nn and
specc's, each with its constructor kwargs and their types) and allow-listed functions that
`specc.lang.schema` describes items with. `specc schema` prints `json_schema()`."""
from __future__ import annotations

import inspect
from typing import Any

from pydantic import TypeAdapter

from specc.lang.schema import ItemCatalogue, json_schema as _schema_with
from specc.build.registry import FUNCTION_AS_LAYER, FUNCTIONS, MERGES, STRUCTURES, LayerInfo, Registry
from specc.build.signatures import kwarg_annotation
from specc.build.tensors import FREE_TENSOR_KEYS

_VAR = {"type": "string", "pattern": r"^\$"}
# function args with one meaning wherever they appear (`dim` is an int or a list: not typed)
_FUNCTION_ARG_TYPES = {
    **dict.fromkeys(("largest", "sorted", "descending", "stable", "keepdim"), {"type": "boolean"}),
    "k": {"type": "integer", "minimum": 0}, "num_classes": {"type": "integer", "minimum": 1},
    **dict.fromkeys(("beta", "threshold"), {"type": "number"}),
}


def json_schema() -> dict:
    """The JSON Schema of a spec file, items included (for yaml-language-server and validators)."""
    return _schema_with(item_catalogue())


def item_catalogue(registry: Registry | None = None) -> ItemCatalogue:
    """Every name an item can use, with the JSON Schema of its kwargs."""
    registry = registry or Registry()
    layers = {name: layer_kwargs_schema(registry.layer(name)) for name in registry.layers}
    if "LayerNorm" in layers:     # `LayerNorm: {dim: 1}` is LayerNorm2d (specc.build.items)
        layers["LayerNorm"]["properties"]["dim"] = {"anyOf": [{"enum": [1, -1]}, _VAR]}
    functions = {name: _closed({key: _function_arg(key) for key in info.parameters}) for name, info in FUNCTIONS.items()}
    functions.update({name: layers[layer] for name, layer in FUNCTION_AS_LAYER.items()})
    functions.update({name: _closed({key: {} for key in keys}) for name, keys in FREE_TENSOR_KEYS.items()})
    return ItemCatalogue(layers=layers, functions=functions, structures=tuple(STRUCTURES), merges=tuple(MERGES))


def layer_kwargs_schema(info: LayerInfo) -> dict:
    """A layer's kwargs mapping: its constructor's parameters, typed where the annotation allows."""
    properties = {parameter.name: _parameter_schema(info.cls, parameter) for parameter in info.parameters}
    schema = {"type": "object", "properties": properties, "additionalProperties": info.accepts_any_kwarg}
    summary = (inspect.getdoc(info.cls) or "").split("\n\n")[0].replace("\n", " ").strip()
    return {"description": summary[:200], **schema} if summary else schema    # shown on hover


def _function_arg(key: str) -> dict:
    typed = _FUNCTION_ARG_TYPES.get(key)
    return {"anyOf": [typed, _VAR]} if typed else {}


def _closed(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _parameter_schema(cls: type, parameter: inspect.Parameter) -> dict:
    typed = _annotation_schema(kwarg_annotation(cls, parameter.name))
    if typed is None:
        return {}
    options = [typed, _VAR] + ([{"type": "null"}] if parameter.default is None else [])
    return {"anyOf": options}


def _annotation_schema(annotation: Any) -> dict | None:
    """JSON Schema of a type annotation, or None (anything) when it has none or cannot be expressed."""
    if annotation is None:
        return None
    try:
        schema = TypeAdapter(annotation).json_schema()
    except Exception:  # noqa: BLE001 - tensors, callables, torch.Size: not expressible, not checked
        return None
    return None if "$ref" in str(schema) or "$defs" in schema or not schema else schema
