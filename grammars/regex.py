"""Ready-made regular expressions for constrained generation.

Each constant is a `NamedRegex`: a plain `str` (pass it straight as `regex=`) that also carries a
description and examples, which the tests check. The patterns match the *whole* output, use no
anchors, look-arounds or `\\b` (token-level FSMs cannot express them), and stay ASCII where a format
is ASCII, so they compile to small automata.

    from grammars.regex import ISO_DATE, integer_range
    s += sgflow.gen("when", regex=ISO_DATE)
    s += sgflow.gen("age", regex=integer_range(0, 130))
"""

from __future__ import annotations

from typing import Optional


class NamedRegex(str):
    """A regex pattern (the string itself) with a human description and examples."""

    description: str
    examples: tuple[str, ...]
    counter_examples: tuple[str, ...]

    def __new__(cls, pattern: str, description: str, examples=(), counter_examples=()):
        obj = super().__new__(cls, pattern)
        obj.description = description
        obj.examples = tuple(examples)
        obj.counter_examples = tuple(counter_examples)
        return obj


INTEGER = NamedRegex(
    r"-?(0|[1-9][0-9]*)",
    "A JSON integer: optional minus, no leading zeros.",
    ["0", "42", "-7", "1000000"],
    ["007", "+1", "1.0", "", "-"],
)
FLOAT = NamedRegex(
    r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?",
    "A JSON number: integer part, optional fraction, optional exponent.",
    ["0", "3.14", "-0.5", "6.02e23", "1E-9"],
    ["01.5", ".5", "1.", "1e", "NaN"],
)
BOOLEAN = NamedRegex(r"(true|false)", "A JSON boolean.", ["true", "false"], ["True", "yes", "1"])
ISO_DATE = NamedRegex(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    "A calendar date YYYY-MM-DD (ISO 8601; day 01-31, not checked against the month).",
    ["2024-02-29", "1999-12-31"],
    ["2024-13-01", "2024-1-01", "24-01-01", "2024-00-10"],
)
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
_ZONE = r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
ISO_TIME = NamedRegex(
    _TIME + _ZONE + "?",
    "A time of day hh:mm:ss with optional fraction and optional zone (Z or +hh:mm).",
    ["23:59:59", "08:00:00.250", "12:30:00Z", "12:30:00+05:30"],
    ["24:00:00", "12:60:00", "7:00:00", "12:30"],
)
ISO_DATETIME = NamedRegex(
    ISO_DATE + "T" + _TIME + _ZONE + "?",
    "A date and time YYYY-MM-DDThh:mm:ss[.fff][zone] (ISO 8601 / RFC 3339 shape).",
    ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.5+02:00", "2024-05-01T00:00:00"],
    ["2024-05-01 12:00:00", "2024-05-01T12:00", "2024-05-01"],
)
EMAIL = NamedRegex(
    r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)*\.[a-zA-Z]{2,}",
    "A practical e-mail address: local part, '@', dotted domain ending in a 2+ letter TLD.",
    ["ada@example.com", "first.last+tag@mail.co.uk"],
    ["ada@", "@example.com", "ada@example", "a b@example.com"],
)
URL = NamedRegex(
    r"https?://[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)*(:[0-9]{1,5})?"
    r"(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]*)*(\?[a-zA-Z0-9._~%!$&'()*+,;=:@/?-]*)?(#[a-zA-Z0-9._~%!$&'()*+,;=:@/?-]*)?",
    "An http(s) URL: host, optional port, path, query and fragment (no spaces).",
    ["https://example.com", "http://localhost:8080/a/b?x=1&y=2#top"],
    ["ftp://example.com", "https://", "example.com", "https://exa mple.com"],
)
UUID = NamedRegex(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "A UUID in 8-4-4-4-12 hexadecimal form.",
    ["123e4567-e89b-12d3-a456-426614174000"],
    ["123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g"],
)
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = NamedRegex(
    rf"({_OCTET}\.){{3}}{_OCTET}",
    "An IPv4 address: four decimal octets 0-255 without leading zeros.",
    ["192.168.0.1", "0.0.0.0", "255.255.255.255"],
    ["256.1.1.1", "1.2.3", "01.2.3.4"],
)
PHONE = NamedRegex(
    r"(\+[0-9]{1,3}[ -]?)?(\([0-9]{3}\)|[0-9]{3})[ -]?[0-9]{3}[ -]?[0-9]{4}",
    "A phone number in North-American layout with an optional +country code.",
    ["+1 (555) 123-4567", "555-123-4567", "5551234567", "+44 207-946-0958"],
    ["123-45-678", "phone", "+1"],
)


def integer_range(low: Optional[int] = None, high: Optional[int] = None) -> str:
    """A regex for the JSON integers n with low <= n <= high (None: unbounded on that side).

    Only canonical spellings match (no leading zeros, no '+', no '-0'), so every output parses back
    to an integer in range. Example: `integer_range(1, 120)` matches "1" .. "120" but not "0", "121".
    """
    if low is not None and high is not None and low > high:
        raise ValueError(f"empty integer range: low {low} > high {high}")
    parts = []
    if low is None or low < 0:  # negative values: '-' and a magnitude in [max(1, -high), -low]
        top = None if low is None else -low
        bottom = 1 if high is None or high >= 0 else -high
        if top is None or bottom <= top:
            parts.append("-" + _group(_natural_range(bottom, top)))
    if high is None or high >= 0:
        parts.append(_natural_range(max(low or 0, 0), high))
    return "(" + "|".join(parts) + ")"


def _natural_range(low: int, high: Optional[int]) -> str:
    """Canonical decimals of low..high (high None: unbounded), 0 <= low."""
    alternatives = []
    num_digits = len(str(low))
    last = len(str(high)) if high is not None else num_digits
    for d in range(num_digits, last + 1):
        first = max(low, 0 if d == 1 else 10 ** (d - 1))
        final = 10**d - 1 if high is None else min(high, 10**d - 1)
        if first <= final:
            alternatives.append(_same_length(str(first), str(final)))
    if high is None:
        alternatives.append(f"[1-9][0-9]{{{last},}}")
    return "|".join(alternatives)


def _same_length(x: str, y: str) -> str:
    """Regex for the decimal strings of length len(x) between x and y (x <= y), digit by digit."""
    if not x:
        return ""
    if x[0] == y[0]:
        return x[0] + _group(_same_length(x[1:], y[1:]))
    rest = len(x) - 1
    lo, hi, parts, upper = int(x[0]), int(y[0]), [], None
    if x[1:] != "0" * rest:  # x[0] followed by x[1:] .. 99..9
        parts.append(x[0] + _group(_same_length(x[1:], "9" * rest)))
        lo += 1
    if y[1:] != "9" * rest:  # y[0] followed by 00..0 .. y[1:]
        upper = y[0] + _group(_same_length("0" * rest, y[1:]))
        hi -= 1
    if lo <= hi:
        digit = str(lo) if lo == hi else f"[{lo}-{hi}]"
        parts.append(digit + ("" if rest == 0 else "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
    if upper is not None:
        parts.append(upper)
    return "|".join(parts)


def _group(pattern: str) -> str:
    return f"({pattern})" if "|" in pattern else pattern
