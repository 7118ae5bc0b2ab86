"""Progress reporting for long operations (save, restore, upload, mirror): a rich progress bar when the
stream is a terminal, otherwise plain lines (a start line, then one line per ``every`` seconds, a done line)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """``with Progress("uploading x", total=n) as p: p.advance(k)``. ``total`` may be None (unknown)."""

    def __init__(self, description: str, *, total: float | None = None, unit: str = "bytes",
                 stream: TextIO | None = None, every: float = 5.0) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stdout
        self.every = every
        self.done = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._last = 0.0

    @property
    def interactive(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def __enter__(self) -> Progress:
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, TextColumn
            from rich.progress import Progress as RichProgress

            cols: list[Any] = [TextColumn("{task.description}"), BarColumn()]
            if self.unit == "bytes":
                cols.append(DownloadColumn())
            else:
                cols.append(TextColumn("{task.completed:.0f} " + self.unit))
            self._bar = RichProgress(*cols, console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        else:
            self._line(f"{self.description}: started")
        self._last = time.monotonic()
        return self

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def advance(self, amount: float) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            of = f" of {self.total:.0f}" if self.total else ""
            self._line(f"{self.description}: {self.done:.0f}{of} {self.unit}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
            return
        state = "failed" if exc_type is not None else "done"
        self._line(f"{self.description}: {state} ({self.done:.0f} {self.unit})")
