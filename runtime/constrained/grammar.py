"""The grammar contract the scheduler and sampler rely on.

A *grammar* is compiled once per (kind, spec, tokenizer) and shared read-only by every request that
uses it; a *matcher* is the per-request cursor over it. The scheduler owns each matcher: it feeds
every sampled token with `accept_token`, asks `fill_mask` before sampling, and may jump forward over
text the grammar forces (`forced_string`, see jump_forward.py), undoing tokens with `rollback`.
Forks (`s.fork(n)`) take `copy()`s. Matchers are not thread-safe; grammars are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


class BaseGrammarMatcher(ABC):
    """Per-request state over a compiled grammar."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one token. Returns False, leaving the state unchanged, if it is not allowed.

        EOS is allowed only where the output may end; after EOS nothing more is accepted."""

    @abstractmethod
    def fill_mask(self, bitmask: "torch.Tensor", row: int) -> None:
        """Write the allowed tokens into `bitmask[row]` (int32 words; bit j of word i <-> token 32*i+j).

        Words past the grammar's vocabulary (a wider model vocabulary) are zeroed: those ids are
        never allowed. Only row `row` is written."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once EOS was accepted, or the output is complete and nothing may follow."""

    @abstractmethod
    def can_finish(self) -> bool:
        """True if the text so far is a complete match (EOS would be accepted now)."""

    @abstractmethod
    def copy(self) -> "BaseGrammarMatcher":
        """An independent matcher in the same state (for forks)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens (EOS counts as one). ValueError if too many."""

    @abstractmethod
    def forced_string(self) -> str:
        """The longest text every completion must write next ("" if the next character is free)."""


class BaseGrammar(ABC):
    """A compiled constraint over one tokenizer's vocabulary; immutable and shareable."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids the grammar knows (bitmask rows hold ceil(vocab_size / 32) words)."""

    @abstractmethod
    def accepts(self, token_ids: Sequence[int]) -> bool:
        """True if the tokens spell a complete match (an EOS at the very end is allowed)."""

    @abstractmethod
    def matcher(self) -> BaseGrammarMatcher:
        """A fresh matcher at the start of the grammar."""
