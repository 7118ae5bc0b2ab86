"""MemoryHub / MemoryTransport: the in-process transport for node tests, and its fault controls."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import Message, MessageType, Snapshot, SnapshotMetadata
from quorumkv.testing.memory_transport import MemoryHub, MemoryTransport
from quorumkv.transport import CallErrorKind, PeerCallError, RemoteCallError, Transport

from .kit import CLUSTER, eventually, hb


@dataclass
class Member:
    member_id: int
    transport: MemoryTransport = field(init=False)
    received: list[list[Message]] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)
    snapshot_status: list[tuple[int, bool]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://member{self.member_id}:2380"

    def messages(self) -> list[Message]:
        return [m for batch in self.received for m in batch]


def _recorder(into: list[tuple[int, bool]]) -> Callable[[int, bool], None]:
    return lambda peer, ok: into.append((peer, ok))


async def cluster(hub: MemoryHub, *ids: int, cluster_id: int = CLUSTER, max_queue: int = 4096) -> list[Member]:
    members = []
    for i in ids:
        m = Member(i)
        m.transport = hub.transport(i, cluster_id, m.received.append, m.unreachable.append, random.Random(i),
                                    on_snapshot_status=_recorder(m.snapshot_status),
                                    max_queue_messages=max_queue)
        await m.transport.start([m.url])
        members.append(m)
    for a in members:
        for b in members:
            if a is not b:
                a.transport.add_peer(b.member_id, [b.url])
    return members


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_round_trip_is_batched_asynchronous_and_encoded() -> None:
    hub = MemoryHub()
    a, b, c = await cluster(hub, 1, 2, 3)
    assert isinstance(a.transport, Transport)
    msgs = [hb(1, 2, commit=1), hb(1, 3), hb(1, 2, commit=2)]
    a.transport.send(msgs)
    assert b.received == [] and c.received == []  # never delivered inside send()
    await settle()
    assert b.received == [[msgs[0], msgs[2]]] and c.received == [[msgs[1]]]
    assert b.messages()[0] is not msgs[0]  # went through the codec
    s = a.transport.stats()[2]
    assert s.connected and s.sent_messages == 2 and s.sent_bytes > 0 and s.active_url == b.url
    assert b.transport.stats()[1].received_bytes == s.sent_bytes


async def test_partition_drops_and_reports_then_heal_restores() -> None:
    hub = MemoryHub()
    a, b, c = await cluster(hub, 1, 2, 3)
    hub.partition([1], [2, 3])
    a.transport.send([hb(1, 2), hb(1, 3)])
    b.transport.send([hb(2, 3), hb(2, 1)])
    await settle()
    assert a.unreachable == [2, 3] or sorted(a.unreachable) == [2, 3]
    assert b.unreachable == [1]
    assert c.messages() == [hb(2, 3)] and b.messages() == []
    s = a.transport.stats()[2]
    assert not s.connected and s.dropped == 1 and "partition" in s.last_error
    hub.heal()
    a.transport.send([hb(1, 2)])
    await settle()
    assert b.messages() == [hb(1, 2)]
    assert a.transport.stats()[2].connected


async def test_one_way_block_and_isolation() -> None:
    hub = MemoryHub()
    a, b, c = await cluster(hub, 1, 2, 3)
    hub.block(1, 2)
    a.transport.send([hb(1, 2)])
    b.transport.send([hb(2, 1)])
    await settle()
    assert b.messages() == [] and a.messages() == [hb(2, 1)] and a.unreachable == [2]
    hub.heal()
    hub.isolate(3)
    c.transport.send([hb(3, 1)])
    a.transport.send([hb(1, 3), hb(1, 2)])
    await settle()
    assert c.messages() == [] and a.messages() == [hb(2, 1)] and b.messages() == [hb(1, 2)]
    assert c.unreachable == [1] and 3 in a.unreachable


async def test_batch_in_flight_is_lost_when_the_link_breaks() -> None:
    hub = MemoryHub(delay_s=(0.02, 0.02))
    a, b = await cluster(hub, 1, 2)
    a.transport.send([hb(1, 2)])
    assert a.transport.stats()[2].queued == 1
    hub.partition([1], [2])
    await asyncio.sleep(0.05)
    assert b.messages() == [] and a.unreachable == [2] and a.transport.stats()[2].dropped == 1


async def test_fifo_per_link_with_random_delays() -> None:
    hub = MemoryHub(random.Random(3), delay_s=(0.0, 0.01))
    a, b = await cluster(hub, 1, 2)
    for i in range(40):
        a.transport.send([hb(1, 2, commit=i)])
    await eventually(lambda: len(b.messages()) == 40, timeout_s=2, what="all 40")
    assert [m.commit for m in b.messages()] == list(range(40))


async def test_seeded_random_loss_is_reproducible() -> None:
    async def run(seed: int) -> list[int]:
        hub = MemoryHub(random.Random(seed))
        hub.drop_rate = 0.3
        a, b = await cluster(hub, 1, 2)
        a.transport.send([hb(1, 2, commit=i) for i in range(200)])
        await settle()
        assert a.unreachable == []  # loss is silent, like a lost packet
        assert hub.lost + len(b.messages()) == 200
        return [m.commit for m in b.messages()]

    first, again, other = await run(11), await run(11), await run(12)
    assert first == again and first != other
    assert 100 < len(first) < 180


async def test_queue_bound_and_snapshot_status() -> None:
    hub = MemoryHub(delay_s=(0.01, 0.01))
    a, b = await cluster(hub, 1, 2, max_queue=5)
    a.transport.send([hb(1, 2, commit=i) for i in range(8)])
    s = a.transport.stats()[2]
    assert (s.queued, s.dropped) == (5, 3)
    await settle()
    assert a.unreachable == [2]
    meta = SnapshotMetadata(index=Index(9), term=Term(1))
    chunks = [Message(MessageType.SNAP, to=NodeId(2), frm=NodeId(1), term=Term(1),
                      snapshot=Snapshot(b"ab"[i : i + 1], meta), snap_offset=i, snap_total=2) for i in range(2)]
    await eventually(lambda: len(b.messages()) == 5, what="the five queued")
    a.transport.send(chunks)
    await eventually(lambda: a.snapshot_status == [(2, True)], what="snapshot sent")
    hub.block(1, 2)
    a.transport.send(chunks)
    await settle()
    assert a.snapshot_status == [(2, True), (2, False)]


async def test_refusals_use_the_grpc_wording() -> None:
    hub = MemoryHub()
    (a,) = await cluster(hub, 1, cluster_id=0xAAA1)
    (b,) = await cluster(hub, 2, cluster_id=0xBBB2)
    a.transport.add_peer(2, [b.url])
    a.transport.send([hb(1, 2)])
    await settle()
    err = a.transport.stats()[2].last_error
    assert "request cluster ID mismatch" in err and "aaa1" in err and "bbb2" in err
    assert a.unreachable == [2] and b.received == []
    with pytest.raises(PeerCallError) as info:
        await a.transport.call(2, "x", b"", timeout_s=1)
    assert info.value.kind == CallErrorKind.REFUSED and "cluster ID mismatch" in info.value.detail

    hub2 = MemoryHub()
    c, d = await cluster(hub2, 3, 4)
    d.transport.remove_peer(3)
    c.transport.send([hb(3, 4)])
    await settle()
    assert d.received == [] and "removed" in c.transport.stats()[4].last_error


async def test_calls() -> None:
    hub = MemoryHub()
    a, b = await cluster(hub, 1, 2)

    async def echo(p: bytes) -> bytes:
        return p[::-1]

    async def slow(p: bytes) -> bytes:
        await asyncio.sleep(5)
        return p

    async def no_lease(p: bytes) -> bytes:
        raise RemoteCallError("etcdserver: requested lease not found")

    b.transport.register_handler("echo", echo)
    b.transport.register_handler("slow", slow)
    b.transport.register_handler("lease", no_lease)
    assert await a.transport.call(2, "echo", b"abc", timeout_s=1) == b"cba"
    kinds = {}
    for method, member in [("nope", 2), ("slow", 2), ("lease", 2), ("echo", 7)]:
        with pytest.raises(PeerCallError) as info:
            await a.transport.call(member, method, b"", timeout_s=0.05)
        kinds[method] = info.value.kind
    assert kinds == {"nope": CallErrorKind.UNKNOWN_METHOD, "slow": CallErrorKind.TIMEOUT,
                     "lease": CallErrorKind.REMOTE, "echo": CallErrorKind.UNKNOWN_PEER}
    hub.isolate(2)
    with pytest.raises(PeerCallError) as info:
        await a.transport.call(2, "echo", b"", timeout_s=1)
    assert info.value.kind == CallErrorKind.UNAVAILABLE


async def test_stopped_member_is_unreachable_and_a_new_one_takes_its_url() -> None:
    hub = MemoryHub()
    a, b = await cluster(hub, 1, 2)
    a.transport.send([hb(1, 2)])
    await settle()
    await b.transport.stop()
    a.transport.send([hb(1, 2)])
    await settle()
    assert a.unreachable == [2] and "nothing listening" in a.transport.stats()[2].last_error
    b2 = Member(2)
    b2.transport = hub.transport(2, CLUSTER, b2.received.append, b2.unreachable.append)
    await b2.transport.start([b.url])
    with pytest.raises(OSError, match="address in use"):
        await hub.transport(9, CLUSTER, b2.received.append, b2.unreachable.append).start([b.url])
    a.transport.send([hb(1, 2)])
    await settle()
    assert b2.messages() == [hb(1, 2)] and a.transport.stats()[2].connects == 2
    await a.transport.stop()
    a.transport.send([hb(1, 2)])  # ignored after stop
    await settle()
    assert len(b2.messages()) == 1
