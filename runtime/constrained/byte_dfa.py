"""Regex → byte-level DFA: interegular builds the character automaton, we spell it in UTF-8 bytes.

Tokens are byte strings and may split a character, so the token index walks bytes. Each character
transition of interegular's FSM becomes a small tree of byte transitions: ASCII in one step,
multi-byte characters through intermediate states that accept only valid UTF-8 continuations
(no overlong forms, no surrogates). Characters that behave like "anything else" share one chain of
continuation states per target, so a negated class such as `[^"\\]` costs a handful of states, not
one per code point.

Only *live* states are kept (states from which an accepting state is reachable), so a byte with a
transition always keeps a full match possible: the token index relies on that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

DEAD = -1
# Valid second bytes after the lead bytes whose range is narrower than 80-BF (RFC 3629).
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}
_LEAD_BYTES = list(range(0x00, 0x80)) + list(range(0xC2, 0xF5))


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
    """Compile a (normalised, see spec.py) regex to a ByteDFA matching whole UTF-8 strings.

    Raises ValueError when interegular cannot parse the pattern or nothing can match it.
    """
    fsm = _char_fsm(pattern)
    return _ByteSpeller(fsm).build()


def _char_fsm(pattern: str):
    import interegular

    try:
        fsm = interegular.parse_pattern(pattern).to_fsm()
        return fsm.reduce()
    except Exception as exc:  # noqa: BLE001 - interegular raises bare Exceptions for bad input
        raise ValueError(f"unsupported or invalid regex: {type(exc).__name__}: {exc}") from None


class _ByteSpeller:
    """Spell a character FSM in bytes. One instance per compile; `build()` once."""

    def __init__(self, fsm) -> None:
        from interegular.fsm import anything_else

        self.fsm = fsm
        mapping = fsm.alphabet._symbol_mapping  # char (or anything_else) -> transition key
        self.else_key = mapping.get(anything_else)
        self.explicit = [(c, k) for c, k in mapping.items() if c is not anything_else]
        live = _live_states(fsm)
        if fsm.initial not in live:
            raise ValueError("the regex matches nothing")
        order = [fsm.initial] + sorted((s for s in live if s != fsm.initial), key=repr)
        self.index = {s: i for i, s in enumerate(order)}
        self.order = order
        self.rows: list[np.ndarray] = [np.full(256, DEAD, dtype=np.int32) for _ in order]
        self.chains: dict[tuple[int, int, int, int], int] = {}

    def build(self) -> ByteDFA:
        for q in self.order:
            self._spell_state(q)
        finals = np.zeros(len(self.rows), dtype=bool)
        for q in self.order:
            if q in self.fsm.finals:
                finals[self.index[q]] = True
        return ByteDFA(np.stack(self.rows), finals, 0, len(self.order))

    def _target(self, q, key) -> Optional[int]:
        nxt = self.fsm.map.get(q, {}).get(key)
        return self.index.get(nxt) if nxt is not None else None

    def _spell_state(self, q) -> None:
        else_t = self._target(q, self.else_key) if self.else_key is not None else None
        # A trie of the UTF-8 encodings of the characters whose target differs from "anything else".
        trie: dict = {}
        for char, key in self.explicit:
            target = self._target(q, key)
            if target == else_t:
                continue
            try:
                encoded = char.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate in the pattern: no byte spelling
                continue
            node = trie
            for b in encoded[:-1]:
                node = node.setdefault(b, {})
            node[encoded[-1]] = target
        self._emit(self.index[q], trie, else_t, lead=None, depth=0)

    def _emit(self, state: int, node: dict, else_t: Optional[int], lead: Optional[int], depth: int) -> None:
        row = self.rows[state]
        for b in _allowed_bytes(lead, depth):
            first = b if lead is None else lead
            if b in node:
                child = node[b]
                if isinstance(child, dict):
                    row[b] = self._new_state()
                    self._emit(row[b], child, else_t, first, depth + 1)
                elif child is not None:
                    row[b] = child
            elif else_t is not None:
                remaining = _sequence_len(first) - depth - 1
                row[b] = else_t if remaining == 0 else self._chain(else_t, remaining, *_range_after(first, depth + 1))

    def _chain(self, target: int, remaining: int, lo: int, hi: int) -> int:
        """A state that reads `remaining` continuation bytes (the first in lo..hi) then goes to target."""
        key = (target, remaining, lo, hi)
        if key not in self.chains:
            state = self._new_state()
            self.chains[key] = state
            nxt = target if remaining == 1 else self._chain(target, remaining - 1, 0x80, 0xBF)
            self.rows[state][lo : hi + 1] = nxt
        return self.chains[key]

    def _new_state(self) -> int:
        self.rows.append(np.full(256, DEAD, dtype=np.int32))
        return len(self.rows) - 1


def _live_states(fsm) -> set:
    """States of the character FSM from which an accepting state can be reached."""
    reverse: dict = {}
    for src, edges in fsm.map.items():
        for dst in edges.values():
            reverse.setdefault(dst, set()).add(src)
    live, stack = set(fsm.finals), list(fsm.finals)
    while stack:
        for src in reverse.get(stack.pop(), ()):
            if src not in live:
                live.add(src)
                stack.append(src)
    reachable, stack = {fsm.initial}, [fsm.initial]
    while stack:
        for dst in fsm.map.get(stack.pop(), {}).values():
            if dst not in reachable:
                reachable.add(dst)
                stack.append(dst)
    return live & reachable


def _sequence_len(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _range_after(lead: int, depth: int) -> tuple[int, int]:
    return _SECOND_BYTE.get(lead, (0x80, 0xBF)) if depth == 1 else (0x80, 0xBF)


def _allowed_bytes(lead: Optional[int], depth: int):
    if lead is None:
        return _LEAD_BYTES
    lo, hi = _range_after(lead, depth)
    return range(lo, hi + 1)
