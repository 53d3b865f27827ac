"""The vocabulary as a byte trie, laid out level by level for vectorised walks.

A grammar state decides a token by walking its bytes; tokens that share a prefix share the walk.
Nodes are numbered level-major (all 1-byte prefixes, then all 2-byte prefixes, ...) and, within a
level, in lexicographic order, so that the descendants of any first byte form one contiguous range
per level. The token index walks a whole level with one numpy gather, and skips the ranges of
first bytes that a state cannot read.

    level j nodes:   ids level_offsets[j-1] .. level_offsets[j]-1   (j = 1 .. max_len)
    node_parent[n]:  id of the node one byte shorter (-1 on level 1)
    node_parent_local[n]: the same, counted from the start of the parent's level (int32)
    node_byte[n]:    the last byte of the node's prefix
    token_node[k]:   the node whose prefix is the k-th token (tokens in lexicographic order)
    node_token[n]:   the token whose bytes are node n's prefix, or -1
    child_start[n] .. child_end[n]: ids of node n's children (contiguous: siblings sort together)
    first_ranges[j-1, b] .. first_ranges[j-1, b+1]: level-j nodes whose prefix starts with byte b
    token_first_ranges[b] .. token_first_ranges[b+1]: tokens that start with byte b
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class VocabTrie:
    level_offsets: np.ndarray  # [max_len + 1] int64; level j occupies [offsets[j-1], offsets[j])
    node_parent: np.ndarray  # [num_nodes] int64
    node_parent_local: np.ndarray  # [num_nodes] int32
    node_byte: np.ndarray  # [num_nodes] uint8
    token_node: np.ndarray  # [num_tokens] int64
    node_token: np.ndarray  # [num_nodes] int64
    child_start: np.ndarray  # [num_nodes] int64
    child_end: np.ndarray  # [num_nodes] int64
    first_ranges: np.ndarray  # [max_len, 257] int64, global node ids
    token_first_ranges: np.ndarray  # [257] int64, token positions

    @property
    def num_nodes(self) -> int:
        return int(self.level_offsets[-1])

    @property
    def max_len(self) -> int:
        return len(self.level_offsets) - 1


def build_trie(tokens: Sequence[bytes]) -> VocabTrie:
    """Trie of `tokens`, which must be non-empty byte strings sorted lexicographically."""
    n = len(tokens)
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=n)
    max_len = int(lengths.max()) if n else 0
    padded = np.zeros((n, max_len), dtype=np.uint8)
    for k, t in enumerate(tokens):
        padded[k, : len(t)] = np.frombuffer(t, dtype=np.uint8)
    # lcp[k]: length of the common prefix of tokens k-1 and k. In sorted order the j-byte prefix of
    # token k already has a node iff token k-1 shares it, so token k creates levels lcp[k]+1 .. len.
    lcp = np.zeros(n, dtype=np.int64)
    if n > 1:
        differ = padded[1:] != padded[:-1]
        first_diff = np.where(differ.any(axis=1), differ.argmax(axis=1), max_len)
        lcp[1:] = np.minimum(first_diff, np.minimum(lengths[1:], lengths[:-1]))

    offsets = np.zeros(max_len + 1, dtype=np.int64)
    parents, bytes_, ranges = [], [], np.zeros((max_len, 257), dtype=np.int64)
    token_node = np.zeros(n, dtype=np.int64)
    prev_current = None  # current node (local id) at level j-1 for each token
    for j in range(1, max_len + 1):
        creates = (lcp < j) & (lengths >= j)
        current = np.cumsum(creates) - 1  # node of token k's j-prefix (valid where lengths >= j)
        creators = np.flatnonzero(creates)
        offsets[j] = offsets[j - 1] + len(creators)
        bytes_.append(padded[creators, j - 1])
        if j == 1:
            parents.append(np.full(len(creators), -1, dtype=np.int64))
        else:
            parents.append(prev_current[creators] + offsets[j - 2])
        first = padded[creators, 0]
        ranges[j - 1] = np.searchsorted(first, np.arange(257), side="left") + offsets[j - 1]
        ends = lengths == j
        token_node[ends] = current[ends] + offsets[j - 1]
        prev_current = current
    node_parent = np.concatenate(parents) if parents else np.zeros(0, dtype=np.int64)
    levels = np.repeat(np.arange(max_len), np.diff(offsets))  # 0-based level of each node
    parent_level_start = offsets[np.maximum(levels - 1, 0)]
    node_token = np.full(len(node_parent), -1, dtype=np.int64)
    node_token[token_node] = np.arange(n)
    ids = np.arange(len(node_parent))  # node_parent is nondecreasing: level-major, lexicographic
    return VocabTrie(
        level_offsets=offsets,
        node_parent=node_parent,
        node_parent_local=np.where(node_parent >= 0, node_parent - parent_level_start, -1).astype(np.int32),
        node_byte=np.concatenate(bytes_) if bytes_ else np.zeros(0, dtype=np.uint8),
        token_node=token_node,
        node_token=node_token,
        child_start=np.searchsorted(node_parent, ids, side="left"),
        child_end=np.searchsorted(node_parent, ids, side="right"),
        first_ranges=ranges,
        token_first_ranges=np.searchsorted(padded[:, 0] if n else np.zeros(0, np.uint8), np.arange(257)),
    )
