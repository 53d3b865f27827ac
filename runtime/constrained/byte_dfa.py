"""Regex → byte-level DFA: the minimal character DFA (regex_dfa.py) spelled in UTF-8 bytes.

Tokens are byte strings and may split a character, so the token index walks bytes. Each interval
transition of the character DFA becomes a small tree of byte transitions: ASCII in one step,
multi-byte characters through intermediate states that accept only valid UTF-8 continuations
(no overlong forms, no surrogates). Whole blocks of code points with one target share a chain of
continuation states, so a negated class such as `[^"\\]` costs a handful of states, not one per
code point.

Only *live* states are kept (states from which an accepting state is reachable), so a byte with a
transition always keeps a full match possible: the token index relies on that.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Optional

import numpy as np

from runtime.constrained.minimise import minimise
from runtime.constrained.regex_dfa import CharDFA, regex_to_char_dfa

DEAD = -1


@dataclass(frozen=True)
class ByteDFA:
    """A deterministic automaton over bytes. `transitions[s, b]` is the next state or DEAD (-1).

    States `0 .. num_char_states-1` sit between whole characters; the rest are inside a multi-byte
    character. `finals[s]` marks accepting states (always character boundaries).
    """

    transitions: np.ndarray  # [num_states, 256] int32
    finals: np.ndarray  # [num_states] bool
    initial: int
    num_char_states: int

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    def walk(self, state: int, data: bytes) -> int:
        """State after reading `data` from `state` (DEAD if the data cannot continue a match)."""
        table = self.transitions
        for b in data:
            state = int(table[state, b])
            if state == DEAD:
                return DEAD
        return state

    def forced_bytes(self, state: int, limit: int = 4096) -> bytes:
        """Bytes every match must read next from `state`: stops where a choice (or the end) is possible."""
        out = bytearray()
        while len(out) < limit and not self.finals[state]:
            live = np.flatnonzero(self.transitions[state] != DEAD)
            if len(live) != 1:
                break
            out.append(int(live[0]))
            state = int(self.transitions[state, live[0]])
        return bytes(out)


def regex_to_byte_dfa(pattern: str) -> ByteDFA:
    """Compile a regex (Python syntax, whole match; see regex_dfa.py) to a ByteDFA.

    Raises ValueError for bad syntax, unsupported features, or a pattern that matches nothing.
    """
    return spell_utf8(minimise(regex_to_char_dfa(pattern)))


def spell_utf8(dfa: CharDFA) -> ByteDFA:
    """The byte automaton reading the UTF-8 encodings of what `dfa` reads (states 0.. are dfa's)."""
    return _Speller(dfa).build()


class _Speller:
    """Spell interval-labelled character transitions as byte transitions, one CharDFA state at a time.

    A prefix of a multi-byte character covers a contiguous block of code points. If one edge covers
    the whole block, the remaining bytes go through a shared chain of continuation states; if no
    edge touches it, there is no transition; otherwise an intermediate state splits it by the next
    byte. Blocks are clipped to valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF).
    """

    def __init__(self, dfa: CharDFA) -> None:
        self.dfa = dfa
        self.rows: list[list[int]] = [[DEAD] * 256 for _ in range(dfa.num_states)]
        self.chains: dict[tuple[int, int, int, int], int] = {}

    def build(self) -> ByteDFA:
        for state, edges in enumerate(self.dfa.edges):
            self._spell_state(self.rows[state], edges)
        finals = np.zeros(len(self.rows), dtype=bool)
        finals[list(self.dfa.finals)] = True
        return ByteDFA(np.array(self.rows, dtype=np.int32).reshape(-1, 256), finals, 0, self.dfa.num_states)

    def _spell_state(self, row: list, edges: tuple) -> None:
        los = [lo for lo, _, _ in edges]
        for lo, hi, target in edges:
            for code in range(lo, min(hi, 0x7F) + 1):
                row[code] = target
        for lead, (lo, hi, remaining) in _LEAD_BLOCKS.items():
            self._node(row, lead, lo, hi, remaining, edges, los)

    def _node(self, row: list, byte: int, lo: int, hi: int, remaining: int, edges: tuple, los: list) -> None:
        target = _uniform_target(edges, los, lo, hi)
        if target is None:
            return
        shift = 6 * (remaining - 1)
        first = 0x80 + ((lo >> shift) & 0x3F) if remaining else 0
        last = 0x80 + ((hi >> shift) & 0x3F) if remaining else 0
        if target >= 0:
            row[byte] = target if remaining == 0 else self._chain(target, remaining, first, last)
            return
        state = len(self.rows)
        self.rows.append([DEAD] * 256)
        row[byte] = state
        base = lo & ~((1 << (6 * remaining)) - 1)
        for cont in range(first, last + 1):
            child = base | ((cont - 0x80) << shift)
            self._node(self.rows[state], cont, max(lo, child), min(hi, child + (1 << shift) - 1), remaining - 1, edges, los)

    def _chain(self, target: int, remaining: int, first: int, last: int) -> int:
        """A state that reads `remaining` continuation bytes (the first in first..last), then target."""
        key = (target, remaining, first, last)
        if key not in self.chains:
            state = len(self.rows)
            self.rows.append([DEAD] * 256)
            self.chains[key] = state
            nxt = target if remaining == 1 else self._chain(target, remaining - 1, 0x80, 0xBF)
            self.rows[state][first : last + 1] = [nxt] * (last - first + 1)
        return self.chains[key]


def _uniform_target(edges: tuple, los: list, lo: int, hi: int) -> Optional[int]:
    """The target if one edge covers all of lo..hi, None if no edge touches it, -1 if mixed."""
    k = bisect_right(los, hi) - 1
    if k < 0 or edges[k][1] < lo:
        return None
    if edges[k][0] <= lo:
        return edges[k][2]
    return -1


def _lead_blocks() -> dict[int, tuple[int, int, int]]:
    """lead byte -> (first code point, last code point, continuation bytes), valid UTF-8 only."""
    blocks = {}
    for lead in range(0xC2, 0xE0):
        blocks[lead] = ((lead & 0x1F) << 6, ((lead & 0x1F) << 6) | 0x3F, 1)
    for lead in range(0xE0, 0xF0):
        lo, hi = (lead & 0x0F) << 12, ((lead & 0x0F) << 12) | 0xFFF
        blocks[lead] = (max(lo, 0x800), min(hi, 0xD7FF) if lead == 0xED else hi, 2)
    for lead in range(0xF0, 0xF5):
        lo, hi = (lead & 0x07) << 18, ((lead & 0x07) << 18) | 0x3FFFF
        blocks[lead] = (max(lo, 0x10000), min(hi, 0x10FFFF), 3)
    return blocks


_LEAD_BLOCKS = _lead_blocks()
