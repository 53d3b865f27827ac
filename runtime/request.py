"""One generation request as the scheduler sees it: token ids and a few lengths.

Token regions of a running request (page size 1; `fill_ids = origin_input_ids + output_ids`):

    | prefix from cache (locked) | computed by this request | not yet computed |
    0                    cached_len                    kv_len            len(fill_ids)

While decoding, kv_len == len(fill_ids) - 1: the newest sampled token's K/V is written by the next
decode step. The request's own slots are req_to_token[row, cached_len:kv_len].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from runtime.sampling_params import SamplingParams


@dataclass
class FinishReason:
    """SGLang's shape: {"type": "stop"|"length"|"abort", "matched": str|int} or {"length": n}."""

    type: str
    matched: Any = None
    length: Optional[int] = None
    message: Optional[str] = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "length":
            out["length"] = self.length
        elif self.type == "stop":
            out["matched"] = self.matched
        else:
            out["message"] = self.message
        return out


@dataclass(eq=False)  # a request is an entity: `in` / `remove` on the scheduler's queues compare identity
class Req:
    rid: str
    origin_input_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int]
    emit: Callable[[dict], None]  # called from the scheduler thread with each output event
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no prompt logprobs
    top_logprobs_num: int = 0
    grammar: Any = None  # a runtime.constrained GrammarMatcher, or None
    stream: bool = False  # emit an event every step, not only at the end
    output_ids: list[int] = field(default_factory=list)
    # --- KV bookkeeping (owned by the scheduler)
    req_pool_idx: Optional[int] = None
    cache_handle: Any = None  # locked prefix-cache handle
    cached_len: int = 0  # tokens whose KV came from the prefix cache (locked)
    kv_len: int = 0  # tokens whose KV is in the pool for this request
    extend_len: int = 0  # tokens to compute in the current extend step
    # --- results
    finished_reason: Optional[FinishReason] = None
    cached_tokens: int = 0  # prompt tokens served from the cache (first admission)
    num_retractions: int = 0
    admitted_before: bool = False
    jump_forward_tokens: int = 0
    output_epoch: int = 0  # bumped when output ids are rewritten: tokens sampled before are stale
    input_token_logprobs: list = field(default_factory=list)
    input_top_logprobs: list = field(default_factory=list)
    output_token_logprobs: list = field(default_factory=list)
    output_top_logprobs: list = field(default_factory=list)
    generator: Optional[torch.Generator] = None
    # --- text (the scheduler detokenizes: stop strings need the text)
    decoded_text: str = ""  # all output text decoded so far (stop string not trimmed)
    sent_text_len: int = 0  # characters already emitted
    sent_ids_len: int = 0  # output ids already emitted
    detok_prefix_offset: int = 0
    detok_read_offset: int = 0
    created_at: float = field(default_factory=time.monotonic)
    first_token_at: Optional[float] = None
    to_abort: bool = False
    prompt_logprobs_done: bool = False

    @property
    def fill_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    @property
    def num_output(self) -> int:
        return len(self.output_ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.return_logprob and self.logprob_start_len >= 0 and not self.prompt_logprobs_done

    def remaining_new_tokens(self) -> int:
        return max(self.sampling_params.max_new_tokens - len(self.output_ids), 0)
