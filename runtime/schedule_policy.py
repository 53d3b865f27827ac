"""Which waiting requests join the next extend (prefill) batch, and how many tokens each computes.

Admission asks before it commits: a request is admitted only if its new tokens plus a reserve for
its future decode fit in free + evictable slots minus what running requests are expected to need.
Decode can still run short (the reserve is an estimate); the scheduler then retracts requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from runtime.cache.base import BasePrefixCache
from runtime.cache.pool import ReqToTokenPool, TokenSlotAllocator
from runtime.config import EngineConfig
from runtime.request import Req

# Past this many waiting requests, lpm's per-request tree matching costs more than it saves.
LPM_MAX_WAITING = 128
# Requests whose first this-many tokens equal those of a request already in the batch, and that the
# cache cannot serve yet, wait one step: the first one's prefix is cached when its prefill ends.
SHARED_PREFIX_KEY_LEN = 32


def order_waiting(waiting: list[Req], policy: str, cache: BasePrefixCache) -> list[Req]:
    """fcfs: arrival order. lpm: longest cached prefix first (ties keep arrival order)."""
    if policy == "fcfs" or len(waiting) > LPM_MAX_WAITING:
        return list(waiting)
    lengths = {id(r): len(cache.match_prefix(r.fill_ids[: max(r.seq_len - 1, 0)]).kv_indices) for r in waiting}
    return sorted(waiting, key=lambda r: -lengths[id(r)])


@dataclass
class Admission:
    req: Req
    prefix_slots: object  # torch.Tensor of cached-prefix slots (already locked via req.cache_handle)
    extend_len: int  # tokens computed in this step
    is_last_chunk: bool


@dataclass
class PrefillAdder:
    """Builds one extend batch. Call `try_add` per candidate in order; stop at the first False."""

    config: EngineConfig
    cache: BasePrefixCache
    allocator: TokenSlotAllocator
    req_pool: ReqToTokenPool
    running: list[Req]
    admitted: list[Admission] = field(default_factory=list)
    token_budget: int = 0
    chunk_budget: Optional[int] = None

    def __post_init__(self) -> None:
        self.token_budget = self.config.max_prefill_tokens
        self.chunk_budget = self.config.chunked_prefill_size if self.config.chunked_prefill_enabled else None
        self._reserved = sum(self._decode_reserve(r) for r in self.running)
        self._batch_keys: set[tuple[int, ...]] = set()

    def _decode_reserve(self, req: Req) -> int:
        return int(req.remaining_new_tokens() * self.config.new_token_ratio)

    def _available(self) -> int:
        return self.allocator.num_free + self.cache.evictable_size - self._reserved

    def _max_prefix(self, req: Req) -> int:
        # at least one token must be computed to get logits; prompt logprobs need their positions
        limit = req.seq_len - 1
        if req.wants_prompt_logprobs:
            limit = min(limit, max(req.logprob_start_len - 1, 0))
        return max(limit, 0)

    def try_add(self, req: Req) -> Optional[bool]:
        """Admit `req` (a new/retracted request, or the continuing chunked one) if resources allow.
        True: admitted. False: the batch is full, stop. None: deferred to a later step, go on."""
        if len(self.running) + len(self.admitted) >= self.config.max_running_requests:
            return False
        if self.token_budget <= 0 or (self.chunk_budget is not None and self.chunk_budget <= 0):
            return False
        continuing = req.req_pool_idx is not None
        if not continuing and not self.req_pool.can_allocate(1):
            return False
        if continuing:
            prefix_slots, handle = None, req.cache_handle
            prefix_len = req.kv_len
        else:
            match = self.cache.match_prefix(req.fill_ids[: self._max_prefix(req)])
            prefix_slots, handle = match.kv_indices, match.handle
            prefix_len = len(prefix_slots)
            if self._shares_uncached_prefix(req, prefix_len):
                return None
            self.cache.lock(handle)  # NOTE: lock before evicting anything, or we may evict our own prefix
        remaining = req.seq_len - prefix_len
        extend_len = min(remaining, self.token_budget)
        if self.chunk_budget is not None:
            extend_len = min(extend_len, self.chunk_budget)
        first = not self.admitted
        if extend_len < remaining and self.chunk_budget is None and not first:
            return self._reject(req, continuing, handle)  # no chunking: only a lone long prompt may overrun
        if extend_len < remaining and self.chunk_budget is None:
            extend_len = remaining
        is_last = extend_len == remaining
        reserve = self._decode_reserve(req) if is_last else 0
        if extend_len + reserve > self._available() and not (first and extend_len <= self._available()):
            return self._reject(req, continuing, handle)
        if not continuing:
            req.cache_handle = handle
        self.admitted.append(Admission(req, prefix_slots, extend_len, is_last))
        if len(req.fill_ids) > SHARED_PREFIX_KEY_LEN:
            self._batch_keys.add(tuple(req.fill_ids[:SHARED_PREFIX_KEY_LEN]))
        self.token_budget -= extend_len
        if self.chunk_budget is not None:
            self.chunk_budget -= extend_len
        self._reserved += reserve + extend_len
        return True

    def _shares_uncached_prefix(self, req: Req, prefix_len: int) -> bool:
        if self.config.disable_radix_cache or prefix_len >= SHARED_PREFIX_KEY_LEN:
            return False
        if len(req.fill_ids) <= SHARED_PREFIX_KEY_LEN:
            return False
        return tuple(req.fill_ids[:SHARED_PREFIX_KEY_LEN]) in self._batch_keys

    def _reject(self, req: Req, continuing: bool, handle) -> bool:
        if not continuing:
            self.cache.unlock(handle)
        return False
