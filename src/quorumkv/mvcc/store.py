"""The MVCC key space, as etcd defines it, over SQLite.

Revisions: the store starts at revision 1. Each write transaction that changes something gets the next main
revision; its changes are numbered by a sub revision from 0. Every key has ``create_revision`` (the main
revision of the put that created its current incarnation), ``mod_revision`` (last change) and ``version``
(number of puts since creation; a delete resets it to 0 by removing the key).

Table ``kv`` (see docs/storage.md) holds every revision of every key; a tombstone row (value NULL) records a
delete. A key's state at revision R is its latest row at or before R by (rev, sub), found through the
``kv_by_key`` index (key, rev, sub); there is no separate table of current keys, so a put writes one row and its
index entries, not a second key-ordered table (docs/performance.md: that table cost a random page write per put).

Compaction at revision C keeps, for each key, the latest revision at or before C unless it is a tombstone,
and drops every other revision at or before C. Reads below C fail with ``CompactedError``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from quorumkv.storage.backend import MULTI_ROW_CHUNK, insert_rows, meta_get, meta_set, read_txn

EVENT_PUT = 0
EVENT_DELETE = 1

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


def current_revision(conn: sqlite3.Connection) -> int:
    return int(meta_get(conn, "revision", 1))


def compact_revision(conn: sqlite3.Connection) -> int:
    """The last compaction's revision; -1 on a store never compacted (etcd's compactMainRev starts at -1, so
    a first Compact(0) succeeds)."""
    return int(meta_get(conn, "compact_revision", -1))


#: Orders kv rows by (rev, sub) in one integer (SQLite returns the other columns of the max() row).
_REV_SUB = "rev * 4294967296 + sub"

#: The id of the latest kv row of the key named by ``{key}`` at or before revision ``{rev}`` (an SQL expression):
#: one descent of ``kv_by_key``; rows of one revision (a txn that deleted and re-put a key) are ordered by sub.
_LATEST_ID = "(SELECT id FROM kv WHERE key = {key} AND rev <= {rev} ORDER BY rev DESC, sub DESC LIMIT 1)"

#: The columns of a KeyValue, in ``_kv``'s order, from the kv row aliased ``l``.
_KV_COLUMNS = "l.key, l.create_rev, l.rev, l.version, l.value, l.lease"


def _latest_rows_sql(pred: str, columns: str = _KV_COLUMNS) -> str:
    """SELECT of each key's latest row at or before revision ``?`` (the last parameter) among keys matching
    ``pred`` (on column ``key``), deleted keys left out, sorted by key.

    The inner GROUP BY reads only the ``kv_by_key`` index (every stored revision of the matching keys); each key's
    latest row is then fetched once."""
    return (
        f"SELECT {columns} FROM (SELECT key AS k, max(rev) AS r FROM kv WHERE {pred} AND rev <= ?{{rev}} "
        "GROUP BY key) AS m JOIN kv AS l ON l.id = "
        "(SELECT id FROM kv WHERE key = m.k AND rev = m.r ORDER BY sub DESC LIMIT 1) "
        "WHERE l.value IS NOT NULL ORDER BY l.key"
    )


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
    counts: PageCounts | None = None,
) -> RangeResult:
    """Keys in [key, range_end) as of ``revision`` (<= 0: current), sorted by key.

    ``limit`` > 0 caps the returned kvs; ``count`` is always the number of keys in the range.
    ``counts``: the counts of earlier pages read on ``conn`` (only for a connection that sees committed revisions
    only, never inside a write transaction), so that the next page of a paginated list is not counted again.
    Raises FutureRevisionError / CompactedError as etcd does.
    """
    cur = current_revision(conn) if current is None else current
    rev = cur if revision <= 0 else revision
    if rev > cur:
        raise FutureRevisionError()
    if rev < compact_revision(conn):
        raise CompactedError()
    if not range_end:  # one key: one index descent
        row = conn.execute(
            "SELECT key, create_rev, rev, version, value, lease FROM kv WHERE key = ? AND rev <= ? "
            "ORDER BY rev DESC, sub DESC LIMIT 1", (key, rev)).fetchone()
        if row is None or row[4] is None:
            return RangeResult([], 0, cur)
        return RangeResult([] if count_only else [_kv(row)], 1, cur)
    pred, args = _bounds(key, range_end)
    hargs = (*args, rev)
    n = len(hargs)
    if limit > 0 and not count_only:  # a page: read `limit` keys in key order, count the rest from the index
        rows = _page(conn, key, range_end, rev, limit)
        if len(rows) < limit:
            return RangeResult(rows, len(rows), cur)
        count = None if counts is None else counts.get(conn, key, range_end, rev)
        if count is None:
            count = _count_live(conn, key, range_end, rev)
        if counts is not None:
            counts.remember(conn, range_end, rev, count, rows)
        return RangeResult(rows, count, cur)
    if count_only:
        return RangeResult([], _count_live(conn, key, range_end, rev), cur)
    rows = [_kv(r) for r in conn.execute(_latest_rows_sql(pred).format(rev=n), hargs)]
    count = len(rows)
    if limit > 0:
        rows = rows[:limit]
    return RangeResult(rows, count, cur)


class PageCounts:
    """The ``count`` of the next page of recent paginated lists, so that a list's pages after the first do not
    each count their whole remaining range again (the count is an index scan of the range: most of a page's cost
    on a large range).

    A list's pages share one revision (the first page's, then ``revision`` set by the client), and the next page
    starts just after the last key the client got: ``last + b"\\x00"`` (etcd's clients and Kubernetes' continue
    tokens). After a page of ``n`` keys of a range counted ``count`` keys, the range from just after its i-th
    key holds ``count - i`` keys at that revision: a revision's keys never change (reads below the compacted
    revision fail before the count is looked at). The counts of the last two keys' successors are kept (the
    server reads one key more than the client's limit); at most ``MAX_ENTRIES``, the oldest dropped first. Tied
    to one connection: given another (the store's file was swapped), it forgets everything.
    """

    MAX_ENTRIES = 128

    __slots__ = ("_conn", "_entries")

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._entries: dict[tuple[bytes, bytes, int], int] = {}

    def get(self, conn: sqlite3.Connection, key: bytes, range_end: bytes, rev: int) -> int | None:
        if conn is not self._conn:
            return None
        return self._entries.pop((key, range_end, rev), None)

    def remember(self, conn: sqlite3.Connection, range_end: bytes, rev: int, count: int,
                 kvs: Sequence[KeyValue]) -> None:
        if conn is not self._conn:
            self._conn = conn
            self._entries.clear()
        entries = self._entries
        n = len(kvs)
        for i in (n - 1, n):
            if i >= 1:
                entries[(kvs[i - 1].key + b"\x00", range_end, rev)] = count - i
        while len(entries) > self.MAX_ENTRIES:
            del entries[next(iter(entries))]


def _count_live(conn: sqlite3.Connection, key: bytes, range_end: bytes, rev: int) -> int:
    """How many keys of [key, range_end) exist at ``rev``: the keys with a row at or before it (the ``kv_by_key``
    index alone), less those whose latest such row is a tombstone (the ``kv_tombstones`` partial index)."""
    pred, args = _bounds(key, range_end)
    (keys,) = conn.execute(f"SELECT count(DISTINCT key) FROM kv WHERE {pred} AND rev <= ?", (*args, rev)).fetchone()
    tpred, _ = _bounds(key, range_end, column="t.key")
    (deleted,) = conn.execute(
        f"SELECT count(*) FROM kv AS t WHERE t.value IS NULL AND {tpred} AND t.rev <= ? AND NOT EXISTS (SELECT 1 "
        "FROM kv AS n WHERE n.key = t.key AND n.rev <= ? AND (n.rev, n.sub) > (t.rev, t.sub))",
        (*args, rev, rev)).fetchone()
    return int(keys) - int(deleted)


#: The latest row at or before revision ``?3`` of each of the next ``?4`` keys from ``{lower}`` (``?1``) below
#: ``?2`` (when ``{upper}`` names it), in key order, tombstones included (the caller skips them): the keys come
#: from one scan of the covering ``kv_by_key`` index (GROUP BY key), each key's row from one descent of it.
_PAGE_SQL = (
    "SELECT l.key, l.create_rev, l.rev, l.version, l.value, l.lease FROM (SELECT key AS k FROM kv "
    "WHERE {lower}{upper} AND rev <= ?3 GROUP BY key ORDER BY key LIMIT ?4) AS m JOIN kv AS l ON l.id = "
    "(SELECT id FROM kv WHERE key = m.k AND rev <= ?3 ORDER BY rev DESC, sub DESC LIMIT 1)"
)


def _page(conn: sqlite3.Connection, key: bytes, range_end: bytes, rev: int, limit: int) -> list[KeyValue]:
    """The first ``limit`` keys existing at ``rev`` in [key, range_end), sorted, one statement per batch of keys
    (``_PAGE_SQL``): a page costs its own keys, not the whole range's. A batch that met deleted keys is followed
    by another from its last key."""
    upper = "" if range_end == b"\x00" else " AND key < ?2"
    out: list[KeyValue] = []
    lower, low = "key >= ?1", key
    new = tuple.__new__
    while len(out) < limit:
        want = limit - len(out)
        rows = conn.execute(_PAGE_SQL.format(lower=lower, upper=upper), (low, range_end, rev, want)).fetchall()
        if not rows:
            break
        rows.sort()  # already in key order (the keys' scan order); a guard that costs one pass
        out.extend(new(KeyValue, r) for r in rows if r[4] is not None)  # a tombstone's value is NULL
        if len(rows) < want:
            break
        lower, low = "key > ?1", rows[-1][0]
    return out


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
    """The existing keys attached to the lease, sorted: keys with a row of this lease (``kv_by_lease``) whose
    latest row still carries it (a tombstone carries lease 0)."""
    latest = _LATEST_ID.format(key="c.key", rev="9223372036854775807")
    return [r[0] for r in conn.execute(
        f"SELECT c.key FROM (SELECT DISTINCT key FROM kv WHERE lease = ?1 AND lease != 0) AS c "
        f"JOIN kv AS l ON l.id = {latest} "
        "WHERE l.lease = ?1 ORDER BY c.key", (lease_id,))]


def live_key_count(conn: sqlite3.Connection) -> int:
    """How many keys exist now (reads the whole ``kv_by_key`` index: for metrics, not for the request path)."""
    sql = _latest_rows_sql("1", "l.id").format(rev=1)
    return int(conn.execute(f"SELECT count(*) FROM ({sql})", (9223372036854775807,)).fetchone()[0])


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
        """(create_rev, mod_rev, version, lease, kv_id) of an existing key (its latest row unless a tombstone)."""
        row = self.conn.execute(
            "SELECT create_rev, rev, version, lease, id, value IS NULL FROM kv WHERE key = ? "
            "ORDER BY rev DESC, sub DESC LIMIT 1", (key,)
        ).fetchone()
        return None if row is None or row[5] else (row[0], row[1], row[2], row[3], row[4])

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
        conn.execute(
            "INSERT INTO kv(rev, sub, key, value, create_rev, version, lease) VALUES (?,?,?,?,?,?,?)",
            (rev, len(self.changes), key, value, create_rev, version, lease),
        )
        kv = KeyValue(key, create_rev, rev, version, value, lease)
        self.changes.append(Event(EVENT_PUT, kv, 0 if prev is None else prev[1]))
        return kv, prev

    def delete_range(self, key: bytes, range_end: bytes) -> list[KeyValue]:
        """Delete every live key in [key, range_end); returns their last values (for prev_kv)."""
        conn = self.conn
        if range_end:
            pred, args = _bounds(key, range_end)
            rows = conn.execute(_latest_rows_sql(pred).format(rev=len(args) + 1),
                                (*args, self.rev)).fetchall()
        else:
            row = conn.execute(
                "SELECT key, create_rev, rev, version, value, lease FROM kv WHERE key = ? "
                "ORDER BY rev DESC, sub DESC LIMIT 1", (key,)).fetchone()
            rows = [] if row is None or row[4] is None else [row]
        if not rows:
            return []
        rev = self.rev
        base = len(self.changes)
        conn.executemany(
            "INSERT INTO kv(rev, sub, key, value, create_rev, version, lease) VALUES (?,?,?,NULL,0,0,0)",
            [(rev, base + i, r[0]) for i, r in enumerate(rows)],
        )
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
    """Physically drop what compaction at ``revision`` frees; returns rows removed. Caller checks bounds.

    Only the window since the last compaction P is read: at or below P only each key's kept row is left, so a
    row at or below ``revision`` is freed exactly when it is a tombstone in (P, revision] or an older row of a
    key that has a row in (P, revision]. The work grows with the window, not with the store (a full scan of
    every key's history cost a second per step on a store of a million keys)."""
    prev = compact_revision(conn)
    cur = conn.execute(
        "DELETE FROM kv WHERE id IN ("
        " SELECT o.id FROM kv AS n JOIN kv AS o ON o.key = n.key AND (o.rev, o.sub) < (n.rev, n.sub)"
        " WHERE n.rev > ?1 AND n.rev <= ?2"
        " UNION SELECT id FROM kv WHERE rev > ?1 AND rev <= ?2 AND value IS NULL)",
        (prev, revision),
    )
    meta_set(conn, "compact_revision", revision)
    return int(cur.rowcount)


def revision_within_bytes(conn: sqlite3.Connection, after: int, upto: int, budget: int) -> int:
    """The last revision R in (``after``, ``upto``] whose rows, with those of every revision in (``after``, R],
    hold at most ``budget`` bytes of keys and values (``upto`` when all of them do; ``after + 1`` at least): a
    compaction step's window sized by what it holds, not by its count of revisions. Reads the ``kv_by_rev``
    index and the rows' lengths (not their values)."""
    row = conn.execute(
        "SELECT rev FROM (SELECT rev, sum(length(key) + coalesce(length(value), 0)) OVER (ORDER BY rev, sub) AS total "
        "FROM kv WHERE rev > ? AND rev <= ?) WHERE total > ? LIMIT 1", (after, upto, budget)).fetchone()
    if row is None:
        return upto
    return max(after + 1, int(row[0]) - 1)


def all_revisions(conn: sqlite3.Connection) -> Iterable[tuple[int, int, bytes, bytes | None, int, int, int]]:
    """Every stored row in revision order (for hashing and snapshots)."""
    return conn.execute(
        "SELECT rev, sub, key, value, create_rev, version, lease FROM kv ORDER BY rev, sub"
    )


# -- the applier's batched put path ------------------------------------------------------------------------------

#: The newest ``kv`` row of the key in the first column of a ``VALUES`` list.
_LATEST_ID_OF_VALUE = "(SELECT id FROM kv WHERE key = v.column1 ORDER BY rev DESC, sub DESC LIMIT 1)"


def latest_of_keys(conn: sqlite3.Connection, keys: Sequence[bytes]) -> dict[bytes, tuple[int, int, int]]:
    """``key -> (create_rev, mod_rev, version)`` of each key of ``keys`` that exists now (few statements)."""
    existing: dict[bytes, tuple[int, int, int]] = {}
    for at in range(0, len(keys), 500):
        chunk = keys[at:at + 500]
        sql = (f"SELECT l.key, l.create_rev, l.rev, l.version FROM (VALUES {','.join(['(?)'] * len(chunk))}) AS v "
               f"JOIN kv AS l ON l.id = {_LATEST_ID_OF_VALUE} WHERE l.value IS NOT NULL")
        for key, create_rev, mod_rev, version in conn.execute(sql, chunk):
            existing[key] = (create_rev, mod_rev, version)
    return existing


def insert_put_rows(conn: sqlite3.Connection, rows: Sequence[tuple[int, bytes, bytes, int, int, int]]) -> None:
    """Rows ``(rev, key, value, create_rev, version, lease)`` of plain puts (sub revision 0), in order: they take
    the next rowids in revision order, as ``WriteTxn``'s single inserts do."""
    insert_rows(conn, "INSERT INTO kv(rev, sub, key, value, create_rev, version, lease) VALUES ", 6, rows,
                row_sql="(?,0,?,?,?,?,?)")


def insert_distinct_puts(conn: sqlite3.Connection, rows: Sequence[tuple[int, bytes, bytes, int]]) -> None:
    """Rows ``(rev, key, value, lease)`` of plain puts of all-different keys: SQLite looks each key's latest row
    up inside the INSERT (create_rev and version computed there), one statement per chunk -- the same rows as
    :func:`insert_put_rows` would write after :func:`latest_of_keys`."""
    for at in range(0, len(rows), MULTI_ROW_CHUNK):
        chunk = rows[at:at + MULTI_ROW_CHUNK]
        # column1..4 of the VALUES list: rev, key, value, lease; ORDER BY keeps rowids in revision order
        conn.execute(
            "INSERT INTO kv(rev, sub, key, value, create_rev, version, lease) "
            "SELECT v.column1, 0, v.column2, v.column3, coalesce(l.create_rev, v.column1), "
            "coalesce(l.version, 0) + 1, v.column4 "
            f"FROM (VALUES {','.join(['(?,?,?,?)'] * len(chunk))}) AS v "
            f"LEFT JOIN kv AS l ON l.id = {_LATEST_ID_OF_VALUE.replace('column1', 'column2')} "
            "AND l.value IS NOT NULL ORDER BY v.column1",
            [x for row in chunk for x in row])


def save_applied(conn: sqlite3.Connection, applied_index: int, revision: int) -> None:
    """The applied index and the store revision, in one statement (the applier's last write of each batch)."""
    conn.execute(
        "INSERT INTO meta(name, value) VALUES ('applied_index', ?), ('revision', ?) "
        "ON CONFLICT(name) DO UPDATE SET value=excluded.value", (applied_index, revision))


def stored_revision_count(conn: sqlite3.Connection) -> int:
    """How many key revisions are stored (tombstones included): ``snapshot status``'s total for a SQLite file."""
    return int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])
