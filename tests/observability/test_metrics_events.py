"""etcd metrics that move on events: disk commits, compaction, defrag, client bytes, slow read indexes, late
heartbeats and peer round trips; and (differential) that etcd 3.4 and quorumkv both export every one of them
with the same type."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.errors import EtcdError
from quorumkv.observability.metrics import PeerNetworkCollector, ServerStats
from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import Message, MessageType
from quorumkv.server.heartbeats import HeartbeatDetector
from quorumkv.testing.clock import FakeClock
from quorumkv.testing.processes import ETCD_BIN, ETCDCTL_BIN, free_port, run_etcdctl, start_etcd, start_quorumkv
from quorumkv.transport import PeerTransport, TransportOptions

from .obskit import Member, scrape, start_test_member

#: Every series of this task, as etcd 3.4 names it (histograms by their _count sample).
SINGLE_MEMBER_NAMES = {
    "etcd_disk_wal_fsync_duration_seconds": "histogram",
    "etcd_disk_backend_commit_duration_seconds": "histogram",
    "etcd_server_heartbeat_send_failures_total": "counter",
    "etcd_server_slow_read_indexes_total": "counter",
    "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds": "histogram",
    "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds": "histogram",
    "etcd_debugging_mvcc_db_compaction_keys_total": "counter",
    "etcd_disk_backend_defrag_duration_seconds": "histogram",
    "etcd_network_client_grpc_sent_bytes_total": "counter",
    "etcd_network_client_grpc_received_bytes_total": "counter",
}
#: Exported by both only once a member has peers (etcd: a labelled series appears with its first sample).
CLUSTER_NAMES = {"etcd_network_peer_round_trip_time_seconds": "histogram"}


def _hb(to: int) -> Message:
    return Message(MessageType.HEARTBEAT, to=NodeId(to), frm=NodeId(1), term=Term(2), commit=Index(0))


def test_commit_observer_splits_wal_fsync_and_backend_commit() -> None:
    stats = ServerStats()
    stats.observe_commit(0.002, synced=True, applied=False)  # a follower's append: the WAL fsync only
    stats.observe_commit(0.001, synced=False, applied=True)  # a follower's unsynced apply: the backend commit
    stats.observe_commit(0.003)  # a sole voter: one COMMIT does both
    assert (stats.wal_fsync.count, stats.backend_commit.count) == (2, 2)
    assert stats.wal_fsync.total == pytest.approx(0.005) and stats.backend_commit.total == pytest.approx(0.004)


def test_heartbeat_detector_counts_late_heartbeats_only() -> None:
    clock = FakeClock()
    det = HeartbeatDetector(0.1, clock)
    det.observe([_hb(2), _hb(3)])
    clock.advance(0.15)
    det.observe([_hb(2), _hb(3)])  # on time (< 2 intervals)
    assert det.failures == 0
    clock.advance(0.25)
    det.observe([_hb(2)])  # 250 ms after the last one: late
    det.observe([Message(MessageType.APP, to=NodeId(3), frm=NodeId(1), term=Term(2))])  # not a heartbeat
    assert det.failures == 1
    det.reset()  # a new term: the gap since the old one does not count
    clock.advance(5)
    det.observe([_hb(2), _hb(3)])
    assert det.failures == 1


async def _settle(member: Member) -> dict[str, float]:
    """A scrape after start-up entries are applied (so later deltas are this test's own)."""
    for _ in range(100):
        m = await scrape(member.metrics_url)
        if m["etcd_server_proposals_pending"] == 0 and (
                m["etcd_server_proposals_committed_total"] == m["etcd_server_proposals_applied_total"]):
            return m
        await asyncio.sleep(0.05)
    raise AssertionError("the member did not settle")


async def test_member_series_move_with_their_events(tmp_path: Path) -> None:
    member = await start_test_member(tmp_path / "data")
    try:
        maintenance = pb_grpc.MaintenanceStub(member.channel)  # type: ignore[no-untyped-call]
        before = await _settle(member)

        req = pb.PutRequest(key=b"k", value=b"v" * 100)
        resp = await member.kv.Put(req)
        after = await scrape(member.metrics_url)
        # etcd counts the protobuf size of each request received and each response sent
        assert after["etcd_network_client_grpc_received_bytes_total"] - \
            before["etcd_network_client_grpc_received_bytes_total"] == req.ByteSize()
        assert after["etcd_network_client_grpc_sent_bytes_total"] - \
            before["etcd_network_client_grpc_sent_bytes_total"] == resp.ByteSize()
        # a sole voter: its one COMMIT is both the WAL fsync and the backend commit
        for name in ("etcd_disk_wal_fsync_duration_seconds_count", "etcd_disk_backend_commit_duration_seconds_count"):
            assert after[name] > before[name], name

        for i in range(5):
            await member.kv.Put(pb.PutRequest(key=b"k", value=str(i).encode()))
        last = (await member.kv.Put(pb.PutRequest(key=b"k", value=b"end"))).header.revision
        assert after["etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count"] == 0
        await member.kv.Compact(pb.CompactionRequest(revision=last, physical=True))
        await maintenance.Defragment(pb.DefragmentRequest())
        done = await scrape(member.metrics_url)
        keys = "etcd_debugging_mvcc_db_compaction_keys_total"
        assert done[keys] - after[keys] == 6  # the 7 revisions of k up to the compaction revision, less the one kept
        for name in ("etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds_count",
                     "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count",
                     "etcd_disk_backend_defrag_duration_seconds_count"):
            assert done[name] - after[name] == 1, name
        assert done["etcd_disk_backend_defrag_duration_seconds_sum"] > 0
    finally:
        await member.channel.close()
        await member.running.close()


async def test_slow_read_indexes_and_late_heartbeats_are_exported(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    member = await start_test_member(tmp_path / "data")
    try:
        server: Any = member.running.server
        before = await _settle(member)
        assert before["etcd_server_slow_read_indexes_total"] == 0
        assert before["etcd_server_heartbeat_send_failures_total"] == 0

        # a ReadIndex that never comes back (as with a partitioned leader): the read times out and is counted
        node = server.node
        monkeypatch.setattr(type(node), "is_sole_voter", property(lambda self: False))

        async def never() -> None:
            await asyncio.sleep(3600)

        monkeypatch.setattr(node, "read_index", never)
        server.settings.request_timeout_ms = 200
        with pytest.raises(EtcdError) as info:
            await server.read_barrier()
        assert info.value.message == errors.TIMEOUT.message

        # heartbeats handed to the peer transport 3 intervals apart: one late heartbeat
        server._send_raft_messages([_hb(7)])
        await asyncio.sleep(3 * server.settings.heartbeat_interval_ms / 1000)
        server._send_raft_messages([_hb(7)])
        after = await scrape(member.metrics_url)
        assert after["etcd_server_slow_read_indexes_total"] == 1
        assert after["quorumkv_server_read_index_rounds_total"] == 1
        assert after["etcd_server_heartbeat_send_failures_total"] == 1
    finally:
        await member.channel.close()
        await member.running.close()


async def test_peer_round_trips_are_probed_and_exported() -> None:
    opts = TransportOptions(connect_timeout_s=1.0, backoff_base_s=0.02, backoff_max_s=0.2, stop_grace_s=0.05,
                            probe_interval_s=0.05)
    made = [PeerTransport(mid, 0xC1D2, lambda msgs: None, lambda peer: None, random.Random(mid), options=opts)
            for mid in (1, 2)]
    try:
        urls = [(await t.start(["http://127.0.0.1:0"]))[0] for t in made]
        made[0].add_peer(2, [urls[1]])
        made[1].add_peer(1, [urls[0]])
        made[0].send([_hb(2)])  # opens the message stream (probes go to connected peers)
        deadline = time.monotonic() + 15
        while sum(made[0].stats()[2].rtt_counts) < 2:
            assert time.monotonic() < deadline, "no probe round trip recorded"
            await asyncio.sleep(0.02)

        class Member:
            transport = made[0]

        families = {f.name: f for f in PeerNetworkCollector(Member()).collect()}
        rtt = families["etcd_network_peer_round_trip_time_seconds"]
        count = [s for s in rtt.samples if s.name.endswith("_count")]
        assert [(s.labels, s.value >= 2) for s in count] == [({"To": "2"}, True)]
        assert {s.labels.get("le") for s in rtt.samples if s.name.endswith("_bucket")} >= {"0.0001", "3.2768", "+Inf"}
    finally:
        for t in made:
            await t.stop()


# -- differential: the names and types in etcd 3.4's /metrics -------------------------------------------------

_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)

needs_etcd = pytest.mark.skipif(shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
                                reason="etcd/etcdctl 3.4 not on PATH (scripts/test.sh installs them)")


def _types(client_url: str) -> dict[str, str]:
    with urllib.request.urlopen(client_url + "/metrics", timeout=10) as r:
        return dict(_TYPE.findall(r.read().decode()))


def _exercise(endpoint: str) -> None:
    for args in (("put", "k", "1"), ("put", "k", "2"), ("compact", "2", "--physical"), ("defrag",)):
        r = run_etcdctl(endpoint, *args)
        assert r.returncode == 0, (args, r.stderr)


@needs_etcd
@pytest.mark.interop
@pytest.mark.timeout(120)
def test_etcd_and_quorumkv_export_the_same_names(tmp_path: Path) -> None:
    seen: dict[str, dict[str, str]] = {}
    for kind, start in (("etcd", start_etcd), ("quorumkv", start_quorumkv)):
        metrics = f"http://127.0.0.1:{free_port()}"
        server = start(tmp_path / kind, extra_args=["--listen-metrics-urls", metrics])
        try:
            _exercise(server.client_url)
            seen[kind] = _types(metrics)
        finally:
            server.stop()
    for name, kind in SINGLE_MEMBER_NAMES.items():
        assert seen["etcd"].get(name) == kind, ("etcd", name)
        assert seen["quorumkv"].get(name) == kind, ("quorumkv", name)


@needs_etcd
@pytest.mark.interop
@pytest.mark.timeout(240)
@pytest.mark.skipif(os.environ.get("QUORUMKV_SLOW") != "1", reason="slow: set QUORUMKV_SLOW=1 to run")
def test_etcd_cluster_exports_peer_round_trips_as_quorumkv(tmp_path: Path) -> None:
    """etcd 3.4's name, type and label for the RTT histogram (it needs peers, and records its first sample
    about 5 s after start) against what quorumkv's collector exports (test above, real transports)."""
    from quorumkv.testing.cluster import start_etcd_cluster

    with start_etcd_cluster(3, tmp_path) as cluster:
        url = cluster.member(cluster.names[0]).client_url  # etcd also serves /metrics on its client URL
        deadline = time.monotonic() + 60
        while (types := _types(url)).get("etcd_network_peer_round_trip_time_seconds") is None:
            assert time.monotonic() < deadline, "etcd: no round trip series"
            time.sleep(1)
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    for name, t in CLUSTER_NAMES.items():
        assert types.get(name) == t, name
    assert re.search(r'^etcd_network_peer_round_trip_time_seconds_bucket\{To="[0-9a-f]+",le="3.2768"\}', text,
                     re.MULTILINE)
