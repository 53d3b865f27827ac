"""The byte-level DFA matches exactly the UTF-8 encodings of the strings the regex matches."""

import itertools
import random
import re

import pytest

from runtime.constrained.byte_dfa import DEAD, regex_to_byte_dfa


def _accepts(dfa, data: bytes) -> bool:
    state = dfa.walk(dfa.initial, data)
    return state != DEAD and bool(dfa.finals[state])


def _decodes_to_one_char(data: bytes, exclude: str = "") -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(text) == 1 and text not in exclude


def test_any_char_accepts_exactly_valid_utf8_sequences():
    dfa = regex_to_byte_dfa(".")
    for length in (1, 2):
        for data in itertools.product(range(256), repeat=length):
            data = bytes(data)
            assert _accepts(dfa, data) == _decodes_to_one_char(data, "\n"), data
    edges = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF]
    for lead in range(0xE0, 0xF8):
        for tail in itertools.product(edges, repeat=2 if lead < 0xF0 else 3):
            data = bytes([lead, *tail])
            assert _accepts(dfa, data) == _decodes_to_one_char(data), data


def test_negated_class_excludes_listed_multibyte_characters():
    dfa = regex_to_byte_dfa("[^é日]")
    for char in ["a", "è", "ê", "日"[0], "月", "🙂", "é"]:
        assert _accepts(dfa, char.encode()) == (char not in "é日"), char


@pytest.mark.parametrize(
    "pattern",
    [
        r'[^"\\]*',
        r"(é|日本)+x",
        r"[a-zé]{2,4}",
        r'"([^"\\\x00-\x1F\x7F-\x9F]|\\["\\/bfnrt]){0,20}"',
        r"-?(0|[1-9][0-9]*)(\.[0-9]+)?",
        r"(a|b)*abb",
        r".{1,3}😀",
    ],
)
def test_random_strings_agree_with_python_re(pattern):
    dfa = regex_to_byte_dfa(pattern)
    alphabet = ["a", "b", "x", "z", "é", "è", "日", "本", '"', "\\", "\n", "1", "0", "-", ".", "😀", "\x7f", "\x85", "t"]
    rng = random.Random(0)
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        if pattern.startswith('"') and rng.random() < 0.5:
            s = f'"{s}"'
        assert _accepts(dfa, s.encode()) == bool(re.fullmatch(pattern, s)), (pattern, s)


def test_dead_ends_are_pruned_so_every_transition_can_still_match():
    dfa = regex_to_byte_dfa(r"ab(c|d)e|abx")
    state = dfa.walk(dfa.initial, b"ab")
    live = {chr(b) for b in range(256) if dfa.transitions[state, b] != DEAD}
    assert live == {"c", "d", "x"}


def test_forced_bytes_stop_at_choices_and_accepting_states():
    dfa = regex_to_byte_dfa(r'\{"name":"[a-z]+"(,"age":[0-9]+)?\}')
    assert dfa.forced_bytes(dfa.initial) == b'{"name":"'
    after_value = dfa.walk(dfa.initial, b'{"name":"ab"')
    assert dfa.forced_bytes(after_value) == b""  # ',' or '}'
    assert dfa.forced_bytes(dfa.walk(after_value, b",")) == b'"age":'
    assert dfa.forced_bytes(dfa.walk(dfa.initial, b'{"name":"a"}')) == b""
    # 語 and 読 share their first two bytes: forcing continues inside the character.
    multibyte = regex_to_byte_dfa("日本(語|読)")
    assert multibyte.forced_bytes(multibyte.initial) == "日本".encode() + b"\xe8\xaa"


def test_matches_nothing_is_an_error():
    with pytest.raises(ValueError):
        regex_to_byte_dfa("[^\\x00-\\U0010FFFF]")


@pytest.mark.parametrize(
    "pattern, accepted, rejected",
    [
        (r"\d+", ["0", "42"], ["٣", "a", ""]),  # ASCII digits only
        (r"\w+", ["a_Z9"], ["é", "-"]),
        (r"\s", [" ", "\t", "\n"], ["x", "\u00a0"]),
        (r"(?i)abc", ["abc", "ABC", "aBc"], ["abd"]),
        (r"(?i:é)x", ["éx", "Éx"], ["eX"]),
        (r"a.b", ["a-b", "aéb"], ["a\nb"]),
        (r"(?s)a.b", ["a\nb"], ["ab"]),
        (r"a{2,}", ["aa", "aaaa"], ["a"]),
        (r"(ab){1,3}?c", ["abc", "ababc"], ["c", "ababababc"]),
        (r"(?>ab|a)c", ["abc", "ac"], ["bc"]),
        (r"x*+y", ["y", "xxy"], ["x"]),
        (r"[^\d\s]+", ["ab", "é"], ["a1", "a b"]),
    ],
)
def test_regex_semantics(pattern, accepted, rejected):
    dfa = regex_to_byte_dfa(pattern)
    for text in accepted:
        assert _accepts(dfa, text.encode()), (pattern, text)
    for text in rejected:
        assert not _accepts(dfa, text.encode()), (pattern, text)


@pytest.mark.parametrize("pattern", [r"a(?=b)", r"(a)\1", r"a\b", r"(?(1)a|b)", "(", "[z-a]"])
def test_unsupported_or_invalid_patterns_raise_value_error(pattern):
    with pytest.raises(ValueError):
        regex_to_byte_dfa(pattern)


def test_minimisation_merges_equivalent_states():
    # Both branches share their suffix: start -a|x-> 1 -b-> 2 -c-> 3 (accepting), 4 states in all.
    dfa = regex_to_byte_dfa(r"(abc|xbc)")
    assert dfa.num_states == 4
