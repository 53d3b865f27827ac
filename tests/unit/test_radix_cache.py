"""The radix prefix cache: what the scheduler relies on (the randomised run against a brute-force
model is in test_radix_cache_random.py)."""

from __future__ import annotations


import pytest
import torch

from runtime.cache.naive import NoPrefixCache
from runtime.cache.pool import TokenSlotAllocator
from runtime.cache.radix import RadixCache, create_prefix_cache

POOL_SIZE = 64


@pytest.fixture
def allocator() -> TokenSlotAllocator:
    return TokenSlotAllocator(POOL_SIZE, "cpu")


@pytest.fixture
def cache(allocator) -> RadixCache:
    return RadixCache(allocator)


def cache_sequence(cache: RadixCache, allocator: TokenSlotAllocator, ids: list[int]) -> list[int]:
    """What a finished request that matched nothing does: allocate, insert, free its duplicates."""
    slots = allocator.allocate(len(ids))
    num_cached, _ = cache.insert(ids, slots)
    allocator.free(slots[:num_cached])
    return slots.tolist()


def assert_pool_balanced(cache: RadixCache, allocator: TokenSlotAllocator, live: int = 0) -> None:
    cache.check_integrity()
    allocator.check_integrity()
    assert allocator.num_free + cache.total_size + live == allocator.size
    assert cache.all_cached_slots().isdisjoint(allocator.free_slot_set())


# ---- match and insert -------------------------------------------------------------------------


def test_empty_cache_matches_nothing_and_returns_root(cache):
    kv, handle = cache.match_prefix([1, 2, 3])
    assert kv.numel() == 0 and kv.dtype == torch.int64
    assert cache.match_prefix([]).handle is handle  # both are the root
    assert cache.total_size == 0


def test_empty_insert_and_empty_match_are_root_with_nothing_cached(cache, allocator):
    num_cached, handle = cache.insert([], torch.empty(0, dtype=torch.int64))
    assert num_cached == 0 and handle is cache.match_prefix([]).handle
    assert cache.num_nodes == 0 and cache.total_size == 0
    cache.lock(handle)
    cache.unlock(handle)
    cache.check_integrity()


def test_insert_then_match_returns_the_same_slots(cache, allocator):
    slots = cache_sequence(cache, allocator, [5, 6, 7, 8])
    kv, _ = cache.match_prefix([5, 6, 7, 8, 9])
    assert kv.tolist() == slots
    assert cache.match_prefix([5, 6, 9]).kv_indices.tolist() == slots[:2]
    assert cache.match_prefix([6, 5]).kv_indices.numel() == 0
    assert_pool_balanced(cache, allocator)


def test_insert_reports_the_cached_prefix_and_takes_only_the_rest(cache, allocator):
    first = cache_sequence(cache, allocator, [1, 2, 3])
    slots = allocator.allocate(5)
    num_cached, _ = cache.insert([1, 2, 3, 4, 5], slots)
    assert num_cached == 3
    # the cache kept its own slots for the shared part and took only the new tail
    assert cache.match_prefix([1, 2, 3, 4, 5]).kv_indices.tolist() == first + slots[3:].tolist()
    assert cache.total_size == 5
    allocator.free(slots[:3])  # duplicates stay the caller's to free
    assert_pool_balanced(cache, allocator)


def test_insert_extending_a_leaf_adds_only_the_suffix(cache, allocator):
    a = cache_sequence(cache, allocator, [1, 2])
    b = cache_sequence(cache, allocator, [1, 2, 3, 4])
    assert cache.match_prefix([1, 2, 3, 4]).kv_indices.tolist() == a + b[2:]
    assert cache.total_size == 4
    assert_pool_balanced(cache, allocator)


def test_insert_of_a_cached_prefix_splits_and_returns_a_handle_ending_there(cache, allocator):
    cache_sequence(cache, allocator, [1, 2, 3, 4])
    slots = allocator.allocate(2)
    num_cached, handle = cache.insert([1, 2], slots)
    assert num_cached == 2 and cache.num_nodes == 2
    allocator.free(slots)
    cache.lock(handle)  # the handle protects exactly the 2 tokens it ends at
    assert (cache.protected_size, cache.evictable_size) == (2, 2)
    cache.unlock(handle)
    assert_pool_balanced(cache, allocator)


def test_split_on_partial_match_keeps_slots(cache, allocator):
    slots = cache_sequence(cache, allocator, [1, 2, 3, 4, 5])
    kv, handle = cache.match_prefix([1, 2, 3, 9])
    assert kv.tolist() == slots[:3] and cache.num_nodes == 2
    assert cache.match_prefix([1, 2, 3, 4, 5]).kv_indices.tolist() == slots
    cache.lock(handle)
    assert (cache.protected_size, cache.evictable_size) == (3, 2)
    cache.unlock(handle)
    assert_pool_balanced(cache, allocator)


def test_branching_inserts_share_the_common_prefix(cache, allocator):
    a = cache_sequence(cache, allocator, [1, 2, 3])
    b = cache_sequence(cache, allocator, [1, 2, 7, 8])
    assert cache.match_prefix([1, 2, 7, 8]).kv_indices.tolist() == a[:2] + b[2:]
    assert cache.match_prefix([1, 2, 3]).kv_indices.tolist() == a
    assert cache.total_size == 5 and cache.num_nodes == 3
    assert_pool_balanced(cache, allocator)


# ---- locks --------------------------------------------------------------------------------------


def test_lock_moves_the_whole_path_from_evictable_to_protected(cache, allocator):
    cache_sequence(cache, allocator, [1, 2, 3])
    cache_sequence(cache, allocator, [1, 2, 3, 4, 5])
    handle = cache.match_prefix([1, 2, 3, 4, 5]).handle
    cache.lock(handle)
    cache.lock(handle)
    assert (cache.evictable_size, cache.protected_size) == (0, 5)
    cache.unlock(handle)
    assert (cache.evictable_size, cache.protected_size) == (0, 5)  # one lock is still held
    cache.unlock(handle)
    assert (cache.evictable_size, cache.protected_size) == (5, 0)
    cache.check_integrity()


def test_unlock_without_a_lock_raises(cache, allocator):
    cache_sequence(cache, allocator, [1, 2])
    with pytest.raises(AssertionError):
        cache.unlock(cache.match_prefix([1, 2]).handle)
    with pytest.raises(AssertionError):
        cache.unlock(cache.match_prefix([]).handle)  # the root counts locks too


def test_handles_stay_valid_when_a_later_match_splits_their_path(cache, allocator):
    cache_sequence(cache, allocator, [1, 2, 3, 4])
    handle = cache.match_prefix([1, 2, 3, 4]).handle
    cache.lock(handle)
    cache.match_prefix([1, 2, 9])  # splits the locked node
    assert cache.protected_size == 4
    cache.unlock(handle)
    assert (cache.evictable_size, cache.protected_size) == (4, 0)
    cache.check_integrity()


def test_locking_an_evicted_handle_raises(cache, allocator):
    cache_sequence(cache, allocator, [1, 2])
    handle = cache.match_prefix([1, 2]).handle
    cache.evict(2)
    with pytest.raises(AssertionError):
        cache.lock(handle)


# ---- eviction -----------------------------------------------------------------------------------


def test_evicts_least_recently_used_unlocked_leaf_first(cache, allocator):
    old = cache_sequence(cache, allocator, [1, 1])
    new = cache_sequence(cache, allocator, [2, 2])
    assert cache.evict(1) == 2  # a whole leaf goes, even if fewer tokens were asked for
    assert set(old) <= allocator.free_slot_set()
    assert cache.match_prefix([2, 2]).kv_indices.tolist() == new
    assert_pool_balanced(cache, allocator)


def test_match_refreshes_recency(cache, allocator):
    old = cache_sequence(cache, allocator, [1, 1])
    new = cache_sequence(cache, allocator, [2, 2])
    cache.match_prefix([1, 1])
    cache.evict(1)
    assert set(new) <= allocator.free_slot_set()
    assert cache.match_prefix([1, 1]).kv_indices.tolist() == old


def test_locked_nodes_are_never_evicted(cache, allocator):
    kept = cache_sequence(cache, allocator, [1, 2, 3])
    cache_sequence(cache, allocator, [4, 5])
    handle = cache.match_prefix([1, 2, 3]).handle
    cache.lock(handle)
    assert cache.evict(100) == 2
    assert cache.match_prefix([1, 2, 3]).kv_indices.tolist() == kept
    assert cache.evict(100) == 0
    cache.unlock(handle)
    assert cache.evict(100) == 3 and cache.total_size == 0
    assert_pool_balanced(cache, allocator)


def test_a_locked_prefix_survives_eviction_of_its_unlocked_extension(cache, allocator):
    cache_sequence(cache, allocator, [1, 2, 3, 4])
    handle = cache.match_prefix([1, 2]).handle  # splits: [1, 2] | [3, 4]
    cache.lock(handle)
    assert cache.evict(100) == 2
    assert cache.match_prefix([1, 2, 3, 4]).kv_indices.numel() == 2
    cache.unlock(handle)
    assert_pool_balanced(cache, allocator)


def test_evict_cascades_to_a_parent_that_becomes_a_leaf(cache, allocator):
    cache_sequence(cache, allocator, [1, 2, 3])
    cache_sequence(cache, allocator, [1, 2, 4])  # tree: [1, 2] -> {[3], [4]}
    cache_sequence(cache, allocator, [9])  # the most recent: must outlive the whole [1, 2] branch
    assert cache.evict(4) == 4
    assert cache.match_prefix([1]).kv_indices.numel() == 0
    assert cache.match_prefix([9]).kv_indices.numel() == 1
    assert_pool_balanced(cache, allocator)


def test_evict_stops_when_nothing_is_evictable(cache, allocator):
    cache_sequence(cache, allocator, [1, 2, 3])
    assert cache.evict(0) == 0
    assert cache.evict(50) == 3
    assert cache.evict(50) == 0
    assert allocator.num_free == POOL_SIZE


# ---- reset, integrity, factory --------------------------------------------------------------------


def test_reset_returns_every_cached_slot_to_the_allocator(cache, allocator):
    cache_sequence(cache, allocator, [1, 2, 3])
    cache_sequence(cache, allocator, [1, 5])
    cache.reset()
    assert allocator.num_free == POOL_SIZE and cache.total_size == 0 and cache.num_nodes == 0
    assert cache.match_prefix([1, 2, 3]).kv_indices.numel() == 0
    assert_pool_balanced(cache, allocator)


def test_reset_while_locked_raises(cache, allocator):
    cache_sequence(cache, allocator, [1, 2])
    cache.lock(cache.match_prefix([1, 2]).handle)
    with pytest.raises(AssertionError):
        cache.reset()


def test_check_integrity_catches_a_wrong_size_counter(cache, allocator):
    cache_sequence(cache, allocator, [1, 2])
    cache._evictable_size += 1
    with pytest.raises(AssertionError):
        cache.check_integrity()


def test_check_integrity_catches_a_slot_cached_twice(cache, allocator):
    slots = allocator.allocate(4)
    cache.insert([1, 2], slots[:2])
    cache.insert([3, 4], slots[:2])  # a caller bug: the same KV slots under two keys
    with pytest.raises(AssertionError):
        cache.check_integrity()


def test_pretty_shows_keys_and_locks(cache, allocator):
    cache_sequence(cache, allocator, [1, 2, 3])
    cache.lock(cache.match_prefix([1, 2]).handle)
    text = cache.pretty()
    assert "[1, 2]" in text and "[3]" in text and "lock_ref=1" in text


def test_create_prefix_cache_picks_the_implementation(allocator):
    assert isinstance(create_prefix_cache(allocator, disable_radix_cache=False), RadixCache)
    assert isinstance(create_prefix_cache(allocator, disable_radix_cache=True), NoPrefixCache)


# ---- randomised run against a brute-force model -------------------------------------------------
