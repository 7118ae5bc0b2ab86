"""A clock tests move by hand, for anything that takes a ``Clock`` (an object with ``monotonic()``)."""

from __future__ import annotations


class FakeClock:
    """Monotonic time that only changes when a test calls :meth:`advance`; starts at ``start_s``."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def monotonic(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self.now_s += seconds
