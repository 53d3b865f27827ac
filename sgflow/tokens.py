"""Exact token boundaries: keep the token ids the runtime produced and reuse them as the next prefix.

Re-tokenising "prompt + generated text" may split the join differently from the tokens the model
actually produced (and saw), which breaks the prefix-cache match at the join and changes what the
model conditions on. In exact-token mode a program's prefix is an append-only list of token ids:
constant text is tokenised once, generated tokens are kept as they came.

The one subtle step is `align_output`: the runtime's text may be shorter than its tokens (a stop
string is trimmed from the text but its tokens were generated; EOS is in the ids but not the text).
Only the tokens whose decoded text is a prefix of the returned text are kept; the rest of the text
stays pending and is tokenised with what follows.
"""

from __future__ import annotations

from typing import Any, Sequence

_CONTEXT = 4  # tokens of left context when decoding a piece (SentencePiece drops a leading space alone)
_MAX_TRIM = 16  # tokens searched back from the end before giving up and re-tokenising the text


class TokenizerAdapter:
    """One interface over an HF `PreTrainedTokenizer(Fast)` or a raw `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self._raw = type(tokenizer).__module__.startswith("tokenizers")

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if self._raw:
            return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def align_output(tokenizer: Any, context_ids: Sequence[int], text: str, output_ids: Sequence[int]) -> tuple[list[int], int]:
    """The longest head of `output_ids` that decodes (after `context_ids`) to a prefix of `text`,
    without trailing tokens that add no text. Returns (kept ids, number of chars of text covered)."""
    ids = list(output_ids)
    context = list(context_ids[-_CONTEXT:])
    base = tokenizer.decode(context) if context else ""

    def piece(k: int):
        full = tokenizer.decode(context + ids[:k])
        if not full.startswith(base):
            return None
        out = full[len(base):]
        return out if text.startswith(out) and not out.endswith("\ufffd") else None

    k = len(ids)
    lowest = max(0, k - _MAX_TRIM)
    covered = piece(k)
    while covered is None and k > lowest:
        k -= 1
        covered = piece(k)
    if covered is None:
        return [], 0
    while k > 0 and piece(k - 1) == covered:  # drop EOS / special tokens that print nothing
        k -= 1
    return ids[:k], len(covered)
