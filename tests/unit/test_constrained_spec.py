"""Spec → regex front door: dialect rewrites, refusals with reasons, and size limits."""

import re

import pytest

from runtime.constrained.byte_dfa import DEAD, regex_to_byte_dfa
from runtime.constrained.spec import MAX_REPEAT, choices_regex, grammar_regex, normalise_regex


def matches(pattern: str, text: str) -> bool:
    dfa = regex_to_byte_dfa(pattern)
    state = dfa.walk(dfa.initial, text.encode())
    return state != DEAD and bool(dfa.finals[state])


@pytest.mark.parametrize(
    "pattern, text",
    [
        (r"^abc$", "abc"),
        (r"caf\u00e9", "café"),
        (r"\x{1F600}+", "😀😀"),
        (r"\U0001F642", "🙂"),
        (r"[\u0041-\u0043]+", "ABCA"),
        (r"(?<word>[a-z]+)-(?P<n>[0-9])", "ab-1"),
        (r"a\$b", "a$b"),
        (r"[]a]+", "]a]"),
        (r"\u002e", "."),
    ],
)
def test_dialect_rewrites_keep_the_meaning(pattern, text):
    assert matches(normalise_regex(pattern), text)


def test_escaped_code_points_stay_literal():
    assert not matches(normalise_regex(r"\u002e"), "x")  # an escaped '.', not "any character"


@pytest.mark.parametrize(
    "pattern, reason",
    [
        (r"a(?=b)", "look-ahead"),
        (r"(?<!a)b", "look-behind"),
        (r"(a)\1", "back-references"),
        (r"\bword\b", "word boundaries"),
        (r"\p{L}+", "Unicode property"),
        (r"[[:alpha:]]", "POSIX"),
        (r"a^b", "anchor"),
        (r"a{1001}", "repetition count"),
        (r"((a{50}){50}){50}", "expands"),
        (r"(ab", "missing"),
        (r"ab)", "unbalanced"),
        (r"[ab", "unterminated"),
        (r"\u12", "bad escape"),
    ],
)
def test_refusals_name_the_problem(pattern, reason):
    with pytest.raises(ValueError, match=reason):
        normalise_regex(pattern)


def test_repeat_limit_is_inclusive():
    assert normalise_regex(f"a{{{MAX_REPEAT}}}")


def test_choices_are_escaped_literally():
    pattern = choices_regex(["a.b", "(x)", "1+1", "tab\there", "naïve"])
    assert re.fullmatch(pattern, "a.b") and not re.fullmatch(pattern, "aXb")
    assert all(matches(pattern, c) for c in ["(x)", "1+1", "tab\there", "naïve"])
    with pytest.raises(ValueError):
        choices_regex("not a list")


def test_json_schema_integer_bounds_become_exact_ranges():
    pattern = grammar_regex("json_schema", {"type": "integer", "minimum": 3, "maximum": 12})
    assert [n for n in range(-5, 30) if matches(pattern, str(n))] == list(range(3, 13))
    draft4 = grammar_regex("json_schema", {"type": "integer", "minimum": 0, "exclusiveMinimum": True})
    assert not matches(draft4, "0") and matches(draft4, "1")


def test_json_schema_errors_are_value_errors():
    with pytest.raises(ValueError, match="not valid JSON"):
        grammar_regex("json_schema", "{")
    with pytest.raises(ValueError, match="must be a JSON string, a dict or a pydantic model"):
        grammar_regex("json_schema", 42)
    with pytest.raises(ValueError, match="unknown constraint kind"):
        grammar_regex("ebnf", "root ::= 'a'")
