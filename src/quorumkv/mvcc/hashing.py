"""Content hashes of the store: ``hash_kv`` (etcd's HashKV) and ``hash_backend`` (etcd's Hash).

Both are CRC-32 (zlib) over a canonical encoding of rows read in a fixed order, so the same data gives the
same hash on any member and after a restart, defrag or restore. The algorithm is not etcd's (etcd hashes
bbolt's on-disk keys with CRC-32C); only the behaviour is: same revision + same data -> same hash.

Invariants: the caller holds a read transaction on ``conn`` (one consistent snapshot); nothing here writes.
"""

from __future__ import annotations

import sqlite3
import struct
import zlib

_ROW = struct.Struct(">qqqqqiq")  # rev, sub, create_rev, version, lease, key length, value length (-1: delete)
_SMALL = struct.Struct(">qq")
_TOMBSTONE = -1


def _hash_kv_rows(conn: sqlite3.Connection, up_to_revision: int, h: int) -> int:
    pack = _ROW.pack
    crc = zlib.crc32
    for rev, sub, key, value, create_rev, version, lease in conn.execute(
        "SELECT rev, sub, key, value, create_rev, version, lease FROM kv WHERE rev <= ? ORDER BY rev, sub",
        (up_to_revision,),
    ):
        h = crc(pack(rev, sub, create_rev, version, lease, len(key), _TOMBSTONE if value is None else len(value)),
                h)
        h = crc(key, h)
        if value:
            h = crc(value, h)
    return h


def hash_kv(conn: sqlite3.Connection, revision: int) -> int:
    """CRC-32 of every stored key revision at or below ``revision`` (what compaction kept below it included)."""
    return _hash_kv_rows(conn, revision, zlib.crc32(b"kv"))


def hash_backend(conn: sqlite3.Connection) -> int:
    """CRC-32 of the replicated content: every key revision, leases, alarms, members, revision markers.

    Local-only state (applied index, term, the log, which member this is) is left out, so members holding the
    same data agree.
    """
    h = _hash_kv_rows(conn, 1 << 62, zlib.crc32(b"backend"))
    pack = _SMALL.pack
    for name in ("revision", "compact_revision"):
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        h = zlib.crc32(name.encode() + pack(0, int(row[0]) if row else 0), h)
    for lease_id, ttl in conn.execute("SELECT id, ttl FROM lease ORDER BY id"):
        h = zlib.crc32(b"L" + pack(lease_id, ttl), h)
    for member_id, alarm in conn.execute("SELECT member_id, alarm FROM alarm ORDER BY member_id, alarm"):
        h = zlib.crc32(b"A" + pack(member_id, alarm), h)
    for member_id, peer_urls, is_learner in conn.execute(
            "SELECT id, peer_urls, is_learner FROM member ORDER BY id"):
        h = zlib.crc32(b"M" + pack(member_id, is_learner) + peer_urls.encode(), h)
    return h & 0xFFFFFFFF
