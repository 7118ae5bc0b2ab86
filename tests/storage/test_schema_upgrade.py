"""Opening a schema-1 data file (which kept a ``live`` table) upgrades it in place, losing nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.mvcc import store
from quorumkv.server import snapshot
from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.storage.backend import SCHEMA_VERSION, Backend
from quorumkv.storage.datadir import DB_FILE

_V1_LIVE = """
CREATE TABLE live (
    key BLOB PRIMARY KEY, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL,
    lease INTEGER NOT NULL, kv_id INTEGER NOT NULL
) WITHOUT ROWID
"""


def _fill(path: Path) -> list[store.KeyValue]:
    backend = Backend(path)
    applier = Applier(backend.writer)
    entries = [
        (EntryKind.LEASE_GRANT, pb.LeaseGrantRequest(ID=7, TTL=60)),
        (EntryKind.PUT, pb.PutRequest(key=b"a", value=b"1")),
        (EntryKind.PUT, pb.PutRequest(key=b"a", value=b"2")),
        (EntryKind.PUT, pb.PutRequest(key=b"b", value=b"x", lease=7)),
        (EntryKind.PUT, pb.PutRequest(key=b"c", value=b"gone")),
        (EntryKind.DELETE_RANGE, pb.DeleteRangeRequest(key=b"c")),
    ]
    with backend.write_txn() as conn:
        for index, (kind, req) in enumerate(entries, start=1):
            applier.apply(conn, index, encode_entry(kind, index, req.SerializeToString()), ApplyResult())
        applier.finish(conn)
    kvs = store.range_at(backend.writer, b"\x00", b"\x00", 0).kvs
    backend.close()
    return kvs


def _make_schema_1(db: Path) -> None:
    """Turn a schema-2 file into what schema 1 wrote: a ``live`` row per existing key, no ``kv_by_lease``."""
    with sqlite3.connect(db) as conn:
        conn.execute(_V1_LIVE)
        conn.execute(
            "INSERT INTO live SELECT k.key, k.create_rev, k.rev, k.version, k.lease, k.id FROM kv AS k "
            "WHERE k.value IS NOT NULL AND k.id = (SELECT max(id) FROM kv WHERE key = k.key)")
        conn.execute("DROP INDEX kv_by_lease")
        conn.execute("DROP INDEX kv_by_key")
        conn.execute("CREATE INDEX kv_by_key ON kv(key, rev)")
        conn.execute("PRAGMA user_version=1")


def test_schema_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "db"
    before = _fill(db)
    assert [kv.key for kv in before] == [b"a", b"b"]
    _make_schema_1(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM live").fetchone()[0] == 2

    backend = Backend(db)
    try:
        conn = backend.writer
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"auth_user", "auth_role"} <= names
        assert "live" not in names and "kv_by_lease" in names
        assert [r[2] for r in conn.execute("PRAGMA index_info(kv_by_key)")] == ["key", "rev", "sub"]
        assert store.range_at(conn, b"\x00", b"\x00", 0).kvs == before
        assert store.keys_with_lease(conn, 7) == [b"b"]
        assert store.live_key_count(conn) == 2
        # the store goes on from where it was: the next put of "a" is its third version
        applier = Applier(conn)
        with backend.write_txn() as wconn:
            applier.apply(wconn, 7, encode_entry(EntryKind.PUT, 7, pb.PutRequest(key=b"a", value=b"3")
                                                 .SerializeToString()), ApplyResult())
            applier.finish(wconn)
        [a] = store.range_at(conn, b"a", b"", 0).kvs
        assert (a.value, a.version, a.create_revision) == (b"3", 3, before[0].create_revision)
    finally:
        backend.close()

    reopened = Backend(db)  # a second open finds version 2 and changes nothing
    try:
        assert reopened.writer.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        reopened.close()


def test_a_schema_1_snapshot_restores_and_is_upgraded_when_opened(tmp_path: Path) -> None:
    db = tmp_path / "db"
    before = _fill(db)
    _make_schema_1(db)
    snap = tmp_path / "old.snapshot"
    snapshot.save(db, snap, snapshot_format=snapshot.FORMAT_SQLITE)  # the format quorumkv wrote with schema 1
    status = snapshot.snapshot_status(snap)  # five puts and a delete from revision 1; five kv rows (one tombstone)
    assert (status.revision, status.total_key) == (6, 5)
    restored = snapshot.restore(snap, tmp_path / "restored")
    backend = Backend(restored.data_dir / DB_FILE)
    try:
        assert backend.writer.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.range_at(backend.writer, b"\x00", b"\x00", 0).kvs == before
    finally:
        backend.close()
