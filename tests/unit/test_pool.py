"""KV memory owners (slot allocator, request table) and the no-cache baseline."""

from __future__ import annotations

import random

import pytest
import torch

from runtime.cache.naive import NoPrefixCache
from runtime.cache.pool import ReqToTokenPool, TokenSlotAllocator

# ---- TokenSlotAllocator -------------------------------------------------------------------------


def test_allocator_hands_out_every_slot_but_the_padding_slot_exactly_once():
    allocator = TokenSlotAllocator(10, "cpu")
    slots = torch.cat([allocator.allocate(3), allocator.allocate(7)]).tolist()
    assert sorted(slots) == list(range(1, 11))  # slot 0 is reserved for padded batch entries
    assert allocator.num_free == 0


def test_can_allocate_is_true_exactly_up_to_the_free_count():
    allocator = TokenSlotAllocator(8, "cpu")
    allocator.allocate(5)
    assert allocator.can_allocate(0) and allocator.can_allocate(3)
    assert not allocator.can_allocate(4)


def test_allocating_more_than_free_raises_and_changes_nothing():
    allocator = TokenSlotAllocator(4, "cpu")
    allocator.allocate(3)
    with pytest.raises(RuntimeError):
        allocator.allocate(2)
    assert allocator.num_free == 1
    assert allocator.allocate(1).numel() == 1


def test_freed_slots_can_be_allocated_again():
    allocator = TokenSlotAllocator(4, "cpu")
    slots = allocator.allocate(4)
    allocator.free(slots[1:3])
    assert allocator.num_free == 2
    assert sorted(allocator.allocate(2).tolist()) == sorted(slots[1:3].tolist())
    allocator.free(torch.empty(0, dtype=torch.int64))  # freeing nothing is fine
    assert allocator.num_free == 0


def test_integrity_check_catches_a_double_free():
    allocator = TokenSlotAllocator(4, "cpu")
    slots = allocator.allocate(2)
    allocator.free(slots)
    allocator.check_integrity()
    allocator.free(slots[:1])
    with pytest.raises(AssertionError):
        allocator.check_integrity()


def test_clear_makes_every_slot_free_again():
    allocator = TokenSlotAllocator(6, "cpu")
    allocator.allocate(4)
    allocator.clear()
    assert allocator.free_slot_set() == set(range(1, 7))


def test_random_allocate_and_free_never_hands_out_a_held_slot():
    rng = random.Random(0)
    allocator = TokenSlotAllocator(50, "cpu")
    held: list[list[int]] = []
    for _ in range(2000):
        if held and rng.random() < 0.5:
            allocator.free(torch.tensor(held.pop(rng.randrange(len(held)))))
        else:
            n = rng.randint(0, 12)
            if not allocator.can_allocate(n):
                continue
            new = allocator.allocate(n).tolist()
            assert not set(new) & {s for group in held for s in group}
            held.append(new)
        allocator.check_integrity()
        flat = [s for group in held for s in group]
        assert len(set(flat)) == len(flat)
        assert allocator.free_slot_set() | set(flat) == set(range(1, 51))
        assert allocator.num_free + len(flat) == 50


# ---- ReqToTokenPool -----------------------------------------------------------------------------


def test_request_rows_are_distinct_until_the_table_is_full():
    pool = ReqToTokenPool(3, max_context_len=8, device="cpu")
    rows = [pool.allocate() for _ in range(3)]
    assert sorted(rows) == [0, 1, 2] and not pool.can_allocate()
    with pytest.raises(RuntimeError):
        pool.allocate()
    pool.free(rows[1])
    assert pool.can_allocate() and pool.allocate() == rows[1]


def test_freeing_a_request_row_twice_raises():
    pool = ReqToTokenPool(2, max_context_len=4, device="cpu")
    row = pool.allocate()
    pool.free(row)
    with pytest.raises(AssertionError):
        pool.free(row)
    pool.check_integrity()


def test_request_row_round_trips_slots_as_int64():
    pool = ReqToTokenPool(2, max_context_len=8, device="cpu")
    row = pool.allocate()
    pool.write(row, 0, torch.tensor([5, 6, 7]))
    pool.write(row, 3, torch.tensor([9, 11]))
    out = pool.read(row, 5)
    assert out.dtype == torch.int64 and out.tolist() == [5, 6, 7, 9, 11]
    assert pool.read(row, 5, start=3).tolist() == [9, 11]


# ---- NoPrefixCache ------------------------------------------------------------------------------


def test_no_prefix_cache_never_matches_and_frees_inserted_slots_at_once():
    allocator = TokenSlotAllocator(8, "cpu")
    cache = NoPrefixCache(allocator)
    slots = allocator.allocate(4)
    num_cached, handle = cache.insert([1, 2, 3, 4], slots)
    assert num_cached == 0 and allocator.num_free == 8
    kv, match_handle = cache.match_prefix([1, 2, 3, 4])
    assert kv.numel() == 0 and kv.dtype == torch.int64 and match_handle is handle
    assert cache.total_size == 0 and cache.evict(10) == 0
    assert allocator.num_free + cache.total_size == allocator.size


def test_no_prefix_cache_counts_locks_so_a_stray_unlock_raises():
    cache = NoPrefixCache(TokenSlotAllocator(4, "cpu"))
    handle = cache.match_prefix([1]).handle
    cache.lock(handle)
    with pytest.raises(AssertionError):
        cache.reset()  # a lock is still held
    cache.unlock(handle)
    with pytest.raises(AssertionError):
        cache.unlock(handle)
    cache.reset()
    cache.check_integrity()
