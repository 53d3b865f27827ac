"""The text of one program state, the token ids behind it, and its chat messages.

    text:  |<------------- tokenized_len ------------->|<-- pending -->|
    ids:   [ ids covering text[:tokenized_len] exactly ]

`ids` only ever grows, so every model call's input extends the previous one token for token and
the runtime's prefix cache matches all of it. Pending text is tokenised, once, right before the
next call that needs ids. With no tokenizer (or exact tokens off) `ids` stays empty and prompts
are sent as text.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional, Sequence

from sgflow.backends.base import Prompt, Tokenizer
from sgflow.tokens import align_output


@dataclass
class Transcript:
    text: str = ""
    ids: list[int] = field(default_factory=list)
    tokenized_len: int = 0
    messages: list[dict] = field(default_factory=list)
    role: Optional[str] = None
    role_begin: int = 0
    # Trace only: where the first value unknown before run time (argument, generated text) begins.
    symbolic_from: Optional[int] = None

    def append(self, text: str, symbolic: bool = False) -> None:
        if symbolic and self.symbolic_from is None:
            self.symbolic_from = len(self.text)
        self.text += text

    def tokenize_pending(self, tokenizer: Tokenizer) -> None:
        pending = self.text[self.tokenized_len:]
        if pending:
            # NOTE: special tokens (BOS) are added only at the very start of the program.
            self.ids.extend(tokenizer.encode(pending, add_special_tokens=self.tokenized_len == 0))
            self.tokenized_len = len(self.text)

    def prompt(self, tokenizer: Optional[Tokenizer]) -> Prompt:
        """The program so far, with exact token ids when a tokenizer is given."""
        input_ids = None
        if tokenizer is not None:
            self.tokenize_pending(tokenizer)
            input_ids = tuple(self.ids)
        role_text = self.text[self.role_begin:] if self.role else ""
        return Prompt(self.text, input_ids, tuple(self.messages), self.role, role_text)

    def commit_output(self, start: int, output_ids: Optional[Sequence[int]], tokenizer: Optional[Tokenizer]) -> None:
        """`text[start:]` was generated as `output_ids` right after a prompt built at `start`:
        keep the ids that match the text, leave the rest of the text pending."""
        if tokenizer is None or output_ids is None or self.tokenized_len != start:
            return
        kept, covered = align_output(tokenizer, self.ids, self.text[start:], output_ids)
        self.ids.extend(kept)
        self.tokenized_len = start + covered

    def append_from(self, child: "Transcript", fork_text_len: int, fork_ids_len: int) -> None:
        """Append what `child` (forked from this transcript) wrote after the fork, ids included
        when both sides are fully tokenised at the join."""
        if self.tokenized_len == len(self.text) and child.tokenized_len >= fork_text_len:
            self.ids.extend(child.ids[fork_ids_len:])
            self.tokenized_len = len(self.text) + child.tokenized_len - fork_text_len
        self.text += child.text[fork_text_len:]

    def fork(self) -> "Transcript":
        return copy.deepcopy(self)
