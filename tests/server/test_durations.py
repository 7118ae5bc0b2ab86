"""Go duration parsing/formatting: examples from Go's time package plus round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorumkv.server.durations import DurationError, format_duration_ns, parse_duration_ns

INT64_MAX = 2**63 - 1
S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("500ms", 500_000_000),
        ("2s", 2 * S),
        ("1m30s", 90 * S),
        ("1h", 3600 * S),
        ("1h30m", 5400 * S),
        ("1.5h", 5400 * S),
        (".5s", S // 2),
        ("1.s", S),
        ("-1.5s", -3 * S // 2),
        ("+10m", 600 * S),
        ("1µs", 1000),
        ("1μs", 1000),
        ("1us", 1000),
        ("3ns", 3),
        ("1h1m1s1ms1us1ns", 3661 * S + 1_001_001),
        ("9223372036854775807ns", INT64_MAX),
    ],
)
def test_parse_examples(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "invalid duration"),
        ("1", "missing unit"),
        ("1h30", "missing unit"),
        ("1d", 'unknown unit "d"'),
        ("1 h", 'unknown unit " h"'),
        (".s", "invalid duration"),
        ("-", "invalid duration"),
        ("h", "invalid duration"),
        ("9223372036854775808ns", "invalid duration"),
    ],
)
def test_parse_rejects(text: str, fragment: str) -> None:
    with pytest.raises(DurationError, match=fragment):
        parse_duration_ns(text)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1100, "1.1µs"),
        (2_200_000, "2.2ms"),
        (3 * S + 300_000_000, "3.3s"),
        (4 * 60 * S + 5 * S, "4m5s"),
        (3600 * S, "1h0m0s"),
        (-90 * S, "-1m30s"),
        (INT64_MAX, "2562047h47m16.854775807s"),
    ],
)
def test_format_matches_go(ns: int, text: str) -> None:
    assert format_duration_ns(ns) == text


@given(st.integers(min_value=-INT64_MAX, max_value=INT64_MAX))
def test_format_then_parse_round_trips(ns: int) -> None:
    assert parse_duration_ns(format_duration_ns(ns)) == ns


@given(
    st.integers(0, 1000),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
    st.booleans(),
)
def test_components_sum(h: int, m: int, s: int, ms: int, negative: bool) -> None:
    parts = [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")]
    text = "".join(f"{v}{u}" for v, u in parts if v) or "0s"
    expected = ((h * 60 + m) * 60 + s) * S + ms * 1_000_000
    sign = -1 if negative else 1
    assert parse_duration_ns(("-" if negative else "") + text) == sign * expected


@given(st.integers(min_value=1, max_value=10**12))
def test_bare_numbers_other_than_zero_need_a_unit(n: int) -> None:
    with pytest.raises(DurationError, match="missing unit"):
        parse_duration_ns(str(n))


@given(st.text(alphabet="0123456789.hmsunµ+-", max_size=12))
def test_parse_never_raises_anything_but_duration_error(text: str) -> None:
    try:
        ns = parse_duration_ns(text)
    except DurationError:
        return
    assert -INT64_MAX - 1 <= ns <= INT64_MAX
    assert parse_duration_ns(format_duration_ns(ns)) == ns
