"""The Raft log: persisted entries (read through ``Storage``) plus not-yet-persisted ``Unstable`` ones.

Index layout (invariants, asserted where cheap)::

    snapshot index  <  first_index  <=  applied+1  <=  committed+1  <=  last_index+1
    storage: [first_index .. unstable.offset-1]      unstable: [unstable.offset .. last_index]

* ``applied <= committed <= last_index``; committed never decreases; committed entries never change.
* ``unstable.offset`` is the index of ``unstable.entries[0]``; if ``unstable.snapshot`` is set,
  ``offset == snapshot.index + 1`` until the snapshot is persisted.
"""

from __future__ import annotations

from quorumkv.raft.ids import Index, Term
from quorumkv.raft.messages import Entry, Snapshot
from quorumkv.raft.storage import CompactedError, Storage, UnavailableError


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``ents`` within ``max_size`` bytes, but always at least one entry."""
    if max_size is None or not ents:
        return ents
    size = ents[0].size()
    n = 1
    while n < len(ents):
        size += ents[n].size()
        if size > max_size:
            break
        n += 1
    return ents if n == len(ents) else ents[:n]


class Unstable:
    """Entries and snapshot handed to the application in a ``Ready`` but not yet reported persisted."""

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: Index) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> Index | None:
        if self.snapshot is not None:
            return Index(self.snapshot.metadata.index + 1)
        return None

    def maybe_last_index(self) -> Index | None:
        if self.entries:
            return Index(self.offset + len(self.entries) - 1)
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: Index) -> Term | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == i:
                return self.snapshot.metadata.term
            return None
        k = i - self.offset
        if k >= len(self.entries):
            return None
        return self.entries[k].term

    def stable_to(self, i: Index, t: Term) -> None:
        """Entries up to ``(i, t)`` are persisted. Ignored if the entry at ``i`` was since replaced."""
        gt = self.maybe_term(i)
        if gt is None or gt != t or i < self.offset:
            return
        del self.entries[: i + 1 - self.offset]
        self.offset = Index(i + 1)

    def stable_snap_to(self, i: Index) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, s: Snapshot) -> None:
        self.offset = Index(s.metadata.index + 1)
        self.entries = []
        self.snapshot = s

    def truncate_and_append(self, ents: list[Entry] | tuple[Entry, ...]) -> None:
        first = ents[0].index
        end = self.offset + len(self.entries)
        if first == end:
            self.entries.extend(ents)
        elif first <= self.offset:
            # The whole unstable tail (and possibly part of storage) is replaced.
            self.offset = first
            self.entries = list(ents)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: Index, hi: Index) -> list[Entry]:
        assert self.offset <= lo <= hi <= self.offset + len(self.entries), (lo, hi, self.offset)
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    __slots__ = ("applied", "committed", "max_applying_size", "storage", "unstable")

    def __init__(self, storage: Storage, max_applying_size: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(Index(last + 1))
        self.committed = Index(first - 1)
        self.applied = Index(first - 1)
        self.max_applying_size = max_applying_size

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, len(unstable)={len(self.unstable.entries)})"
        )

    # ------------------------------------------------------------------------------------------ indexes

    def first_index(self) -> Index:
        snap = self.unstable.snapshot
        if snap is not None:
            return Index(snap.metadata.index + 1)
        return self.storage.first_index()

    def last_index(self) -> Index:
        u = self.unstable
        if u.entries:
            return Index(u.offset + len(u.entries) - 1)
        if u.snapshot is not None:
            return u.snapshot.metadata.index
        return self.storage.last_index()

    def term(self, i: Index) -> Term:
        """Term of entry ``i``; raises ``CompactedError``/``UnavailableError`` outside the log."""
        u = self.unstable
        k = i - u.offset
        if 0 <= k < len(u.entries):
            return u.entries[k].term  # fast path: the (hot) unstable tail
        t = u.maybe_term(i)
        if t is not None:
            return t
        if i < self.first_index() - 1:
            raise CompactedError(i)
        if i > self.last_index():
            raise UnavailableError(i)
        return self.storage.term(i)

    def zero_term_on_err(self, i: Index) -> Term:
        try:
            return self.term(i)
        except (CompactedError, UnavailableError):
            return Term(0)

    def last_term(self) -> Term:
        return self.term(self.last_index())

    def match_term(self, i: Index, t: Term) -> bool:
        try:
            return self.term(i) == t
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, lasti: Index, term: Term) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        lt = self.last_term()
        return term > lt or (term == lt and lasti >= self.last_index())

    # ------------------------------------------------------------------------------------------ appending

    def find_conflict(self, ents: tuple[Entry, ...] | list[Entry]) -> Index:
        """Index of the first entry of ``ents`` that is not already in the log with the same term, or 0."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return Index(0)

    def find_conflict_by_term(self, index: Index, term: Term) -> tuple[Index, Term]:
        """Largest ``j <= index`` with ``term(j) <= term`` (fast backtracking hint), and ``term(j)``."""
        while index > 0:
            try:
                our = self.term(index)
            except (CompactedError, UnavailableError):
                return index, Term(0)
            if our <= term:
                return index, our
            index = Index(index - 1)
        return Index(0), Term(0)

    def maybe_append(
        self, index: Index, log_term: Term, committed: Index, ents: tuple[Entry, ...]
    ) -> Index | None:
        """Append ``ents`` after ``(index, log_term)`` if our log matches there (§5.3 consistency check).

        Returns the index of the last entry of the message, or None on mismatch. Never touches
        committed entries: a conflict at or below ``committed`` is a safety violation and asserts."""
        if not self.match_term(index, log_term):
            return None
        last_new = Index(index + len(ents))
        ci = self.find_conflict(ents)
        if ci:
            assert ci > self.committed, (
                f"entry {ci} conflicts with committed entry (committed={self.committed})"
            )
            self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: tuple[Entry, ...] | list[Entry]) -> Index:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        assert after >= self.committed, f"append after {after} is below committed {self.committed}"
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    # ------------------------------------------------------------------------------------------ reading

    def slice(self, lo: Index, hi: Index, max_size: int | None) -> list[Entry]:
        """Entries ``[lo, hi)`` limited to ``max_size`` bytes (at least one entry)."""
        if lo >= hi:
            return []
        fi = self.first_index()
        if lo < fi:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        off = self.unstable.offset
        ents: list[Entry] = []
        if lo < off:
            stored = self.storage.entries(lo, Index(min(hi, off)), max_size)
            if len(stored) < min(hi, off) - lo:
                return stored  # size-limited
            ents = stored
        if hi > off:
            uns = self.unstable.slice(Index(max(lo, off)), hi)
            ents = uns if not ents else ents + uns
        return limit_size(ents, max_size)

    def entries(self, i: Index, max_size: int | None) -> list[Entry]:
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, Index(last + 1), max_size)

    def all_entries(self) -> list[Entry]:
        """Every available entry (tests and debugging only)."""
        return self.entries(self.first_index(), None)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_next_committed_ents(self) -> bool:
        return self.committed > self.applied and self.committed >= self.first_index()

    def next_committed_ents(self) -> list[Entry]:
        """Committed entries not yet applied (bounded by ``max_applying_size``)."""
        lo = Index(max(self.applied + 1, self.first_index()))
        if self.committed < lo:
            return []
        return self.slice(lo, Index(self.committed + 1), self.max_applying_size)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # ------------------------------------------------------------------------------------------ progress

    def commit_to(self, to: Index) -> None:
        if to > self.committed:
            assert to <= self.last_index(), f"commit {to} beyond last index {self.last_index()}"
            self.committed = to

    def maybe_commit(self, max_index: Index, term: Term, require_current_term: bool = True) -> bool:
        """Commit up to ``max_index`` if it is newer and (§5.4.2) its entry is from ``term``."""
        if max_index > self.committed and (
            not require_current_term or self.zero_term_on_err(max_index) == term
        ):
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: Index) -> None:
        if i == 0:
            return
        assert self.applied <= i or i <= self.committed, (i, self.applied, self.committed)
        if i > self.applied:
            assert i <= self.committed, f"applied {i} beyond committed {self.committed}"
            self.applied = i

    def stable_to(self, i: Index, t: Term) -> None:
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: Index) -> None:
        self.unstable.stable_snap_to(i)

    def restore(self, s: Snapshot) -> None:
        """Replace the log with snapshot ``s`` (which is newer than anything committed here)."""
        self.committed = s.metadata.index
        self.unstable.restore(s)
