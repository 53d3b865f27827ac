"""The ready-made grammars: every pattern matches its examples, refuses its counter-examples, and
compiles to our token FSM; integer ranges are exact; schema helpers accept every documented form."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import grammars
from grammars import integer_range, schema_from_pydantic, to_schema_dict, to_schema_string
from runtime.constrained.byte_dfa import DEAD, regex_to_byte_dfa
from runtime.constrained.spec import normalise_regex

NAMES = ["INTEGER", "FLOAT", "BOOLEAN", "ISO_DATE", "ISO_TIME", "ISO_DATETIME", "EMAIL", "URL", "UUID", "IPV4", "PHONE"]


def fsm_matches(pattern, text):
    dfa = regex_to_byte_dfa(normalise_regex(pattern))
    state = dfa.walk(dfa.initial, text.encode())
    return state != DEAD and bool(dfa.finals[state])


@pytest.mark.parametrize("name", NAMES)
def test_pattern_matches_examples_and_refuses_counter_examples(name):
    pattern = getattr(grammars, name)
    assert isinstance(pattern, str) and pattern.description and pattern.examples and pattern.counter_examples
    for example in pattern.examples:
        assert re.fullmatch(pattern, example) and fsm_matches(pattern, example), example
    for bad in pattern.counter_examples:
        assert not re.fullmatch(pattern, bad) and not fsm_matches(pattern, bad), bad


@pytest.mark.parametrize("low, high", [(None, None), (0, None), (1, 120), (-50, 50), (-300, -7), (None, 15), (None, -3), (19, 1234), (5, 5)])
def test_integer_range_matches_exactly_the_canonical_integers_in_range(low, high):
    pattern = integer_range(low, high)
    for value in range(-1500, 1500):
        inside = (low is None or value >= low) and (high is None or value <= high)
        assert bool(re.fullmatch(pattern, str(value))) == inside, value
    for spelling in ["-0", "007", "+1", ""]:
        assert not re.fullmatch(pattern, spelling)
    assert fsm_matches(pattern, str(low if low is not None else high if high is not None else 0))


def test_empty_integer_range_is_an_error():
    with pytest.raises(ValueError):
        integer_range(3, 2)


class Item(BaseModel):
    name: str
    qty: int


def test_schema_helpers_accept_a_model_a_dict_and_json_text():
    schema = schema_from_pydantic(Item)
    assert list(schema["properties"]) == ["name", "qty"]
    assert to_schema_dict(Item) == schema and to_schema_dict(schema) is schema
    text = to_schema_string(Item)
    assert json.loads(text) == schema and to_schema_string(text) == text
    assert list(json.loads(to_schema_string(json.dumps(schema)))["properties"]) == ["name", "qty"]
    with pytest.raises(ValueError):
        to_schema_dict("[1, 2]")
    with pytest.raises(TypeError):
        schema_from_pydantic(dict)


def test_importing_grammars_pulls_in_neither_torch_nor_the_runtime():
    code = "import sys, grammars; print(any(m == 'torch' or m.startswith('runtime') for m in sys.modules))"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert result.stdout.strip() == "False"
