"""CharDFA minimisation: merge states that accept the same futures.

Smaller automata mean fewer masks to compute (token_index.py) and to store. Two stages, both
vectorised over an interval table (one column per group of code points that every state treats
alike): merge states with identical rows until nothing changes, then run Moore's partition
refinement on what is left, unless it needs too many rounds.
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

from runtime.constrained.regex_dfa import CharDFA, merge_adjacent

MAX_MINIMISE_CELLS = 20_000_000
MAX_MOORE_ROUNDS = 120  # Moore needs about as many rounds as the longest chain; past this, skip it


def minimise(dfa: CharDFA) -> CharDFA:
    """Merge equivalent states; state 0 stays the start state.

    First states with identical rows (a loop to oneself counting as equal) are merged until nothing
    changes (few rounds; this removes most duplicates the subset construction makes). Then Moore's
    partition refinement makes it minimal, unless it needs more than MAX_MOORE_ROUNDS rounds (long
    chains from counted repetitions, which are near-minimal already). Each round is one vectorised
    pass over the interval table."""
    points = sorted({p for edges in dfa.edges for lo, hi, _ in edges for p in (lo, hi + 1)})
    if len(points) < 2 or dfa.num_states * len(points) > MAX_MINIMISE_CELLS:
        return dfa
    table = np.full((dfa.num_states, len(points) - 1), -1, dtype=np.int64)
    for s, edges in enumerate(dfa.edges):
        for lo, hi, t in edges:
            table[s, bisect_left(points, lo) : bisect_left(points, hi + 1)] = t
    table = np.unique(table, axis=1)  # equivalent columns (same target everywhere) read alike
    final = np.zeros(dfa.num_states, dtype=np.int64)
    final[list(dfa.finals)] = 1
    weights = np.random.default_rng(0).integers(1, 2**62, size=table.shape[1] + 1, dtype=np.int64)
    classes = _fixpoint(np.arange(dfa.num_states), final, table, weights)  # merge identical rows
    _, reps = np.unique(classes, return_index=True)
    merged = np.where(table[reps] < 0, -1, classes[np.maximum(table[reps], 0)])
    moore = _fixpoint(final[reps], final[reps], merged, weights, max_rounds=MAX_MOORE_ROUNDS)
    return _quotient(dfa, classes if moore is None else moore[classes])


def _fixpoint(classes, final, table, weights, max_rounds=None):
    """Iterate class := (final or class, successor classes) until the number of classes is stable.

    From the identity partition (max_rounds None) it merges states with identical rows, a move
    into one's own class reading "self" so that looping states can merge. From {final, non-final}
    with max_rounds it is Moore's refinement, which splits; None if it did not settle in time."""
    for _ in range(max_rounds or 1 << 30):
        moved = np.where(table < 0, -1, classes[np.maximum(table, 0)])
        if max_rounds is None:
            moved[moved == classes[:, None]] = -2
        nxt = _refine(final if max_rounds is None else classes, moved, weights)
        if nxt.max() == classes.max():
            return nxt
        classes = nxt
    return None


def _quotient(dfa: CharDFA, classes) -> CharDFA:
    first_of = {}
    for s in range(dfa.num_states):  # representatives in first-seen order: state 0's class stays 0
        first_of.setdefault(int(classes[s]), s)
    order = sorted(first_of.values())
    new_id = {int(classes[s]): i for i, s in enumerate(order)}
    edges = tuple(merge_adjacent([(lo, hi, new_id[int(classes[t])]) for lo, hi, t in dfa.edges[s]]) for s in order)
    return CharDFA(edges, frozenset(new_id[int(classes[s])] for s in dfa.finals))


def _refine(classes, moved, weights):
    """One Moore round: states stay together iff same class and same successor classes. Rows are
    hashed to 1-D keys (fast); a hash collision is detected and the round redone exactly."""
    rows = np.column_stack([classes, moved])  # [S, K+1]
    keys = rows @ weights  # int64, wraps around: a hash of the row
    _, first, refined = np.unique(keys, return_index=True, return_inverse=True)
    refined = refined.reshape(-1)
    if not (rows == rows[first[refined]]).all():
        _, refined = np.unique(rows, axis=0, return_inverse=True)
    return refined.reshape(-1)
