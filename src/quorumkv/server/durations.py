"""Go ``time.Duration`` text, as etcd's flags and config files use it (``500ms``, ``1m30s``, ``1.5h``).

Invariants: values are whole nanoseconds in the int64 range; ``parse_duration_ns(format_duration_ns(n)) == n``
for every such ``n``; the grammar and error cases follow Go's ``time.ParseDuration``.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "NS_PER_MS",
    "NS_PER_S",
    "DurationError",
    "format_duration_ns",
    "parse_duration_ns",
]

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
_NS_PER_MIN = 60 * NS_PER_S
_NS_PER_H = 60 * _NS_PER_MIN
_MAX_NS = 2**63 - 1

#: Go's unit table; both micro signs (U+00B5, U+03BC) are accepted, as in Go.
_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": NS_PER_US,
    "\u00b5s": NS_PER_US,
    "\u03bcs": NS_PER_US,
    "ms": NS_PER_MS,
    "s": NS_PER_S,
    "m": _NS_PER_MIN,
    "h": _NS_PER_H,
}

# One "<digits>[.<digits>]<unit>" component; the unit is everything up to the next digit or dot, as in Go.
_COMPONENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


class DurationError(ValueError):
    """A string is not a valid Go duration; the message quotes it the way Go's ``time`` package does."""


def parse_duration_ns(text: str) -> int:
    """Parse a Go duration (``"1h30m"``, ``"-1.5s"``, ``"0"``) into nanoseconds.

    A unit is required on every component except for the literal ``"0"``; fractional nanoseconds are
    truncated towards zero; results outside int64 raise :class:`DurationError`.
    """
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if rest == "":
        raise DurationError(f'time: invalid duration "{text}"')
    total = Fraction(0)
    while rest:
        match = _COMPONENT.match(rest)
        assert match is not None  # every part of the pattern is optional
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if whole == "" and not frac:
            raise DurationError(f'time: invalid duration "{text}"')
        if unit == "":
            raise DurationError(f'time: missing unit in duration "{text}"')
        if unit not in _UNITS_NS:
            raise DurationError(f'time: unknown unit "{unit}" in duration "{text}"')
        number = Fraction(int(whole or "0"))
        if frac:
            number += Fraction(int(frac), 10 ** len(frac))
        total += number * _UNITS_NS[unit]
        rest = rest[match.end() :]
    magnitude = int(total)  # truncates the sub-nanosecond part, like Go
    limit = _MAX_NS + 1 if negative else _MAX_NS
    if magnitude > limit:
        raise DurationError(f'time: invalid duration "{text}"')
    return -magnitude if negative else magnitude


def _fraction_digits(value: int, precision: int) -> tuple[str, int]:
    """Split ``value`` into ``(".ddd", value // 10**precision)``, dropping trailing zeros (Go's fmtFrac)."""
    scale = 10**precision
    digits = value % scale
    if digits == 0:
        return "", value // scale
    return "." + f"{digits:0{precision}d}".rstrip("0"), value // scale


def format_duration_ns(ns: int) -> str:
    """Format nanoseconds exactly as Go's ``Duration.String`` (``"1h30m0s"``, ``"1.5µs"``, ``"0s"``)."""
    if not -_MAX_NS - 1 <= ns <= _MAX_NS:
        raise DurationError(f"duration {ns}ns is outside the int64 range")
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < NS_PER_S:
        if u < NS_PER_US:
            return f"{sign}{u}ns"
        if u < NS_PER_MS:
            frac, whole = _fraction_digits(u, 3)
            return f"{sign}{whole}{frac}\u00b5s"
        frac, whole = _fraction_digits(u, 6)
        return f"{sign}{whole}{frac}ms"
    frac, seconds = _fraction_digits(u, 9)
    out = f"{seconds % 60}{frac}s"
    minutes = seconds // 60
    if minutes > 0:
        out = f"{minutes % 60}m{out}"
        hours = minutes // 60
        if hours > 0:
            out = f"{hours}h{out}"
    return sign + out
