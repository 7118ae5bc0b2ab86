"""The read-only view of stable storage that the Raft core needs.

The core never writes storage: the application persists what ``Ready`` hands it (hard state, entries,
snapshot) and then calls ``advance()``. The core only reads back what was persisted, through this
protocol. Keep it narrow: ``quorumkv.raft.memory_storage.MemoryStorage`` implements exactly these six
methods. The server reads through a ``MemoryStorage`` too (``quorumkv.server.ready.AppliedStateStorage``,
rebuilt at startup from the SQLite ``raft_log`` table, ``quorumkv.storage.raftlog``): the durable copy is
written by the Ready processor, never read by the core.

Index model: storage holds a snapshot at ``first_index() - 1`` (possibly empty, index 0) and the
contiguous entries ``first_index() .. last_index()``. ``term(first_index() - 1)`` must return the
snapshot's term (the "dummy" entry), every lower index raises ``CompactedError``.
"""

from __future__ import annotations

from typing import Protocol

from quorumkv.raft.ids import Index, Term
from quorumkv.raft.messages import ConfState, Entry, HardState, Snapshot


class StorageError(Exception):
    """Base class of the sentinel storage errors."""


class CompactedError(StorageError):
    """The requested index is older than the first available entry (compacted into a snapshot)."""


class UnavailableError(StorageError):
    """The requested index is newer than the last stored entry."""


class SnapshotTemporarilyUnavailableError(StorageError):
    """A snapshot is being built; the caller should retry later."""


class Storage(Protocol):
    """Read-only access to the persisted log, hard state and latest snapshot."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the membership as of the latest snapshot."""
        ...

    def entries(self, lo: Index, hi: Index, max_size: int | None) -> list[Entry]:
        """Entries ``[lo, hi)``. Returns at least one entry if ``lo < hi`` even if it exceeds
        ``max_size`` bytes (``None`` = unlimited). Raises ``CompactedError`` if ``lo < first_index()``,
        ``UnavailableError`` if ``hi > last_index() + 1``."""
        ...

    def term(self, i: Index) -> Term:
        """Term of entry ``i``, for ``first_index() - 1 <= i <= last_index()``."""
        ...

    def first_index(self) -> Index:
        """Index of the first entry that may be read with ``entries`` (snapshot index + 1)."""
        ...

    def last_index(self) -> Index:
        """Index of the last stored entry (the snapshot index if there are none)."""
        ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot; may raise ``SnapshotTemporarilyUnavailableError``."""
        ...
