"""The trivial prefix cache: caches nothing. Same contract as the radix tree, for A/B runs.

Every `insert` hands all its slots straight back to the allocator, so each request prefills its whole
prompt. Locks are still counted so that a caller's lock/unlock pairing bugs surface here too.
"""

from __future__ import annotations

from typing import Sequence

import torch

from runtime.cache.base import BasePrefixCache, CacheHandle, InsertResult, MatchResult
from runtime.cache.pool import TokenSlotAllocator


class _NoPrefixHandle:
    """The only handle this cache hands out: the empty prefix."""

    def __repr__(self) -> str:
        return "<no prefix>"


NO_PREFIX_HANDLE = _NoPrefixHandle()


class NoPrefixCache(BasePrefixCache):
    def __init__(self, allocator: TokenSlotAllocator):
        self._allocator = allocator
        self._num_locks = 0

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        empty = torch.empty(0, dtype=torch.int64, device=self._allocator.device)
        return MatchResult(empty, NO_PREFIX_HANDLE)

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> InsertResult:
        assert len(token_ids) == len(kv_indices), "one KV slot per token"
        # num_cached == 0, so the whole of kv_indices is ours to dispose of: free it now.
        self._allocator.free(kv_indices)
        return InsertResult(0, NO_PREFIX_HANDLE)

    def lock(self, handle: CacheHandle) -> None:
        assert handle is NO_PREFIX_HANDLE, f"foreign handle {handle!r}"
        self._num_locks += 1

    def unlock(self, handle: CacheHandle) -> None:
        assert handle is NO_PREFIX_HANDLE, f"foreign handle {handle!r}"
        assert self._num_locks > 0, "unlock without a matching lock"
        self._num_locks -= 1

    def evict(self, num_tokens: int) -> int:
        return 0

    @property
    def evictable_size(self) -> int:
        return 0

    @property
    def protected_size(self) -> int:
        return 0

    @property
    def num_locks(self) -> int:
        return self._num_locks

    def reset(self) -> None:
        assert self._num_locks == 0, f"reset with {self._num_locks} locks held"

    def check_integrity(self) -> None:
        assert self._num_locks >= 0
