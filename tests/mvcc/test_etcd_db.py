"""storage.etcd_db: a quorumkv store -> etcd buckets -> a quorumkv store again holds the same data; an export
taken while writing holds exactly one revision; what cannot be carried over is refused clearly."""

from __future__ import annotations

import io
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorumkv.api.authpb import auth_pb2
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.mvcc import etcd_db, store
from quorumkv.storage import auth
from quorumkv.storage.backend import Backend, meta_set
from quorumkv.storage.bbolt import read_db, write_db


def _fill(path: Path) -> Backend:
    backend = Backend(path)
    with backend.write_txn() as conn:
        rev = 1
        for i in range(300):
            txn = store.WriteTxn(conn, rev)
            txn.put(b"k%03d" % (i % 40), b"v%d" % i, 7 if i % 5 == 0 else 0)
            rev = txn.end()
        txn = store.WriteTxn(conn, rev)
        txn.delete_range(b"k010", b"k020")
        txn.put(b"k015", b"again", 0)  # deleted and re-put in one revision: sub revisions 0..10
        rev = txn.end()
        store.compact(conn, 200)
        conn.execute("INSERT INTO lease(id, ttl, remaining_ttl) VALUES (7, 600, 0), (-5, 30, 12)")
        conn.execute("INSERT INTO member(id, name, peer_urls, client_urls, is_learner) VALUES "
                     "(-2, 'm<1>', 'http://127.0.0.1:1,http://127.0.0.1:2', '', 1)")
        conn.execute("INSERT INTO removed_member(id) VALUES (99)")
        conn.execute("INSERT INTO alarm(member_id, alarm) VALUES (-2, 1)")
        meta_set(conn, "applied_index", 4242)
        auth.put_user(conn, auth_pb2.User(name=b"root", password=b"$2a$04$hash", roles=["root"]))
        auth.put_user(conn, auth_pb2.User(name=b"bob", password=b"$2a$04$other", roles=["reader"]))
        auth.put_role(conn, auth_pb2.Role(name=b"reader", keyPermission=[
            auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"a", range_end=b"b")]))
        auth.put_role(conn, auth_pb2.Role(name=b"root"))
        auth.save_flags(conn, True, 9)
    return backend


def _tables(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {
        "kv": conn.execute("SELECT rev, sub, key, value, create_rev, version, lease FROM kv ORDER BY rev, sub")
        .fetchall(),
        "lease": conn.execute("SELECT id, ttl, remaining_ttl FROM lease ORDER BY id").fetchall(),
        "member": conn.execute("SELECT * FROM member ORDER BY id").fetchall(),
        "removed": conn.execute("SELECT id FROM removed_member").fetchall(),
        "alarm": conn.execute("SELECT member_id, alarm FROM alarm").fetchall(),
        "meta": conn.execute("SELECT name, value FROM meta WHERE name IN ('revision', 'compact_revision', "
                             "'auth_enabled', 'auth_revision') ORDER BY name").fetchall(),
        "users": conn.execute("SELECT name, data FROM auth_user ORDER BY name").fetchall(),
        "roles": conn.execute("SELECT name, data FROM auth_role ORDER BY name").fetchall(),
    }


def test_export_then_import_keeps_everything(tmp_path: Path) -> None:
    source = _fill(tmp_path / "a.db")
    expected = _tables(source.writer)
    source.close()
    with open(tmp_path / "etcd.db", "wb+") as fh:
        etcd_db.export_store(tmp_path / "a.db", fh)
    buckets = read_db(tmp_path / "etcd.db")
    assert sorted(buckets) == [b"alarm", b"auth", b"authRoles", b"authUsers", b"cluster", b"key", b"lease",
                               b"members", b"members_removed", b"meta"]
    assert dict(buckets[b"meta"]) == {b"consistent_index": (4242).to_bytes(8, "big"),
                                      b"finishedCompactRev": etcd_db.revision_key(200, 0),
                                      b"scheduledCompactRev": etcd_db.revision_key(200, 0)}
    assert buckets[b"members"] == [(b"fffffffffffffffe", b'{"id":18446744073709551614,"peerURLs":'
                                    b'["http://127.0.0.1:1","http://127.0.0.1:2"],"isLearner":true,'
                                    b'"name":"m\\u003c1\\u003e"}')]
    assert buckets[b"auth"] == [(b"authEnabled", b"\x01"), (b"authRevision", (9).to_bytes(8, "big"))]
    assert [k for k, _ in buckets[b"authUsers"]] == [b"bob", b"root"]
    assert auth_pb2.Role.FromString(dict(buckets[b"authRoles"])[b"reader"]).keyPermission[0].range_end == b"b"
    tombstones = [k for k, _ in buckets[b"key"] if k.endswith(b"t")]
    assert len(tombstones) == 10 and all(len(k) == 18 for k in tombstones)

    target = Backend(tmp_path / "b.db")
    try:
        with target.write_txn() as conn:
            summary = etcd_db.import_db(tmp_path / "etcd.db", conn)
        assert _tables(target.writer) == expected
        assert (summary.revision, summary.compact_revision, summary.leases) == (302, 200, 2)
    finally:
        target.close()


def test_an_export_taken_while_writing_holds_one_revision(tmp_path: Path) -> None:
    """The writer records each revision as ``applied_index`` in the same transaction; the export reads the meta
    bucket first and the key bucket last, so both agree only if they come from one read transaction."""
    backend = _fill(tmp_path / "a.db")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        while not stop.is_set():
            i = written[0]
            with backend.write_txn() as conn:
                txn = store.WriteTxn(conn, store.current_revision(conn))
                for j in range(20):
                    txn.put(b"w/%d/%d" % (i % 17, j), b"x" * 50, 0)
                meta_set(conn, "applied_index", txn.end())
            written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    exports = []
    try:
        for _ in range(500):  # bounded wait for the writer to get going
            if written[0] >= 5:
                break
            stop.wait(0.01)
        while len(exports) < 4:
            out = io.BytesIO()
            etcd_db.export_store(tmp_path / "a.db", out)
            exports.append(out.getvalue())
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and written[0] >= 5
    for n, data in enumerate(exports):
        path = tmp_path / f"export-{n}.db"
        path.write_bytes(data)
        buckets = read_db(path)
        applied = int.from_bytes(dict(buckets[b"meta"])[b"consistent_index"], "big")
        last = etcd_db.parse_revision_key(buckets[b"key"][-1][0])[0]
        assert applied == last > 302
        revs = [etcd_db.parse_revision_key(k)[:2] for k, _ in buckets[b"key"]]
        assert sum(1 for r, _ in revs if r == last) == 20  # the last revision whole


@settings(max_examples=200, deadline=None)
@given(lease_id=st.integers(min_value=-(2**63), max_value=2**63 - 1),
       ttl=st.integers(min_value=-(2**63), max_value=2**63 - 1),
       remaining=st.integers(min_value=0, max_value=2**40))
def test_lease_encoding_round_trips(lease_id: int, ttl: int, remaining: int) -> None:
    assert etcd_db.decode_lease(etcd_db.encode_lease(lease_id, ttl, remaining)) == (lease_id, ttl, remaining)


def test_lease_and_revision_encodings_match_etcd() -> None:
    # bytes from a real etcd 3.4.23 snapshot: lease 1f0fa2510b95480a with TTL 600
    assert etcd_db.encode_lease(0x1F0FA2510B95480A, 600) == bytes.fromhex("088a90d5dc90cae8871f10d804")
    assert etcd_db.revision_key(3, 0) == bytes.fromhex("00000000000000035f0000000000000000")
    assert etcd_db.parse_revision_key(etcd_db.revision_key(5, 2, True)) == (5, 2, True)
    assert etcd_db.crc32c(b"123456789") == 0xE3069283
    with pytest.raises(ValueError):
        etcd_db.parse_revision_key(b"\0" * 16)


def _import_buckets(tmp_path: Path, buckets: dict[bytes, list[tuple[bytes, bytes]]]) -> None:
    path = tmp_path / "in.db"
    write_db(path, buckets)
    target = Backend(tmp_path / "out.db")
    try:
        with target.write_txn() as conn:
            etcd_db.import_db(path, conn)
    finally:
        target.close()


def test_import_refuses_what_it_cannot_carry_over(tmp_path: Path) -> None:
    base: dict[bytes, list[tuple[bytes, bytes]]] = {b"key": [], b"meta": []}
    with pytest.raises(etcd_db.EtcdDbError, match="damaged 'auth' bucket"):
        _import_buckets(tmp_path, {**base, b"auth": [(b"authEnabled", b"\x07")]})
    with pytest.raises(etcd_db.EtcdDbError, match="damaged entry b'bob' in bucket 'authUsers'"):
        _import_buckets(tmp_path, {**base, b"authUsers": [(b"bob", b"\xff\xff")]})
    with pytest.raises(etcd_db.EtcdDbError, match="naming b'eve'"):
        _import_buckets(tmp_path, {**base, b"authRoles": [(b"bob", auth_pb2.Role(name=b"eve").SerializeToString())]})
    with pytest.raises(etcd_db.EtcdDbError, match="not an etcd database"):
        _import_buckets(tmp_path, {b"other": []})
    with pytest.raises(etcd_db.EtcdDbError, match="damaged entry in bucket 'key'"):
        _import_buckets(tmp_path, {**base, b"key": [(b"short", b"")]})
    bad_kv = kv_pb2.KeyValue(key=b"a", mod_revision=9).SerializeToString()
    with pytest.raises(etcd_db.EtcdDbError, match="mod_revision 9"):
        _import_buckets(tmp_path, {**base, b"key": [(etcd_db.revision_key(2, 0), bad_kv)]})
    with pytest.raises(etcd_db.EtcdDbError, match="damaged lease"):
        _import_buckets(tmp_path, {**base, b"lease": [(b"\0" * 8, b"\x08")]})


def test_an_interrupted_compaction_is_finished_by_the_import(tmp_path: Path) -> None:
    def put(rev: int, value: bytes) -> tuple[bytes, bytes]:
        kv = kv_pb2.KeyValue(key=b"a", create_revision=2, mod_revision=rev, version=rev - 1, value=value)
        return etcd_db.revision_key(rev, 0), kv.SerializeToString()

    path = tmp_path / "in.db"
    write_db(path, {b"key": [put(2, b"1"), put(3, b"2"), put(4, b"3")],
                    b"meta": [(b"finishedCompactRev", etcd_db.revision_key(2, 0)),
                              (b"scheduledCompactRev", etcd_db.revision_key(3, 0))]})
    target = Backend(tmp_path / "out.db")
    try:
        with target.write_txn() as conn:
            summary = etcd_db.import_db(path, conn)
        assert (summary.revision, summary.compact_revision) == (4, 3)
        assert [r for (r,) in target.writer.execute("SELECT rev FROM kv ORDER BY rev")] == [3, 4]
    finally:
        target.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=1 << 20), st.integers(min_value=1, max_value=255)),
                      min_size=1, max_size=3))
def test_damaged_etcd_databases_import_or_fail_clearly(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    good = tmp_path / "good-etcd.db"
    if not good.exists():
        _fill(tmp_path / "src.db").close()
        with open(good, "wb+") as fh:
            etcd_db.export_store(tmp_path / "src.db", fh)
    data = bytearray(good.read_bytes())
    for at, xor in flips:
        data[at % len(data)] ^= xor
    bad = tmp_path / "bad-etcd.db"
    bad.write_bytes(bytes(data))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'out.db'}{suffix}").unlink(missing_ok=True)
    target = Backend(tmp_path / "out.db")
    try:
        with target.write_txn() as conn:
            etcd_db.import_db(bad, conn)
    except etcd_db.EtcdDbError as exc:
        assert str(bad) in str(exc)
    finally:
        target.close()


_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.lists(st.tuples(st.binary(min_size=1, max_size=6), st.binary(max_size=5000),
                                                 st.sampled_from([0, 7, 1 << 62])), min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.binary(min_size=1, max_size=3), st.binary(max_size=3)),
    st.tuples(st.just("compact"), st.integers(min_value=0, max_value=100)),
), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_random_histories_round_trip(tmp_path: Path, ops: list[tuple[object, ...]]) -> None:
    """Random puts (several per revision, big values), range deletes and compactions: export then import gives
    back the same rows, revision and compaction."""
    for name in ("src.db", "dst.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp_path / name}{suffix}").unlink(missing_ok=True)
    source = Backend(tmp_path / "src.db")
    try:
        with source.write_txn() as conn:
            for op in ops:
                rev = store.current_revision(conn)
                if op[0] == "compact":
                    target_rev = min(int(op[1]), rev)  # type: ignore[call-overload]
                    if target_rev > store.compact_revision(conn):
                        store.compact(conn, target_rev)
                    continue
                txn = store.WriteTxn(conn, rev)
                if op[0] == "put":
                    for key, value, lease in op[1]:  # type: ignore[attr-defined]
                        txn.put(key, value, lease)
                else:
                    txn.delete_range(op[1], op[2])  # type: ignore[arg-type]
                txn.end()
        expected = _tables(source.writer)
    finally:
        source.close()
    with open(tmp_path / "etcd.db", "wb+") as fh:
        etcd_db.export_store(tmp_path / "src.db", fh)
    target = Backend(tmp_path / "dst.db")
    try:
        with target.write_txn() as conn:
            etcd_db.import_db(tmp_path / "etcd.db", conn)
        got = _tables(target.writer)
    finally:
        target.close()
    if not [row for row in expected["meta"] if row[0] == "revision"]:
        expected["meta"] = sorted([*expected["meta"], ("revision", 1)])
    assert got == expected
