"""ByteDFA × vocabulary → token index: for every DFA state, the packed mask of tokens that keep a
full match possible.

A token is allowed in state s iff walking its bytes from s never hits DEAD (the ByteDFA keeps live
states only, so "not dead" means "a match can still be completed"). EOS is allowed iff s accepts.

The walk is vectorised over the vocabulary trie (trie.py) and over a batch of states at once: one
numpy gather per trie level, restricted to live branches for states that read few first bytes.
Masks are computed eagerly here, in the compile worker, which makes the per-step mask a row copy;
identical rows are stored once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.constrained.byte_dfa import DEAD, ByteDFA
from runtime.constrained.vocabulary import TokenVocabulary

MAX_MASK_BYTES = 512 * 2**20  # distinct mask rows kept per grammar
MAX_TOKEN_STATES = 50_000
_BATCH_NODE_BUDGET = 8_000_000  # states x trie nodes walked at once (bounds temporary memory)
_NARROW_BATCH = 256
_SPARSE_PAIRS = 64


@dataclass(frozen=True)
class TokenIndex:
    """The mask row of every state of `dfa`."""

    dfa: ByteDFA
    state_rows: np.ndarray  # [dfa.num_states] int32: row of `masks`
    masks: np.ndarray  # [num_rows, num_words] int32; bit j of word i <-> token 32*i + j allowed
    can_continue: np.ndarray  # [dfa.num_states] bool: some text token is allowed


def build_token_index(dfa: ByteDFA, vocab: TokenVocabulary) -> TokenIndex:
    """Walk the vocabulary from every DFA state (ValueError if the grammar is too big).

    Every state gets a mask, not only those reachable at a token boundary: with byte-level
    vocabularies (every single byte is a token) they all are, and walking all states at once lets
    states that read similar bytes share batches instead of one batch per breadth-first wave."""
    _check_size(dfa.num_states, 0, vocab.num_words)
    walker = _Walker(dfa, vocab)
    state_rows = np.full(dfa.num_states, -1, dtype=np.int32)
    can_continue = np.zeros(dfa.num_states, dtype=bool)
    rows: list[np.ndarray] = []
    row_of_mask: dict[bytes, int] = {}
    for states, wide in walker.batches(np.arange(dfa.num_states)):
        packed, alive = walker.walk(states, wide)
        for k, s in enumerate(states.tolist()):
            key = packed[k].tobytes()
            if key not in row_of_mask:
                row_of_mask[key] = len(rows)
                rows.append(packed[k])
            state_rows[s] = row_of_mask[key]
            can_continue[s] = alive[k]
        _check_size(dfa.num_states, len(rows), vocab.num_words)
    masks = np.stack(rows) if rows else np.zeros((0, vocab.num_words), dtype=np.int32)
    return TokenIndex(dfa, state_rows, masks, can_continue)


def _check_size(num_states: int, num_rows: int, num_words: int) -> None:
    if num_states > MAX_TOKEN_STATES or num_rows * num_words * 4 > MAX_MASK_BYTES:
        raise ValueError(
            f"grammar too large for this vocabulary: more than {min(num_states, MAX_TOKEN_STATES)} token-level "
            "states (loosen counted repetitions such as maxLength / {n,m})"
        )


class _Walker:
    """Vectorised walks of the vocabulary trie from batches of DFA states.

    Narrow states (few first bytes readable, e.g. "expecting a quote") walk only the branches that
    stay alive, found through parent lookups. Wide states (inside a string: almost every token can
    follow) walk every level whole: contiguous gathers, no lookups, about 1 ms per 100k tokens.
    """

    def __init__(self, dfa: ByteDFA, vocab: TokenVocabulary) -> None:
        self.dfa, self.vocab, self.trie = dfa, vocab, vocab.trie
        self.sink = dfa.num_states  # DEAD is remapped to an absorbing row so gathers need no branch
        table = np.where(dfa.transitions == DEAD, self.sink, dfa.transitions).astype(np.int32)
        self.flat_table = np.vstack([table, np.full((1, 256), self.sink, dtype=np.int32)]).reshape(-1)
        self.readable = dfa.transitions != DEAD  # [S, 256]
        self.tokens_per_byte = np.diff(self.trie.token_first_ranges)  # [256]
        self.node_byte = self.trie.node_byte.astype(np.int32)

    def batches(self, states: np.ndarray):
        """(states, is_wide) groups: narrow states together, wide ones in memory-bounded batches."""
        cost = self.readable[states] @ self.tokens_per_byte  # tokens whose first byte is readable
        narrow = cost <= max(1, len(self.vocab.text_ids) // 8)
        for i in range(0, int(narrow.sum()), _NARROW_BATCH):
            yield states[narrow][i : i + _NARROW_BATCH], False
        wide = states[~narrow]
        per_batch = max(1, _BATCH_NODE_BUDGET // max(1, self.trie.num_nodes))
        for i in range(0, len(wide), per_batch):
            yield wide[i : i + per_batch], True

    def walk(self, states: np.ndarray, wide: bool):
        """packed [B, num_words] int32 masks and alive [B] (some text token is allowed)."""
        bits = np.zeros((len(states), self.vocab.num_words * 32), dtype=bool)
        if wide:
            allowed = self._walk_all(states).take(self.trie.token_node, axis=1) != self.sink  # [B, N]
            bits[:, self.vocab.text_ids] = allowed
            alive = allowed.any(axis=1)
        else:
            rows, tokens = self._walk_live(states)
            bits[rows, self.vocab.text_ids[tokens]] = True
            alive = np.bincount(rows, minlength=len(states)) > 0
        finals = self.dfa.finals[states]
        for eos in self.vocab.eos_token_ids:
            bits[:, eos] = finals
        return np.packbits(bits, axis=1, bitorder="little").view("<i4"), alive

    def _walk_all(self, states: np.ndarray) -> np.ndarray:
        """State after every trie node, per start state: [B, num_nodes] int32 (sink where dead)."""
        trie, offsets = self.trie, self.trie.level_offsets
        out = np.full((len(states), trie.num_nodes), self.sink, dtype=np.int32)
        start, end = offsets[0], offsets[1]
        index = states[:, None].astype(np.int32) * 256 + self.node_byte[start:end]
        out[:, start:end] = self.flat_table.take(index)
        for level in range(2, trie.max_len + 1):
            previous = out[:, offsets[level - 2] : offsets[level - 1]]
            if (previous == self.sink).all():
                break
            start, end = offsets[level - 1], offsets[level]
            index = previous.take(trie.node_parent_local[start:end], axis=1)
            index *= 256
            index += self.node_byte[start:end]
            out[:, start:end] = self.flat_table.take(index)
        return out

    def _walk_live(self, states: np.ndarray):
        """(rows, token positions) of the allowed tokens, walking only live (row, node) pairs.

        Children of a node are a contiguous id range, so expanding a level of pairs is a repeat +
        arange. Once few pairs are left (the long tail of long tokens), a plain depth-first walk
        finishes faster than more numpy rounds."""
        trie, table, sink = self.trie, self.flat_table, self.sink
        level1 = np.arange(trie.level_offsets[1])
        rows, nodes = np.nonzero(self.readable[states][:, self.node_byte[level1]])
        reached = table.take(states[rows].astype(np.int32) * 256 + self.node_byte[nodes])
        found_rows, found_tokens = [], []
        while len(nodes):
            alive = reached != sink
            rows, nodes, reached = rows[alive], nodes[alive], reached[alive]
            tokens = trie.node_token[nodes]
            found_rows.append(rows[tokens >= 0])
            found_tokens.append(tokens[tokens >= 0])
            if len(nodes) <= _SPARSE_PAIRS:
                tail = self._walk_sparse(rows.tolist(), nodes.tolist(), reached.tolist())
                found_rows.append(np.array([r for r, _ in tail], dtype=np.int64))
                found_tokens.append(np.array([t for _, t in tail], dtype=np.int64))
                break
            starts, counts = trie.child_start[nodes], trie.child_end[nodes] - trie.child_start[nodes]
            parent = np.repeat(np.arange(len(nodes)), counts)
            nodes = np.arange(len(parent)) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
            rows = rows[parent]
            reached = table.take(reached[parent] * 256 + self.node_byte[nodes])
        if not found_rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(found_rows), np.concatenate(found_tokens)

    def _walk_sparse(self, rows: list, nodes: list, reached: list) -> list:
        """(row, token position) of every allowed token below the given live (row, node, state)."""
        trie, table, sink, out = self.trie, self.flat_table, self.sink, []
        child_start, child_end, node_byte, node_token = trie.child_start, trie.child_end, self.node_byte, trie.node_token
        stack = list(zip(rows, nodes, reached))
        while stack:
            row, node, state = stack.pop()
            for child in range(int(child_start[node]), int(child_end[node])):
                nxt = int(table[state * 256 + int(node_byte[child])])
                if nxt != sink:
                    if node_token[child] >= 0:
                        out.append((row, int(node_token[child])))
                    stack.append((row, child, nxt))
        return out


def _select_ranges(ranges: np.ndarray, first_bytes: np.ndarray) -> np.ndarray:
    """Indices ranges[b] .. ranges[b+1]-1 for every b in first_bytes (ranges: [257] boundaries)."""
    starts, ends = ranges[first_bytes], ranges[first_bytes + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    if total == ranges[-1] - ranges[0]:
        return np.arange(ranges[0], ranges[-1])
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total)
