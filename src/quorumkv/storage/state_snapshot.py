"""Raft snapshots of the state machine: a logical dump of the replicated tables, and its restore.

A leader whose log no longer holds what a follower needs sends this dump (chunked by the Raft core). The dump is
taken on the Raft thread between two Ready cycles, so it is exactly the state at the applied index; the restore
replaces the replicated tables in the same SQLite transaction that records the snapshot's index.

Format (all integers little-endian): ``b"QKVS"``, version u8, then zlib-compressed body: for each table
``name`` (u16 length + utf-8), column count u16, column names, row count u64, then each value as a tag byte
(0 NULL, 1 int64, 2 bytes, 3 text, 4 float64) and its payload. Local tables (``raft_log``) and member-local
``meta`` rows are never included.
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from typing import Any

MAGIC = b"QKVS"
VERSION = 1
#: Replicated tables, in restore order. ``meta`` is filtered to ``REPLICATED_META``.
TABLES = ("kv", "lease", "member", "alarm", "removed_member", "auth_user", "auth_role", "meta")
#: Tables added after the format's first release: absent from older members' snapshots (read as empty).
OPTIONAL_TABLES = ("auth_user", "auth_role")
#: meta rows that belong to the replicated state (the rest are this member's: its ID, raft state, log bounds).
REPLICATED_META = ("revision", "compact_revision", "cluster_id", "auth_enabled", "auth_revision")

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


class SnapshotFormatError(ValueError):
    """The snapshot bytes are not a quorumkv state snapshot (or are damaged)."""


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


def dump(conn: sqlite3.Connection) -> bytes:
    """The replicated state as bytes (call inside a read transaction or on the only writer)."""
    out = bytearray()
    for table in TABLES:
        cols = _columns(conn, table)
        if table == "meta":
            marks = ",".join("?" * len(REPLICATED_META))
            rows = conn.execute(f"SELECT {','.join(cols)} FROM meta WHERE name IN ({marks}) ORDER BY name",
                                REPLICATED_META).fetchall()
        else:
            rows = conn.execute(f"SELECT {','.join(cols)} FROM {table} ORDER BY 1").fetchall()
        name = table.encode()
        out += _U16.pack(len(name)) + name + _U16.pack(len(cols))
        for c in cols:
            cb = c.encode()
            out += _U16.pack(len(cb)) + cb
        out += _U64.pack(len(rows))
        for row in rows:
            for v in row:
                _put_value(out, v)
    return MAGIC + bytes([VERSION]) + zlib.compress(bytes(out), 1)


def _put_value(out: bytearray, v: Any) -> None:
    if v is None:
        out.append(0)
    elif isinstance(v, int):
        out.append(1)
        out += _I64.pack(v)
    elif isinstance(v, bytes):
        out.append(2)
        out += _U32.pack(len(v)) + v
    elif isinstance(v, str):
        b = v.encode()
        out.append(3)
        out += _U32.pack(len(b)) + b
    elif isinstance(v, float):
        out.append(4)
        out += _F64.pack(v)
    else:  # pragma: no cover - SQLite returns only these types
        raise TypeError(f"cannot snapshot value of type {type(v).__name__}")


def parse(data: bytes) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Decode a dump into ``{table: (columns, rows)}``; raises SnapshotFormatError on anything malformed."""
    if len(data) < 5 or data[:4] != MAGIC:
        raise SnapshotFormatError("not a quorumkv state snapshot (bad magic)")
    if data[4] != VERSION:
        raise SnapshotFormatError(f"unsupported state snapshot version {data[4]} (this build reads {VERSION})")
    try:
        body = zlib.decompress(data[5:])
    except zlib.error as exc:
        raise SnapshotFormatError(f"state snapshot is damaged: {exc}") from exc
    tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    off = 0
    try:
        while off < len(body):
            (n,) = _U16.unpack_from(body, off)
            off += 2
            name = body[off:off + n].decode()
            off += n
            (ncols,) = _U16.unpack_from(body, off)
            off += 2
            cols = []
            for _ in range(ncols):
                (n,) = _U16.unpack_from(body, off)
                off += 2
                cols.append(body[off:off + n].decode())
                off += n
            (nrows,) = _U64.unpack_from(body, off)
            off += 8
            rows = []
            for _ in range(nrows):
                row: list[Any] = []
                for _ in range(ncols):
                    tag = body[off]
                    off += 1
                    if tag == 0:
                        row.append(None)
                    elif tag == 1:
                        row.append(_I64.unpack_from(body, off)[0])
                        off += 8
                    elif tag in (2, 3):
                        (n,) = _U32.unpack_from(body, off)
                        off += 4
                        raw = body[off:off + n]
                        if len(raw) != n:
                            raise SnapshotFormatError("state snapshot is truncated")
                        row.append(raw if tag == 2 else raw.decode())
                        off += n
                    elif tag == 4:
                        row.append(_F64.unpack_from(body, off)[0])
                        off += 8
                    else:
                        raise SnapshotFormatError(f"state snapshot has an unknown value tag {tag}")
                rows.append(tuple(row))
            tables[name] = (cols, rows)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise SnapshotFormatError(f"state snapshot is truncated or damaged: {exc}") from exc
    for t in OPTIONAL_TABLES:  # a snapshot from a schema-2 member has no auth tables: auth was never enabled
        tables.setdefault(t, (["name", "data"], []))
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise SnapshotFormatError(f"state snapshot lacks tables {missing}")
    return tables


def restore(conn: sqlite3.Connection, data: bytes) -> None:
    """Replace the replicated tables with the dump's content (inside the caller's write transaction).

    Parses everything first, so a malformed snapshot changes nothing."""
    tables = parse(data)
    for table in TABLES:
        cols, rows = tables[table]
        have = set(_columns(conn, table))
        unknown = [c for c in cols if c not in have]
        if unknown:
            raise SnapshotFormatError(f"state snapshot table {table} has unknown columns {unknown}")
    for table in TABLES:
        cols, rows = tables[table]
        if table == "meta":
            marks = ",".join("?" * len(REPLICATED_META))
            conn.execute(f"DELETE FROM meta WHERE name IN ({marks})", REPLICATED_META)
            rows = [r for r in rows if r[cols.index("name")] in REPLICATED_META]
        else:
            conn.execute(f"DELETE FROM {table}")
        if rows:
            conn.executemany(
                f"INSERT INTO {table}({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", rows)
