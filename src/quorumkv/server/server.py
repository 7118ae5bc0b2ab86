"""The member: storage, the node, watch, leases and membership behind one façade the API layer calls.

Every method runs on the asyncio event loop. Writes become log entries (``node.propose``) and resolve once
durable and applied; reads run against a read-only SQLite connection (a consistent snapshot of everything
acknowledged so far, which on a single member makes them linearizable).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quorumkv import ETCD_COMPAT_VERSION
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.lease.lessor import Clock, Lessor, SystemClock
from quorumkv.mvcc import store
from quorumkv.server import errors
from quorumkv.server.apply import Applier, ApplyResult, execute_range, execute_read_only_txn
from quorumkv.server.entries import EntryKind
from quorumkv.server.errors import EtcdError
from quorumkv.server.node import LocalNode
from quorumkv.server.watch import WatchHub
from quorumkv.storage.backend import Backend, meta_get, meta_set, read_txn
from quorumkv.storage.datadir import DataDir, open_data_dir

log = logging.getLogger("quorumkv.server")


def compute_member_id(peer_urls: list[str], cluster_token: str, now_s: int | None = None) -> int:
    """etcd's member ID: SHA-1 of the sorted peer URLs, the cluster token (and a start time), first 8 bytes."""
    b = "".join(sorted(peer_urls)).encode() + cluster_token.encode()
    if now_s is not None:
        b += str(now_s).encode()
    return int.from_bytes(hashlib.sha1(b).digest()[:8], "big")


def compute_cluster_id(member_ids: list[int]) -> int:
    """etcd's cluster ID: SHA-1 of the sorted member IDs (8 bytes big-endian each), first 8 bytes."""
    b = b"".join(mid.to_bytes(8, "big") for mid in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(b).digest()[:8], "big")


def to_i64(u: int) -> int:
    """A uint64 (etcd IDs) as the signed 64-bit integer SQLite can store."""
    return u - (1 << 64) if u >= (1 << 63) else u


def to_u64(i: int) -> int:
    return i + (1 << 64) if i < 0 else i


def parse_initial_cluster(spec: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, url = part.partition("=")
        out.setdefault(name, []).append(url)
    return out


class IdGenerator:
    """etcd's request ID scheme: member ID low 16 bits, then a millisecond timestamp and a counter."""

    def __init__(self, member_id: int, now_ms: int) -> None:
        self.prefix = (member_id & 0xFFFF) << 48
        self.suffix = (now_ms & ((1 << 40) - 1)) << 8

    def next(self) -> int:
        self.suffix += 1
        return self.prefix | (self.suffix & ((1 << 48) - 1))


@dataclass
class ServerSettings:
    """What the member needs from its configuration (a subset of ServerConfig, units last)."""

    name: str = "default"
    data_dir: str = "default.quorumkv"
    advertise_client_urls: list[str] = field(default_factory=lambda: ["http://localhost:2379"])
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    initial_cluster: str = ""
    initial_cluster_token: str = "etcd-cluster"
    max_request_bytes: int = 1572864
    max_txn_ops: int = 128
    election_timeout_ms: int = 1000
    heartbeat_interval_ms: int = 100
    watch_progress_notify_interval_ms: int = 600_000

    @classmethod
    def from_config(cls, cfg: Any) -> ServerSettings:
        return cls(
            name=cfg.name,
            data_dir=str(cfg.data_dir),
            advertise_client_urls=list(cfg.advertise_client_urls),
            initial_advertise_peer_urls=list(cfg.initial_advertise_peer_urls),
            initial_cluster=cfg.initial_cluster,
            initial_cluster_token=cfg.initial_cluster_token,
            max_request_bytes=cfg.max_request_bytes,
            max_txn_ops=cfg.max_txn_ops,
            election_timeout_ms=cfg.election_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            watch_progress_notify_interval_ms=getattr(cfg, "watch_progress_notify_interval_ms", 600_000),
        )

    @property
    def min_lease_ttl_seconds(self) -> int:
        """etcd: ceil(1.5 x election timeout), in whole seconds."""
        election_ticks = max(1, self.election_timeout_ms // max(1, self.heartbeat_interval_ms))
        return max(1, math.ceil((3 * election_ticks // 2) * self.heartbeat_interval_ms / 1000))


class QuorumServer:
    """One member. ``await start()`` after construction on the event loop; ``await stop()`` to close."""

    def __init__(self, settings: ServerSettings, *, clock: Clock | None = None,
                 on_applied_hooks: list[Callable[[ApplyResult], None]] | None = None,
                 fsync_observer: Callable[[float], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._hooks = on_applied_hooks or []
        self.datadir: DataDir = open_data_dir(settings.data_dir)
        try:
            self.backend = Backend(self.datadir.db_path)
            self.applier = Applier(self.backend.writer, min_lease_ttl_seconds=settings.min_lease_ttl_seconds)
            self._init_membership()
            self.node = LocalNode(self.backend, self.applier, on_applied=self._on_applied,
                                  fsync_observer=fsync_observer)
        except BaseException:
            self.datadir.close()
            raise
        self.reader = self.backend.new_reader()
        self.lessor = Lessor(self.clock)
        self.hub: WatchHub | None = None
        self.ids = IdGenerator(self.member_id, int(time.time() * 1000))
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    # -- membership (a cluster of one for now) ---------------------------------------------------------------

    def _init_membership(self) -> None:
        conn = self.backend.writer
        s = self.settings
        stored = meta_get(conn, "member_id")
        if stored is None:
            peers = parse_initial_cluster(s.initial_cluster) if s.initial_cluster else {}
            my_peers = peers.get(s.name) or list(s.initial_advertise_peer_urls)
            members = {name: compute_member_id(urls, s.initial_cluster_token) for name, urls in peers.items()}
            if s.name not in members:
                members[s.name] = compute_member_id(my_peers, s.initial_cluster_token)
            if len(members) > 1:
                raise EtcdError(
                    "FAILED_PRECONDITION",
                    f"--initial-cluster names {len(members)} members, but clustering is not available yet: "
                    "start this member with only itself in --initial-cluster",
                )
            member_id = members[s.name]
            cluster_id = compute_cluster_id(list(members.values()))
            with self.backend.write_txn() as c:
                meta_set(c, "member_id", f"{member_id:x}")
                meta_set(c, "cluster_id", f"{cluster_id:x}")
                c.execute(
                    "INSERT INTO member(id, name, peer_urls, client_urls, is_learner) VALUES (?,?,?,?,0)",
                    (to_i64(member_id), s.name, ",".join(my_peers), ",".join(s.advertise_client_urls)),
                )
        else:
            member_id = int(stored, 16)
            with self.backend.write_txn() as c:  # publish this start's name and client URLs, as etcd does
                c.execute("UPDATE member SET name=?, client_urls=? WHERE id=?",
                          (s.name, ",".join(s.advertise_client_urls), to_i64(member_id)))
        self.member_id = member_id
        self.cluster_id = int(meta_get(conn, "cluster_id"), 16)

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with read_txn(self.reader):
            rev = store.current_revision(self.reader)
            compact_rev = store.compact_revision(self.reader)
        self.hub = WatchHub(self.reader, rev, self._header_for, max_event_bytes=self.settings.max_request_bytes)
        self.hub.compact_rev = compact_rev
        self.hub.start()
        self.lessor.promote(dict(self.applier.leases))
        self.node.start(loop)
        self.hub.advance(self.applier.revision)
        self._tasks.append(loop.create_task(self._lease_expiry_loop(), name="lease-expiry"))
        self._tasks.append(loop.create_task(self._progress_notify_loop(), name="watch-progress"))
        self.started = True

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self.hub is not None:
            await self.hub.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.node.stop)
        self.backend.close()
        self.datadir.close()

    # -- after each durable batch ----------------------------------------------------------------------------

    def _on_applied(self, result: ApplyResult) -> None:
        for lid, ttl in result.leases_granted:
            self.lessor.granted(lid, ttl)
        for lid in result.leases_revoked:
            self.lessor.revoked(lid)
        hub = self.hub
        if hub is not None:
            if result.events:
                hub.notify(result.events)
            if result.compacted_to:
                hub.on_compacted(result.compacted_to)
        for hook in self._hooks:
            hook(result)

    # -- headers ---------------------------------------------------------------------------------------------

    @property
    def raft_term(self) -> int:
        return self.node.term

    def _header_for(self, revision: int) -> pb.ResponseHeader:
        return pb.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id, revision=revision,
                                 raft_term=self.node.term)

    def fill_header(self, header: pb.ResponseHeader) -> None:
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.node.term

    # -- KV --------------------------------------------------------------------------------------------------

    async def _propose(self, kind: int, payload: bytes) -> Any:
        if len(payload) > self.settings.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        return await self.node.propose(kind, payload)

    def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        reader = self.reader
        try:
            with read_txn(reader):
                return execute_range(
                    lambda rev, limit, count_only: store.range_at(
                        reader, req.key, req.range_end, rev, limit=limit, count_only=count_only),
                    req,
                )
        except store.CompactedError as exc:
            raise errors.COMPACTED from exc
        except store.FutureRevisionError as exc:
            raise errors.FUTURE_REV from exc

    async def put(self, req: pb.PutRequest) -> pb.PutResponse:
        resp: pb.PutResponse = await self._propose(EntryKind.PUT, req.SerializeToString())
        return resp

    async def delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        resp: pb.DeleteRangeResponse = await self._propose(EntryKind.DELETE_RANGE, req.SerializeToString())
        return resp

    async def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        if is_txn_read_only(req):
            with read_txn(self.reader):
                return execute_read_only_txn(self.reader, req)
        resp: pb.TxnResponse = await self._propose(EntryKind.TXN, req.SerializeToString())
        return resp

    async def compact(self, req: pb.CompactionRequest) -> pb.CompactionResponse:
        resp: pb.CompactionResponse = await self._propose(EntryKind.COMPACTION, req.SerializeToString())
        return resp

    # -- leases ----------------------------------------------------------------------------------------------

    async def lease_grant(self, req: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        lease_id = req.ID or (self.ids.next() & ((1 << 63) - 1))
        r = pb.LeaseGrantRequest(TTL=req.TTL, ID=lease_id)
        resp: pb.LeaseGrantResponse = await self._propose(EntryKind.LEASE_GRANT, r.SerializeToString())
        return resp

    async def lease_revoke(self, req: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        resp: pb.LeaseRevokeResponse = await self._propose(EntryKind.LEASE_REVOKE, req.SerializeToString())
        return resp

    def lease_renew(self, lease_id: int) -> int:
        """KeepAlive: the lease's TTL after renewal, or 0 if it does not exist (etcd answers TTL 0)."""
        ttl = self.lessor.renew(lease_id)
        return 0 if ttl is None else ttl

    def lease_time_to_live(self, req: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        ttl = self.applier.leases.get(req.ID)
        remaining = self.lessor.remaining_s(req.ID)
        if ttl is None or remaining is None:
            return pb.LeaseTimeToLiveResponse(header=pb.ResponseHeader(revision=self.current_revision),
                                              ID=req.ID, TTL=-1)
        resp = pb.LeaseTimeToLiveResponse(ID=req.ID, TTL=remaining, grantedTTL=ttl)
        if req.keys:
            with read_txn(self.reader):
                resp.keys.extend(store.keys_with_lease(self.reader, req.ID))
        resp.header.revision = self.current_revision
        return resp

    def lease_leases(self) -> pb.LeaseLeasesResponse:
        resp = pb.LeaseLeasesResponse()
        for lid in sorted(self.applier.leases):
            resp.leases.add(ID=lid)
        resp.header.revision = self.current_revision
        return resp

    async def _lease_expiry_loop(self) -> None:
        """Revoke expired leases through the log (the decision uses the clock; the deletion does not)."""
        while True:
            await asyncio.sleep(0.5)
            for lid in self.lessor.expired():
                asyncio.get_running_loop().create_task(self._revoke_expired(lid))

    async def _revoke_expired(self, lease_id: int) -> None:
        try:
            await self._propose(EntryKind.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id).SerializeToString())
        except EtcdError as exc:
            if exc.message != errors.LEASE_NOT_FOUND.message:
                self.lessor.revoke_failed(lease_id)

    async def _progress_notify_loop(self) -> None:
        interval_s = max(0.05, self.settings.watch_progress_notify_interval_ms / 1000)
        while True:
            await asyncio.sleep(interval_s)
            if self.hub is not None:
                self.hub.progress_notify_all()

    # -- maintenance / cluster -------------------------------------------------------------------------------

    @property
    def current_revision(self) -> int:
        return self.hub.last_rev if self.hub is not None else self.applier.revision

    def status(self) -> pb.StatusResponse:
        st = self.node.status()
        resp = pb.StatusResponse(
            version=ETCD_COMPAT_VERSION,
            dbSize=self.backend.size_bytes(),
            leader=self.member_id,
            raftIndex=st.commit_index,
            raftTerm=st.term,
            raftAppliedIndex=st.applied_index,
            dbSizeInUse=self.backend.size_in_use_bytes(self.reader),
            isLearner=False,
        )
        resp.header.revision = self.current_revision
        return resp

    def active_alarms(self) -> list[tuple[int, int]]:
        """The raised alarms as (member ID, ``pb.AlarmType`` value), for health checks and metrics."""
        with read_txn(self.reader):
            rows = self.reader.execute("SELECT member_id, alarm FROM alarm").fetchall()
        return sorted((to_u64(int(mid)), int(alarm)) for mid, alarm in rows)

    def member_list(self) -> pb.MemberListResponse:
        resp = pb.MemberListResponse()
        with read_txn(self.reader):
            rows = self.reader.execute(
                "SELECT id, name, peer_urls, client_urls, is_learner FROM member").fetchall()
        rows.sort(key=lambda r: to_u64(r[0]))
        for mid, name, peers, clients, learner in rows:
            resp.members.add(ID=to_u64(mid), name=name, peerURLs=[u for u in peers.split(",") if u],
                             clientURLs=[u for u in clients.split(",") if u], isLearner=bool(learner))
        return resp


def is_txn_read_only(req: pb.TxnRequest) -> bool:
    for ops in (req.success, req.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which in ("request_put", "request_delete_range"):
                return False
            if which == "request_txn" and not is_txn_read_only(op.request_txn):
                return False
    return True
