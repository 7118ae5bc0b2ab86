"""The batched put path (Applier.apply_many) must be indistinguishable from applying entries one by one."""

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
from quorumkv.storage.backend import Backend

KEYS = [b"a", b"b", b"c", b"d"]
LEASE_ID = 7

# Puts that take the batched path (plain, or with a known lease) and ones that must not (unknown lease → error,
# prev_kv, ignore_value on a possibly missing key).
put_op = st.builds(
    lambda k, v, lease, prev, ign_v: ("put", pb.PutRequest(
        key=k, value=b"" if ign_v else v, lease=lease, prev_kv=prev, ignore_value=ign_v)),
    st.sampled_from(KEYS), st.binary(max_size=8), st.sampled_from([0, 0, 0, LEASE_ID, 99]), st.booleans(),
    st.booleans(),
)
plain_put = st.builds(lambda k, v: ("put", pb.PutRequest(key=k, value=v)), st.sampled_from(KEYS), st.binary(max_size=8))
delete_op = st.builds(lambda k: ("del", pb.DeleteRangeRequest(key=k)), st.sampled_from(KEYS))
txn_op = st.builds(
    lambda k, v: ("txn", pb.TxnRequest(
        compare=[pb.Compare(key=k, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=v))],
        failure=[pb.RequestOp(request_put=pb.PutRequest(key=k + b"x", value=v))])),
    st.sampled_from(KEYS), st.binary(max_size=8),
)
# Raising and clearing the NOSPACE alarm mid-batch: puts after it must be refused on both paths.
alarm_op = st.builds(
    lambda on: ("alarm", pb.AlarmRequest(
        action=pb.AlarmRequest.ACTIVATE if on else pb.AlarmRequest.DEACTIVATE, memberID=1,
        alarm=pb.AlarmType.NOSPACE)),
    st.booleans(),
)
ops = st.lists(st.one_of(plain_put, plain_put, put_op, delete_op, txn_op, alarm_op), min_size=1, max_size=40)
KIND = {"put": EntryKind.PUT, "del": EntryKind.DELETE_RANGE, "txn": EntryKind.TXN, "alarm": EntryKind.ALARM}


def _entries(batch: list[tuple[str, object]], start_index: int) -> list[tuple[int, bytes]]:
    out = []
    for i, (name, req) in enumerate(batch):
        assert isinstance(req, (pb.PutRequest, pb.DeleteRangeRequest, pb.TxnRequest, pb.AlarmRequest))
        out.append((start_index + i, encode_entry(KIND[name], start_index + i, req.SerializeToString())))
    return out


def _state(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], ...]:
    return (
        conn.execute("SELECT id, rev, sub, key, value, create_rev, version, lease FROM kv ORDER BY id").fetchall(),
        store.range_at(conn, b"\x00", b"\x00", 0).kvs,  # every existing key as the store reads it
        conn.execute("SELECT name, value FROM meta ORDER BY name").fetchall(),
    )


def _fresh(path: Path) -> tuple[Backend, Applier]:
    backend = Backend(path)
    applier = Applier(backend.writer)
    with backend.write_txn() as conn:
        result = ApplyResult()
        grant = pb.LeaseGrantRequest(ID=LEASE_ID, TTL=60).SerializeToString()
        applier.apply(conn, 1, encode_entry(EntryKind.LEASE_GRANT, 0, grant), result)
        applier.finish(conn)
    return backend, applier


def _responses(result: ApplyResult) -> dict[int, str]:
    return {rid: (repr(r) if not hasattr(r, "SerializeToString") else r.SerializeToString().hex())  # type: ignore[union-attr]
            for rid, r in result.responses.items()}


def _apply_both(one_backend: Backend, one: Applier, many_backend: Backend, many: Applier,
                entries: list[tuple[int, bytes]]) -> tuple[ApplyResult, ApplyResult]:
    """The same entries applied one by one (``one``) and batched (``many``, its own result kind)."""
    r_one, r_many = ApplyResult(), many.new_result()
    with one_backend.write_txn() as c1:
        for idx, data in entries:
            one.apply(c1, idx, data, r_one)
        one.finish(c1)
    with many_backend.write_txn() as c2:
        many.apply_many(c2, entries, r_many)
        many.finish(c2, r_many)
    return r_one, r_many


@pytest.mark.parametrize("watched", [True, False], ids=["watched", "unwatched"])
@settings(max_examples=60, deadline=None)
@given(batches=st.lists(ops, min_size=1, max_size=4))
def test_batched_apply_equals_one_by_one(watched: bool, batches: list[list[tuple[str, object]]]) -> None:
    """Unwatched batches (no events built) take the quiet put path whenever a run's keys are all different."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        one_backend, one = _fresh(Path(d) / "one.db")
        many_backend, many = _fresh(Path(d) / "many.db")
        many.events_wanted = lambda: watched
        index = 2
        for batch in batches:
            entries = _entries(batch, index)
            index += len(entries)
            r_one, r_many = _apply_both(one_backend, one, many_backend, many, entries)
            assert _responses(r_many) == _responses(r_one)
            if watched:
                assert r_many.events == r_one.events
            else:
                assert r_many.events == [] and r_many.revision == one.revision
            assert _state(many_backend.writer) == _state(one_backend.writer)
        one_backend.close()
        many_backend.close()


def test_batched_apply_skips_already_applied_entries(tmp_path: Path) -> None:
    backend, applier = _fresh(tmp_path / "q.db")
    entries = _entries([("put", pb.PutRequest(key=b"a", value=b"1")), ("put", pb.PutRequest(key=b"a", value=b"2"))], 2)
    with backend.write_txn() as conn:
        applier.apply_many(conn, entries, ApplyResult())
        applier.finish(conn)
    again = ApplyResult()
    with backend.write_txn() as conn:
        applier.apply_many(conn, entries, again)  # a replay of the same indexes changes nothing
        applier.finish(conn)
    assert again.responses == {} and again.events == []
    [kv] = store.range_at(backend.writer, b"a", b"", 0).kvs
    assert (kv.version, kv.value) == (2, b"2")
    backend.close()


def test_put_responses_are_built_only_for_wanted_requests(tmp_path: Path) -> None:
    """A Raft member answers only the requests it proposed: other members' puts get no response message here,
    yet are applied the same (revisions, rows)."""
    backend, applier = _fresh(tmp_path / "q.db")
    mine = {3}
    applier.response_wanted = mine.__contains__
    entries = _entries([("put", pb.PutRequest(key=k, value=b"v")) for k in (b"a", b"b", b"c")], 2)  # ids 2, 3, 4
    result = ApplyResult()
    with backend.write_txn() as conn:
        applier.apply_many(conn, entries, result)
        applier.finish(conn)
    assert list(result.responses) == [3]
    assert result.responses[3].header.revision == 3  # type: ignore[attr-defined]
    assert [rev for rev, _ in result.events] == [2, 3, 4] and applier.revision == 4
    backend.close()


def test_unwatched_run_of_distinct_keys_takes_the_quiet_path_with_the_same_rows(tmp_path: Path) -> None:
    """More distinct keys than one multi-row statement holds, new and existing ones, with and without a lease:
    the quiet path (keys looked up inside the kv INSERT) gives the rows entry-by-entry apply gives."""
    one_backend, one = _fresh(tmp_path / "one.db")
    many_backend, many = _fresh(tmp_path / "many.db")
    many.events_wanted = lambda: False
    taken: list[int] = []
    quiet = many._apply_quiet_put_run

    def spy(conn: sqlite3.Connection, run: list[tuple[int, int, pb.PutRequest]], result: ApplyResult) -> None:
        taken.append(len(run))
        quiet(conn, run, result)

    many._apply_quiet_put_run = spy  # type: ignore[method-assign]
    first = [("put", pb.PutRequest(key=b"k%03d" % i, value=b"a")) for i in range(0, 600, 2)]
    second = [("put", pb.PutRequest(key=b"k%03d" % i, value=b"b%d" % i, lease=LEASE_ID if i % 3 else 0))
              for i in range(600)]
    index = 2
    for batch in (first, second):
        entries = _entries(batch, index)  # type: ignore[arg-type]
        index += len(entries)
        r_one, r_many = _apply_both(one_backend, one, many_backend, many, entries)
        assert _responses(r_many) == _responses(r_one)
    assert taken == [300, 600]
    assert _state(many_backend.writer) == _state(one_backend.writer)
    versions = {kv.key: kv.version for kv in store.range_at(many_backend.writer, b"\x00", b"\x00", 0).kvs}
    assert versions[b"k000"] == 2 and versions[b"k001"] == 1
    one_backend.close()
    many_backend.close()
