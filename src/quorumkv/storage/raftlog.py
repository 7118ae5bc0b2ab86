"""``RaftLogTable``: the one owner of the ``raft_log`` table (no other module runs SQL on it).

A row is one Raft entry: ``(idx, term, kind, data, crc)``. ``kind`` is the entry's ``EntryKind`` (its first
data byte) for a normal entry and ``KIND_CONF_CHANGE`` for a configuration change; ``crc`` is
``zlib.crc32(data, (term << 8) ^ kind)``, so a flipped bit in any of the three is caught on read.

Invariants (see also ``quorumkv.storage.schema``):
- rows, where there are any, cover ``(log_start().index, last index]`` without a hole;
- ``append`` replaces a conflicting suffix: after it, no row lies above the last appended entry;
- ``trim_to`` moves the log's start (``schema.save_log_start``) in the same transaction that deletes the rows.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterable

from quorumkv.raft.ids import Index, Term
from quorumkv.raft.messages import Entry, EntryType
from quorumkv.storage import schema
from quorumkv.storage.backend import StorageError, insert_rows

#: ``raft_log.kind`` of a configuration-change entry (normal entries store their ``EntryKind``).
KIND_CONF_CHANGE = 255
#: ``EntryKind.NOOP``: the kind of a normal entry without data (the leader's empty entry of a new term).
KIND_NOOP = 0

_INSERT = "INSERT INTO raft_log(idx, term, kind, data, crc) VALUES "

Row = tuple[int, int, int, bytes, int]


def row_crc(term: int, kind: int, data: bytes) -> int:
    """The checksum stored with each row."""
    return zlib.crc32(data, (int(term) << 8) ^ int(kind)) & 0xFFFFFFFF


def entry_kind(e: Entry) -> int:
    if e.type == EntryType.CONF_CHANGE:
        return KIND_CONF_CHANGE
    return e.data[0] if e.data else KIND_NOOP


def to_row(e: Entry) -> Row:
    kind = entry_kind(e)
    return int(e.index), int(e.term), kind, e.data, row_crc(e.term, kind, e.data)


class RaftLogTable:
    """Reads and writes of ``raft_log``, each inside the caller's transaction (``conn``). Stateless."""

    def append(self, conn: sqlite3.Connection, entries: list[Entry]) -> None:
        """Store ``entries`` (consecutive), replacing every row at or above the first one's index."""
        if not entries:
            return
        self.truncate_from(conn, int(entries[0].index))
        insert_rows(conn, _INSERT, 5, [to_row(e) for e in entries])

    def append_rows(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        """Store rows read (and verified) from another ``raft_log`` (defrag's catch-up), replacing a suffix."""
        if not rows:
            return
        self.truncate_from(conn, rows[0][0])
        insert_rows(conn, _INSERT, 5, rows)

    def truncate_from(self, conn: sqlite3.Connection, index: int) -> None:
        """Delete the rows at or above ``index``."""
        conn.execute("DELETE FROM raft_log WHERE idx >= ?", (int(index),))

    def trim_to(self, conn: sqlite3.Connection, index: int, term: int) -> None:
        """Delete the rows at or below ``index``; the log now starts after ``(index, term)``."""
        conn.execute("DELETE FROM raft_log WHERE idx <= ?", (int(index),))
        schema.save_log_start(conn, index, term)

    def clear(self, conn: sqlite3.Connection, index: int, term: int) -> None:
        """Delete every row; the log now starts after ``(index, term)`` (a snapshot was installed)."""
        conn.execute("DELETE FROM raft_log")
        schema.save_log_start(conn, index, term)

    def last_index(self, conn: sqlite3.Connection) -> int | None:
        """The highest stored index, None without rows."""
        last = conn.execute("SELECT max(idx) FROM raft_log").fetchone()[0]
        return None if last is None else int(last)

    def count(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM raft_log").fetchone()[0])

    def read_rows(self, conn: sqlite3.Connection, lo: int, hi: int | None = None, *,
                  start_at_lo: bool = True) -> list[Row]:
        """The verified rows with ``lo <= idx < hi`` (``hi`` None: to the end). Raises ``StorageError`` on a
        row whose checksum fails or on a hole: rows must be consecutive from ``lo`` on (from the first row
        found, if not ``start_at_lo``)."""
        if hi is None:
            cur = conn.execute("SELECT idx, term, kind, data, crc FROM raft_log WHERE idx >= ? ORDER BY idx",
                               (int(lo),))
        else:
            cur = conn.execute("SELECT idx, term, kind, data, crc FROM raft_log WHERE idx >= ? AND idx < ? "
                               "ORDER BY idx", (int(lo), int(hi)))
        rows = cur.fetchall()
        return list(_verified(rows, int(lo) if start_at_lo or not rows else int(rows[0][0])))

    def read(self, conn: sqlite3.Connection, lo: int, hi: int | None = None) -> list[Entry]:
        """The entries ``lo <= index < hi`` (``hi`` None: to the end), verified as ``read_rows``."""
        entries = []
        for idx, term, kind, data, _crc in self.read_rows(conn, lo, hi):
            typ = EntryType.CONF_CHANGE if kind == KIND_CONF_CHANGE else EntryType.NORMAL
            entries.append(Entry(Term(term), Index(idx), typ, data))
        return entries


def _verified(rows: Iterable[tuple[int, int, int, bytes, int]], first: int) -> Iterable[Row]:
    expected = first
    for idx, term, kind, data, crc in rows:
        if idx != expected:
            raise StorageError(f"log entry {expected} is missing (next stored entry is {idx}): the data dir "
                               "is corrupt; remove it and re-add this member, or restore from a snapshot")
        expected += 1
        data = bytes(data)
        if row_crc(term, kind, data) != crc:
            raise StorageError(f"log entry {idx} fails its checksum: the data dir is corrupt; remove it and "
                               "re-add this member, or restore from a snapshot")
        yield int(idx), int(term), int(kind), data, int(crc)
