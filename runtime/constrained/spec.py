"""A constraint spec (regex / JSON schema / choices) → one regex in the dialect our FSM builder reads.

This is the boundary where untrusted specs are checked, so every refusal is a ValueError that says
what to change. Besides syntax, it refuses inputs known to explode automaton construction, before
any work is done: over-long patterns, huge counted repetitions (`a{1000000}`), and nestings of counts
whose expansion is too large (`((a{100}){100}){100}`). The compile worker's timeout and memory cap
(cache.py) catch whatever slips through.

The dialect is Python's `re` (parsed by Python itself, regex_dfa.py), whole-match (no anchors
needed). We also accept common spellings from other engines (`\\x{...}`, `(?<name>`, a leading `^` /
trailing `$`) and refuse, with a reason, what a token-level DFA cannot express (look-arounds,
back-references, `\\b`, `\\p{..}` classes).
"""

from __future__ import annotations

import re
from typing import Any, Optional

KINDS = ("regex", "json_schema", "choices")
MAX_REGEX_CHARS = 200_000
MAX_REPEAT = 1_000  # largest count in {n} / {n,m}
MAX_EXPANSION = 50_000  # atoms after unrolling counted repetitions (an NFA-size estimate)
MAX_CHOICES = 10_000

_META = set(".^$*+?{}[]\\|()")
_CLASS_META = set("]\\^-[")
_REFUSED_ESCAPES = {
    "b": "word boundaries (\\b)",
    "B": "non-word boundaries (\\B)",
    "A": "anchors (\\A)",
    "Z": "anchors (\\Z)",
    "z": "anchors (\\z)",
    "G": "anchors (\\G)",
    "p": "Unicode property classes (\\p{...})",
    "P": "Unicode property classes (\\P{...})",
    "k": "named back-references (\\k<...>)",
}
_REFUSED_GROUPS = {
    "(?=": "look-ahead",
    "(?!": "negative look-ahead",
    "(?<=": "look-behind",
    "(?<!": "negative look-behind",
    "(?P=": "back-references",
    "(?(": "conditional groups",
    "(?#": "comments",
}
_COUNT = re.compile(r"\{(\d+)(,(\d*))?\}")


def grammar_regex(kind: str, spec: Any, whitespace_pattern: Optional[str] = None) -> str:
    """The regex (our dialect) for a constraint. kind: 'regex', 'json_schema' or 'choices'."""
    if kind == "regex":
        if not isinstance(spec, str):
            raise ValueError(f"regex must be a string, got {type(spec).__name__}")
        return normalise_regex(spec)
    if kind == "choices":
        return normalise_regex(choices_regex(spec))
    if kind == "json_schema":
        from runtime.constrained.schema import schema_to_regex

        return normalise_regex(schema_to_regex(spec, whitespace_pattern))
    raise ValueError(f"unknown constraint kind {kind!r}; expected one of {KINDS}")


def choices_regex(choices: Any) -> str:
    """An alternation that matches exactly one of `choices` (each escaped literally)."""
    if isinstance(choices, str) or not isinstance(choices, (list, tuple)):
        raise ValueError("choices must be a list of strings")
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choices must be a non-empty list of non-empty strings")
    if len(choices) > MAX_CHOICES:
        raise ValueError(f"choices has {len(choices)} entries; the limit is {MAX_CHOICES}")
    return "(" + "|".join("".join(_literal(c) for c in choice) for choice in choices) + ")"


def normalise_regex(pattern: str) -> str:
    """Rewrite `pattern` into the dialect regex_dfa.py reads; check the size limits (ValueError if not)."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise ValueError(f"regex is {len(pattern)} characters long; the limit is {MAX_REGEX_CHARS}")
    return _Rewriter(pattern).run()  # syntax errors surface when regex_dfa.py parses it


def _literal(char: str, in_class: bool = False) -> str:
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if char in (_CLASS_META if in_class else _META):
        return "\\" + char
    return char


class _Rewriter:
    """One left-to-right pass: dialect rewrites plus the expansion estimate of counted repeats."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0
        self.out: list[str] = []
        self.frames = [[0, 0]]  # per open group: [atoms so far, atoms of the last item]

    def run(self) -> str:
        p = self.p
        if p.startswith("^"):
            self.i = 1
        end = len(p) - 1 if p.endswith("$") and not _escaped(p, len(p) - 1) else len(p)
        while self.i < end:
            c = p[self.i]
            if c == "\\":
                self._atom(self._escape(in_class=False))
            elif c == "[":
                self._atom(self._char_class())
            elif c == "(":
                self._open_group()
            elif c == ")":
                self._close_group()
            elif c == "{" and _COUNT.match(p, self.i):
                self._count(_COUNT.match(p, self.i))
            elif c in "^$":
                raise ValueError(f"regex: anchor {c!r} at position {self.i} is not supported (patterns match the whole output)")
            else:
                self.out.append(c)
                self.i += 1
                if c not in "|*+?":
                    self._add_atoms(1)
        if len(self.frames) != 1:
            raise ValueError("invalid regex: missing )")
        if self.frames[0][0] > MAX_EXPANSION:
            raise ValueError(
                f"regex expands to about {self.frames[0][0]} atoms after unrolling counted repetitions; "
                f"the limit is {MAX_EXPANSION} (use smaller {{n,m}} bounds)"
            )
        return "".join(self.out)

    def _atom(self, text: str) -> None:
        self.out.append(text)
        self._add_atoms(1)

    def _add_atoms(self, n: int) -> None:
        frame = self.frames[-1]
        frame[0] += n
        frame[1] = n

    def _open_group(self) -> None:
        p, i = self.p, self.i
        for prefix, what in _REFUSED_GROUPS.items():
            if p.startswith(prefix, i):
                raise ValueError(f"regex: {what} ({prefix}...) at position {i} is not supported")
        named = re.match(r"\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>", p[i:])
        if named:  # group names carry no meaning for matching
            self.out.append("(")
            self.i += len(named.group(0))
        elif p.startswith("(?:", i):
            self.out.append("(?:")
            self.i += 3
        else:
            self.out.append("(")
            self.i += 1
        self.frames.append([0, 0])

    def _close_group(self) -> None:
        if len(self.frames) == 1:
            raise ValueError(f"invalid regex: unbalanced ) at position {self.i}")
        size = max(self.frames.pop()[0], 1)
        self.out.append(")")
        self.i += 1
        self._add_atoms(size)

    def _count(self, m: re.Match) -> None:
        low = int(m.group(1))
        high = low if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
        if max(low, high or 0) > MAX_REPEAT:
            raise ValueError(
                f"regex: repetition count {m.group(0)} exceeds the limit of {MAX_REPEAT}"
            )
        factor = high if high is not None else low + 1
        frame = self.frames[-1]
        frame[0] += frame[1] * (factor - 1)
        frame[1] *= factor
        self.out.append(m.group(0))
        self.i = m.end()

    def _escape(self, in_class: bool) -> str:
        p, i = self.p, self.i
        if i + 1 >= len(p):
            raise ValueError("invalid regex: trailing backslash")
        c = p[i + 1]
        if c in "uU" or (c == "x" and p.startswith("{", i + 2)):
            char, self.i = _code_point(p, i)
            return _literal(char, in_class)
        if c.isdigit() and c != "0" and not in_class:
            raise ValueError(f"regex: back-references (\\{c}) are not supported")
        if c in _REFUSED_ESCAPES and not (in_class and c == "b"):
            raise ValueError(f"regex: {_REFUSED_ESCAPES[c]} are not supported")
        self.i = i + 2
        return "\\" + c

    def _char_class(self) -> str:
        p = self.p
        start = self.i
        parts = ["["]
        self.i += 1
        if self.i < len(p) and p[self.i] == "^":
            parts.append("^")
            self.i += 1
        if self.i < len(p) and p[self.i] == "]":  # a leading ] is literal
            parts.append("\\]")
            self.i += 1
        while self.i < len(p) and p[self.i] != "]":
            if p.startswith("[:", self.i):
                raise ValueError("regex: POSIX classes ([:alpha:]) are not supported; spell the range out")
            if p[self.i] == "\\":
                parts.append(self._escape(in_class=True))
            else:
                parts.append(p[self.i])
                self.i += 1
        if self.i >= len(p):
            raise ValueError(f"invalid regex: unterminated character class at position {start}")
        self.i += 1
        parts.append("]")
        return "".join(parts)


def _code_point(p: str, i: int) -> tuple[str, int]:
    """Read \\uXXXX, \\UXXXXXXXX or \\x{X..} at p[i]; return the character and the next index."""
    kind = p[i + 1]
    if kind == "x":
        close = p.find("}", i + 3)
        digits, end = (p[i + 3 : close], close + 1) if close != -1 else ("", i + 3)
    else:
        width = 4 if kind == "u" else 8
        digits, end = p[i + 2 : i + 2 + width], i + 2 + width
        if len(digits) != width:
            digits = ""
    try:
        return chr(int(digits, 16)), end
    except (ValueError, OverflowError):
        raise ValueError(f"invalid regex: bad escape {p[i:end]!r}") from None


def _escaped(p: str, index: int) -> bool:
    backslashes = 0
    while index - 1 - backslashes >= 0 and p[index - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1
