"""Regex → character DFA whose transitions are labelled with code-point intervals.

Python's own parser (`re._parser`) reads the pattern, so the syntax is exactly Python's; we build a
Thompson NFA from its tree and determinise it with the subset construction, splitting the code-point
axis at every interval boundary the NFA mentions. Labels stay intervals (never single characters),
so `[^"\\\\]` is one edge however many code points it covers.

Semantics: the whole string must match; `\\d`, `\\w`, `\\s` are ASCII classes (a constraint for an
LLM means "0-9", not every script's digits); `.` excludes "\\n" unless (?s); (?i) folds case;
atomic groups and possessive repeats match like ordinary ones. Anchors inside the pattern,
look-arounds, back-references and conditionals raise ValueError.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

try:  # Python >= 3.11
    import re._constants as C
    import re._parser as parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as parser  # type: ignore[no-redef]

MAX_CODE_POINT = 0x10FFFF
Intervals = tuple  # ((lo, hi), ...) sorted, disjoint, not adjacent

_ASCII_CLASSES = {
    C.CATEGORY_DIGIT: ((0x30, 0x39),),
    C.CATEGORY_SPACE: ((0x09, 0x0D), (0x20, 0x20)),
    C.CATEGORY_WORD: ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
}
_NEGATED_CLASSES = {C.CATEGORY_NOT_DIGIT: C.CATEGORY_DIGIT, C.CATEGORY_NOT_SPACE: C.CATEGORY_SPACE, C.CATEGORY_NOT_WORD: C.CATEGORY_WORD}
_UNSUPPORTED = {
    C.AT: "anchors inside the pattern",
    C.GROUPREF: "back-references",
    C.GROUPREF_EXISTS: "conditional groups",
    C.ASSERT: "look-arounds",
    C.ASSERT_NOT: "look-arounds",
}


@dataclass(frozen=True)
class CharDFA:
    """edges[s]: sorted ((lo, hi, target), ...) over code points; finals: accepting states; start 0."""

    edges: tuple
    finals: frozenset

    @property
    def num_states(self) -> int:
        return len(self.edges)


def regex_to_char_dfa(pattern: str) -> CharDFA:
    """Compile `pattern` (whole-match semantics). ValueError for bad syntax or unsupported features."""
    try:
        tree = parser.parse(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None
    except RecursionError:
        raise ValueError("regex nests too deeply") from None
    nfa = _NFA()
    start, accept = nfa.build(tree, tree.state.flags)
    return _determinise(nfa, start, accept)


# ---------------------------------------------------------------------------- interval sets
def normalise(intervals) -> Intervals:
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def complement(intervals: Intervals) -> Intervals:
    out, nxt = [], 0
    for lo, hi in intervals:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return tuple(out)


def _fold_case(intervals: Intervals) -> Intervals:
    """Add the other-case forms of the characters (small ranges only: large ones rarely need it)."""
    extra = []
    for lo, hi in intervals:
        if hi - lo > 5000:
            continue
        for code in range(lo, hi + 1):
            char = chr(code)
            for other in {char.lower(), char.upper(), char.swapcase()}:
                if len(other) == 1:
                    extra.append((ord(other), ord(other)))
    return normalise(list(intervals) + extra)


# ---------------------------------------------------------------------------- Thompson NFA
class _NFA:
    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[Intervals, int]]] = []

    def state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, items, flags: int) -> tuple[int, int]:
        """Fragment (start, accept) for a sequence of parsed items."""
        start = current = self.state()
        for op, arg in items:
            first, last = self._item(op, arg, flags)
            self.eps[current].append(first)
            current = last
        return start, current

    def _item(self, op, arg, flags: int) -> tuple[int, int]:
        if op in _UNSUPPORTED:
            raise ValueError(f"regex: {_UNSUPPORTED[op]} are not supported")
        if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
            return self._charset(_charset(op, arg, flags))
        if op is C.SUBPATTERN:
            _, add, remove, items = arg
            return self.build(items, (flags | add) & ~remove)
        if op is C.ATOMIC_GROUP:
            return self.build(arg, flags)
        if op is C.BRANCH:
            start, accept = self.state(), self.state()
            for items in arg[1]:
                first, last = self.build(items, flags)
                self.eps[start].append(first)
                self.eps[last].append(accept)
            return start, accept
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", C.MAX_REPEAT)):
            return self._repeat(*arg, flags)
        raise ValueError(f"regex: unsupported construct {op}")

    def _charset(self, intervals: Intervals) -> tuple[int, int]:
        start, accept = self.state(), self.state()
        if intervals:
            self.edges[start].append((intervals, accept))
        return start, accept

    def _repeat(self, low: int, high, items, flags: int) -> tuple[int, int]:
        start = current = self.state()
        for _ in range(low):
            first, last = self.build(items, flags)
            self.eps[current].append(first)
            current = last
        if high is C.MAXREPEAT or high == C.MAXREPEAT:
            first, last = self.build(items, flags)
            self.eps[current].append(first)
            self.eps[last].append(current)  # loop back: zero or more further copies
            return start, current
        end = self.state()
        for _ in range(high - low):
            self.eps[current].append(end)
            first, last = self.build(items, flags)
            self.eps[current].append(first)
            current = last
        self.eps[current].append(end)
        return start, end


def _charset(op, arg, flags: int) -> Intervals:
    if op is C.ANY:
        allowed = ((0, MAX_CODE_POINT),) if flags & re.DOTALL else complement(((0x0A, 0x0A),))
        return allowed
    if op in (C.LITERAL, C.NOT_LITERAL):
        single = ((arg, arg),)
        if flags & re.IGNORECASE:
            single = _fold_case(single)
        return single if op is C.LITERAL else complement(single)
    negate, parts = False, []
    for kind, value in arg:
        if kind is C.NEGATE:
            negate = True
        elif kind is C.LITERAL:
            parts.append((value, value))
        elif kind is C.RANGE:
            parts.append(value)
        elif kind is C.CATEGORY:
            base = _NEGATED_CLASSES.get(value, value)
            if base not in _ASCII_CLASSES:
                raise ValueError(f"regex: character class {value} is not supported")
            cls = _ASCII_CLASSES[base]
            parts.extend(complement(cls) if value in _NEGATED_CLASSES else cls)
        else:
            raise ValueError(f"regex: unsupported class item {kind}")
    intervals = normalise(parts)
    if flags & re.IGNORECASE:
        intervals = _fold_case(intervals)
    return complement(intervals) if negate else intervals


# ---------------------------------------------------------------------------- subset construction
def _determinise(nfa: _NFA, start: int, accept: int) -> CharDFA:
    closures: dict[frozenset, frozenset] = {}

    def closure(states) -> frozenset:
        key = frozenset(states)
        if key not in closures:
            seen, stack = set(key), list(key)
            while stack:
                for nxt in nfa.eps[stack.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
            closures[key] = frozenset(seen)
        return closures[key]

    first = closure([start])
    ids, order, edges = {first: 0}, [first], []
    for subset in order:  # grows while iterating
        out = []
        for lo, hi, targets in _split(nfa, subset):
            target = closure(targets)
            if target not in ids:
                ids[target] = len(order)
                order.append(target)
            out.append((lo, hi, ids[target]))
        edges.append(merge_adjacent(out))
    finals = frozenset(i for i, subset in enumerate(order) if accept in subset)
    return _prune(CharDFA(tuple(edges), finals))


def _split(nfa: _NFA, subset: frozenset):
    """Elementary intervals of the subset's outgoing edges, each with its set of NFA targets."""
    labelled = [(intervals, t) for s in subset for intervals, t in nfa.edges[s]]
    if not labelled:
        return []
    points = sorted({p for intervals, _ in labelled for lo, hi in intervals for p in (lo, hi + 1)})
    targets: list[set] = [set() for _ in points]
    for intervals, t in labelled:
        for lo, hi in intervals:
            for k in range(bisect_left(points, lo), bisect_right(points, hi)):
                targets[k].add(t)
    return [(points[k], points[k + 1] - 1, targets[k]) for k in range(len(points) - 1) if targets[k]]


def merge_adjacent(edges: list) -> tuple:
    out: list[list[int]] = []
    for lo, hi, target in edges:
        if out and out[-1][2] == target and out[-1][1] + 1 == lo:
            out[-1][1] = hi
        else:
            out.append([lo, hi, target])
    return tuple(tuple(e) for e in out)


def _prune(dfa: CharDFA) -> CharDFA:
    """Drop states that cannot reach an accepting state (and edges into them); renumber."""
    reverse: dict[int, set] = {}
    for s, edges in enumerate(dfa.edges):
        for _, _, t in edges:
            reverse.setdefault(t, set()).add(s)
    live, stack = set(dfa.finals), list(dfa.finals)
    while stack:
        for s in reverse.get(stack.pop(), ()):
            if s not in live:
                live.add(s)
                stack.append(s)
    if 0 not in live:
        raise ValueError("the regex matches nothing")
    keep = [s for s in range(dfa.num_states) if s in live]
    new = {s: i for i, s in enumerate(keep)}
    edges = tuple(tuple((lo, hi, new[t]) for lo, hi, t in dfa.edges[s] if t in new) for s in keep)
    return CharDFA(edges, frozenset(new[s] for s in dfa.finals if s in new))
