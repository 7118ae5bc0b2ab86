"""Lease checkpoints (--experimental-enable-lease-checkpoint): the leader writes remaining TTLs through the log,
and a member that becomes leader again (here: after a restart) starts each lease's clock from its checkpoint.

In-process members with a fake clock, so the numbers are exact. Multi-member and real-process tests live in
``tests/lease/test_lease_checkpoint_processes.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.lease.lessor import Lessor
from quorumkv.server.apply import Applier
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings
from quorumkv.storage import leases as lease_rows
from quorumkv.storage.backend import Backend, read_txn
from quorumkv.testing.clock import FakeClock

TIMEOUT_S = 10.0


def _settings(data: Path, *, checkpoint: bool, interval_s: float = 5.0) -> ServerSettings:
    return ServerSettings(data_dir=str(data), lease_checkpoint=checkpoint, lease_checkpoint_interval_s=interval_s)


async def _ttl(server: QuorumServer, lease_id: int) -> pb.LeaseTimeToLiveResponse:
    return await server.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=lease_id))


async def _wait_checkpoint(server: QuorumServer, lease_id: int, want: int | None) -> None:
    """Until the applied checkpointed remaining TTL of ``lease_id`` is ``want`` (None: none), bounded."""
    async with asyncio.timeout(TIMEOUT_S):
        while server.applier.lease_remaining.get(lease_id) != want:
            await asyncio.sleep(0.05)


async def _restart(server: QuorumServer, settings: ServerSettings, clock: FakeClock) -> QuorumServer:
    await server.stop()
    again = QuorumServer(settings, clock=clock)
    await again.start()
    return again


async def test_restart_keeps_the_checkpointed_remaining_ttl(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = _settings(tmp_path / "data", checkpoint=True)
    server = QuorumServer(settings, clock=clock)
    await server.start()
    try:
        await server.lease_grant(pb.LeaseGrantRequest(ID=7, TTL=60))
        await server.lease_grant(pb.LeaseGrantRequest(ID=8, TTL=4))  # less than one interval: never checkpointed
        clock.advance(6)  # the checkpoint fell due at 5 s: 54 s remain (rounded up, as etcd)
        await _wait_checkpoint(server, 7, 54)
        assert 8 not in server.applier.lease_remaining
        server = await _restart(server, settings, FakeClock(start_s=5000.0))
        assert server.applier.lease_remaining == {7: 54}
        resp = await _ttl(server, 7)
        # the new leader starts from the checkpoint, extended by an election timeout (etcd's Promote)
        assert (resp.TTL, resp.grantedTTL) == (55, 60)
    finally:
        await server.stop()


async def test_checkpoints_repeat_and_keepalive_clears_them(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = _settings(tmp_path / "data", checkpoint=True)
    server = QuorumServer(settings, clock=clock)
    await server.start()
    try:
        await server.lease_grant(pb.LeaseGrantRequest(ID=7, TTL=60))
        clock.advance(5)
        await _wait_checkpoint(server, 7, 55)
        # the applied checkpoint schedules the next one an interval later: wait until it has (the applier's value
        # is visible a moment before the proposer reschedules), so that advancing the clock makes it due
        async with asyncio.timeout(TIMEOUT_S):
            while server.lessor.leases[7].checkpoint_at_s is None:
                await asyncio.sleep(0.05)
        clock.advance(5)
        await _wait_checkpoint(server, 7, 50)
        index = server.applier.applied_index
        assert await server.lease_renew(7) == 60
        # etcd's Renew clears the checkpoint through the log before restarting the countdown
        assert 7 not in server.applier.lease_remaining and server.applier.applied_index > index
        with read_txn(server.reader) as conn:
            assert lease_rows.load_lease_remaining(conn) == {}
        server = await _restart(server, settings, FakeClock(start_s=5000.0))
        assert (await _ttl(server, 7)).TTL == 61  # full TTL (plus the election timeout) again
    finally:
        await server.stop()


async def test_without_the_flag_a_restart_starts_from_the_full_ttl(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = _settings(tmp_path / "data", checkpoint=False)
    server = QuorumServer(settings, clock=clock)
    await server.start()
    try:
        await server.lease_grant(pb.LeaseGrantRequest(ID=7, TTL=60))
        clock.advance(20)
        await asyncio.sleep(1.2)  # two rounds of the lease loop: no checkpoint proposed, none applied
        assert server.lessor.checkpoint_interval_s is None and server.applier.lease_remaining == {}
        assert (await _ttl(server, 7)).TTL == 40
        server = await _restart(server, settings, FakeClock(start_s=5000.0))
        assert (await _ttl(server, 7)).TTL == 61  # etcd 3.4 without checkpoints: the full TTL again
    finally:
        await server.stop()


async def test_without_the_flag_a_stored_checkpoint_is_ignored(tmp_path: Path) -> None:
    """A data dir that ran with checkpoints and restarts without: no renewal would clear the stored number, so it
    must not shorten the lease later."""
    clock = FakeClock()
    server = QuorumServer(_settings(tmp_path / "data", checkpoint=True), clock=clock)
    await server.start()
    try:
        await server.lease_grant(pb.LeaseGrantRequest(ID=7, TTL=60))
        clock.advance(6)
        await _wait_checkpoint(server, 7, 54)
        server = await _restart(server, _settings(tmp_path / "data", checkpoint=False), FakeClock(start_s=5000.0))
        assert (await _ttl(server, 7)).TTL == 61
    finally:
        await server.stop()


def test_apply_stores_checkpoints_deterministically(tmp_path: Path) -> None:
    """Apply takes the number from the entry (no clock), skips unknown leases, and 0 clears."""
    backend = Backend(tmp_path / "db.sqlite")
    try:
        applier = Applier(backend.writer)
        reader = backend.new_reader()
        result = applier.new_result()
        grant = pb.LeaseGrantRequest(ID=1, TTL=100).SerializeToString()
        cps = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=1, remaining_TTL=40),
                                                     pb.LeaseCheckpoint(ID=99, remaining_TTL=5)])
        clear = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=1, remaining_TTL=0)])
        with backend.write_txn() as conn:
            applier.apply(conn, 1, encode_entry(EntryKind.LEASE_GRANT, 0, grant), result)
            applier.apply(conn, 2, encode_entry(EntryKind.LEASE_CHECKPOINT, 9, cps.SerializeToString()), result)
            applier.finish(conn, result)
        assert isinstance(result.responses[9], pb.LeaseCheckpointResponse)
        assert applier.lease_remaining == {1: 40} and result.leases_checkpointed == [(1, 40)]
        with read_txn(reader) as conn:
            assert lease_rows.load_lease_remaining(conn) == {1: 40}
            assert lease_rows.load_leases(conn) == {1: 100}
        with backend.write_txn() as conn:
            applier.apply(conn, 3, encode_entry(EntryKind.LEASE_CHECKPOINT, 0, clear.SerializeToString()), result)
            applier.finish(conn, result)
        assert applier.lease_remaining == {}
        with read_txn(reader) as conn:
            assert lease_rows.load_lease_remaining(conn) == {}
    finally:
        backend.close()


def test_lessor_schedules_like_etcd() -> None:
    clock = FakeClock(start_s=0.0)
    lessor = Lessor(clock, checkpoint_interval_s=10)
    lessor.granted(1, 30)
    lessor.granted(2, 8)  # not more than one interval left: never scheduled
    assert lessor.due_checkpoints() == []
    clock.advance(10.2)
    assert lessor.due_checkpoints() == [(1, 20)]  # 19.8 rounded up
    assert lessor.due_checkpoints() == []  # once until the checkpoint is applied
    lessor.checkpointed(1)  # 19.8 s left, more than an interval: the next one is due an interval later
    clock.advance(9.9)
    assert lessor.due_checkpoints() == []
    clock.advance(0.1)
    assert lessor.due_checkpoints() == [(1, 10)]
    lessor.checkpointed(1)  # 9.8 s left: none scheduled any more
    clock.advance(9)
    assert lessor.due_checkpoints() == []
    lessor.renew(1)  # a renewal schedules again
    clock.advance(10)
    assert lessor.due_checkpoints() == [(1, 20)]
    lessor.promote({1: 30}, extend_s=1, remaining={1: 20})
    assert lessor.remaining_s(1) == 21
    assert Lessor(clock).due_checkpoints() == []
