"""Token-level FSM grammars: `compile_grammar` → `CompiledGrammar` → per-request `GrammarMatcher`.

State is a ByteDFA state at a token boundary. The mask of every such state was computed when the
grammar was compiled (token_index.py), so `fill_mask` is one row copy; `accept_token` walks the
token's bytes through the DFA. Forced text (for jump-forward) is read off the DFA: while a state is
not accepting and exactly one byte keeps a match possible, that byte is forced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import numpy as np

from runtime.constrained.byte_dfa import DEAD
from runtime.constrained.grammar import BaseGrammar, BaseGrammarMatcher
from runtime.constrained.token_index import TokenIndex
from runtime.constrained.vocabulary import TokenVocabulary, token_vocabulary
from runtime.constrained.worker import compile_index

if TYPE_CHECKING:
    import torch


def compile_grammar(
    tokenizer: Any,
    *,
    regex: Optional[str] = None,
    json_schema: Any = None,
    choices: Optional[Sequence[str]] = None,
    whitespace_pattern: Optional[str] = None,
    eos_token_ids: Optional[Iterable[int]] = None,
) -> "CompiledGrammar":
    """Compile exactly one of regex / json_schema / choices against `tokenizer`, in this thread.

    tokenizer: an HF tokenizer object or a local tokenizer directory. json_schema: a JSON string, a
    dict or a pydantic model class. choices: strings, matched literally. whitespace_pattern: regex
    for whitespace between JSON tokens (default: none, compact JSON). eos_token_ids: ids that may end
    the output (default: the tokenizer's EOS). Raises ValueError naming what is wrong with the spec.
    Servers should use cache.GrammarCompiler, which caches and runs this off the event loop.
    """
    kind, spec = constraint_of(regex=regex, json_schema=json_schema, choices=choices)
    vocab = token_vocabulary(tokenizer, eos_token_ids)
    return CompiledGrammar(compile_index(kind, spec, vocab, whitespace_pattern), vocab)


def constraint_of(*, regex: Any = None, json_schema: Any = None, choices: Any = None) -> tuple[str, Any]:
    """(kind, spec) of the one constraint that is set; ValueError unless exactly one is."""
    given = [(k, v) for k, v in (("regex", regex), ("json_schema", json_schema), ("choices", choices)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"set exactly one of regex, json_schema, choices (got {[k for k, _ in given] or 'none'})")
    return given[0]


class CompiledGrammar(BaseGrammar):
    """An immutable token-level grammar; make one `matcher()` per request."""

    def __init__(self, index: TokenIndex, vocab: TokenVocabulary) -> None:
        import torch  # NOTE: here, not at module top, so compile workers never import torch

        self.index = index
        self.vocab = vocab
        self.dfa = index.dfa
        self.masks = torch.from_numpy(index.masks)  # [num_rows, num_words] int32, shares memory
        self.eos_token_ids = frozenset(vocab.eos_token_ids)
        eos_bits = np.zeros(vocab.num_words * 32, dtype=bool)
        eos_bits[list(self.eos_token_ids)] = True
        self.eos_only_mask = torch.from_numpy(np.packbits(eos_bits, bitorder="little").view("<i4").copy())
        self._forced: dict[int, bytes] = {}

    @property
    def vocab_size(self) -> int:
        return self.vocab.vocab_size

    @property
    def num_words(self) -> int:
        return self.vocab.num_words

    @property
    def initial_state(self) -> int:
        return self.dfa.initial

    def next_state(self, state: int, token_id: int) -> Optional[int]:
        """State after a text token, or None if the token is not allowed in `state`."""
        if not 0 <= token_id < self.vocab.vocab_size:
            return None
        data = self.vocab.token_bytes[token_id]
        if data is None:
            return None
        nxt = self.dfa.walk(state, data)
        return None if nxt == DEAD else nxt

    def is_final(self, state: int) -> bool:
        return bool(self.dfa.finals[state])

    def can_continue(self, state: int) -> bool:
        return bool(self.index.can_continue[state])

    def mask_row(self, state: int) -> "torch.Tensor":
        return self.masks[self.index.state_rows[state]]

    def forced_bytes(self, state: int) -> bytes:
        """Bytes the grammar forces from `state` (cached per state)."""
        forced = self._forced.get(state)
        if forced is None:
            forced = self._forced[state] = self.dfa.forced_bytes(state)
        return forced

    def accepts(self, token_ids: Sequence[int]) -> bool:
        matcher = self.matcher()
        return all(matcher.accept_token(t) for t in token_ids) and matcher.can_finish()

    def matcher(self) -> "GrammarMatcher":
        return GrammarMatcher(self)


class GrammarMatcher(BaseGrammarMatcher):
    """Cursor over a CompiledGrammar: the stack of states after each accepted token."""

    def __init__(self, grammar: CompiledGrammar, states: Optional[list[int]] = None, terminated: bool = False):
        self.grammar = grammar
        self._states = [grammar.initial_state] if states is None else states
        self._terminated = terminated

    @property
    def state(self) -> int:
        return self._states[-1]

    @property
    def num_accepted(self) -> int:
        """Tokens accepted so far (EOS included), i.e. the most `rollback` can undo."""
        return len(self._states) - 1 + int(self._terminated)

    def accept_token(self, token_id: int) -> bool:
        if self._terminated:
            return False
        if token_id in self.grammar.eos_token_ids:
            if not self.grammar.is_final(self.state):
                return False
            self._terminated = True
            return True
        nxt = self.grammar.next_state(self.state, token_id)
        if nxt is None:
            return False
        self._states.append(nxt)
        return True

    def fill_mask(self, bitmask: "torch.Tensor", row: int) -> None:
        source = self.grammar.eos_only_mask if self._terminated else self.grammar.mask_row(self.state)
        width = min(source.shape[0], bitmask.shape[1])  # a narrower row: ids past it cannot be sampled
        bitmask[row, :width].copy_(source[:width])
        if bitmask.shape[1] > width:
            bitmask[row, width:].zero_()

    def is_terminated(self) -> bool:
        if self._terminated:
            return True
        return self.grammar.is_final(self.state) and not self.grammar.can_continue(self.state)

    def can_finish(self) -> bool:
        return self._terminated or self.grammar.is_final(self.state)

    def copy(self) -> "GrammarMatcher":
        return GrammarMatcher(self.grammar, list(self._states), self._terminated)

    def rollback(self, num_tokens: int) -> None:
        if not 0 <= num_tokens <= self.num_accepted:
            raise ValueError(f"cannot roll back {num_tokens} tokens; {self.num_accepted} were accepted")
        if num_tokens and self._terminated:
            self._terminated = False
            num_tokens -= 1
        if num_tokens:
            del self._states[-num_tokens:]

    def forced_bytes(self) -> bytes:
        """Forced continuation as bytes (may start inside a UTF-8 character; jump_forward uses it)."""
        return b"" if self._terminated else self.grammar.forced_bytes(self.state)

    def forced_string(self) -> str:
        # Inside a multi-byte character the forced bytes start with continuation bytes: no text.
        if self._terminated or self.state >= self.grammar.dfa.num_char_states:
            return ""
        return complete_utf8_prefix(self.forced_bytes())


def complete_utf8_prefix(data: bytes) -> str:
    """Decode `data`, dropping an incomplete character at its end."""
    for cut in range(4):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""
