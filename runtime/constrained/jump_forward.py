"""Jump-forward: emit text the grammar forces without sampling it token by token.

After `{"name":"Ada"` a fixed-key schema forces `,"age":`. Appending the tokens of that text in one
step saves decode steps, but the token boundary matters: the last sampled token may merge with the
forced text (`"` + `,` → `",` in many BPE vocabularies). So we re-tokenize a short tail of the output
together with the forced text, keep whatever prefix of the tail tokenizes the same, and replace the
rest. The result is what the tokenizer itself produces for that text, so the model sees natural
tokenisation.

At the far end, the last new token is held back when a longer allowed token starts with it (the
forced text ends mid-word, e.g. before a free string); the model then picks the natural merge itself.
It is never held back when that would drop text the output already had.
"""

from __future__ import annotations

import weakref
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from runtime.constrained.fsm import CompiledGrammar, GrammarMatcher, complete_utf8_prefix
from runtime.constrained.vocabulary import TokenVocabulary, load_tokenizer

MAX_RETOKENIZED_TOKENS = 8


@dataclass(frozen=True)
class JumpForward:
    """Drop the last `num_rollback` output tokens, then append `new_token_ids`."""

    num_rollback: int
    new_token_ids: list[int]


def jump_forward(tokenizer: Any, matcher: GrammarMatcher, output_ids: Sequence[int]) -> Optional[JumpForward]:
    """Advance `matcher` over the text its grammar forces next, or return None and leave it unchanged.

    output_ids: the tokens generated so far, all of them fed to `matcher`. On success the matcher has
    rolled back `num_rollback` tokens and accepted `new_token_ids`.
    """
    forced = matcher.forced_bytes()
    if not forced:
        return None
    vocab = matcher.grammar.vocab
    num_tail = _retokenized_span(vocab, output_ids, matcher.num_accepted)  # not terminated: forced
    tail = list(output_ids[len(output_ids) - num_tail :])
    tail_bytes = b"".join(vocab.token_bytes[t] for t in tail)
    text = complete_utf8_prefix(tail_bytes + forced)
    if len(text.encode("utf-8")) <= len(tail_bytes):
        return None  # no whole forced character, or the tail does not start on a character
    new_ids = _encode_exactly(load_tokenizer(tokenizer), vocab, text)
    if new_ids is None:
        return None
    keep = 0
    while keep < min(len(tail), len(new_ids)) and tail[keep] == new_ids[keep]:
        keep += 1
    num_rollback, new = num_tail - keep, new_ids[keep:]
    trial = matcher.copy()
    trial.rollback(num_rollback)
    if not all(trial.accept_token(t) for t in new):
        return None
    # Hold back the last token if a longer one could continue it, but never so far that the output
    # would lose text it already had (the held-back token may hold the tail's last bytes).
    if new and len(text.encode("utf-8")) - len(vocab.token_bytes[new[-1]]) > len(tail_bytes):
        trial.rollback(1)
        if _may_extend(matcher.grammar, trial.state, new[-1]):
            new = new[:-1]
    if not new:
        return None
    matcher.rollback(num_rollback)
    for t in new:
        matcher.accept_token(t)
    return JumpForward(num_rollback, list(new))


def _retokenized_span(vocab: TokenVocabulary, output_ids: Sequence[int], num_accepted: int) -> int:
    """How many trailing tokens to re-tokenize: back to the nearest token that starts a new word
    (a space or punctuation on a character boundary), at most MAX_RETOKENIZED_TOKENS."""
    best = 0
    for k in range(1, min(MAX_RETOKENIZED_TOKENS, len(output_ids), num_accepted) + 1):
        data = vocab.token_bytes[output_ids[-k]]
        if data is None:  # a special token: never re-tokenize across it
            break
        if data[0] & 0xC0 == 0x80:  # starts inside a multi-byte character
            continue
        best = k
        if not chr(data[0]).isalnum():
            break
    return best


def _encode_exactly(tokenizer: Any, vocab: TokenVocabulary, text: str) -> Optional[list[int]]:
    """Token ids whose bytes spell exactly `text` (None if the tokenizer adds or changes text)."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    spelled = [vocab.token_bytes[i] if 0 <= i < vocab.vocab_size else None for i in ids]
    if any(s is None for s in spelled):
        return None
    got, want = b"".join(spelled), text.encode("utf-8")
    if got == want:
        return ids
    if got == b" " + want and spelled and spelled[0] == b" ":  # SentencePiece's dummy prefix space
        return ids[1:]
    return None


def _may_extend(grammar: CompiledGrammar, state: int, token_id: int) -> bool:
    """True if some longer token starting with `token_id`'s bytes is allowed in `state`."""
    vocab = grammar.vocab
    prefix = vocab.token_bytes[token_id]
    ordered = _sorted_bytes(vocab)
    lo = bisect_right(ordered, prefix)
    hi = bisect_right(ordered, prefix + b"\xff" * vocab.trie.max_len, lo)
    if hi <= lo:
        return False
    ids = vocab.text_ids[lo:hi]
    words = grammar.index.masks[grammar.index.state_rows[state]]
    return bool(((words[ids >> 5] >> (ids & 31).astype(np.int32)) & 1).any())


_SORTED: "weakref.WeakKeyDictionary[TokenVocabulary, list[bytes]]" = weakref.WeakKeyDictionary()


def _sorted_bytes(vocab: TokenVocabulary) -> list[bytes]:
    """Text tokens' bytes in lexicographic order (the order of vocab.text_ids), cached per vocabulary."""
    ordered = _SORTED.get(vocab)
    if ordered is None:
        ordered = _SORTED[vocab] = [vocab.token_bytes[i] for i in vocab.text_ids]
    return ordered
