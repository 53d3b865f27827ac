"""The radix prefix cache against a brute-force model: >= 10,000 random match / insert / lock /
unlock / evict operations per seed, every invariant checked after every step."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from runtime.cache.pool import TokenSlotAllocator
from runtime.cache.radix import RadixCache

class BruteForceCache:
    """The cache as a flat dict of cached prefixes, no tree. It also tracks which prefixes must end a
    tree node (ends of matches and inserts, branch points) because eviction works on whole nodes."""

    def __init__(self):
        self.slot: dict[tuple, int] = {}  # cached prefix -> KV slot of its last token
        self.time: dict[tuple, int] = {}  # cached prefix -> last access tick
        self.locks: dict[tuple, int] = {}  # cached prefix -> locks held on handles at or below it
        self.node_ends: set[tuple] = set()
        self.clock = 0

    def longest_prefix(self, ids: list[int]) -> int:
        k = 0
        while k < len(ids) and tuple(ids[: k + 1]) in self.slot:
            k += 1
        return k

    def slots_of(self, ids: list[int]) -> list[int]:
        return [self.slot[tuple(ids[:j])] for j in range(1, len(ids) + 1)]

    def touch(self, ids: list[int], end: int) -> None:
        self.clock += 1
        for j in range(1, end + 1):
            self.time[tuple(ids[:j])] = self.clock
        if end:
            self.node_ends.add(tuple(ids[:end]))

    def match(self, ids: list[int]) -> int:
        k = self.longest_prefix(ids)
        self.touch(ids, k)
        return k

    def insert(self, ids: list[int], slots: list[int]) -> int:
        k = self.longest_prefix(ids)
        for j in range(k + 1, len(ids) + 1):
            self.slot[tuple(ids[:j])] = slots[j - 1]
            self.locks[tuple(ids[:j])] = 0
        if 0 < k < len(ids):
            self.node_ends.add(tuple(ids[:k]))  # the new tail branches off here
        self.touch(ids, len(ids))
        return k

    def lock(self, ids: list[int], delta: int = 1) -> None:
        for j in range(1, len(ids) + 1):
            self.locks[tuple(ids[:j])] += delta
            assert self.locks[tuple(ids[:j])] >= 0

    def evict(self, num_tokens: int) -> list[int]:
        freed: list[int] = []
        while len(freed) < num_tokens:
            has_child = {p[:-1] for p in self.slot}
            leaves = [e for e in self.node_ends if e not in has_child and self.locks[e] == 0]
            if not leaves:
                break
            victim = min(leaves, key=self.time.__getitem__)
            assert [self.time[e] for e in leaves].count(self.time[victim]) == 1, "LRU tie"
            # the victim node starts after the nearest node end above it (or at the root)
            above = [len(e) for e in self.node_ends if len(e) < len(victim) and victim[: len(e)] == e]
            start = max(above, default=0)
            for j in range(start + 1, len(victim) + 1):
                prefix = victim[:j]
                freed.append(self.slot.pop(prefix))
                del self.time[prefix], self.locks[prefix]
            self.node_ends.discard(victim)
        return freed


@dataclass
class LiveRequest:
    ids: list[int]
    handle: object  # locked; covers ids[:cached_len]
    cached_len: int
    prefix_slots: torch.Tensor  # cache-owned slots of ids[:cached_len]
    own_slots: torch.Tensor  # slots of ids[cached_len:], allocated by this request


class Simulation:
    """Requests as the scheduler runs them, with cache and model driven side by side."""

    def __init__(self, seed: int, pool_size: int = 160, alphabet: int = 3, max_live: int = 6):
        self.rng = random.Random(seed)
        self.allocator = TokenSlotAllocator(pool_size, "cpu")
        self.cache = RadixCache(self.allocator)
        self.model = BruteForceCache()
        self.alphabet, self.max_live = alphabet, max_live
        self.live: list[LiveRequest] = []
        self.pins: list[tuple[list[int], object]] = []  # extra locks, e.g. a forked program's prefix
        self.history: list[list[int]] = []
        self.ops = {"probe": 15, "start": 20, "grow": 15, "checkpoint": 10, "finish": 15,
                    "abort": 3, "pin": 4, "unpin": 5, "evict": 6}  # fmt: skip

    def random_ids(self, max_len: int = 20) -> list[int]:
        return [self.rng.randrange(self.alphabet) for _ in range(self.rng.randint(0, max_len))]

    def prompt(self) -> list[int]:
        """Half the prompts reuse part of an earlier one (multi-turn, few-shot), so that prefixes
        also collide deep in the tree, not only near the root."""
        if self.history and self.rng.random() < 0.5:
            earlier = self.rng.choice(self.history)
            ids = earlier[: self.rng.randint(0, len(earlier))] + self.random_ids(6)
        else:
            ids = self.random_ids()
        self.history = (self.history + [ids])[-20:]
        return ids[:20]

    def step(self) -> None:
        op = self.rng.choices(list(self.ops), weights=list(self.ops.values()))[0]
        getattr(self, op)()

    def matched(self, ids: list[int]):
        k = self.model.match(ids)
        kv, handle = self.cache.match_prefix(ids)
        assert kv.tolist() == self.model.slots_of(ids[:k]), f"match of {ids}"
        return kv, handle, k

    def evict(self, num_tokens: int | None = None) -> None:
        num_tokens = self.rng.randint(0, 16) if num_tokens is None else num_tokens
        free_before = self.allocator.free_slot_set()
        expected = self.model.evict(num_tokens)
        assert self.cache.evict(num_tokens) == len(expected)
        assert self.allocator.free_slot_set() - free_before == set(expected)

    def try_allocate(self, n: int) -> torch.Tensor | None:
        if not self.allocator.can_allocate(n):
            self.evict(n - self.allocator.num_free)
        return self.allocator.allocate(n) if self.allocator.can_allocate(n) else None

    def probe(self) -> None:
        self.matched(self.prompt())

    def start(self) -> None:
        if len(self.live) >= self.max_live:
            return
        ids = self.prompt()
        kv, handle, k = self.matched(ids)
        self.cache.lock(handle)
        self.model.lock(ids[:k])
        own = self.try_allocate(len(ids) - k)
        if own is None:  # not enough memory even after eviction: the request waits
            self.cache.unlock(handle)
            self.model.lock(ids[:k], -1)
            return
        self.live.append(LiveRequest(ids, handle, k, kv, own))

    def grow(self) -> None:  # a decode step appends tokens
        if not self.live:
            return
        req = self.rng.choice(self.live)
        new_ids = self.random_ids(5)[: 30 - len(req.ids)]
        new = self.try_allocate(len(new_ids))
        if new is not None:
            req.ids += new_ids
            req.own_slots = torch.cat([req.own_slots, new])

    def insert(self, req: LiveRequest):
        slots = torch.cat([req.prefix_slots, req.own_slots])
        expected = self.model.insert(req.ids, slots.tolist())
        num_cached, handle = self.cache.insert(req.ids, slots)
        assert num_cached == expected >= req.cached_len
        # positions cached meanwhile by someone else: our copies are duplicates, ours to free
        self.allocator.free(slots[req.cached_len : num_cached])
        self.cache.unlock(req.handle)
        self.model.lock(req.ids[: req.cached_len], -1)
        return handle

    def checkpoint(self) -> None:  # insert what is computed so far, keep running on the cached copy
        if not self.live:
            return
        req = self.rng.choice(self.live)
        handle = self.insert(req)
        self.cache.lock(handle)
        self.model.lock(req.ids)
        req.handle, req.cached_len = handle, len(req.ids)
        req.prefix_slots = torch.tensor(self.model.slots_of(req.ids), dtype=torch.int64)
        req.own_slots = torch.empty(0, dtype=torch.int64)

    def finish(self) -> None:
        if self.live:
            self.insert(self.live.pop(self.rng.randrange(len(self.live))))

    def abort(self) -> None:
        if self.live:
            req = self.live.pop(self.rng.randrange(len(self.live)))
            self.allocator.free(req.own_slots)
            self.cache.unlock(req.handle)
            self.model.lock(req.ids[: req.cached_len], -1)

    def pin(self) -> None:
        ids = self.prompt()
        _, handle, k = self.matched(ids)
        self.cache.lock(handle)
        self.model.lock(ids[:k])
        self.pins.append((ids[:k], handle))

    def unpin(self) -> None:
        if self.pins:
            ids, handle = self.pins.pop(self.rng.randrange(len(self.pins)))
            self.cache.unlock(handle)
            self.model.lock(ids, -1)

    def check(self) -> None:
        cache, model, allocator = self.cache, self.model, self.allocator
        cache.check_integrity()
        allocator.check_integrity()
        assert cache.num_nodes == len(model.node_ends)
        assert cache.all_cached_slots() == set(model.slot.values())
        assert cache.protected_size == sum(1 for c in model.locks.values() if c > 0)
        assert cache.evictable_size == sum(1 for c in model.locks.values() if c == 0)
        live_slots = [s for req in self.live for s in req.own_slots.tolist()]
        assert allocator.num_free + cache.total_size + len(live_slots) == allocator.size
        everything = allocator.free_slot_set() | set(model.slot.values()) | set(live_slots)
        assert everything == set(range(1, allocator.size + 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_operations_agree_with_brute_force_model(seed):
    sim = Simulation(seed)
    for step in range(10_000):
        sim.step()
        try:
            sim.check()
        except AssertionError:
            print(f"seed {seed}, step {step}\n{sim.cache.pretty()}")
            raise
    while sim.live:
        sim.finish()
        sim.check()
    while sim.pins:
        sim.unpin()
    sim.cache.reset()
    assert sim.allocator.num_free == sim.allocator.size and sim.cache.total_size == 0
