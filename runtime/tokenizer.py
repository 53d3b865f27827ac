"""Tokenizer loading (local directory only) and incremental detokenization.

Incremental decoding: byte-level tokens can split one UTF-8 character, so the text of new tokens is
the decode of a short window of recent ids minus the decode of that window without them; while the
window ends in an incomplete character (U+FFFD) nothing is released.
"""

from __future__ import annotations

import os
from typing import Optional

def load_tokenizer(path: str):
    """An HF fast tokenizer from a local directory; never touches the network."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)


def decode_increment(
    tokenizer, ids: list[int], prefix_offset: int, read_offset: int, skip_special_tokens: bool = True
) -> tuple[str, int, int]:
    """Text of ids[read_offset:] that is safe to release, and the new (prefix_offset, read_offset).

    `ids[prefix_offset:read_offset]` is context already released; pass back what this returns.
    """
    if read_offset >= len(ids):
        return "", prefix_offset, read_offset
    before = tokenizer.decode(ids[prefix_offset:read_offset], skip_special_tokens=skip_special_tokens)
    after = tokenizer.decode(ids[prefix_offset:], skip_special_tokens=skip_special_tokens)
    if len(after) > len(before) and not after.endswith("\ufffd"):
        return after[len(before) :], read_offset, len(ids)
    return "", prefix_offset, read_offset


def eos_token_ids(tokenizer, model_eos: tuple[int, ...] = ()) -> frozenset[int]:
    ids = set(model_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def find_stop(text: str, stops: tuple[str, ...], search_from: int) -> Optional[tuple[int, str]]:
    """Earliest occurrence of any stop string that ends after `search_from`: (start index, stop)."""
    best: Optional[tuple[int, str]] = None
    for stop in stops:
        idx = text.find(stop, max(search_from - len(stop) + 1, 0))
        if idx != -1 and (best is None or idx < best[0]):
            best = (idx, stop)
    return best


def stop_prefix_holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still become a stop string: hold them back when streaming."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold
