"""JSON-schema grammars: every path the mask allows ends in JSON that validates against the schema.

Random walks pick among the allowed tokens (seeded), weighting structural tokens up so that strings
and arrays close in a few steps; each finished walk must parse and pass `jsonschema.validate`.
"""

import json
import random
from typing import Literal, Optional

import pytest
import torch

jsonschema = pytest.importorskip("jsonschema")
from pydantic import BaseModel, Field  # noqa: E402

from runtime.constrained import allocate_token_bitmask, compile_grammar  # noqa: E402
from runtime.model.tiny import build_tokenizer  # noqa: E402


class Address(BaseModel):
    city: str
    zip_code: str = Field(min_length=5, max_length=5)


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    role: Literal["admin", "user", "guest"]
    nickname: Optional[str] = None
    addresses: list[Address] = Field(max_length=2)


SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "active": {"type": "boolean"},
            "score": {"type": "number"},
        },
        "required": ["name", "age", "active", "score"],
    },
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "exclusiveMinimum": 0},
                    "roles": {"type": "array", "items": {"enum": ["read", "write"]}, "minItems": 1, "maxItems": 3},
                },
                "required": ["id", "roles"],
            },
            "created": {"type": "string", "format": "date"},
        },
        "required": ["user", "created"],
    },
    "enums_and_optional": {
        "type": "object",
        "properties": {
            "status": {"enum": ["ok", "error", 404, None]},
            "version": {"const": 2},
            "priority": {"type": "integer", "minimum": -3, "maximum": 3},
            "note": {"type": ["string", "null"]},
            "price": {"type": "number", "minimum": 0},
        },
        "required": ["status", "version"],
    },
    "array_root": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}}},
            "required": ["x", "tags"],
        },
        "minItems": 1,
        "maxItems": 3,
    },
    "anyof_and_refs": {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}},
        "type": "object",
        "properties": {
            "shape": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2}]},
            "label": {"type": "string", "minLength": 1, "maxLength": 4},
        },
        "required": ["shape", "label"],
    },
    "pydantic": Person,
}

STRUCTURAL = set('"{}[],:')


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def random_walk(grammar, rng, max_steps=600):
    """Token ids of one random path through the grammar, ending with EOS or at termination."""
    vocab = grammar.vocab
    matcher, out = grammar.matcher(), []
    bitmask = allocate_token_bitmask(1, grammar.vocab_size)
    shifts = torch.arange(32, dtype=torch.int32)
    for _ in range(max_steps):
        if matcher.is_terminated():
            return out
        matcher.fill_mask(bitmask, 0)
        choices = torch.nonzero(((bitmask[0].unsqueeze(-1) >> shifts) & 1).flatten()).flatten().tolist()
        weights = [20.0 if t in vocab.eos_token_ids else 1.0 + 15.0 * bool(set((vocab.token_bytes[t] or b"").decode("latin-1")) & STRUCTURAL) for t in choices]
        token = rng.choices(choices, weights)[0]
        assert matcher.accept_token(token)
        if token in vocab.eos_token_ids:
            return out
        out.append(token)
    raise AssertionError("random walk did not finish")


def schema_dict(schema):
    return schema.model_json_schema() if isinstance(schema, type) else schema


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_walks_end_in_valid_json(tokenizer, name):
    grammar = compile_grammar(tokenizer, json_schema=SCHEMAS[name])
    for seed in range(12):
        tokens = random_walk(grammar, random.Random(seed))
        text = b"".join(grammar.vocab.token_bytes[t] for t in tokens).decode("utf-8")
        jsonschema.validate(json.loads(text), schema_dict(SCHEMAS[name]))


def test_schema_may_be_given_as_json_text_dict_or_pydantic_class(tokenizer):
    as_text = compile_grammar(tokenizer, json_schema=json.dumps(Person.model_json_schema()))
    as_class = compile_grammar(tokenizer, json_schema=Person)
    good = json.dumps(Person(name="Al", age=30, role="user", addresses=[]).model_dump(), separators=(",", ":"))
    for grammar in (as_text, as_class):
        assert grammar.accepts(tokenizer.encode(good, add_special_tokens=False))


def test_integer_bounds_are_enforced_exactly(tokenizer):
    grammar = compile_grammar(tokenizer, json_schema={"type": "integer", "minimum": -20, "exclusiveMaximum": 150})
    for value in range(-40, 200):
        expected = -20 <= value < 150
        assert grammar.accepts(tokenizer.encode(str(value), add_special_tokens=False)) == expected, value
    assert not grammar.accepts(tokenizer.encode("007", add_special_tokens=False))


def test_output_is_compact_by_default_and_whitespace_is_configurable(tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    compact = compile_grammar(tokenizer, json_schema=schema)
    spaced = compile_grammar(tokenizer, json_schema=schema, whitespace_pattern=r"[ ]?")
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert compact.accepts(encode('{"a":1}')) and not compact.accepts(encode('{ "a": 1 }'))
    assert spaced.accepts(encode('{ "a": 1 }')) and spaced.accepts(encode('{"a":1}'))


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "number", "maximum": 1.5}, "bounds"),
        ({"allOf": [{"type": "object"}, {"type": "object"}]}, "allOf"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "pattern"),
        ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if"),
    ],
)
def test_keywords_that_cannot_be_enforced_are_refused(tokenizer, schema, reason):
    with pytest.raises(ValueError, match=reason):
        compile_grammar(tokenizer, json_schema=schema)
