"""The radix-tree prefix cache: token ids → KV slots, with LRU eviction of unlocked leaves.

Page size 1: a node's `value` holds one KV slot per token of its `key`. Children are keyed by the
first token of their key. A match or insert that ends inside a node splits it, so a handle always
ends exactly at the length the caller asked about. Nodes never merge back, so a handle stays valid
until its node is evicted, which a locked node never is.

Bookkeeping kept incremental (the scheduler calls in every step):
- `evictable_size` / `protected_size`: tokens of nodes with lock_ref == 0 / > 0; they move only
  when a node's lock_ref crosses 0 ↔ 1;
- `_leaves`: every childless non-root node, so `evict` never walks interior nodes;
- `last_access_time`: a counter bumped once per match/insert, stamped on the whole path, so a
  parent is never older than its children and no two leaves share a time.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Iterator, Sequence

import torch

from runtime.cache.base import BasePrefixCache, CacheHandle, InsertResult, MatchResult
from runtime.cache.naive import NoPrefixCache
from runtime.cache.pool import TokenSlotAllocator


class TreeNode:
    __slots__ = ("key", "value", "parent", "children", "lock_ref", "last_access_time", "node_id")

    def __init__(self, key: list[int], value: torch.Tensor, parent: TreeNode | None, node_id: int):
        self.key = key
        self.value = value  # [len(key)] int64 KV slots
        self.parent = parent  # None for the root and for evicted nodes
        self.children: dict[int, TreeNode] = {}
        self.lock_ref = 0
        self.last_access_time = 0
        self.node_id = node_id  # breaks heap ties deterministically

    def __repr__(self) -> str:
        return f"TreeNode(#{self.node_id}, len={len(self.key)}, lock_ref={self.lock_ref})"


def _common_prefix_len(key: list[int], ids: list[int], start: int) -> int:
    n = min(len(key), len(ids) - start)
    if key[:n] == ids[start : start + n]:  # NOTE: whole-slice compare runs in C; the usual case
        return n
    i = 0
    while key[i] == ids[start + i]:
        i += 1
    return i


class RadixCache(BasePrefixCache):
    def __init__(self, allocator: TokenSlotAllocator):
        self._allocator = allocator
        self._device = allocator.device
        self._node_ids = itertools.count()
        self._clock = 0
        self._init_tree()

    def _init_tree(self) -> None:
        empty = torch.empty(0, dtype=torch.int64, device=self._device)
        self._root = TreeNode([], empty, None, next(self._node_ids))
        self._leaves: set[TreeNode] = set()
        self._num_nodes = 0
        self._evictable_size = 0
        self._protected_size = 0

    # ---- the contract -------------------------------------------------------------------------

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        node, _, values = self._descend(list(token_ids))
        if not values:
            return MatchResult(torch.empty(0, dtype=torch.int64, device=self._device), node)
        return MatchResult(torch.cat(values), node)

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> InsertResult:
        ids = list(token_ids)
        assert len(ids) == len(kv_indices), f"{len(ids)} tokens but {len(kv_indices)} KV slots"
        node, num_cached, _ = self._descend(ids)
        if num_cached < len(ids):
            # clone: the caller's tensor may be a view of a larger buffer we must not keep alive
            value = kv_indices[num_cached:].to(device=self._device, dtype=torch.int64).clone()
            node = self._add_leaf(node, ids[num_cached:], value)
        return InsertResult(num_cached, node)

    def lock(self, handle: CacheHandle) -> None:
        node: TreeNode = handle
        assert node is self._root or node.parent is not None, f"lock of a dead handle {node!r}"
        while node is not self._root:
            if node.lock_ref == 0:
                self._evictable_size -= len(node.key)
                self._protected_size += len(node.key)
            node.lock_ref += 1
            node = node.parent
        # The root counts every lock too: catches a stray unlock(root) and a reset under a lock.
        self._root.lock_ref += 1

    def unlock(self, handle: CacheHandle) -> None:
        node: TreeNode = handle
        # A parent's lock_ref >= its children's, so checking the handle checks the whole path.
        assert node.lock_ref > 0, f"unlock without a matching lock on {node!r}"
        while node is not self._root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable_size += len(node.key)
                self._protected_size -= len(node.key)
            node = node.parent
        self._root.lock_ref -= 1

    def evict(self, num_tokens: int) -> int:
        if num_tokens <= 0:
            return 0
        heap = [(n.last_access_time, n.node_id, n) for n in self._leaves if n.lock_ref == 0]
        heapq.heapify(heap)
        victims: list[torch.Tensor] = []
        freed = 0
        while freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            victims.append(node.value)
            freed += len(node.key)
            parent = self._remove_leaf(node)
            if parent is not self._root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access_time, parent.node_id, parent))
        if victims:  # one free: each allocator.free concatenates the whole free list
            self._allocator.free(torch.cat(victims))
        return freed

    @property
    def evictable_size(self) -> int:
        return self._evictable_size

    @property
    def protected_size(self) -> int:
        return self._protected_size

    def reset(self) -> None:
        assert self._root.lock_ref == 0, f"reset with {self._root.lock_ref} locks held"
        nodes = list(self._iter_nodes())
        if nodes:
            self._allocator.free(torch.cat([n.value for n in nodes]))
        for node in nodes:  # make old handles dead, so lock() on them fails loudly
            node.parent = None
        self._init_tree()

    def check_integrity(self) -> None:
        root = self._root
        assert not root.key and root.parent is None and root.lock_ref >= 0
        sizes = [0, 0]  # evictable, protected
        leaves, seen_slots, num_nodes = set(), set(), 0
        stack = [root]
        while stack:
            node = stack.pop()
            for first, child in node.children.items():
                assert child.parent is node, f"{child!r} has a wrong parent"
                assert child.key and child.key[0] == first, f"{child!r} is empty or under key {first}"
                assert child.lock_ref <= node.lock_ref, f"{child!r} locked more than its parent"
                assert child.last_access_time <= node.last_access_time or node is root
                stack.append(child)
            if node is root:
                continue
            num_nodes += 1
            assert node.lock_ref >= 0, f"{node!r} has a negative lock count"
            assert node.value.dtype == torch.int64 and node.value.dim() == 1
            assert len(node.key) == node.value.numel(), f"{node!r}: key and value lengths differ"
            slots = node.value.tolist()
            assert seen_slots.isdisjoint(slots), f"a slot of {node!r} is cached twice"
            assert len(set(slots)) == len(slots), f"a slot of {node!r} is cached twice"
            seen_slots.update(slots)
            sizes[node.lock_ref > 0] += len(node.key)
            if not node.children:
                leaves.add(node)
        assert sizes == [self._evictable_size, self._protected_size], (
            f"sizes walked {sizes} != counted {[self._evictable_size, self._protected_size]}"
        )
        assert leaves == self._leaves, "leaf set out of date"
        assert num_nodes == self._num_nodes, f"walked {num_nodes} nodes, counted {self._num_nodes}"

    # ---- helpers for tests, metrics and debugging ---------------------------------------------

    @property
    def num_nodes(self) -> int:
        """Nodes in the tree, not counting the root."""
        return self._num_nodes

    def all_cached_slots(self) -> set[int]:
        return {s for node in self._iter_nodes() for s in node.value.tolist()}

    def pretty(self) -> str:
        lines = [
            f"root lock_ref={self._root.lock_ref} "
            f"evictable={self._evictable_size} protected={self._protected_size}"
        ]
        stack = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            if node is not self._root:
                lines.append(
                    f"{'  ' * depth}{node.key} slots={node.value.tolist()} "
                    f"lock_ref={node.lock_ref} t={node.last_access_time}"
                )
            children = sorted(node.children.values(), key=lambda n: n.key[0], reverse=True)
            stack.extend((child, depth + 1) for child in children)
        return "\n".join(lines)

    # ---- tree surgery -------------------------------------------------------------------------

    def _descend(self, ids: list[int]) -> tuple[TreeNode, int, list[torch.Tensor]]:
        """Walk the longest cached prefix of `ids`, splitting the last node so the walk ends on a
        node boundary, and stamp the path as used now. Returns (end node, prefix length, values)."""
        self._clock += 1
        node, pos, values = self._root, 0, []
        while pos < len(ids):
            child = node.children.get(ids[pos])
            if child is None:
                break
            n = _common_prefix_len(child.key, ids, pos)
            if n < len(child.key):
                # The walk then stops by itself: the lower half does not start with ids[pos + n].
                child = self._split(child, n)
            child.last_access_time = self._clock
            values.append(child.value)
            node, pos = child, pos + n
        return node, pos, values

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut `child` after its first n tokens; returns the new upper node (same locks and time)."""
        upper = TreeNode(child.key[:n], child.value[:n], child.parent, next(self._node_ids))
        upper.lock_ref = child.lock_ref
        upper.last_access_time = child.last_access_time
        upper.children[child.key[n]] = child
        child.parent.children[child.key[0]] = upper
        child.key, child.value, child.parent = child.key[n:], child.value[n:], upper
        self._num_nodes += 1
        return upper

    def _add_leaf(self, parent: TreeNode, key: list[int], value: torch.Tensor) -> TreeNode:
        leaf = TreeNode(key, value, parent, next(self._node_ids))
        leaf.last_access_time = self._clock
        parent.children[key[0]] = leaf
        self._leaves.discard(parent)
        self._leaves.add(leaf)
        self._evictable_size += len(key)
        self._num_nodes += 1
        return leaf

    def _remove_leaf(self, node: TreeNode) -> TreeNode:
        """Detach an unlocked leaf (its slots are the caller's to free); returns its parent."""
        parent = node.parent
        del parent.children[node.key[0]]
        self._leaves.discard(node)
        if parent is not self._root and not parent.children:
            self._leaves.add(parent)
        self._evictable_size -= len(node.key)
        self._num_nodes -= 1
        node.parent = None
        return parent

    def _iter_nodes(self) -> Iterator[TreeNode]:
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())


def create_prefix_cache(allocator: TokenSlotAllocator, disable_radix_cache: bool) -> BasePrefixCache:
    """The scheduler's one entry point: the radix tree, or the no-cache baseline for A/B runs."""
    return NoPrefixCache(allocator) if disable_radix_cache else RadixCache(allocator)
