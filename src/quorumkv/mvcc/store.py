"""The MVCC key space, as etcd defines it, over SQLite.

Revisions: the store starts at revision 1. Each write transaction that changes something gets the next main
revision; its changes are numbered by a sub revision from 0. Every key has ``create_revision`` (the main
revision of the put that created its current incarnation), ``mod_revision`` (last change) and ``version``
(number of puts since creation; a delete resets it to 0 by removing the key).

Tables (see docs/storage.md):
- ``kv``: every revision of every key; a tombstone row (value NULL) records a delete;
- ``live``: the current incarnation of each existing key, pointing at its ``kv`` row. Reads at the current
  revision use ``live``; reads at an older revision reconstruct from ``kv``.

Compaction at revision C keeps, for each key, the latest revision at or before C unless it is a tombstone,
and drops every other revision at or before C. Reads below C fail with ``CompactedError``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from quorumkv.storage.backend import meta_get, meta_set, read_txn

EVENT_PUT = 0
EVENT_DELETE = 1

_LIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS live (
    key        BLOB PRIMARY KEY,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    lease      INTEGER NOT NULL,
    kv_id      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS live_by_lease ON live(lease) WHERE lease != 0;
"""


class KeyValue(NamedTuple):
    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int


class Event(NamedTuple):
    """One change. ``prev_mod_revision`` is the mod revision the key had before (0: it did not exist)."""

    type: int
    kv: KeyValue
    prev_mod_revision: int


class RangeResult:
    """Keys found (possibly limited), how many keys the range holds, and the store revision read at."""

    __slots__ = ("count", "kvs", "revision")

    def __init__(self, kvs: list[KeyValue], count: int, revision: int) -> None:
        self.kvs = kvs
        self.count = count
        self.revision = revision


class MVCCError(Exception):
    """Base of the store's errors; the API layer maps them to etcd's gRPC errors."""


class CompactedError(MVCCError):
    def __init__(self) -> None:
        super().__init__("mvcc: required revision has been compacted")


class FutureRevisionError(MVCCError):
    def __init__(self) -> None:
        super().__init__("mvcc: required revision is a future revision")


def ensure_schema(conn: sqlite3.Connection) -> None:
    for stmt in _LIVE_SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def current_revision(conn: sqlite3.Connection) -> int:
    return int(meta_get(conn, "revision", 1))


def compact_revision(conn: sqlite3.Connection) -> int:
    """The last compaction's revision; -1 on a store never compacted (etcd's compactMainRev starts at -1, so
    a first Compact(0) succeeds)."""
    return int(meta_get(conn, "compact_revision", -1))


#: Orders kv rows by (rev, sub) in one integer (SQLite returns the other columns of the max() row).
_REV_SUB = "rev * 4294967296 + sub"


def _bounds(key: bytes, range_end: bytes, column: str = "key") -> tuple[str, tuple[bytes, ...]]:
    """SQL predicate on ``column`` for etcd's [key, range_end) rules."""
    if not range_end:
        return f"{column} = ?", (key,)
    if range_end == b"\x00":
        return f"{column} >= ?", (key,)
    return f"{column} >= ? AND {column} < ?", (key, range_end)


def _kv(row: Sequence[object]) -> KeyValue:
    return KeyValue(
        row[0],  # type: ignore[arg-type]
        row[1],  # type: ignore[arg-type]
        row[2],  # type: ignore[arg-type]
        row[3],  # type: ignore[arg-type]
        row[4] if row[4] is not None else b"",  # type: ignore[arg-type]
        row[5],  # type: ignore[arg-type]
    )


def range_at(
    conn: sqlite3.Connection,
    key: bytes,
    range_end: bytes,
    revision: int,
    *,
    limit: int = 0,
    count_only: bool = False,
    current: int | None = None,
) -> RangeResult:
    """Keys in [key, range_end) as of ``revision`` (<= 0: current), sorted by key.

    ``limit`` > 0 caps the returned kvs; ``count`` is always the number of keys in the range.
    Raises FutureRevisionError / CompactedError as etcd does.
    """
    cur = current_revision(conn) if current is None else current
    rev = cur if revision <= 0 else revision
    if rev > cur:
        raise FutureRevisionError()
    if rev < compact_revision(conn):
        raise CompactedError()
    pred, args = _bounds(key, range_end)
    if rev == cur:
        (count,) = conn.execute(f"SELECT count(*) FROM live WHERE {pred}", args).fetchone()
        lpred, _ = _bounds(key, range_end, "live.key")
        if count_only:
            return RangeResult([], count, cur)
        sql = (
            "SELECT live.key, live.create_rev, live.mod_rev, live.version, kv.value, live.lease "
            f"FROM live JOIN kv ON kv.id = live.kv_id WHERE {lpred} ORDER BY live.key"
        )
        if limit > 0:
            sql += f" LIMIT {int(limit)}"
        return RangeResult([_kv(r) for r in conn.execute(sql, args)], count, cur)
    # Historical read: the latest row per key at or before rev, tombstones dropped. "Latest" is by (rev, sub):
    # one txn may delete a key and put it again (a from-key delete next to a put), both at the same rev.
    inner = (
        f"SELECT key, create_rev, rev, version, value, lease, max({_REV_SUB}) FROM kv "
        f"WHERE {pred} AND rev <= ? GROUP BY key"
    )
    hargs = (*args, rev)
    if count_only:
        (count,) = conn.execute(
            f"SELECT count(*) FROM ({inner}) WHERE value IS NOT NULL", hargs
        ).fetchone()
        return RangeResult([], count, cur)
    rows = [_kv(r) for r in conn.execute(inner + " ORDER BY key", hargs) if r[4] is not None]
    count = len(rows)
    if limit > 0:
        rows = rows[:limit]
    return RangeResult(rows, count, cur)


def get_kv_at(conn: sqlite3.Connection, key: bytes, before_rev: int) -> KeyValue | None:
    """The key's value as it was just before ``before_rev`` (None if absent or deleted)."""
    row = conn.execute(
        "SELECT key, create_rev, rev, version, value, lease FROM kv WHERE key = ? AND rev < ? "
        "ORDER BY rev DESC, sub DESC LIMIT 1",
        (key, before_rev),
    ).fetchone()
    if row is None or row[4] is None:
        return None
    return _kv(row)


def get_kv_by_mod(conn: sqlite3.Connection, key: bytes, mod_rev: int) -> KeyValue | None:
    row = conn.execute(
        "SELECT key, create_rev, rev, version, value, lease FROM kv WHERE key = ? AND rev = ? "
        "ORDER BY sub DESC LIMIT 1",
        (key, mod_rev),
    ).fetchone()
    if row is None or row[4] is None:
        return None
    return _kv(row)


def events_between(conn: sqlite3.Connection, start_rev: int, end_rev: int, limit_revs: int = 0) -> list[Event]:
    """All changes with start_rev <= rev <= end_rev in revision order (prev_mod_revision left 0)."""
    sql = (
        "SELECT key, create_rev, rev, version, value, lease FROM kv WHERE rev >= ? AND rev <= ? "
        "ORDER BY rev, sub"
    )
    if limit_revs > 0:
        end_rev = min(end_rev, start_rev + limit_revs - 1)
    out: list[Event] = []
    for r in conn.execute(sql, (start_rev, end_rev)):
        if r[4] is None:
            out.append(Event(EVENT_DELETE, KeyValue(r[0], 0, r[2], 0, b"", 0), 0))
        else:
            out.append(Event(EVENT_PUT, _kv(r), 0))
    return out


def events_by_revision(conn: sqlite3.Connection, start_rev: int, end_rev: int) -> list[tuple[int, list[Event]]]:
    """The changes of revisions start_rev..end_rev grouped by revision, in order (one read transaction)."""
    by_rev: dict[int, list[Event]] = {}
    with read_txn(conn):
        at = start_rev
        while at <= end_rev:
            for ev in events_between(conn, at, end_rev, 1000):
                by_rev.setdefault(ev.kv.mod_revision, []).append(ev)
            at += 1000
    return sorted(by_rev.items())


def keys_with_lease(conn: sqlite3.Connection, lease_id: int) -> list[bytes]:
    return [r[0] for r in conn.execute("SELECT key FROM live WHERE lease = ? ORDER BY key", (lease_id,))]


def live_key_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM live").fetchone()[0])


class WriteTxn:
    """The changes of one revision, made on the writer connection inside an open transaction.

    Reads through this object see the transaction's own earlier writes (as etcd's txn reads do).
    ``end()`` advances the store revision only if something changed.
    """

    __slots__ = ("begin_rev", "changes", "conn", "rev")

    def __init__(self, conn: sqlite3.Connection, begin_rev: int) -> None:
        self.conn = conn
        self.begin_rev = begin_rev
        self.rev = begin_rev + 1
        self.changes: list[Event] = []

    def read_revision(self) -> int:
        return self.rev if self.changes else self.begin_rev

    def live_row(self, key: bytes) -> tuple[int, int, int, int, int] | None:
        """(create_rev, mod_rev, version, lease, kv_id) of a live key."""
        row = self.conn.execute(
            "SELECT create_rev, mod_rev, version, lease, kv_id FROM live WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def value_of(self, kv_id: int) -> bytes:
        row = self.conn.execute("SELECT value FROM kv WHERE id = ?", (kv_id,)).fetchone()
        return b"" if row is None or row[0] is None else bytes(row[0])

    def put(
        self, key: bytes, value: bytes | None, lease: int | None
    ) -> tuple[KeyValue, tuple[int, int, int, int, int] | None]:
        """Write key; ``value``/``lease`` None means keep the current one (ignore_value/ignore_lease).

        Returns the new KeyValue and the previous live row (or None).
        """
        conn = self.conn
        prev = self.live_row(key)
        rev = self.rev
        if prev is None:
            create_rev, version = rev, 1
            if value is None:
                value = b""
            if lease is None:
                lease = 0
        else:
            create_rev, version = prev[0], prev[2] + 1
            if value is None:
                value = self.value_of(prev[4])
            if lease is None:
                lease = prev[3]
        cur = conn.execute(
            "INSERT INTO kv(rev, sub, key, value, create_rev, version, lease) VALUES (?,?,?,?,?,?,?)",
            (rev, len(self.changes), key, value, create_rev, version, lease),
        )
        conn.execute(
            "INSERT OR REPLACE INTO live(key, create_rev, mod_rev, version, lease, kv_id) VALUES (?,?,?,?,?,?)",
            (key, create_rev, rev, version, lease, cur.lastrowid),
        )
        kv = KeyValue(key, create_rev, rev, version, value, lease)
        self.changes.append(Event(EVENT_PUT, kv, 0 if prev is None else prev[1]))
        return kv, prev

    def delete_range(self, key: bytes, range_end: bytes) -> list[KeyValue]:
        """Delete every live key in [key, range_end); returns their last values (for prev_kv)."""
        conn = self.conn
        pred, args = _bounds(key, range_end)
        lpred, _ = _bounds(key, range_end, "live.key")
        rows = conn.execute(
            "SELECT live.key, live.create_rev, live.mod_rev, live.version, kv.value, live.lease "
            f"FROM live JOIN kv ON kv.id = live.kv_id WHERE {lpred} ORDER BY live.key",
            args,
        ).fetchall()
        if not rows:
            return []
        rev = self.rev
        base = len(self.changes)
        conn.executemany(
            "INSERT INTO kv(rev, sub, key, value, create_rev, version, lease) VALUES (?,?,?,NULL,0,0,0)",
            [(rev, base + i, r[0]) for i, r in enumerate(rows)],
        )
        conn.execute(f"DELETE FROM live WHERE {pred}", args)
        prevs = [_kv(r) for r in rows]
        for p in prevs:
            self.changes.append(Event(EVENT_DELETE, KeyValue(p.key, 0, rev, 0, b"", 0), p.mod_revision))
        return prevs

    def range(self, key: bytes, range_end: bytes, revision: int, *, limit: int = 0, count_only: bool = False
              ) -> RangeResult:
        return range_at(
            self.conn, key, range_end, revision, limit=limit, count_only=count_only,
            current=self.read_revision(),
        )

    def end(self, *, persist_revision: bool = True) -> int:
        """Finish the revision; returns the store revision after it.

        ``persist_revision=False`` leaves writing ``meta.revision`` to the caller (the applier writes it once per
        batch, in the same transaction).
        """
        if self.changes:
            if persist_revision:
                meta_set(self.conn, "revision", self.rev)
            return self.rev
        return self.begin_rev


def compact(conn: sqlite3.Connection, revision: int) -> int:
    """Physically drop what compaction at ``revision`` frees; returns rows removed. Caller checks bounds."""
    cur = conn.execute(
        "DELETE FROM kv WHERE rev <= ?1 AND id NOT IN ("
        f" SELECT id FROM (SELECT id, max({_REV_SUB}) AS r, value FROM kv WHERE rev <= ?1 GROUP BY key)"
        " WHERE value IS NOT NULL)",
        (revision,),
    )
    meta_set(conn, "compact_revision", revision)
    return int(cur.rowcount)


def all_revisions(conn: sqlite3.Connection) -> Iterable[tuple[int, int, bytes, bytes | None, int, int, int]]:
    """Every stored row in revision order (for hashing and snapshots)."""
    return conn.execute(
        "SELECT rev, sub, key, value, create_rev, version, lease FROM kv ORDER BY rev, sub"
    )
