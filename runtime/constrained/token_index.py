"""ByteDFA × vocabulary → token index: for every state reachable at a token boundary, the packed mask
of tokens that keep a full match possible.

A token is allowed in state s iff walking its bytes from s never hits DEAD (the ByteDFA keeps live
states only, so "not dead" means "a match can still be completed"). EOS is allowed iff s accepts.

The walk is vectorised over the vocabulary trie (trie.py) and over a batch of states at once: one
numpy gather per trie level, restricted to the first bytes the batch can read. States are discovered
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
_NARROW_BYTES = 16


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
    batch = max(1, min(64, _BATCH_NODE_BUDGET // max(1, vocab.trie.num_nodes)))
    while head < len(queue):
        pending = np.array(queue[head : head + batch], dtype=np.int64)
        head += len(pending)
        # States that read few first bytes walk a sliver of the trie: keep them apart from wide ones.
        wide = (dfa.transitions[pending] != DEAD).sum(axis=1) > _NARROW_BYTES
        for states in (pending[~wide], pending[wide]):
            if len(states) == 0:
                continue
            packed, alive, ends = walker.walk(states)
            for k, s in enumerate(states):
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
    def __init__(self, dfa: ByteDFA, vocab: TokenVocabulary) -> None:
        self.dfa, self.vocab, self.trie = dfa, vocab, vocab.trie
        self.sink = dfa.num_states  # DEAD is remapped to an absorbing row so gathers need no branch
        table = np.where(dfa.transitions == DEAD, self.sink, dfa.transitions).astype(np.int32)
        self.table = np.vstack([table, np.full((1, 256), self.sink, dtype=np.int32)])
        self.num_bits = vocab.num_words * 32

    def walk(self, states: np.ndarray):
        """packed [B, num_words] int32 masks, alive [B] (any text token), ends (distinct next states)."""
        readable = np.flatnonzero((self.dfa.transitions[states] != DEAD).any(axis=0))
        node_state = self._node_states(states, readable)
        tokens = _select_ranges(self.trie.token_first_ranges, readable)  # positions in text_ids
        token_state = node_state[:, self.trie.token_node[tokens]]  # [B, n]
        allowed = token_state != self.sink
        rows, cols = np.nonzero(allowed)
        bits = np.zeros((len(states), self.num_bits), dtype=bool)
        bits[rows, self.vocab.text_ids[tokens[cols]]] = True
        finals = self.dfa.finals[states]
        for eos in self.vocab.eos_token_ids:
            bits[:, eos] = finals
        packed = np.packbits(bits, axis=1, bitorder="little").view("<i4")
        return packed, allowed.any(axis=1), np.unique(token_state[rows, cols])

    def _node_states(self, states: np.ndarray, readable: np.ndarray) -> np.ndarray:
        """State after each trie node's prefix, per start state: [B, num_nodes] (sink if dead)."""
        trie, table = self.trie, self.table
        node_state = np.full((len(states), trie.num_nodes), self.sink, dtype=np.int32)
        for level in range(1, trie.max_len + 1):
            nodes = _select_ranges(trie.first_ranges[level - 1], readable)
            if len(nodes) == 0:
                break
            if level == 1:
                parent = np.broadcast_to(states[:, None], (len(states), len(nodes)))
            else:
                parent = node_state[:, trie.node_parent[nodes]]
            reached = table[parent, trie.node_byte[nodes]]
            node_state[:, nodes] = reached
            if (reached == self.sink).all():
                break
        return node_state


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
