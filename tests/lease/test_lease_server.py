"""Leases on an in-process QuorumServer with a fake clock: expiry goes through the log, like any revoke."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.errors import EtcdError
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings
from quorumkv.testing.clock import FakeClock

TIMEOUT_S = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[QuorumServer]:
    s = QuorumServer(ServerSettings(data_dir=str(tmp_path / "data")), clock=clock)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def keys_now(server: QuorumServer) -> list[bytes]:
    return [kv.key for kv in server.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00")).kvs]


async def test_grant_raises_ttl_to_the_minimum(server: QuorumServer) -> None:
    assert server.settings.min_lease_ttl_seconds == 2  # etcd: ceil(1.5 x 1000 ms election timeout)
    resp = await server.lease_grant(pb.LeaseGrantRequest(ID=5, TTL=1))
    assert (resp.ID, resp.TTL) == (5, 2)
    auto = await server.lease_grant(pb.LeaseGrantRequest(TTL=60))
    assert auto.ID > 0 and auto.TTL == 60
    assert [lease.ID for lease in server.lease_leases().leases] == sorted([5, auto.ID])


async def test_time_to_live_counts_down_with_the_clock(server: QuorumServer, clock: FakeClock) -> None:
    await server.lease_grant(pb.LeaseGrantRequest(ID=9, TTL=30))
    await server.put(pb.PutRequest(key=b"k2", value=b"v", lease=9))
    await server.put(pb.PutRequest(key=b"k1", value=b"v", lease=9))
    ttl = (await server.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=9, keys=True)))
    assert (ttl.TTL, ttl.grantedTTL, list(ttl.keys)) == (30, 30, [b"k1", b"k2"])
    clock.advance(10.5)
    assert (await server.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=9))).TTL == 19
    assert (await server.lease_renew(9)) == 30  # keep-alive answers the granted TTL and restarts the countdown
    assert (await server.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=9))).TTL == 30
    clock.advance(29)
    assert (await server.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=9))).TTL == 1
    assert keys_now(server) == [b"k1", b"k2"]  # not expired yet


async def test_unknown_lease(server: QuorumServer) -> None:
    assert (await server.lease_renew(12345)) == 0  # etcd's keep-alive answer for a lease it does not know
    ttl = (await server.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=12345)))
    assert ttl.TTL == -1
    with pytest.raises(EtcdError) as exc:
        await server.lease_revoke(pb.LeaseRevokeRequest(ID=12345))
    assert exc.value.message == errors.LEASE_NOT_FOUND.message
    with pytest.raises(EtcdError) as exc:
        await server.put(pb.PutRequest(key=b"k", lease=12345))
    assert exc.value.message == errors.LEASE_NOT_FOUND.message


async def test_expired_lease_is_revoked_through_the_log(server: QuorumServer, clock: FakeClock) -> None:
    await server.lease_grant(pb.LeaseGrantRequest(ID=7, TTL=5))
    await server.lease_grant(pb.LeaseGrantRequest(ID=8, TTL=60))
    for key in (b"a", b"c", b"b"):
        await server.put(pb.PutRequest(key=key, value=b"v", lease=7))
    await server.put(pb.PutRequest(key=b"keep", value=b"v", lease=8))
    await server.put(pb.PutRequest(key=b"plain", value=b"v"))
    before = server.current_revision
    assert server.hub is not None
    stream = server.hub.new_stream()
    stream.create(pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00", prev_kv=True))
    assert (await stream.queue.get()).created  # type: ignore[union-attr]

    clock.advance(4.9)
    await asyncio.sleep(0.7)  # the expiry loop runs every 0.5 s of real time
    assert server.current_revision == before and keys_now(server) == [b"a", b"b", b"c", b"keep", b"plain"]

    clock.advance(0.2)
    async with asyncio.timeout(TIMEOUT_S):
        resp = await stream.queue.get()
    assert resp is not None
    assert [(ev.type, ev.kv.key, ev.kv.mod_revision) for ev in resp.events] == [
        (kv_pb2.Event.DELETE, key, before + 1) for key in (b"a", b"b", b"c")
    ], "all attached keys are deleted in one revision, in key order, in one response"
    assert [ev.prev_kv.lease for ev in resp.events] == [7, 7, 7]
    assert server.current_revision == before + 1
    assert keys_now(server) == [b"keep", b"plain"]
    assert [lease.ID for lease in server.lease_leases().leases] == [8]
    assert (await server.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=7))).TTL == -1
    assert (await server.lease_renew(7)) == 0
    await asyncio.sleep(0.6)
    assert stream.queue.empty() and server.current_revision == before + 1  # revoked once, not again
    stream.close()


async def test_keep_alive_postpones_expiry(server: QuorumServer, clock: FakeClock) -> None:
    await server.lease_grant(pb.LeaseGrantRequest(ID=3, TTL=4))
    await server.put(pb.PutRequest(key=b"k", value=b"v", lease=3))
    for _ in range(3):
        clock.advance(3)
        assert (await server.lease_renew(3)) == 4
    await asyncio.sleep(0.6)
    assert keys_now(server) == [b"k"]
    clock.advance(4)
    async with asyncio.timeout(TIMEOUT_S):
        while keys_now(server):
            await asyncio.sleep(0.05)
    assert server.lease_leases().leases == []
