"""Maintenance: alarms and the space quota, Hash/HashKV, snapshots (save/status/restore), defrag, MoveLeader,
auto-compaction. In-process tests drive ``QuorumServer`` directly; end-to-end ones use real etcdctl 3.4."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.mvcc import store
from quorumkv.server.compactor import PeriodicCompactor, RevisionCompactor, make_compactor
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings
from quorumkv.server.snapshot import SnapshotError, restore, save, snapshot_status
from quorumkv.testing.clock import FakeClock
from quorumkv.testing.processes import start_quorumkv

NOSPACE = pb.AlarmType.NOSPACE


def run_with_server(data_dir: Path, body: Callable[[QuorumServer], Awaitable[Any]], **settings: Any) -> Any:
    """Start a member on ``data_dir``, run ``body`` on it, stop it (also on failure)."""
    async def main() -> Any:
        srv = QuorumServer(ServerSettings(data_dir=str(data_dir), **settings))
        await srv.start()
        try:
            return await body(srv)
        finally:
            await srv.stop()
    return asyncio.run(main())


async def put(srv: QuorumServer, key: str, value: bytes = b"v", lease: int = 0) -> int:
    resp = await srv.put(pb.PutRequest(key=key.encode(), value=value, lease=lease))
    return resp.header.revision


def all_kvs(srv: QuorumServer, revision: int = 0) -> list[tuple[bytes, bytes, int, int, int, int]]:
    resp = srv.range(pb.RangeRequest(key=b"\0", range_end=b"\0", revision=revision))
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in resp.kvs]


# -- alarms and quota ----------------------------------------------------------------------------------------


def test_alarm_activate_get_deactivate_persist_across_restart(tmp_path: Path) -> None:
    async def raise_it(srv: QuorumServer) -> None:
        act = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=srv.member_id, alarm=NOSPACE)
        assert [a.alarm for a in (await srv.alarm(act)).alarms] == [NOSPACE]
        assert list((await srv.alarm(act)).alarms) == []  # already raised: nothing new
        none = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=srv.member_id, alarm=pb.AlarmType.NONE)
        assert list((await srv.alarm(none)).alarms) == []
        with pytest.raises(EtcdError) as exc:
            await put(srv, "k")
        assert exc.value.message == errors.NO_SPACE.message and exc.value.code == "RESOURCE_EXHAUSTED"
        with pytest.raises(EtcdError, match="database space exceeded"):
            await srv.lease_grant(pb.LeaseGrantRequest(TTL=10))
        txn = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"1"))])
        with pytest.raises(EtcdError, match="database space exceeded"):
            await srv.txn(txn)

    async def still_raised(srv: QuorumServer) -> None:
        got = await srv.alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET))
        assert [(a.memberID, a.alarm) for a in got.alarms] == [(srv.member_id, NOSPACE)]
        assert srv.status().errors == [f"memberID:{srv.member_id} alarm:NOSPACE "]
        with pytest.raises(EtcdError, match="database space exceeded"):
            await put(srv, "k")
        # reads, deletes, read-only/delete-only txns and compaction still work
        all_kvs(srv)
        await srv.delete_range(pb.DeleteRangeRequest(key=b"a"))
        await srv.txn(pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"x"))]))
        deact = pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=srv.member_id, alarm=NOSPACE)
        assert len((await srv.alarm(deact)).alarms) == 1
        assert list((await srv.alarm(deact)).alarms) == []
        await put(srv, "k")
        assert srv.status().errors == []

    run_with_server(tmp_path / "d", raise_it)
    run_with_server(tmp_path / "d", still_raised)


def test_quota_check_raises_nospace_before_proposing(tmp_path: Path) -> None:
    async def body(srv: QuorumServer) -> None:
        size = srv.backend.allocated_bytes(srv.reader)
        srv.settings.quota_backend_bytes = size + 4096
        await put(srv, "small")  # fits
        with pytest.raises(EtcdError, match="database space exceeded"):
            await put(srv, "big", b"x" * 8192)
        assert [(a.memberID, a.alarm) for a in srv.applier.alarm_members()] == [(srv.member_id, NOSPACE)]

    run_with_server(tmp_path / "d", body)


def _etcdctl_ok(server: Any, *args: str) -> str:
    r = server.etcdctl(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return str(r.stdout)


def test_nospace_lifecycle_end_to_end_with_etcdctl(tmp_path: Path) -> None:
    quota = 2 * 1024 * 1024
    srv = start_quorumkv(tmp_path / "a", extra_args=["--quota-backend-bytes", str(quota)])
    data_dir = srv.data_dir
    try:
        value = "x" * 100_000
        refused = None
        for i in range(60):
            r = srv.etcdctl("put", f"k{i % 3}", value)  # 3 keys, many revisions: compaction frees most
            if r.returncode != 0:
                refused = r
                break
        assert refused is not None, "quota never reached"
        assert "etcdserver: mvcc: database space exceeded" in refused.stderr
        assert "alarm:NOSPACE" in _etcdctl_ok(srv, "alarm", "list")
        r = srv.etcdctl("put", "z", "1")
        assert r.returncode != 0 and "database space exceeded" in r.stderr
        assert "k0" in _etcdctl_ok(srv, "get", "k0", "--keys-only")
        status = json.loads(_etcdctl_ok(srv, "endpoint", "status", "-w", "json"))[0]["Status"]
        assert status["errors"] == [f"memberID:{srv.member_id} alarm:NOSPACE "]
        before = status["dbSize"]
        srv.stop()
        srv = start_quorumkv(tmp_path / "b", extra_args=["--quota-backend-bytes", str(quota)], data_dir=data_dir)
        assert "alarm:NOSPACE" in _etcdctl_ok(srv, "alarm", "list"), "the alarm must survive a restart"
        assert srv.etcdctl("put", "z", "1").returncode != 0
        rev = json.loads(_etcdctl_ok(srv, "get", "k0", "-w", "json"))["header"]["revision"]
        _etcdctl_ok(srv, "compact", str(rev))
        assert "Finished defragmenting etcd member" in _etcdctl_ok(srv, "defrag")
        after = json.loads(_etcdctl_ok(srv, "endpoint", "status", "-w", "json"))[0]["Status"]["dbSize"]
        # the last 10,000 log entries (with their values) stay in the file, so not all of the history is freed
        assert after < before * 0.75, (before, after)
        assert "alarm:NOSPACE" in _etcdctl_ok(srv, "alarm", "disarm")
        assert _etcdctl_ok(srv, "put", "z", "1").strip() == "OK"
        assert _etcdctl_ok(srv, "alarm", "list").strip() == ""
    finally:
        srv.stop()


# -- Hash / HashKV -------------------------------------------------------------------------------------------


def test_hashkv_stable_across_restart_and_changes_with_data(tmp_path: Path) -> None:
    async def first(srv: QuorumServer) -> tuple[int, int, int, int]:
        for i in range(20):
            await put(srv, f"k{i}", f"v{i}".encode())
        rev = srv.current_revision
        h = await srv.hash_kv(pb.HashKVRequest())
        assert h.header.revision == rev and h.compact_revision == -1
        whole = (await srv.hash()).hash
        return rev, h.hash, (await srv.hash_kv(pb.HashKVRequest(revision=10))).hash, whole

    async def second(srv: QuorumServer, expect: tuple[int, int, int, int]) -> None:
        rev, h_cur, h_10, whole = expect
        assert (await srv.hash_kv(pb.HashKVRequest())).hash == h_cur
        assert (await srv.hash()).hash == whole
        await put(srv, "k0", b"changed")
        assert (await srv.hash_kv(pb.HashKVRequest())).hash != h_cur
        assert (await srv.hash_kv(pb.HashKVRequest(revision=rev))).hash == h_cur  # history unchanged
        assert (await srv.hash()).hash != whole
        assert (await srv.hash_kv(pb.HashKVRequest(revision=10))).hash == h_10
        with pytest.raises(EtcdError, match="future revision"):
            await srv.hash_kv(pb.HashKVRequest(revision=rev + 100))
        await srv.compact(pb.CompactionRequest(revision=5))
        with pytest.raises(EtcdError, match="has been compacted"):
            await srv.hash_kv(pb.HashKVRequest(revision=5))
        resp = await srv.hash_kv(pb.HashKVRequest(revision=10))
        assert resp.compact_revision == 5

    expect = run_with_server(tmp_path / "d", first)
    run_with_server(tmp_path / "d", lambda s: second(s, expect))


def test_hashkv_equal_on_identical_data_in_two_members(tmp_path: Path) -> None:
    async def fill(srv: QuorumServer) -> tuple[int, int]:
        for i in range(10):
            await put(srv, f"k{i % 4}", f"v{i}".encode())
        await srv.delete_range(pb.DeleteRangeRequest(key=b"k1"))
        return (await srv.hash_kv(pb.HashKVRequest())).hash, (await srv.hash()).hash

    a = run_with_server(tmp_path / "a", fill, name="a")
    b = run_with_server(tmp_path / "b", fill, name="b")  # same cluster membership, another data dir
    assert a == b


def test_move_leader_single_member(tmp_path: Path) -> None:
    async def body(srv: QuorumServer) -> None:
        await srv.move_leader(pb.MoveLeaderRequest(targetID=srv.member_id))
        with pytest.raises(EtcdError, match="bad leader transferee"):
            await srv.move_leader(pb.MoveLeaderRequest(targetID=1234))

    run_with_server(tmp_path / "d", body)


# -- snapshots -----------------------------------------------------------------------------------------------


def test_snapshot_save_while_writing_then_restore(tmp_path: Path) -> None:
    srv = start_quorumkv(tmp_path / "a")
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            srv.etcdctl("put", f"w{i}", "x" * 200)
            i += 1

    try:
        lease_out = _etcdctl_ok(srv, "lease", "grant", "600")
        lease_hex = lease_out.split()[1]
        _etcdctl_ok(srv, "put", "leased", "1", "--lease", lease_hex)
        for i in range(50):
            _etcdctl_ok(srv, "put", f"k{i % 7}", f"v{i}")
        threads = [threading.Thread(target=writer) for _ in range(2)]
        for t in threads:
            t.start()
        snap = tmp_path / "snap.db"
        out = _etcdctl_ok(srv, "snapshot", "save", str(snap))  # real etcdctl 3.4 checks the framing
        assert f"Snapshot saved at {snap}" in out
        stop.set()
        for t in threads:
            t.join()
        st = snapshot_status(snap)
        assert st.total_size == snap.stat().st_size - 32 and st.revision > 51
        expected = _etcdctl_ok(srv, "get", "", "--prefix", "--rev", str(st.revision), "-w", "json")
        expected_kvs = json.loads(expected)["kvs"]
        assert any(kv.get("lease") for kv in expected_kvs)
    finally:
        stop.set()
        srv.stop()
    peer = "http://127.0.0.1:23800"
    res = restore(snap, tmp_path / "restored", name="r1", initial_cluster=f"r1={peer}",
                  initial_cluster_token="tok", initial_advertise_peer_urls=[peer])
    assert res.revision == st.revision
    with pytest.raises(ValueError, match="exists"):
        restore(snap, tmp_path / "restored", name="r1", initial_cluster=f"r1={peer}",
                initial_advertise_peer_urls=[peer])
    srv2 = start_quorumkv(tmp_path / "b", data_dir=res.data_dir, name="r1")
    try:
        got = json.loads(_etcdctl_ok(srv2, "get", "", "--prefix", "-w", "json"))
        assert got["header"]["revision"] == st.revision
        assert got["kvs"] == expected_kvs
        assert lease_hex in _etcdctl_ok(srv2, "lease", "list")
        assert srv2.member_id == res.member_id and srv2.cluster_id == res.cluster_id
        assert _etcdctl_ok(srv2, "put", "after", "1").strip() == "OK"
    finally:
        srv2.stop()


def test_snapshot_corrupt_or_truncated_is_refused(tmp_path: Path) -> None:
    async def body(srv: QuorumServer) -> None:
        for i in range(30):
            await put(srv, f"k{i}", b"v" * 100)

    run_with_server(tmp_path / "d", body)
    good = tmp_path / "good.db"
    save(tmp_path / "d" / "quorumkv.db", good)
    st = snapshot_status(good)
    # an etcd-format snapshot: etcdctl's key count covers every bucket (30 key revisions, plus
    # meta.consistent_index, auth.authRevision, cluster.clusterVersion and the one member)
    assert st.revision == 31 and st.total_key == 34
    data = good.read_bytes()
    truncated = tmp_path / "trunc.db"
    truncated.write_bytes(data[:-1000])
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:])
    cut_at_block = tmp_path / "cut.db"
    cut_at_block.write_bytes(data[:4096] + data[-32:])
    for bad in (truncated, corrupt, cut_at_block):
        with pytest.raises(SnapshotError, match=r"truncated|integrity"):
            snapshot_status(bad)
        with pytest.raises(SnapshotError):
            restore(bad, tmp_path / f"r-{bad.stem}")
        assert not (tmp_path / f"r-{bad.stem}").exists()
    with pytest.raises(SnapshotError, match="cannot read"):
        snapshot_status(tmp_path / "missing.db")


# -- defrag ----------------------------------------------------------------------------------------------------


def test_defrag_while_writing_loses_nothing_and_shrinks(tmp_path: Path) -> None:
    async def body(srv: QuorumServer) -> None:
        for i in range(400):
            await put(srv, f"big{i % 20}", b"x" * 4000)
        await srv.compact(pb.CompactionRequest(revision=srv.current_revision))
        before = srv.backend.allocated_bytes(srv.reader)
        acked: dict[bytes, bytes] = {}
        stop = asyncio.Event()
        worst_s = 0.0

        async def writer(n: int) -> None:
            nonlocal worst_s
            i = 0
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                key, value = f"w{n}-{i}".encode(), f"{i}".encode()
                t0 = loop.time()
                await srv.put(pb.PutRequest(key=key, value=value))
                worst_s = max(worst_s, loop.time() - t0)
                acked[key] = value
                i += 1

        tasks = [asyncio.create_task(writer(n)) for n in range(4)]
        await asyncio.sleep(0.05)
        n_before = len(acked)
        await srv.defragment()
        n_during = len(acked) - n_before
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        assert n_during > 0, "writes must continue during the defrag"
        got = {kv[0]: kv[1] for kv in all_kvs(srv) if kv[0].startswith(b"w")}
        assert got == acked
        after = srv.backend.allocated_bytes(srv.reader)
        assert after < before * 0.75, (before, after)
        assert srv.last_defrag_pause_s < 1.0
        # the member keeps working on the new file: writes, watch history, restart (checked by the caller)
        await put(srv, "final", b"1")
        return None

    run_with_server(tmp_path / "d", body)

    async def check(srv: QuorumServer) -> None:
        assert srv.range(pb.RangeRequest(key=b"final")).kvs[0].value == b"1"

    run_with_server(tmp_path / "d", check)


# -- auto-compaction -------------------------------------------------------------------------------------------


def test_periodic_compactor_follows_etcd_schedule() -> None:
    clock = FakeClock()
    comp = PeriodicCompactor(600.0, clock.monotonic())  # 10 min: sample every 60 s, window of 11 samples
    assert comp.poll_interval_s == 60.0 and comp.retentions == 11
    rev, due = 1, []
    for _ in range(31):
        comp.sample(rev)
        clock.advance(comp.poll_interval_s)
        rev += 10
        r = comp.due(clock.monotonic(), rev)
        if r is not None:
            comp.succeeded(clock.monotonic(), r)
            due.append((clock.monotonic() - 1000.0, r))
    # first after one full retention period, then every 10 minutes, each time to the oldest sample of the
    # window (taken 11 samples = 660 s before: etcd keeps period/retry + 1 samples)
    assert due == [(600.0, 1), (1200.0, 91), (1800.0, 191)]


def test_periodic_compactor_long_retention_compacts_hourly() -> None:
    comp = PeriodicCompactor(5 * 3600.0, 0.0)
    assert comp.poll_interval_s == 360.0 and comp.retentions == 51
    now, fired = 0.0, []
    for step in range(120):
        comp.sample(step)
        now += comp.poll_interval_s
        r = comp.due(now, step)
        if r is not None:
            comp.succeeded(now, r)
            fired.append(now / 3600)
    assert fired == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]


def test_revision_compactor_keeps_last_n() -> None:
    comp = RevisionCompactor(100)
    assert comp.poll_interval_s == 300.0
    assert comp.due(0, 50) is None
    assert comp.due(0, 150) == 50
    comp.succeeded(0, 50)
    assert comp.due(0, 150) is None  # same revision as last time
    assert comp.due(0, 151) == 51
    assert make_compactor("periodic", 0, 0.0) is None
    with pytest.raises(ValueError):
        make_compactor("weekly", 1, 0.0)


def test_auto_compaction_runs_through_the_log(tmp_path: Path) -> None:
    async def body(srv: QuorumServer) -> None:
        for i in range(30):
            await put(srv, "k", str(i).encode())
        # Wait on what readers are served (the committed store), not on the applier's in-memory state: on a
        # slow disk the compaction is applied well before its transaction commits.
        for _ in range(600):  # bounded at 30 s: the compactor polls every 50 ms, but a busy machine is slow
            if store.compact_revision(srv.reader) == srv.current_revision - 5:
                break
            await asyncio.sleep(0.05)
        assert store.compact_revision(srv.reader) == srv.current_revision - 5
        assert srv.applier.compact_revision == srv.current_revision - 5
        with pytest.raises(EtcdError, match="compacted"):
            srv.range(pb.RangeRequest(key=b"k", revision=srv.current_revision - 6))

    async def main() -> None:
        srv = QuorumServer(ServerSettings(data_dir=str(tmp_path / "d"), auto_compaction_mode="revision",
                                          auto_compaction_retention=5))
        assert isinstance(srv.compactor, RevisionCompactor)
        srv.compactor.poll_interval_s = 0.05
        await srv.start()
        try:
            await body(srv)
        finally:
            await srv.stop()

    asyncio.run(main())


def test_settings_from_config_carry_quota_and_auto_compaction() -> None:
    from quorumkv.server.config import ServerConfig

    cfg = ServerConfig(quota_backend_bytes=0, auto_compaction_mode="periodic", auto_compaction_retention="30m")
    s = ServerSettings.from_config(cfg)
    assert s.quota_backend_bytes == 2 * 1024**3 and s.auto_compaction_retention == 1800


def test_restore_rejects_bad_membership_arguments(tmp_path: Path) -> None:
    run_with_server(tmp_path / "d", lambda s: put(s, "a"))
    snap = tmp_path / "s.db"
    save(tmp_path / "d" / "quorumkv.db", snap)
    with pytest.raises(ValueError, match="couldn't find local name"):
        restore(snap, tmp_path / "r", name="x", initial_cluster="y=http://127.0.0.1:1")
    with pytest.raises(ValueError, match="make them agree"):
        restore(snap, tmp_path / "r", name="x", initial_cluster="x=http://127.0.0.1:1",
                initial_advertise_peer_urls=["http://127.0.0.1:2"])
    shutil.rmtree(tmp_path / "d")


def test_compaction_steps_halve_when_slow_and_double_when_fast_within_bounds() -> None:
    from quorumkv.server.kv import (
        COMPACTION_STEP_MAX_REVISIONS,
        COMPACTION_STEP_MIN_REVISIONS,
        COMPACTION_STEP_TARGET_S,
        next_compaction_step,
    )

    assert next_compaction_step(500, COMPACTION_STEP_TARGET_S * 2) == 250
    assert next_compaction_step(60, 5.0) == COMPACTION_STEP_MIN_REVISIONS
    assert next_compaction_step(500, COMPACTION_STEP_TARGET_S / 2) == 500  # near the target: kept
    assert next_compaction_step(500, 0.0) == 1000
    assert next_compaction_step(1500, 0.0) == COMPACTION_STEP_MAX_REVISIONS
    size = 500
    for _ in range(20):  # a store where every step is slow ends at the smallest step, and stays there
        size = next_compaction_step(size, 1.0)
    assert size == COMPACTION_STEP_MIN_REVISIONS


def test_compaction_goes_through_the_log_in_steps_and_writes_commit_between_them(tmp_path: Path) -> None:
    """A compaction of 2,500 revisions is one log entry per step (100 first, then steps sized by what they cost,
    then the request's own): a write issued while it runs is applied between two steps, and the result is what
    one compaction leaves."""
    from quorumkv.server.kv import (
        COMPACTION_STEP_MAX_REVISIONS,
        COMPACTION_STEP_MIN_REVISIONS,
        COMPACTION_STEP_REVISIONS,
    )

    async def body(srv: QuorumServer) -> None:
        for i in range(2500):
            await put(srv, f"k{i % 50}", f"v{i}".encode())
        target = srv.current_revision - 1  # 2500: one put of each key stays above it
        expected = all_kvs(srv)
        seen: list[tuple[int, int]] = []  # (compaction revision, store revision when it was applied)
        original = srv.applier.compaction

        def spy(conn: Any, req: pb.CompactionRequest, result: Any) -> pb.CompactionResponse:
            seen.append((req.revision, srv.applier.revision))
            return original(conn, req, result)

        srv.applier.compaction = spy  # type: ignore[method-assign]
        compaction = asyncio.create_task(srv.compact(pb.CompactionRequest(revision=target)))
        while not seen:
            await asyncio.sleep(0.001)
        written = await put(srv, "during", b"x")
        resp = await compaction
        revs = [rev for rev, _ in seen]
        assert revs[0] == COMPACTION_STEP_REVISIONS and revs[-1] == target and len(revs) >= 3
        steps = [b - a for a, b in itertools.pairwise(revs[:-1])]  # the last entry is the request itself
        assert all(COMPACTION_STEP_MIN_REVISIONS <= d <= COMPACTION_STEP_MAX_REVISIONS for d in steps), revs
        assert seen[0][1] < written <= seen[-1][1]  # issued during the first step, applied before the last one
        assert resp.header.revision >= written
        assert store.compact_revision(srv.reader) == target
        assert [kv for kv in all_kvs(srv) if kv[0] != b"during"] == expected
        with pytest.raises(EtcdError, match="has been compacted"):
            await srv.compact(pb.CompactionRequest(revision=1500))
        stored = srv.reader.execute("SELECT count(*) FROM kv WHERE rev <= ?", (target,)).fetchone()[0]
        assert stored == 50  # each key's latest row at or below the compaction

    run_with_server(tmp_path / "d", body)
