"""ByteDFA × vocabulary → token index: for every state reachable at a token boundary, the packed mask
of tokens that keep a full match possible.

A token is allowed in state s iff walking its bytes from s never hits DEAD (the ByteDFA keeps live
states only, so "not dead" means "a match can still be completed"). EOS is allowed iff s accepts.

The walk is vectorised over the vocabulary trie (trie.py) and over a batch of states at once: one
numpy gather per trie level, restricted to live branches for states that read few first bytes. States are discovered
breadth-first from the initial state, so only token-boundary states get a mask. Masks are computed
eagerly here, in the compile worker, which makes the per-step mask a row copy; identical rows are
stored once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.constrained.byte_dfa import DEAD, ByteDFA
from runtime.constrained.vocabulary import TokenVocabulary

MAX_MASK_BYTES = 512 * 2**20  # distinct mask rows kept per grammar
MAX_TOKEN_STATES = 50_000
_BATCH_NODE_BUDGET = 8_000_000  # states x trie nodes walked at once (bounds temporary memory)


@dataclass(frozen=True)
class TokenIndex:
    """Masks per token-boundary state of `dfa` (states not reachable at a boundary have row -1)."""

    dfa: ByteDFA
    state_rows: np.ndarray  # [dfa.num_states] int32: row of `masks` or -1
    masks: np.ndarray  # [num_rows, num_words] int32; bit j of word i <-> token 32*i + j allowed
    can_continue: np.ndarray  # [dfa.num_states] bool: some text token is allowed

    @property
    def num_token_states(self) -> int:
        return int((self.state_rows >= 0).sum())


def build_token_index(dfa: ByteDFA, vocab: TokenVocabulary) -> TokenIndex:
    """Walk the vocabulary from every state reachable at a token boundary (ValueError if too big)."""
    walker = _Walker(dfa, vocab)
    state_rows = np.full(dfa.num_states, -1, dtype=np.int32)
    can_continue = np.zeros(dfa.num_states, dtype=bool)
    rows: list[np.ndarray] = []
    row_of_mask: dict[bytes, int] = {}
    queue, seen, head = [dfa.initial], {dfa.initial}, 0
    while head < len(queue):
        pending = np.array(queue[head:], dtype=np.int64)
        head = len(queue)
        for states, wide in walker.batches(pending):
            packed, alive, ends = walker.walk(states, wide)
            for k, s in enumerate(states.tolist()):
                key = packed[k].tobytes()
                if key not in row_of_mask:
                    row_of_mask[key] = len(rows)
                    rows.append(packed[k])
                state_rows[s] = row_of_mask[key]
                can_continue[s] = alive[k]
            for s in ends.tolist():
                if s not in seen:
                    seen.add(s)
                    queue.append(s)
            _check_size(len(queue), len(rows), vocab.num_words)
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
        self.position = np.full(self.trie.num_nodes, -1, dtype=np.int64)  # scratch: node -> column
        self.node_byte = self.trie.node_byte.astype(np.int32)

    def batches(self, states: np.ndarray):
        """(states, is_wide) groups: narrow states together, wide ones in memory-bounded batches."""
        cost = self.readable[states] @ self.tokens_per_byte  # tokens whose first byte is readable
        narrow = cost <= max(1, len(self.vocab.text_ids) // 8)
        if narrow.any():
            yield states[narrow], False
        wide = states[~narrow]
        per_batch = max(1, _BATCH_NODE_BUDGET // max(1, self.trie.num_nodes))
        for i in range(0, len(wide), per_batch):
            yield wide[i : i + per_batch], True

    def walk(self, states: np.ndarray, wide: bool):
        """packed [B, num_words] int32 masks, alive [B] (any text token), ends (distinct next states)."""
        if wide:
            token_state = self._walk_all(states).take(self.trie.token_node, axis=1)  # [B, N]
            token_ids = self.vocab.text_ids
        else:
            token_state, token_ids = self._walk_live(states)
        allowed = token_state != self.sink
        bits = np.zeros((len(states), self.vocab.num_words * 32), dtype=bool)
        bits[:, token_ids] = allowed
        finals = self.dfa.finals[states]
        for eos in self.vocab.eos_token_ids:
            bits[:, eos] = finals
        packed = np.packbits(bits, axis=1, bitorder="little").view("<i4")
        seen = np.bincount(token_state[allowed], minlength=self.sink + 1)[: self.sink]
        return packed, allowed.any(axis=1), np.flatnonzero(seen)

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
        """(token_state [B, n], token ids [n]) for the tokens on branches some start state keeps alive."""
        trie, sink = self.trie, self.sink
        readable = np.flatnonzero(self.readable[states].any(axis=0))
        all_nodes, all_reached, previous = [], [], None
        for level in range(1, trie.max_len + 1):
            nodes = _select_ranges(trie.first_ranges[level - 1], readable)
            if level == 1:
                parent_state = np.broadcast_to(states[:, None], (len(states), len(nodes)))
            else:
                self.position[previous[0]] = np.arange(len(previous[0]))
                column = self.position[trie.node_parent[nodes]]
                self.position[previous[0]] = -1
                nodes, column = nodes[column >= 0], column[column >= 0]
                parent_state = previous[1][:, column]
            reached = self.flat_table.take(parent_state.astype(np.int32) * 256 + self.node_byte[nodes])
            live = (reached != sink).any(axis=0)
            nodes, reached = nodes[live], reached[:, live]
            if len(nodes) == 0:
                break
            all_nodes.append(nodes)
            all_reached.append(reached)
            previous = (nodes, reached)
        tokens = _select_ranges(trie.token_first_ranges, readable)  # positions in text_ids
        if not all_nodes:
            return np.full((len(states), 0), sink, dtype=np.int32), tokens[:0]
        nodes, reached = np.concatenate(all_nodes), np.concatenate(all_reached, axis=1)
        self.position[nodes] = np.arange(len(nodes))
        column = self.position[trie.token_node[tokens]]
        self.position[nodes] = -1
        visited = column >= 0  # tokens on pruned (dead) branches were never visited
        return reached[:, column[visited]], self.vocab.text_ids[tokens[visited]]


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
