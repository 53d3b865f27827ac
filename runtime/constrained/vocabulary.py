"""The tokenizer's vocabulary as raw bytes: what each token id writes into the output.

Grammars work on bytes (a token may end in the middle of a UTF-8 character), so every token is
normalised here, once, from whatever spelling the tokenizer uses:

- byte-level BPE (GPT-2, Llama-3, Qwen): each byte is spelled by one printable character; we invert
  that table;
- SentencePiece (Llama-2, Mistral): '▁' is a space and `<0xNN>` is the raw byte NN;
- anything else: the token string, UTF-8 encoded.

Special tokens (BOS, EOS, chat markers) carry no text and are excluded; EOS ids are kept aside, as
the grammar allows them only where the output may end. Non-special added tokens write their literal
content. This module imports numpy only (no torch), so compile workers stay light.
"""

from __future__ import annotations

import json
import os
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from runtime.constrained.trie import VocabTrie, build_trie

_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass(frozen=True, eq=False)  # identity semantics: hashable, usable as a cache key
class TokenVocabulary:
    """Bytes of every token id, and the text tokens as a trie for vectorised walks.

    `token_bytes[i]` is None for ids that a grammar never allows (special tokens, EOS, empty tokens,
    holes in the id space). `text_ids` lists the others in lexicographic order of their bytes, the
    order of `trie.token_node`.
    """

    vocab_size: int
    eos_token_ids: tuple[int, ...]
    token_bytes: tuple[Optional[bytes], ...]
    text_ids: np.ndarray  # [N] int64, lexicographic order of bytes
    trie: VocabTrie

    @property
    def num_words(self) -> int:
        """Width of a packed bitmask row: ceil(vocab_size / 32) int32 words."""
        return (self.vocab_size + 31) // 32

    @classmethod
    def from_token_bytes(
        cls, token_bytes: Sequence[Optional[bytes]], eos_token_ids: Iterable[int]
    ) -> "TokenVocabulary":
        eos = tuple(sorted({int(e) for e in eos_token_ids}))
        if not eos:
            raise ValueError("the tokenizer has no EOS token id; a grammar needs one to finish")
        vocab_size = max(len(token_bytes), max(eos) + 1)
        table = list(token_bytes) + [None] * (vocab_size - len(token_bytes))
        for e in eos:
            table[e] = None
        ids = sorted((i for i, b in enumerate(table) if b), key=lambda i: table[i])
        return cls(
            vocab_size=vocab_size,
            eos_token_ids=eos,
            token_bytes=tuple(table),
            text_ids=np.array(ids, dtype=np.int64),
            trie=build_trie([table[i] for i in ids]),
        )


# ---------------------------------------------------------------------------- from a tokenizer
_CACHE_LOCK = threading.Lock()
_BY_OBJECT: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_BY_PATH: dict[str, Any] = {}


def load_tokenizer(tokenizer: Any) -> Any:
    """An HF tokenizer object, or one loaded from a local directory (never from a hub)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        path = os.fspath(tokenizer)
        if not os.path.isdir(path):
            raise ValueError(f"tokenizer path {path!r} is not a local directory")
        with _CACHE_LOCK:
            if path not in _BY_PATH:
                from transformers import AutoTokenizer

                _BY_PATH[path] = AutoTokenizer.from_pretrained(path, local_files_only=True)
            return _BY_PATH[path]
    return tokenizer


def token_vocabulary(tokenizer: Any, eos_token_ids: Optional[Iterable[int]] = None) -> TokenVocabulary:
    """Build (once per tokenizer object and EOS set) the byte vocabulary of `tokenizer`.

    eos_token_ids: ids that end the output (default: the tokenizer's `eos_token_id`).
    """
    tokenizer = load_tokenizer(tokenizer)
    if eos_token_ids is None:
        eos_token_ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    key = tuple(sorted(set(int(e) for e in eos_token_ids)))
    with _CACHE_LOCK:
        try:
            per_tok = _BY_OBJECT.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable: build without caching
            per_tok = {}
        if key not in per_tok:
            per_tok[key] = TokenVocabulary.from_token_bytes(tokenizer_token_bytes(tokenizer), key)
        return per_tok[key]


def tokenizer_token_bytes(tokenizer: Any) -> list[Optional[bytes]]:
    """Raw bytes of each token id (None for special tokens) for an HF tokenizer."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    added = _added_tokens(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, (_, is_special) in added.items() if is_special}
    size = max(max(vocab.values(), default=-1) + 1, len(tokenizer))
    out: list[Optional[bytes]] = [None] * size
    to_bytes = _spelling_decoder(tokenizer, vocab)
    for token, i in vocab.items():
        if i in special:
            continue
        if i in added:  # literal text, not spelled in the byte alphabet
            out[i] = token.encode("utf-8")
        else:
            out[i] = to_bytes(token)
    return out


def _added_tokens(tokenizer: Any) -> dict[int, tuple[str, bool]]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(i): (str(t), bool(getattr(t, "special", True))) for i, t in decoder.items()}


def _spelling_decoder(tokenizer: Any, vocab: dict[str, int]):
    kinds = _decoder_kinds(tokenizer)
    if "ByteLevel" in kinds or (not kinds and _looks_byte_level(vocab)):
        table = {c: b for b, c in enumerate(bytes_to_unicode())}

        def byte_level(token: str) -> bytes:
            try:
                return bytes(table[c] for c in token)
            except KeyError:  # a character outside the byte alphabet: take it literally
                return token.encode("utf-8")

        return byte_level
    if kinds & {"ByteFallback", "Metaspace", "Replace"} or (not kinds and any("▁" in t for t in vocab)):

        def sentencepiece(token: str) -> bytes:
            m = _SP_BYTE.match(token)
            if m:
                return bytes([int(m.group(1), 16)])
            return token.replace("▁", " ").encode("utf-8")

        return sentencepiece
    return lambda token: token.encode("utf-8")


def _decoder_kinds(tokenizer: Any) -> set[str]:
    """Types of the fast tokenizer's decoder (recursing into Sequence); empty if unknown."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except Exception:  # noqa: BLE001 - an exotic backend: fall back to heuristics
        return set()
    kinds: set[str] = set()
    stack = [decoder]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "type" in node:
                kinds.add(node["type"])
            stack.extend(node.get("decoders", []) or [])
    return kinds


def _looks_byte_level(vocab: dict[str, int]) -> bool:
    return "Ġ" in "".join(list(vocab)[:5000]) and not any("▁" in t for t in vocab)


def bytes_to_unicode() -> list[str]:
    """The GPT-2 byte alphabet: character spelling byte b is `bytes_to_unicode()[b]`.

    Printable Latin-1 bytes spell themselves; the others (control bytes, space, ...) are moved, in
    order, to code points 256 and up so that every byte is a visible character.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, shifted = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return out
