"""Grammar masks against a brute-force oracle on the tiny 384-token byte-level vocabulary.

At every step of random walks through the grammar, the set of tokens `fill_mask` allows must equal
the tokens t such that (text so far + bytes of t) is a prefix of some full match, computed with the
`regex` package's partial matching, plus EOS exactly when the text so far is a full match.

Tokens may end inside a UTF-8 character. The oracle then asks whether *some* character starting
with those bytes continues a match; it tries the characters the pattern spells out and the
smallest, middle and largest code points with that prefix, which is exact for these patterns
(their non-ASCII behaviour is all negated classes, `.` and literal characters).
"""

import random

import pytest
import torch

regex = pytest.importorskip("regex")

from runtime.constrained import allocate_token_bitmask, compile_grammar  # noqa: E402
from runtime.model.tiny import build_tokenizer  # noqa: E402

PATTERNS = [
    r"[a-z]+( [a-z]+)*",
    r"-?(0|[1-9][0-9]*)(\.[0-9]+)?",
    r'"([^"\\]|\\["\\n])*"',
    r"(café|naïve|日本語)( (café|naïve|日本語))*",
    r'\{"name":"[^"]{0,6}","age":[0-9]{1,2}\}',
    r"(yes|no|maybe)",
    r".{0,5}x",
    r"(Zürich|Ω≈ç√|🙂)+!?",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def _allowed_by_mask(matcher, vocab_size):
    bitmask = allocate_token_bitmask(1, vocab_size)
    matcher.fill_mask(bitmask, 0)
    bits = ((bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
    return set(torch.nonzero(bits[:vocab_size]).flatten().tolist())


def _split_incomplete(data: bytes):
    """(text, pending bytes of an unfinished character) or None if `data` is not UTF-8 so far."""
    for cut in range(0, min(3, len(data)) + 1):
        head, tail = data[: len(data) - cut], data[len(data) - cut :]
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not tail or _completions(tail, ()):
            return text, tail
    return None


_SIZE_RANGE = {2: (0x80, 0x7FF), 3: (0x800, 0xFFFF), 4: (0x10000, 0x10FFFF)}


def _completions(pending: bytes, explicit) -> list:
    """Characters whose UTF-8 encoding starts with `pending` (a representative sample, see module doc)."""
    lead = pending[0]
    size = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 0
    if not size or len(pending) >= size or any(b & 0xC0 != 0x80 for b in pending[1:]):
        return []

    def code_point(data: bytes) -> int:
        value = data[0] & (0x7F >> size)
        for b in data[1:]:
            value = (value << 6) | (b & 0x3F)
        return value

    fill = size - len(pending)
    low = max(code_point(pending + b"\x80" * fill), _SIZE_RANGE[size][0])
    high = min(code_point(pending + b"\xbf" * fill), _SIZE_RANGE[size][1])
    points = {p for p in (low, high, (low + high) // 2) if low <= p <= high and not 0xD800 <= p <= 0xDFFF}
    return [chr(p) for p in sorted(points)] + [c for c in explicit if c.encode("utf-8").startswith(pending)]


def _oracle(pattern, vocab, so_far: bytes, explicit):
    compiled = regex.compile(pattern)
    allowed = set()
    for token_id, data in enumerate(vocab.token_bytes):
        if data is None:
            continue
        split = _split_incomplete(so_far + data)
        if split is None:
            continue
        text, pending = split
        candidates = [text + c for c in _completions(pending, explicit)] if pending else [text]
        if any(compiled.fullmatch(c, partial=True) for c in candidates):
            allowed.add(token_id)
    if not _split_incomplete(so_far)[1] and compiled.fullmatch(so_far.decode("utf-8")):
        allowed |= set(vocab.eos_token_ids)
    return allowed


@pytest.mark.parametrize("pattern", PATTERNS)
def test_mask_equals_brute_force_prefix_oracle_on_random_walks(tokenizer, pattern):
    grammar = compile_grammar(tokenizer, regex=pattern)
    vocab = grammar.vocab
    explicit = sorted({c for c in pattern if ord(c) > 127})
    for seed in range(3):
        rng = random.Random(seed)
        matcher, so_far = grammar.matcher(), b""
        for _ in range(10):
            allowed = _allowed_by_mask(matcher, grammar.vocab_size)
            assert allowed == _oracle(pattern, vocab, so_far, explicit), (pattern, so_far)
            text_tokens = sorted(allowed - set(vocab.eos_token_ids))
            if not text_tokens:
                break
            token = rng.choice(text_tokens)
            assert matcher.accept_token(token)
            so_far += vocab.token_bytes[token]


def test_disallowed_tokens_are_rejected_without_changing_state(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"[0-9]+")
    matcher = grammar.matcher()
    allowed = _allowed_by_mask(matcher, grammar.vocab_size)
    for token_id in range(grammar.vocab_size):
        if token_id not in allowed:
            assert not matcher.accept_token(token_id)
    assert _allowed_by_mask(matcher, grammar.vocab_size) == allowed
    assert matcher.num_accepted == 0
