"""Where each request's KV lives: its row in the request→token table, its own slots, and the cached
prefix it holds locked. The scheduler decides *when* (admit, retract, finish, jump); this file does
the bookkeeping so that every slot is always exactly one of free, cached, or owned by one request.

Regions of a resident request (see request.py):

    | prefix from cache (locked) | own slots, computed | (not yet computed)
    0                    cached_len             kv_len
"""

from __future__ import annotations

import torch

from runtime.cache.base import BasePrefixCache
from runtime.cache.pool import ReqToTokenPool, TokenSlotAllocator
from runtime.request import Req


class RequestKV:
    """`cache_decoded=False` (deterministic inference): a finished request leaves only the KV its
    prefill computed in the cache, not what its decode steps wrote. On a GPU decode attention and
    prefill attention round differently, so a later prompt that reused decoded KV would get other
    bits than the same prompt computed afresh."""

    def __init__(self, req_pool: ReqToTokenPool, allocator: TokenSlotAllocator, cache: BasePrefixCache,
                 cache_decoded: bool = True):
        self.req_pool = req_pool
        self.allocator = allocator
        self.cache = cache
        self.cache_decoded = cache_decoded

    def place(self, req: Req, prefix_slots: torch.Tensor) -> None:
        """Give an admitted request a row holding its cached prefix (already locked)."""
        req.req_pool_idx = self.req_pool.allocate()
        self.req_pool.write(req.req_pool_idx, 0, prefix_slots)
        req.cached_len = req.kv_len = len(prefix_slots)

    def ensure_free(self, n: int) -> bool:
        """Evict unlocked cached prefixes until n slots are free; False if that is not enough."""
        if self.allocator.num_free < n:
            self.cache.evict(n - self.allocator.num_free)
        return self.allocator.num_free >= n

    def allocate(self, n: int) -> torch.Tensor:
        self.ensure_free(n)
        return self.allocator.allocate(n)

    def cache_prefill(self, req: Req) -> None:
        """Hand the KV just computed to the prefix cache at once (not only when the request ends),
        so requests admitted after it, and its own later chunks, reuse it. The request keeps it
        locked; where another request cached the same positions first, ours are duplicates."""
        row, kv_len = req.req_pool_idx, req.kv_len
        slots = self.req_pool.read(row, kv_len)
        inserted = self.cache.insert(req.fill_ids[:kv_len], slots)
        if inserted.num_cached > req.cached_len:
            self.allocator.free(slots[req.cached_len : inserted.num_cached])
            match = self.cache.match_prefix(req.fill_ids[: inserted.num_cached])
            self.req_pool.write(row, 0, match.kv_indices)  # point at the cached copies instead
        self.cache.lock(inserted.handle)
        self.cache.unlock(req.cache_handle)
        req.cache_handle, req.cached_len = inserted.handle, kv_len

    def truncate(self, req: Req, length: int) -> None:
        """Drop the KV of positions >= length (their tokens were rewritten): own slots are freed,
        cached ones stay with the cache."""
        valid = min(req.kv_len, length)
        own_start = max(valid, req.cached_len)
        if req.kv_len > own_start:
            self.allocator.free(self.req_pool.read(req.req_pool_idx, req.kv_len, start=own_start))
        req.kv_len = valid

    def release(self, req: Req) -> None:
        """Give a request's KV to the prefix cache (what it computed) and its row back."""
        if req.req_pool_idx is None:
            return
        if not self.cache_decoded:  # the cached prefix (prefill's KV) stays; our own slots go
            if req.kv_len > req.cached_len:
                self.allocator.free(self.req_pool.read(req.req_pool_idx, req.kv_len, start=req.cached_len))
        else:
            tokens = req.fill_ids[: req.kv_len]
            slots = self.req_pool.read(req.req_pool_idx, req.kv_len)
            if len(tokens) < req.kv_len:  # a failed step left positions whose token never reached the host
                self.allocator.free(slots[len(tokens) :])
                slots = slots[: len(tokens)]
            inserted = self.cache.insert(tokens, slots)
            if inserted.num_cached > req.cached_len:
                # positions another request cached meanwhile: our copies are duplicates
                self.allocator.free(slots[req.cached_len : inserted.num_cached])
        self.cache.unlock(req.cache_handle)
        self.req_pool.free(req.req_pool_idx)
        req.req_pool_idx, req.cache_handle = None, None
        req.cached_len = req.kv_len = 0

    def check_integrity(self, idle: bool) -> None:
        """Always: no structure is corrupt. When idle: every slot is free or cached, nothing is
        locked, every row is free."""
        self.cache.check_integrity()
        self.allocator.check_integrity()
        self.req_pool.check_integrity()
        if idle:
            assert self.cache.protected_size == 0, f"{self.cache.protected_size} cached tokens still locked"
            total = self.allocator.num_free + self.cache.total_size
            assert total == self.allocator.size, (
                f"KV pool leak: free {self.allocator.num_free} + cached {self.cache.total_size} != {self.allocator.size}"
            )
            assert self.req_pool.num_free + self.req_pool.num_reserved == self.req_pool.size, "a request row leaked"
