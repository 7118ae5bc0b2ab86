"""Several Raft members in one process and one event loop, connected by an in-memory transport.

Exercises the node loop, bootstrap, forwarding, ReadIndex reads, leases on the leader, membership changes and
snapshot catch-up without sockets. Messages are encoded and decoded on the way (as on the wire).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.raft.messages import Message, decode_message, encode_message
from quorumkv.server.raft_node import RaftNode
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings

pytestmark = pytest.mark.timeout(120)


class Hub:
    def __init__(self) -> None:
        self.transports: list[MemTransport] = []
        self.cut: set[int] = set()  # members whose traffic (both ways) is dropped

    def factory(self, member_id: int, cluster_id: int, *, on_messages: Callable[[list[Message]], None],
                on_unreachable: Callable[[int], None], rng: random.Random, **_: Any) -> MemTransport:
        return MemTransport(self, member_id, cluster_id, on_messages)

    @property
    def nodes(self) -> dict[int, MemTransport]:
        """Live transports by their current member ID (a joining member learns its ID after starting)."""
        return {t.member_id: t for t in self.transports}


class MemTransport:
    def __init__(self, hub: Hub, member_id: int, cluster_id: int,
                 on_messages: Callable[[list[Message]], None]) -> None:
        self.hub, self.member_id, self.cluster_id, self.on_messages = hub, member_id, cluster_id, on_messages
        self.handlers: dict[str, Callable[[bytes], Awaitable[bytes]]] = {}
        self.peers: dict[int, list[str]] = {}
        self.open_methods: set[str] = set()
        self.on_removed: Callable[[int], None] | None = None

    def register_handler(self, method: str, fn: Callable[[bytes], Awaitable[bytes]]) -> None:
        self.handlers[method] = fn

    async def start(self, urls: list[str]) -> None:
        self.hub.transports.append(self)

    async def stop(self) -> None:
        self.hub.transports.remove(self)

    def add_peer(self, mid: int, urls: list[str]) -> None:
        self.peers[mid] = urls

    def update_peer(self, mid: int, urls: list[str]) -> None:
        self.peers[mid] = urls

    def remove_peer(self, mid: int) -> None:
        self.peers.pop(mid, None)

    def send(self, messages: list[Message]) -> None:
        loop = asyncio.get_running_loop()
        for m in messages:
            dst = self.hub.nodes.get(m.to)
            if dst is None or m.to in self.hub.cut or self.member_id in self.hub.cut:
                continue
            loop.call_soon(dst.on_messages, [decode_message(encode_message(m))])

    async def call(self, mid: int, method: str, payload: bytes, timeout_s: float) -> bytes:
        dst = self.hub.nodes.get(mid)
        if dst is None and method == "cluster_info" and self.hub.transports:
            dst = self.hub.transports[0]  # a joining member probes by URL; any live member answers
        if dst is None or mid in self.hub.cut:
            raise ConnectionError(f"peer {mid:x} unreachable")
        return await asyncio.wait_for(dst.handlers[method](payload), timeout_s)


def settings(tmp: Path, name: str, names: list[str], **kw: Any) -> ServerSettings:
    cluster = ",".join(f"{n}=http://127.0.0.1:{7000 + i}" for i, n in enumerate(names))
    i = names.index(name) if name in names else len(names)
    return ServerSettings(
        name=name, data_dir=str(tmp / name), initial_cluster=cluster,
        initial_advertise_peer_urls=[f"http://127.0.0.1:{7000 + i}"],
        advertise_client_urls=[f"http://127.0.0.1:{8000 + i}"],
        **{"heartbeat_interval_ms": 50, "election_timeout_ms": 500, **kw})


async def start(hub: Hub, s: ServerSettings) -> QuorumServer:
    srv = QuorumServer(s)
    srv.transport_factory = hub.factory
    await srv.start()
    return srv


async def wait_for(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def relax_request_timeouts(servers: list[QuorumServer]) -> None:
    """Back to the default request timeout once a test's expected timeout has happened: what follows must not
    race a sub-second budget on a slow disk."""
    for s in servers:
        s.settings.request_timeout_ms = 0


def leader_of(servers: list[QuorumServer]) -> QuorumServer:
    leaders = [s for s in servers if isinstance(s.node, RaftNode) and s.node.is_leader]
    assert len(leaders) == 1, f"{len(leaders)} leaders"
    return leaders[0]


async def wait_leader(servers: list[QuorumServer]) -> QuorumServer:
    def one() -> bool:
        leads = {s.node.lead for s in servers}  # type: ignore[union-attr]
        return len(leads) == 1 and 0 not in leads and sum(s.is_leader for s in servers) == 1
    await wait_for(one)
    return leader_of(servers)


def get(srv: QuorumServer, key: bytes) -> bytes | None:
    resp = srv.range(pb.RangeRequest(key=key))
    return resp.kvs[0].value if resp.kvs else None


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


NAMES = ["m1", "m2", "m3"]


def test_three_members_elect_replicate_and_read_linearizably(tmp_path: Path) -> None:
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES)) for n in NAMES]
        try:
            ids = {s.member_id for s in servers}
            assert len(ids) == 3 and len({s.cluster_id for s in servers}) == 1
            leader = await wait_leader(servers)
            follower = next(s for s in servers if s is not leader)
            resp = await follower.put(pb.PutRequest(key=b"k", value=b"v1"))  # forwarded to the leader
            assert resp.header.revision == 2
            for s in servers:  # a linearizable read on any member sees the acknowledged write
                await s.read_barrier()
                assert get(s, b"k") == b"v1"
            members = leader.member_list().members
            await wait_for(lambda: all(len(m.clientURLs) == 1 for m in leader.member_list().members))
            assert sorted(m.name for m in members) == NAMES
            st = follower.status()
            assert st.leader == leader.member_id and st.raftTerm >= 2 and st.raftAppliedIndex >= 4
        finally:
            for s in servers:
                await s.stop()
    run(body)


def test_leader_loss_new_leader_and_restart_catches_up(tmp_path: Path) -> None:
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES)) for n in NAMES]
        try:
            leader = await wait_leader(servers)
            await leader.put(pb.PutRequest(key=b"a", value=b"1"))
            name = leader.settings.name
            await leader.stop()
            rest = [s for s in servers if s is not leader]
            servers = rest
            new = await wait_leader(rest)
            assert new.member_id != leader.member_id
            await rest[0].put(pb.PutRequest(key=b"b", value=b"2"))
            back = await start(hub, settings(tmp_path, name, NAMES))  # rejoins from its data dir
            servers.append(back)
            await back.read_barrier()
            assert get(back, b"a") == b"1" and get(back, b"b") == b"2"
        finally:
            for s in servers:
                await s.stop()
    run(body)


def test_the_leader_sends_appends_before_its_own_fsync(tmp_path: Path) -> None:
    """The leader's fsync of a new entry waits here until a follower has persisted that entry: that completes
    only if the append went out before the leader's sync (as etcd's leader does), not after it."""
    async def body() -> None:
        hub = Hub()
        # m1 leads: the others would wait 20 s before campaigning, so blocking its Raft thread below cannot
        # cost it the leadership
        servers = [await start(hub, settings(tmp_path, n, NAMES, request_timeout_ms=4000,
                                             election_timeout_ms=500 if n == "m1" else 20_000)) for n in NAMES]
        try:
            leader = await wait_leader(servers)
            assert leader is servers[0]
            follower = servers[1]
            node = leader.node
            assert isinstance(node, RaftNode)
            real_write_txn = node.backend.write_txn
            target = node.last_index + 1
            waited: list[bool] = []

            @contextmanager
            def gated_write_txn(sync: bool = True) -> Iterator[sqlite3.Connection]:
                # on the leader's Raft thread: the Ready that persists ``target`` is being handled
                if not waited and node.raw.raft.log.last_index() >= target:
                    deadline = time.monotonic() + 2  # under the request timeout: the assertion speaks
                    while follower.node.last_index < target and time.monotonic() < deadline:
                        time.sleep(0.005)
                    waited.append(follower.node.last_index >= target)
                with real_write_txn(sync=sync) as conn:
                    yield conn

            node.backend.write_txn = gated_write_txn  # type: ignore[method-assign]
            await leader.put(pb.PutRequest(key=b"early", value=b"bird"))
            assert waited == [True], "the follower had not received the entry while the leader synced it"
            assert get(leader, b"early") == b"bird"
        finally:
            for s in reversed(servers):  # m1 last: a follower handing leadership over would wait 2 x 20 s
                await s.stop()
    run(body)


def test_no_quorum_fails_with_timeout_not_success(tmp_path: Path) -> None:
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES, request_timeout_ms=1000)) for n in NAMES]
        try:
            leader = await wait_leader(servers)
            others = [s for s in servers if s is not leader]
            hub.cut.update(s.member_id for s in others)
            with pytest.raises(EtcdError) as exc:
                await leader.put(pb.PutRequest(key=b"x", value=b"lost?"))
            assert exc.value.code == "UNAVAILABLE" and "timed out" in exc.value.message
            relax_request_timeouts(servers)
            hub.cut.clear()
            leader = await wait_leader(servers)
            await leader.put(pb.PutRequest(key=b"y", value=b"ok"))
            for s in servers:
                await s.read_barrier()
                assert get(s, b"y") == b"ok"
        finally:
            for s in servers:
                await s.stop()
    run(body)


def test_membership_add_learner_promote_remove(tmp_path: Path) -> None:
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES, snapshot_count=20)) for n in NAMES]
        try:
            leader = await wait_leader(servers)
            for i in range(60):  # enough entries that the log is compacted: the new member needs a snapshot
                await leader.put(pb.PutRequest(key=f"k{i}".encode(), value=b"v"))
            added = await leader.member_add(pb.MemberAddRequest(peerURLs=["http://127.0.0.1:7003"], isLearner=True))
            assert added.member.isLearner and len(added.members) == 4
            with pytest.raises(EtcdError) as exc:
                await leader.member_add(pb.MemberAddRequest(peerURLs=["http://127.0.0.1:7003"]))
            assert exc.value.message == errors.PEER_URL_EXIST.message
            s4 = settings(tmp_path, "m4", [*NAMES, "m4"], snapshot_count=20)
            s4.initial_cluster_state = "existing"
            m4 = await start(hub, s4)
            servers.append(m4)
            assert m4.member_id == added.member.ID and m4.cluster_id == leader.cluster_id
            await wait_for(lambda: get(m4, b"k59") == b"v")
            with pytest.raises(EtcdError) as exc:
                await m4.put(pb.PutRequest(key=b"z", value=b"learner"))
            assert exc.value.message == errors.NOT_SUPPORTED_FOR_LEARNER.message
            await wait_for(lambda: m4.node.last_index >= leader.node.last_index)
            follower = next(s for s in servers[:3] if s is not leader)
            for attempt in range(100):  # the leader may not have heard m4's last ack yet: etcd says retry
                try:
                    await follower.member_promote(pb.MemberPromoteRequest(ID=m4.member_id))  # forwarded
                    break
                except EtcdError as exc:
                    if exc.message != errors.LEARNER_NOT_READY.message or attempt == 99:
                        raise
                    await asyncio.sleep(0.1)
            await wait_for(lambda: not m4.is_learner)
            assert not any(m.isLearner for m in leader.member_list().members)
            await m4.put(pb.PutRequest(key=b"z", value=b"voter"))
            victim = follower
            resp = await leader.member_remove(pb.MemberRemoveRequest(ID=victim.member_id))
            assert victim.member_id not in {m.ID for m in resp.members}
            await wait_for(lambda: victim._removed.is_set())
        finally:
            for s in servers:
                await s.stop()
    run(body)


def test_leases_live_on_the_leader_and_keepalive_forwards(tmp_path: Path) -> None:
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES)) for n in NAMES]
        try:
            leader = await wait_leader(servers)
            follower = next(s for s in servers if s is not leader)
            grant = await follower.lease_grant(pb.LeaseGrantRequest(TTL=30))
            assert await follower.lease_renew(grant.ID) == 30
            ttl = await follower.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=grant.ID))
            assert 28 <= ttl.TTL <= 30 and ttl.grantedTTL == 30
            await leader.move_leader(pb.MoveLeaderRequest(targetID=follower.member_id))
            assert follower.node.lead == follower.member_id
            await wait_for(lambda: follower.is_leader)
            ttl = await leader.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=grant.ID))
            assert ttl.TTL >= 28  # a leader change does not expire leases early
        finally:
            for s in servers:
                await s.stop()
    run(body)


def test_a_write_abandoned_while_waiting_for_a_leader_is_never_applied(tmp_path: Path) -> None:
    """A proposal parked on a member that has no leader is dropped once its caller times out (as etcd drops a
    proposal whose request context ends), so it cannot surface after the partition heals."""
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES, request_timeout_ms=700)) for n in NAMES]
        try:
            leader = await wait_leader(servers)
            lonely = next(s for s in servers if s is not leader)
            assert isinstance(lonely.node, RaftNode)
            lonely.node.parked_timeout_s = 60.0  # only the caller giving up may drop it
            hub.cut.add(lonely.member_id)
            await wait_for(lambda: lonely.node.lead == 0, 10)  # it no longer knows a leader
            with pytest.raises(EtcdError) as exc:
                await lonely.put(pb.PutRequest(key=b"ghost", value=b"boo"))
            assert "timed out" in exc.value.message
            relax_request_timeouts(servers)
            hub.cut.clear()
            await wait_for(lambda: lonely.node.lead != 0, 10)
            await leader.put(pb.PutRequest(key=b"after", value=b"heal"))
            for s in servers:
                await s.read_barrier()
                assert get(s, b"after") == b"heal"
                assert get(s, b"ghost") is None
        finally:
            for s in servers:
                await s.stop()
    run(body)


def test_concurrent_linearizable_reads_cost_one_read_index_round(tmp_path: Path) -> None:
    """Reads that arrive together share one ReadIndex round, on the leader and on a follower; reads that arrive
    while a round is in flight share the next one."""
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES)) for n in NAMES]
        try:
            leader = await wait_leader(servers)
            await leader.put(pb.PutRequest(key=b"k", value=b"v"))
            follower = next(s for s in servers if s is not leader)
            for s in (leader, follower):
                await s.read_barrier()  # the first round (and its leader's term commit) are behind us
                await wait_for(lambda s=s: s._read_index_batcher is not None  # type: ignore[misc]
                               and not s._read_index_batcher.in_flight)
                before = s.read_index_rounds
                await asyncio.gather(*(s.read_barrier() for _ in range(50)))
                assert s.read_index_rounds == before + 1, f"{s.read_index_rounds - before} rounds for 50 reads"
                first = asyncio.create_task(s.read_barrier())
                batcher = s._read_index_batcher
                assert batcher is not None
                for _ in range(1000):  # a few loop iterations: the round starts at the end of the next one
                    if batcher.in_flight:
                        break
                    await asyncio.sleep(0)
                assert batcher.in_flight
                later = [asyncio.create_task(s.read_barrier()) for _ in range(30)]
                await asyncio.gather(first, *later)
                assert s.read_index_rounds == before + 3
                assert get(s, b"k") == b"v"
        finally:
            for s in servers:
                await s.stop()
    run(body)


def test_a_follower_read_after_an_acknowledged_write_sees_it(tmp_path: Path) -> None:
    """The leader acknowledges a write once it has applied it, before the followers know it is committed: a
    linearizable read on a follower right after the acknowledgement must wait until the follower applied it."""
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES)) for n in NAMES]
        try:
            leader = await wait_leader(servers)
            followers = [s for s in servers if s is not leader]
            for i in range(40):
                value = f"v{i}".encode()
                await leader.put(pb.PutRequest(key=b"k", value=value))
                target = followers[i % 2]

                async def read(target: QuorumServer = target) -> bytes | None:
                    await target.read_barrier()
                    return get(target, b"k")
                got = await asyncio.gather(*(read() for _ in range(5)))
                assert got == [value] * 5, f"write {i}: a follower served {got}"
        finally:
            for s in servers:
                await s.stop()
    run(body)


def test_a_partitioned_old_leader_does_not_serve_stale_linearizable_reads(tmp_path: Path) -> None:
    async def body() -> None:
        hub = Hub()
        servers = [await start(hub, settings(tmp_path, n, NAMES, request_timeout_ms=1500)) for n in NAMES]
        try:
            old = await wait_leader(servers)
            await old.put(pb.PutRequest(key=b"k", value=b"old"))
            await old.read_barrier()
            hub.cut.add(old.member_id)
            with pytest.raises(EtcdError) as exc:  # asked at once: it may still believe it leads
                await old.read_barrier()
            assert exc.value.code == "UNAVAILABLE"
            rest = [s for s in servers if s is not old]
            new = await wait_leader(rest)
            await new.put(pb.PutRequest(key=b"k", value=b"new"))
            for _ in range(2):  # asked after the majority moved on: still no answer from the old leader
                with pytest.raises(EtcdError) as exc:
                    await old.read_barrier()
                assert exc.value.code == "UNAVAILABLE"
            assert get(old, b"k") == b"old"  # (what it would have served)
            relax_request_timeouts(servers)
            hub.cut.clear()
            await wait_leader(servers)
            await old.read_barrier()
            assert get(old, b"k") == b"new"
        finally:
            for s in servers:
                await s.stop()
    run(body)
