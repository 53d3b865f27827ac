"""The prefix-cache contract. Implementations: `radix.RadixCache`, `naive.NoPrefixCache`.

Ownership of KV slots (page size 1, one slot per token):
- slots returned by `match_prefix` belong to the cache; a caller that uses them must `lock` the
  handle first and `unlock` it when done, or they may be evicted under it;
- `insert(ids, slots)` hands `slots[num_cached:]` to the cache; `slots[:num_cached]` stay the
  caller's business: the part it had matched (cache-owned, still locked by the caller) and any
  duplicates it computed itself for positions another request cached meanwhile, which it must free;
- `evict(n)` returns slots of unlocked leaves to the allocator, least recently used first.

Invariant (checked by tests and by the scheduler when idle):
    allocator.num_free + cache.total_size + slots held only by live requests == pool size
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple, Sequence

import torch

CacheHandle = Any  # opaque to callers: never read or modify a handle, only pass it back


class MatchResult(NamedTuple):
    kv_indices: torch.Tensor  # [prefix_len] int64 slots of the longest cached prefix
    handle: CacheHandle  # the node where the match ended; lock it before using kv_indices


class InsertResult(NamedTuple):
    num_cached: int  # leading tokens that were already cached before this insert
    handle: CacheHandle  # the node that ends at len(token_ids)


class BasePrefixCache(ABC):
    @abstractmethod
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """Longest cached prefix of `token_ids`. Marks the path as recently used; does not lock."""

    @abstractmethod
    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> InsertResult:
        """Cache `token_ids` whose KV lives in `kv_indices` (same length). See the ownership rules."""

    @abstractmethod
    def lock(self, handle: CacheHandle) -> None:
        """Protect the path root→handle from eviction (counted: every lock needs one unlock)."""

    @abstractmethod
    def unlock(self, handle: CacheHandle) -> None:
        """Undo one `lock`; the path becomes evictable when no lock is left on it."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` slots from unlocked leaves, LRU first (fewer if not enough
        are evictable). Returns the number freed."""

    @property
    @abstractmethod
    def evictable_size(self) -> int:
        """Cached tokens not protected by any lock."""

    @property
    @abstractmethod
    def protected_size(self) -> int:
        """Cached tokens on locked paths."""

    @property
    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    @abstractmethod
    def reset(self) -> None:
        """Drop everything (no lock may be held); all cached slots go back to the allocator."""

    @abstractmethod
    def check_integrity(self) -> None:
        """Raise AssertionError if the structure's internal bookkeeping is inconsistent."""
