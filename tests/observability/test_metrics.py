"""/metrics: etcd's names, parseable exposition, and series that move when they should."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.observability.metrics import Histogram, ServerStats, format_duration

from .obskit import Member, scrape, start_test_member

KV = 'grpc_method="{m}",grpc_service="etcdserverpb.KV",grpc_type="unary"'

REQUIRED = [
    "etcd_server_has_leader", "etcd_server_is_leader", "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total", "etcd_server_proposals_applied_total", "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total", "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_wal_fsync_duration_seconds_sum", 'etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"}',
    "etcd_disk_backend_commit_duration_seconds_count", "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes", "etcd_debugging_mvcc_keys_total", "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_mvcc_slow_watcher_total", "etcd_mvcc_put_total", "etcd_mvcc_range_total",
    "etcd_mvcc_delete_total", "etcd_mvcc_txn_total", "etcd_debugging_mvcc_put_total",
    "etcd_debugging_lease_granted_total", "etcd_debugging_lease_revoked_total", "etcd_debugging_lease_renewed_total",
    "etcd_server_quota_backend_bytes", 'etcd_server_version{server_version="3.4.34"}',
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
]


def handled(m: str, code: str = "OK") -> str:
    return f"grpc_server_handled_total{{grpc_code=\"{code}\",{KV.format(m=m)}}}"


async def test_exposition_has_etcd_names_on_both_listeners(member: Member) -> None:
    for url in (member.metrics_url, member.http_url):
        metrics = await scrape(url)
        missing = [n for n in REQUIRED if n not in metrics]
        assert not missing, missing
        assert metrics["etcd_server_has_leader"] == 1 and metrics["etcd_server_is_leader"] == 1
        assert metrics["etcd_server_quota_backend_bytes"] == 2 * 1024**3
        assert metrics[f'etcd_server_id{{server_id="{member.running.server.member_id:x}"}}'] == 1
        # go-grpc-prometheus initialises every method x code at 0.
        assert metrics[handled("Put", "Aborted")] == 0
        assert metrics[f"grpc_server_started_total{{{KV.format(m='Put')}}}"] == 0


async def test_put_range_delete_move_the_counters(member: Member) -> None:
    # start-up entries (the member's attributes) may still be in flight: count from a settled state (the
    # applied index moves inside the commit, the committed one right after it)
    for _ in range(100):
        before = await scrape(member.metrics_url)
        if (before["etcd_server_proposals_pending"] == 0 and before["etcd_server_proposals_committed_total"]
                == before["etcd_server_proposals_applied_total"]):
            break
        await asyncio.sleep(0.05)
    await member.kv.Put(pb.PutRequest(key=b"a", value=b"1"))
    await member.kv.Put(pb.PutRequest(key=b"b", value=b"2"))
    await member.kv.Range(pb.RangeRequest(key=b"a"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await member.kv.Range(pb.RangeRequest(key=b""))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError):
        await member.kv.Put(pb.PutRequest(key=b"c", value=b"x", lease=12345))  # lease not found
    # a failed call is counted once its status is sent, which may be just after the client has seen it
    for _ in range(100):
        after = await scrape(member.metrics_url)
        if after.get(handled("Put", "NotFound"), 0) > before.get(handled("Put", "NotFound"), 0):
            break
        await asyncio.sleep(0.05)

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0)

    assert delta("etcd_mvcc_put_total") == 2
    assert delta("etcd_debugging_mvcc_put_total") == 2
    assert delta("etcd_mvcc_range_total") == 1
    assert delta("etcd_server_proposals_applied_total") == 3  # the failed put is applied too (as an error)
    assert delta("etcd_server_proposals_committed_total") == 3
    assert after["etcd_debugging_mvcc_keys_total"] == 2
    assert delta("etcd_disk_wal_fsync_duration_seconds_count") >= 1
    assert delta(handled("Put")) == 2
    assert delta(handled("Put", "NotFound")) == 1
    assert delta(handled("Range")) == 1
    assert delta(handled("Range", "InvalidArgument")) == 1
    assert delta(f"grpc_server_started_total{{{KV.format(m='Put')}}}") == 3

    await member.kv.DeleteRange(pb.DeleteRangeRequest(key=b"a"))
    final = await scrape(member.metrics_url)
    assert final["etcd_debugging_mvcc_keys_total"] == 1
    assert final["etcd_mvcc_delete_total"] - after["etcd_mvcc_delete_total"] == 1


async def test_txn_counts_ops_like_etcd(member: Member) -> None:
    before = await scrape(member.metrics_url)
    txn = pb.TxnRequest(
        compare=[pb.Compare(key=b"t", target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"v")),
                 pb.RequestOp(request_range=pb.RangeRequest(key=b"t"))],
    )
    resp = await member.kv.Txn(txn)
    assert resp.succeeded
    after = await scrape(member.metrics_url)
    assert after["etcd_mvcc_txn_total"] - before["etcd_mvcc_txn_total"] == 1
    assert after["etcd_mvcc_put_total"] - before["etcd_mvcc_put_total"] == 1
    assert after["etcd_mvcc_range_total"] - before["etcd_mvcc_range_total"] == 2  # compare + range op


async def test_lease_counters(member: Member) -> None:
    before = await scrape(member.metrics_url)
    grant = await member.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60))

    call = member.lease.LeaseKeepAlive()
    await call.write(pb.LeaseKeepAliveRequest(ID=grant.ID))
    ka = await call.read()
    assert ka.TTL == 60
    await call.done_writing()
    await member.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=grant.ID))
    after = await scrape(member.metrics_url)
    assert after["etcd_debugging_lease_granted_total"] - before["etcd_debugging_lease_granted_total"] == 1
    assert after["etcd_debugging_lease_renewed_total"] - before["etcd_debugging_lease_renewed_total"] == 1
    assert after["etcd_debugging_lease_revoked_total"] - before["etcd_debugging_lease_revoked_total"] == 1


async def test_watcher_gauge_follows_watch_streams(member: Member) -> None:
    call = member.watch.Watch()
    await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w")))
    created = await call.read()
    assert created.created
    metrics = await scrape(member.metrics_url)
    assert metrics["etcd_debugging_mvcc_watcher_total"] == 1
    call.cancel()
    watch = 'grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"'
    ended = 0.0
    for _ in range(100):  # the watcher goes first, the handler's end is counted when its task finishes
        await asyncio.sleep(0.02)
        metrics = await scrape(member.metrics_url)
        # A client cancel is counted as Canceled when gRPC has marked the RPC cancelled by the time the handler
        # ends, and as OK when the handler saw its request stream end first (a race inside grpc.aio).
        ended = (metrics[f'grpc_server_handled_total{{grpc_code="Canceled",{watch}}}']
                 + metrics[f'grpc_server_handled_total{{grpc_code="OK",{watch}}}'])
        if metrics["etcd_debugging_mvcc_watcher_total"] == 0 and ended == 1:
            break
    else:
        pytest.fail(f"watch end not reflected in the metrics: {metrics}")
    assert metrics[f"grpc_server_started_total{{{watch}}}"] == 1


async def test_message_counters_like_go_grpc_prometheus(member: Member) -> None:
    """Unary: one message in per call, one out per OK answer; streams: every message each way."""
    before = await scrape(member.metrics_url)
    await member.kv.Put(pb.PutRequest(key=b"m", value=b"1"))
    with pytest.raises(grpc.aio.AioRpcError):
        await member.kv.Range(pb.RangeRequest(key=b""))  # InvalidArgument: received, nothing sent
    call = member.watch.Watch()
    await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"m", start_revision=1)))
    created = await call.read()
    event = await call.read()  # the past put, replayed from history
    assert created.created and event.events[0].kv.key == b"m"
    await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    progress = await call.read()
    assert progress.watch_id == -1
    after = await scrape(member.metrics_url)
    call.cancel()

    def delta(kind: str, labels: str) -> float:
        name = f"grpc_server_msg_{kind}_total{{{labels}}}"
        return after[name] - before.get(name, 0)

    assert delta("received", KV.format(m="Put")) == 1 and delta("sent", KV.format(m="Put")) == 1
    assert delta("received", KV.format(m="Range")) == 1 and delta("sent", KV.format(m="Range")) == 0
    watch = 'grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"'
    assert delta("received", watch) == 2 and delta("sent", watch) == 3
    snapshot = 'grpc_method="Snapshot",grpc_service="etcdserverpb.Maintenance",grpc_type="server_stream"'
    assert after[f"grpc_server_msg_sent_total{{{snapshot}}}"] == 0
    assert not any(name.startswith("grpc_server_handling_seconds") for name in after), "extensive only"


async def test_extensive_metrics_add_handling_time_histograms(tmp_path: Path) -> None:
    member = await start_test_member(tmp_path / "data", metrics="extensive")
    try:
        for i in range(3):
            await member.kv.Put(pb.PutRequest(key=b"h%d" % i, value=b"1"))
        metrics = await scrape(member.metrics_url)
    finally:
        await member.channel.close()
        await member.running.close()
    put = KV.format(m="Put")
    assert metrics[f"grpc_server_handling_seconds_count{{{put}}}"] == 3
    assert 0 < metrics[f"grpc_server_handling_seconds_sum{{{put}}}"] < 30
    assert metrics[f'grpc_server_handling_seconds_bucket{{{put},le="10"}}'] == 3  # Go's bucket labels: 10, not 10.0
    assert metrics[f'grpc_server_handling_seconds_bucket{{{put},le="+Inf"}}'] == 3
    assert metrics[f"grpc_server_handling_seconds_count{{{KV.format(m='Range')}}}"] == 0


def test_metrics_flag_reaches_the_http_options() -> None:
    from quorumkv.app import HttpOptions
    from quorumkv.server.config import ServerConfig

    assert HttpOptions.from_config(ServerConfig(metrics="extensive")).metrics == "extensive"
    assert HttpOptions.from_config(ServerConfig()).metrics == "basic"


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram([0.001, 0.002, 0.004])
    for v in (0.0005, 0.001, 0.003, 5.0):
        h.observe(v)
    fam = h.family("x_seconds", "doc")
    samples = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    assert samples[("x_seconds_bucket", "0.001")] == 2  # le is inclusive
    assert samples[("x_seconds_bucket", "0.002")] == 2
    assert samples[("x_seconds_bucket", "0.004")] == 3
    assert samples[("x_seconds_bucket", "+Inf")] == 4
    assert samples[("x_seconds_count", None)] == 4
    assert samples[("x_seconds_sum", None)] == pytest.approx(5.0045)


def test_fsync_observer_feeds_both_disk_histograms() -> None:
    stats = ServerStats()
    stats.observe_commit(0.003)
    assert stats.wal_fsync.count == 1 and stats.backend_commit.count == 1
    assert stats.slow_fsyncs == 0


def test_format_duration_like_go() -> None:
    assert format_duration(0.1) == "100ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(0.000012) == "12µs"
    assert format_duration(0) == "0s"
