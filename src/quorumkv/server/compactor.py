"""Auto-compaction with etcd 3.4's semantics (``--auto-compaction-mode``, ``--auto-compaction-retention``).

The compactors are clock-free state machines: the server's loop samples the revision, sleeps
``poll_interval_s``, asks ``due(now_s, revision)`` and proposes a Compaction entry for the answer, then reports
``succeeded`` (a "required revision has been compacted" answer counts as success, as in etcd).

- periodic (retention R seconds): the revision is sampled every ``min(R, 1h) / 10``; the last ``R / that + 1``
  samples are kept, so the oldest is the revision of about R ago. The first compaction happens R after start,
  then every ``min(R, 1h)``, each to the oldest sample (etcd's v3compactor.Periodic);
- revision (retention N): every 5 minutes, compact to ``current - N`` if that is positive and not the revision
  compacted last time (etcd's v3compactor.Revision).
"""

from __future__ import annotations

from typing import Protocol

HOUR_S = 3600.0
REVISION_INTERVAL_S = 300.0
RETRY_DIVISOR = 10


class Compactor(Protocol):
    poll_interval_s: float

    def sample(self, revision: int) -> None: ...

    def due(self, now_s: float, revision: int) -> int | None: ...

    def succeeded(self, now_s: float, revision: int) -> None: ...


class PeriodicCompactor:
    """Keeps a window of ``retention_s`` of revision samples; compacts to the oldest when due."""

    def __init__(self, retention_s: float, now_s: float) -> None:
        if retention_s <= 0:
            raise ValueError("retention must be positive")
        self.period_s = retention_s
        self.compact_interval_s = min(retention_s, HOUR_S)
        self.poll_interval_s = self.compact_interval_s / RETRY_DIVISOR
        self.retentions = int(self.period_s / self.poll_interval_s) + 1
        self.revs: list[int] = []
        self.last_success_s = now_s
        self.base_interval_s = retention_s

    def sample(self, revision: int) -> None:
        self.revs.append(revision)
        if len(self.revs) > self.retentions:
            del self.revs[0]  # revs[0] is the revision of about period_s ago

    def due(self, now_s: float, revision: int) -> int | None:
        if not self.revs or now_s - self.last_success_s < self.base_interval_s:
            return None
        if self.base_interval_s == self.period_s:  # after the first full period, compact every interval
            self.base_interval_s = self.compact_interval_s
        return self.revs[0]

    def succeeded(self, now_s: float, revision: int) -> None:
        self.last_success_s = now_s


class RevisionCompactor:
    """Every 5 minutes keeps the last ``retention`` revisions."""

    def __init__(self, retention: int, interval_s: float = REVISION_INTERVAL_S) -> None:
        if retention <= 0:
            raise ValueError("retention must be positive")
        self.retention = retention
        self.poll_interval_s = interval_s
        self.prev = 0

    def sample(self, revision: int) -> None:
        return None

    def due(self, now_s: float, revision: int) -> int | None:
        rev = revision - self.retention
        if rev <= 0 or rev == self.prev:
            return None
        return rev

    def succeeded(self, now_s: float, revision: int) -> None:
        self.prev = revision


def make_compactor(mode: str, retention: int, now_s: float) -> Compactor | None:
    """The compactor for the configured mode, or None when retention is 0 (disabled)."""
    if retention <= 0:
        return None
    if mode == "revision":
        return RevisionCompactor(retention)
    if mode == "periodic":
        return PeriodicCompactor(float(retention), now_s)
    raise ValueError(f"unknown auto-compaction mode {mode!r} (expected periodic or revision)")
