"""Raft state snapshots: a dump restores to the same replicated state; damaged dumps change nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.mvcc import store
from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.storage import state_snapshot
from quorumkv.storage.backend import Backend, meta_get


def fresh(path: Path) -> Backend:
    b = Backend(path)
    Applier(b.writer)
    return b


def content(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in ("kv", "lease", "member", "alarm", "removed_member")}


def fill(b: Backend, ops: list[tuple[int, bytes, bytes]]) -> None:
    applier = Applier(b.writer)
    with b.write_txn() as c:
        applier.apply(c, 1, encode_entry(EntryKind.LEASE_GRANT, 0,
                                         pb.LeaseGrantRequest(ID=7, TTL=60).SerializeToString()), ApplyResult())
        for i, (op, key, value) in enumerate(ops, start=2):
            if op == 0:
                data = encode_entry(EntryKind.PUT, 0, pb.PutRequest(key=key, value=value, lease=7 if value else 0)
                                    .SerializeToString())
            else:
                data = encode_entry(EntryKind.DELETE_RANGE, 0, pb.DeleteRangeRequest(key=key).SerializeToString())
            applier.apply(c, i, data, ApplyResult())
        c.execute("INSERT INTO member(id, name, peer_urls, client_urls, is_learner) VALUES (-5, 'm', 'u', '', 1)")
        c.execute("INSERT INTO removed_member(id) VALUES (99)")
        applier.finish(c)


ops_strategy = st.lists(st.tuples(st.integers(0, 1), st.binary(min_size=1, max_size=4), st.binary(max_size=8)),
                        max_size=30)


@settings(max_examples=25, deadline=None)
@given(ops=ops_strategy, other=ops_strategy)
def test_dump_restore_reproduces_the_replicated_state(tmp_path_factory: pytest.TempPathFactory,
                                                      ops: list[tuple[int, bytes, bytes]],
                                                      other: list[tuple[int, bytes, bytes]]) -> None:
    d = tmp_path_factory.mktemp("snap")
    src, dst = fresh(d / "a.db"), fresh(d / "b.db")
    try:
        fill(src, ops)
        fill(dst, other)  # whatever was there before is replaced, not merged
        data = state_snapshot.dump(src.writer)
        with dst.write_txn() as c:
            state_snapshot.restore(c, data)
        assert content(dst.writer) == content(src.writer)
        assert store.current_revision(dst.writer) == store.current_revision(src.writer)
        assert meta_get(dst.writer, "revision") == meta_get(src.writer, "revision")
    finally:
        src.close()
        dst.close()


@pytest.mark.parametrize("damage", ["magic", "version", "truncate", "flip"])
def test_damaged_snapshot_is_refused_and_changes_nothing(tmp_path: Path, damage: str) -> None:
    src, dst = fresh(tmp_path / "a.db"), fresh(tmp_path / "b.db")
    try:
        fill(src, [(0, b"k", b"v")])
        fill(dst, [(0, b"other", b"x")])
        before = content(dst.writer)
        data = bytearray(state_snapshot.dump(src.writer))
        if damage == "magic":
            data[0:4] = b"XXXX"
        elif damage == "version":
            data[4] = 99
        elif damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[-3] ^= 0xFF
        with pytest.raises(state_snapshot.SnapshotFormatError):
            with dst.write_txn() as c:
                state_snapshot.restore(c, bytes(data))
        assert content(dst.writer) == before
    finally:
        src.close()
        dst.close()
