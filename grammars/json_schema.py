"""JSON-schema helpers: turn what users have (a pydantic model, a dict, a JSON string) into the
JSON string that `SamplingParams.json_schema` and the OpenAI `response_format` carry.

    from pydantic import BaseModel
    class City(BaseModel):
        name: str
        population: int
    params = SamplingParams(json_schema=to_schema_string(City))

pydantic is imported only when a model class is passed, so this module stays light.
"""

from __future__ import annotations

import json
from typing import Any, Union

SchemaLike = Union[str, dict, type]


def is_pydantic_model(obj: Any) -> bool:
    """True for a pydantic BaseModel subclass (the class, not an instance)."""
    return isinstance(obj, type) and hasattr(obj, "model_json_schema")


def schema_from_pydantic(model_cls: type) -> dict:
    """The JSON schema (a dict) of a pydantic v2 model class, `$defs` and all.

    Field order is kept: constrained generation writes properties in this order.
    """
    if not is_pydantic_model(model_cls):
        raise TypeError(f"expected a pydantic BaseModel subclass, got {model_cls!r}")
    return model_cls.model_json_schema()


def to_schema_dict(schema_or_model: SchemaLike) -> dict:
    """A schema dict from a JSON string, a dict (returned as is) or a pydantic model class."""
    if is_pydantic_model(schema_or_model):
        return schema_from_pydantic(schema_or_model)
    if isinstance(schema_or_model, dict):
        return schema_or_model
    if isinstance(schema_or_model, (str, bytes)):
        try:
            schema = json.loads(schema_or_model)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise ValueError(f"json_schema must be a JSON object, got {type(schema).__name__}")
        return schema
    raise TypeError(
        f"json_schema must be a JSON string, a dict or a pydantic model class, got {type(schema_or_model).__name__}"
    )


def to_schema_string(schema_or_model: SchemaLike) -> str:
    """The schema serialised as compact JSON (key order kept), from any accepted form."""
    return json.dumps(to_schema_dict(schema_or_model), separators=(",", ":"), ensure_ascii=False)
