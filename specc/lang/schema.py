"""JSON Schema of the spec format, for editors (`specc schema > spec.schema.json`)."""
from __future__ import annotations


def json_schema() -> dict:
    """The JSON Schema of a spec file (pydantic's, with a title and the layer-item description)."""
    from specc.lang.spec import Spec

    schema = Spec.model_json_schema()
    schema["title"] = "specc model spec"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("properties", {}).get("layers", {})["description"] = (
        "Items: a layer name ('ReLU'), a name with kwargs ({'Linear': {'out_features': 10}}) or a positional "
        "list ({'Linear': [10]}), plus meta keys name/from/repeat; structures parallel/residual/sequential; "
        "block names; allow-listed lowercase functions.")
    return schema
