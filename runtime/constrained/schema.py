"""JSON schema → regex, through outlines-core's `build_regex_from_schema`, with a checked front door.

outlines-core silently ignores keywords it cannot express, which would let outputs violate the
schema the user asked for. We walk the schema first and refuse those keywords with a ValueError
naming the keyword and where it is, and we add what we can express exactly:

- integer bounds (minimum / maximum / exclusive*): a digit-by-digit range regex;
- number `minimum: 0`: a number without a minus sign;
- string formats (date, time, date-time, email, uuid, ipv4, uri) spelled without quotes or
  backslashes, so they stay inside the JSON string.

Both are spliced in through unique placeholder `const` strings that outlines-core copies verbatim.
Whitespace between JSON tokens is compact by default (`whitespace_pattern` None → "").
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any, Optional

from grammars.json_schema import to_schema_dict
from grammars.regex import EMAIL, IPV4, ISO_DATE, UUID, integer_range

_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
# String formats, spelled so they can never contain '"' or '\\' (outlines-core's email and uri
# patterns allow quotes, which both breaks the JSON and makes the automaton explode).
FORMATS = {
    "date": ISO_DATE,
    "time": _TIME,
    "date-time": ISO_DATE + "T" + _TIME,
    "email": EMAIL,
    "uuid": UUID,
    "ipv4": IPV4,
    "uri": r"[a-zA-Z][a-zA-Z0-9+.-]*:[^\x00-\x20\x7F\"\\\\<>{}|^`]+",
}

MAX_SCHEMA_CHARS = 100_000
MAX_SCHEMA_DEPTH = 24
NON_NEGATIVE_NUMBER = r"((0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-][0-9]+)?)"
# Validation keywords that outlines-core would ignore: outputs could break them, so we refuse.
UNSUPPORTED_KEYWORDS = (
    "multipleOf", "uniqueItems", "contains", "minContains", "maxContains", "patternProperties",
    "propertyNames", "dependentRequired", "dependentSchemas", "dependencies", "if", "then", "else",
    "not", "unevaluatedProperties", "unevaluatedItems",
)
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def schema_to_regex(schema: Any, whitespace_pattern: Optional[str] = None) -> str:
    """The regex matching the JSON documents (compact unless `whitespace_pattern`) valid for `schema`.

    schema: a JSON string, a dict or a pydantic model class. Raises ValueError naming the problem.
    """
    from outlines_core.json_schema import build_regex_from_schema

    schema = checked_schema_dict(schema)
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise ValueError(f"json_schema is {len(text)} characters long; the limit is {MAX_SCHEMA_CHARS}")
    rewriter = _SchemaRewriter(text)
    rewritten = rewriter.rewrite(schema, "#", 0)
    try:
        regex = build_regex_from_schema(json.dumps(rewritten), whitespace_pattern or "")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"json_schema: {exc}".strip()) from None
    for name, sub in rewriter.placeholders.items():
        regex = regex.replace(f'"{name}"', sub)
    return regex


def checked_schema_dict(schema: Any) -> dict:
    """The schema as a dict (from a JSON string, dict or pydantic class), refused if it is huge.

    Sizes are counted before serialising: a dict that reuses sub-dicts can be exponentially larger
    as JSON than in memory."""
    try:
        schema = to_schema_dict(schema)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    budget, stack = MAX_SCHEMA_CHARS // 4, [schema]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise ValueError(f"json_schema has more than {MAX_SCHEMA_CHARS // 4} nodes")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema


class _SchemaRewriter:
    def __init__(self, text: str) -> None:
        self.placeholders: dict[str, str] = {}
        self.nonce = secrets.token_hex(6)
        while self.nonce in text:  # the placeholder must not occur in the user's schema
            self.nonce = secrets.token_hex(6)

    def rewrite(self, node: Any, path: str, depth: int) -> Any:
        if depth > MAX_SCHEMA_DEPTH:
            raise ValueError(f"json_schema nests deeper than {MAX_SCHEMA_DEPTH} levels (at {path})")
        if not isinstance(node, dict):
            return node
        _refuse_unsupported(node, path)
        if isinstance(node.get("type"), list) and any(k in node for k in _BOUNDS):
            split = {"anyOf": [dict(node, type=t) for t in node["type"]]}
            return self.rewrite(split, path, depth)
        if "enum" not in node and "const" not in node and any(k in node for k in _BOUNDS):
            return self._bounded(node, path)
        if node.get("type") == "string" and node.get("format") in FORMATS and not _has_length_or_pattern(node):
            return self._placeholder(f'"({FORMATS[node["format"]]})"')
        out = dict(node)
        for key in _SUBSCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                out[key] = {k: self.rewrite(v, f"{path}/{key}/{k}", depth + 1) for k, v in node[key].items()}
        for key in _SUBSCHEMA_LISTS:
            if isinstance(node.get(key), list):
                out[key] = [self.rewrite(v, f"{path}/{key}/{i}", depth + 1) for i, v in enumerate(node[key])]
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                out[key] = self.rewrite(node[key], f"{path}/{key}", depth + 1)
        return out

    def _bounded(self, node: dict, path: str) -> dict:
        kind = node.get("type")
        if kind == "integer":
            low, high = _integer_bounds(node, path)
            return self._placeholder(integer_range(low, high))
        if kind == "number" and node.get("minimum") == 0 and not any(k in node for k in _BOUNDS[1:]):
            return self._placeholder(NON_NEGATIVE_NUMBER)
        raise ValueError(
            f"json_schema: bounds on {kind or 'untyped'} values at {path} are not supported "
            "(supported: integer minimum/maximum/exclusive*, number minimum 0)"
        )

    def _placeholder(self, regex: str) -> dict:
        name = f"sgflow{self.nonce}n{len(self.placeholders)}"
        self.placeholders[name] = regex
        return {"const": name}


def _has_length_or_pattern(node: dict) -> bool:
    return any(k in node for k in ("minLength", "maxLength", "pattern"))


def _refuse_unsupported(node: dict, path: str) -> None:
    for key in UNSUPPORTED_KEYWORDS:
        if key in node:
            raise ValueError(f"json_schema: keyword {key!r} at {path} is not supported by constrained decoding")
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        raise ValueError(f"json_schema: allOf with more than one subschema at {path} is not supported")
    if isinstance(node.get("items"), list):
        raise ValueError(f"json_schema: 'items' as a list at {path} is not supported; use prefixItems")
    if isinstance(node.get("properties"), dict):
        missing = [r for r in node.get("required", []) if r not in node["properties"]]
        if missing:
            raise ValueError(f"json_schema: required properties {missing} at {path} are not in 'properties'")
        for key in ("minProperties", "maxProperties"):
            if key in node:
                raise ValueError(f"json_schema: {key!r} together with 'properties' at {path} is not supported")
    if "pattern" in node and ("minLength" in node or "maxLength" in node):
        raise ValueError(f"json_schema: 'pattern' together with minLength/maxLength at {path} is not supported")


def _integer_bounds(node: dict, path: str) -> tuple[Optional[int], Optional[int]]:
    def number(key: str) -> Optional[float]:
        value = node.get(key)
        if value is None or isinstance(value, bool):
            return None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"json_schema: {key} at {path} must be a finite number, got {value!r}")
        return value

    low, high = number("minimum"), number("maximum")
    low = None if low is None else math.ceil(low)
    high = None if high is None else math.floor(high)
    # Draft 4 spells exclusivity as booleans on minimum/maximum; later drafts as numbers.
    if node.get("exclusiveMinimum") is True and low is not None:
        low = math.floor(node["minimum"]) + 1
    if node.get("exclusiveMaximum") is True and high is not None:
        high = math.ceil(node["maximum"]) - 1
    ex_low, ex_high = number("exclusiveMinimum"), number("exclusiveMaximum")
    if ex_low is not None:
        low = max(low, math.floor(ex_low) + 1) if low is not None else math.floor(ex_low) + 1
    if ex_high is not None:
        high = min(high, math.ceil(ex_high) - 1) if high is not None else math.ceil(ex_high) - 1
    if low is not None and high is not None and low > high:
        raise ValueError(f"json_schema: no integer satisfies the bounds at {path}")
    return low, high
