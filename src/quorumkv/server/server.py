"""The member: storage, the node, watch, leases and membership behind one façade the API layer calls.

Every method runs on the asyncio event loop. Writes become log entries (``node.propose``) and resolve once
durable and applied; reads run against a read-only SQLite connection (a consistent snapshot of everything
acknowledged so far, which on a single member makes them linearizable).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quorumkv import ETCD_COMPAT_VERSION
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.lease.lessor import Clock, Lessor, SystemClock
from quorumkv.mvcc import store
from quorumkv.server import compactor, defrag, errors, maintenance, membership, snapshot
from quorumkv.server.apply import (
    LEASE_OVERHEAD_BYTES,
    Applier,
    ApplyResult,
    execute_range,
    execute_read_only_txn,
    put_cost_bytes,
    txn_cost_bytes,
)
from quorumkv.server.applyproc import ProcessNode
from quorumkv.server.entries import EntryKind
from quorumkv.server.errors import EtcdError
from quorumkv.server.node import LocalNode
from quorumkv.server.raft_node import RaftNode
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
    #: etcd's --quota-backend-bytes after defaulting (0 on the command line means 2 GiB).
    quota_backend_bytes: int = 2 * 1024 * 1024 * 1024
    auto_compaction_mode: str = "periodic"
    #: Seconds (periodic) or revisions (revision); 0 disables auto-compaction.
    auto_compaction_retention: int = 0
    initial_cluster_state: str = "new"
    listen_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    snapshot_count: int = 10_000
    #: How long a write or linearizable read waits for the cluster; 0: etcd's 5 s plus two election timeouts.
    request_timeout_ms: int = 0
    #: Peer TLS (etcd's --peer-* flags): the peer service serves and dials TLS when cert and key are given.
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False

    @property
    def request_timeout_s(self) -> float:
        if self.request_timeout_ms > 0:
            return self.request_timeout_ms / 1000
        return 5.0 + 2 * self.election_timeout_ms / 1000

    #: Append/apply/commit in a child process (``quorumkv.server.applyproc``) instead of a thread of this one
    #: (a single member only; a Raft member always applies on its Raft thread).
    apply_process: bool = False

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
            quota_backend_bytes=cfg.effective_quota_backend_bytes,
            auto_compaction_mode=cfg.auto_compaction_mode,
            auto_compaction_retention=cfg.auto_compaction_retention_parsed(),
            initial_cluster_state=getattr(cfg, "initial_cluster_state", "new"),
            listen_peer_urls=list(getattr(cfg, "listen_peer_urls", ["http://localhost:2380"])),
            snapshot_count=int(getattr(cfg, "snapshot_count", 10_000)),
            peer_cert_file=str(getattr(cfg, "peer_cert_file", "") or ""),
            peer_key_file=str(getattr(cfg, "peer_key_file", "") or ""),
            peer_trusted_ca_file=str(getattr(cfg, "peer_trusted_ca_file", "") or ""),
            peer_client_cert_auth=bool(getattr(cfg, "peer_client_cert_auth", False)),
            apply_process=bool(getattr(cfg, "experimental_apply_process", False)),
        )

    @property
    def min_lease_ttl_seconds(self) -> int:
        """etcd: ceil(1.5 x election timeout), in whole seconds."""
        election_ticks = max(1, self.election_timeout_ms // max(1, self.heartbeat_interval_ms))
        return max(1, math.ceil((3 * election_ticks // 2) * self.heartbeat_interval_ms / 1000))


class _ProposalTimeout(Exception):
    """A proposal's result did not arrive within ``--request-timeout`` (set on its future by a timer)."""


def _expire_proposal(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(_ProposalTimeout())


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
            _remove_stale_temp_files(self.datadir.path)
            self.backend = Backend(self.datadir.db_path)
            self.applier = Applier(self.backend.writer, min_lease_ttl_seconds=settings.min_lease_ttl_seconds)
            self._init_membership()
            self._fsync_observer = fsync_observer
            self._node: LocalNode | ProcessNode | RaftNode | None = None
            if not self.joining:
                self._node = self._make_node(fsync_observer)
        except BaseException:
            self.datadir.close()
            raise
        self.reader = self.backend.new_reader()
        self._allocated_bytes: int | None = None
        self.lessor = Lessor(self.clock)
        self.transport: Any = None
        #: Builds the peer transport (tests inject an in-memory one); None: the gRPC ``PeerTransport``.
        self.transport_factory: Any = None
        #: Raft members: leader changes seen (etcd_server_leader_changes_seen_total) and leadership now.
        self.leader_changes = 0
        self._is_leader = not self.clustered
        self._peer_urls: dict[int, list[str]] = {}
        self._dial_map: dict[str, str] = dict(
            pair.split("=", 1) for pair in os.environ.get("QUORUMKV_TEST_PEER_DIAL_MAP", "").split(",")
            if "=" in pair)
        self._removed = asyncio.Event()
        self.hub: WatchHub | None = None
        self.ids = IdGenerator(self.member_id, int(time.time() * 1000))
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False
        #: The raised alarms as the event loop sees them (updated after each batch that changed them).
        self.alarms: frozenset[tuple[int, int]] = frozenset(self.applier.alarms)
        #: Held while something needs the database file to stay the same file (hash, snapshot copy, defrag).
        self._file_lock = asyncio.Lock()
        #: Longest writer pause of the last defragmentation (seconds), for tests and benchmarks.
        self.last_defrag_pause_s = 0.0
        self.compactor: compactor.Compactor | None = compactor.make_compactor(
            settings.auto_compaction_mode, settings.auto_compaction_retention, self.clock.monotonic())

    # -- membership (a cluster of one for now) ---------------------------------------------------------------

    def _init_membership(self) -> None:
        """Decide who this member is and how it runs: a cluster of one (``LocalNode``) or a Raft member.

        A data dir that already has an identity keeps it, whatever the flags say (as etcd). A fresh one takes it
        from ``--initial-cluster``: more than one member there bootstraps a new Raft cluster (every member
        computes the same IDs from the peer URLs and ``--initial-cluster-token``)."""
        conn = self.backend.writer
        s = self.settings
        stored = meta_get(conn, "member_id")
        self.bootstrap_members: list[membership.Member] | None = None
        self.joining = False
        if stored is None:
            peers = parse_initial_cluster(s.initial_cluster) if s.initial_cluster else {}
            my_peers = peers.get(s.name) or list(s.initial_advertise_peer_urls)
            members = {name: compute_member_id(urls, s.initial_cluster_token) for name, urls in peers.items()}
            if s.name not in members:
                members[s.name] = compute_member_id(my_peers, s.initial_cluster_token)
            member_id = members[s.name]
            if s.initial_cluster_state == "existing":
                # joining a running cluster: the cluster ID and the member list come from its members
                self.joining = True
                self.clustered = True
                self.member_id = member_id
                self.cluster_id = 0
                self.join_peers = {name: urls for name, urls in peers.items() if name != s.name}
                return
            cluster_id = compute_cluster_id(list(members.values()))
            with self.backend.write_txn() as c:
                meta_set(c, "member_id", f"{member_id:x}")
                meta_set(c, "cluster_id", f"{cluster_id:x}")
                if len(members) == 1:
                    c.execute(
                        "INSERT INTO member(id, name, peer_urls, client_urls, is_learner) VALUES (?,?,?,?,0)",
                        (to_i64(member_id), s.name, ",".join(my_peers), ",".join(s.advertise_client_urls)),
                    )
            if len(members) > 1:
                self.bootstrap_members = [
                    membership.Member(mid, name, list(peers[name]), list(s.advertise_client_urls)
                                      if name == s.name else [])
                    for name, mid in members.items()]
        else:
            member_id = int(stored, 16)
            if meta_get(conn, "raft_hard_state") is None:
                with self.backend.write_txn() as c:  # publish this start's name and client URLs, as etcd does
                    c.execute("UPDATE member SET name=?, client_urls=? WHERE id=?",
                              (s.name, ",".join(s.advertise_client_urls), to_i64(member_id)))
        self.member_id = member_id
        self.cluster_id = int(meta_get(conn, "cluster_id"), 16)
        self.clustered = self.bootstrap_members is not None or meta_get(conn, "raft_hard_state") is not None
        if membership.is_removed(conn, member_id):
            raise EtcdError("FAILED_PRECONDITION",
                            f"member {member_id:x} was removed from the cluster; its data dir "
                            f"{self.settings.data_dir} cannot be used again: remove the data dir, add the member "
                            "again (member add) and start it with --initial-cluster-state existing")

    def _make_node(self, fsync_observer: Callable[[float], None] | None) -> LocalNode | ProcessNode | RaftNode:
        if not self.clustered:
            if self.settings.apply_process:
                return ProcessNode(self.backend, self.applier, on_applied=self._on_applied,
                                   fsync_observer=fsync_observer, lock_fd=self.datadir.lock_fd)
            return LocalNode(self.backend, self.applier, on_applied=self._on_applied, fsync_observer=fsync_observer)
        s = self.settings
        node = RaftNode(
            self.backend, self.applier, member_id=self.member_id, on_applied=self._on_applied,
            send=self._send_raft_messages, bootstrap=self.bootstrap_members,
            heartbeat_interval_ms=s.heartbeat_interval_ms, election_timeout_ms=s.election_timeout_ms,
            snapshot_count=s.snapshot_count, fsync_observer=fsync_observer,
            on_leader_change=self._on_leader_change, on_conf_applied=self._on_conf_applied,
            on_fatal=self._on_node_fatal)
        node.parked_timeout_s = s.request_timeout_s
        return node

    @property
    def node(self) -> LocalNode | ProcessNode | RaftNode:
        if self._node is None:
            raise errors.STOPPED  # a joining member before it has joined
        return self._node

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.clustered:
            if self._dial_map:
                log.warning("QUORUMKV_TEST_PEER_DIAL_MAP is set: peers are dialled through the URLs it names "
                            "(a test-only setting; unset it in production)", extra={"map": self._dial_map})
            await self._start_transport()
        with read_txn(self.reader):
            rev = store.current_revision(self.reader)
            compact_rev = store.compact_revision(self.reader)
        self.hub = WatchHub(self.reader, rev, self._header_for, max_event_bytes=self.settings.max_request_bytes)
        self.hub.compact_rev = compact_rev
        self.hub.start()
        if isinstance(self.node, ProcessNode):
            self.node.events_wanted = lambda: self.hub is not None and self.hub.has_synced_watchers
        else:  # the writer thread asks before each batch; a watcher added meanwhile gets the events read back
            self.applier.events_wanted = lambda: self.hub is not None and self.hub.has_synced_watchers
        if not self.clustered:
            self.lessor.promote(dict(self.applier.leases))
        self.node.start(loop)
        self.hub.advance(self.applier.revision)
        if self.clustered:
            self._tasks.append(loop.create_task(self._publish_attributes(), name="publish-attributes"))
        self._tasks.append(loop.create_task(self._lease_expiry_loop(), name="lease-expiry"))
        self._tasks.append(loop.create_task(self._progress_notify_loop(), name="watch-progress"))
        if self.compactor is not None:
            self._tasks.append(loop.create_task(self._auto_compaction_loop(self.compactor), name="auto-compaction"))
        self.started = True

    async def stop(self) -> None:
        if self.started and isinstance(self._node, RaftNode) and self._node.is_leader:
            await self._hand_over_leadership()
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
        if self._node is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._node.stop)
        if self.transport is not None:
            await self.transport.stop()
        self.backend.close()
        self.datadir.close()

    # -- after each durable batch ----------------------------------------------------------------------------

    def _on_applied(self, result: ApplyResult) -> None:
        # the store changed: its size as the writer measured it, or re-read it on the next quota check
        self._allocated_bytes = result.allocated_bytes or None
        for lid, ttl in result.leases_granted:
            self.lessor.granted(lid, ttl)
        for lid in result.leases_revoked:
            self.lessor.revoked(lid)
        hub = self.hub
        if result.restored:
            self.lessor.promote(dict(self.applier.leases))  # only a leader's clocks matter
            self.alarms = frozenset(self.applier.alarms)
            if hub is not None:
                hub.resync(self.applier.revision, self.applier.compact_revision)
        if hub is not None:
            if result.events:
                hub.notify(result.events)
            if result.revision:  # a batch whose events nobody needed when it was applied
                if result.events_from and hub.has_synced_watchers:  # ... but someone has started watching since
                    hub.notify(store.events_by_revision(self.reader, result.events_from, result.revision))
                hub.advance(result.revision)
            if result.compacted_to:
                hub.on_compacted(result.compacted_to)
        if result.alarms_changed:
            self.alarms = frozenset(self.applier.alarms)
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
        node = self.node
        if isinstance(node, (LocalNode, ProcessNode)):
            return await node.propose(kind, payload)
        if node.is_learner:
            raise errors.NOT_SUPPORTED_FOR_LEARNER
        request_id = self.ids.next()
        fut = node.propose(kind, payload, request_id)
        return await self._wait_applied(fut, request_id)

    async def _wait_applied(self, fut: asyncio.Future[Any], request_id: int) -> Any:
        """Wait a bounded time for a proposal: etcd's timeout errors, never a false success."""
        node = self.node
        assert isinstance(node, RaftNode)
        lead_before = node.lead
        # one timer on the proposal's own future (cheaper per request than wait_for + shield): on expiry it
        # fails the future with _ProposalTimeout; a later result for it is dropped (the node checks done())
        timer = asyncio.get_running_loop().call_later(self.settings.request_timeout_s, _expire_proposal, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            # the client went away (deadline, cancel): as etcd, a proposal still waiting for a leader is dropped
            node.forget(request_id)
            raise
        except _ProposalTimeout:
            node.forget(request_id)
            if node.lead != lead_before or node.lead == 0:
                raise errors.TIMEOUT_DUE_TO_LEADER_FAIL from None
            raise errors.TIMEOUT from None
        finally:
            timer.cancel()

    async def read_barrier(self) -> None:
        """Before a linearizable read on a Raft member: wait until everything committed before now is applied
        here (ReadIndex). A cluster of one needs nothing: its reads see every acknowledged write."""
        node = self.node
        if isinstance(node, (LocalNode, ProcessNode)):
            return
        if node.is_learner:
            raise errors.NOT_SUPPORTED_FOR_LEARNER
        lead_before = node.lead
        try:
            await asyncio.wait_for(node.read_index(), self.settings.request_timeout_s)
        except TimeoutError:
            if node.lead == 0:
                raise errors.NO_LEADER from None
            if node.lead != lead_before:
                raise errors.LEADER_CHANGED from None
            raise errors.TIMEOUT from None

    def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        if self.alarms and any(a == pb.AlarmType.CORRUPT for _, a in self.alarms):
            raise errors.CORRUPT
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

    async def _check_quota(self, cost_bytes: int) -> None:
        """etcd's quotaAlarmer: a write that would grow the store past the quota raises NOSPACE and fails."""
        allocated = self._allocated_bytes
        if allocated is None:  # at most once per applied batch, not once per request
            allocated = self._allocated_bytes = self.backend.allocated_bytes(self.reader)
        if allocated + cost_bytes < self.settings.quota_backend_bytes:
            return
        req = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=pb.AlarmType.NOSPACE)
        if (self.member_id, pb.AlarmType.NOSPACE) not in self.alarms:
            log.warning("database space exceeded: raising the NOSPACE alarm",
                        extra={"quota-size-bytes": self.settings.quota_backend_bytes})
            try:
                await self._propose(EntryKind.ALARM, req.SerializeToString())
            except EtcdError as exc:  # the write is refused either way
                log.warning("raising NOSPACE failed: %s", exc.message)
        raise errors.NO_SPACE

    async def put(self, req: pb.PutRequest) -> pb.PutResponse:
        await self._check_quota(put_cost_bytes(req))
        resp: pb.PutResponse = await self._propose(EntryKind.PUT, req.SerializeToString())
        return resp

    async def delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        resp: pb.DeleteRangeResponse = await self._propose(EntryKind.DELETE_RANGE, req.SerializeToString())
        return resp

    async def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        if is_txn_read_only(req):
            if self.clustered:
                await self.read_barrier()
            with read_txn(self.reader):
                return execute_read_only_txn(self.reader, req)
        await self._check_quota(txn_cost_bytes(req))
        resp: pb.TxnResponse = await self._propose(EntryKind.TXN, req.SerializeToString())
        return resp

    async def compact(self, req: pb.CompactionRequest) -> pb.CompactionResponse:
        resp: pb.CompactionResponse = await self._propose(EntryKind.COMPACTION, req.SerializeToString())
        return resp

    # -- leases ----------------------------------------------------------------------------------------------

    async def lease_grant(self, req: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        await self._check_quota(LEASE_OVERHEAD_BYTES)
        lease_id = req.ID or (self.ids.next() & ((1 << 63) - 1))
        r = pb.LeaseGrantRequest(TTL=req.TTL, ID=lease_id)
        resp: pb.LeaseGrantResponse = await self._propose(EntryKind.LEASE_GRANT, r.SerializeToString())
        return resp

    async def lease_revoke(self, req: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        resp: pb.LeaseRevokeResponse = await self._propose(EntryKind.LEASE_REVOKE, req.SerializeToString())
        return resp

    async def lease_renew(self, lease_id: int) -> int:
        """KeepAlive: the lease's TTL after renewal, or 0 if it does not exist (etcd answers TTL 0).
        Only the leader keeps lease clocks: a follower forwards the renewal to it."""
        if not self._is_leader:
            data = await self._call_leader("lease_renew", lease_id.to_bytes(8, "big", signed=True))
            return int.from_bytes(data, "big", signed=True)
        ttl = self.lessor.renew(lease_id)
        return 0 if ttl is None else ttl

    async def lease_time_to_live(self, req: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        if not self._is_leader:
            data = await self._call_leader("lease_ttl", req.SerializeToString())
            resp = pb.LeaseTimeToLiveResponse.FromString(data)
            resp.header.revision = max(resp.header.revision, self.current_revision)
            return resp
        return self._lease_time_to_live_here(req)

    def _lease_time_to_live_here(self, req: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
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
            if not self._is_leader:
                continue
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

    async def _auto_compaction_loop(self, comp: compactor.Compactor) -> None:
        """Propose Compaction entries when the compactor says so (the decision uses the clock, apply does not)."""
        while True:
            comp.sample(self.current_revision)
            await asyncio.sleep(comp.poll_interval_s)
            rev = comp.due(self.clock.monotonic(), self.current_revision)
            if rev is None:
                continue
            log.info("starting auto-compaction", extra={"revision": rev})
            try:
                await self.compact(pb.CompactionRequest(revision=rev))
            except EtcdError as exc:
                if exc.message != errors.COMPACTED.message:
                    log.warning("auto-compaction at revision %d failed: %s", rev, exc.message)
                    continue
            comp.succeeded(self.clock.monotonic(), rev)
            log.info("finished auto-compaction", extra={"revision": rev})

    @property
    def removed_event(self) -> asyncio.Event:
        """Set once this member has applied its own removal from the cluster."""
        return self._removed

    @property
    def has_leader(self) -> bool:
        node = self._node
        return isinstance(node, (LocalNode, ProcessNode)) or (node is not None and node.lead != 0)

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    @property
    def is_learner(self) -> bool:
        return isinstance(self._node, RaftNode) and self._node.is_learner

    @property
    def leader_changes_seen(self) -> int:
        return self.leader_changes if self.clustered else 1

    # -- Raft cluster plumbing (on the event loop) -----------------------------------------------------------

    async def _start_transport(self) -> None:
        """Serve the peer service on --listen-peer-urls and connect to every other member."""
        factory: Any = self.transport_factory
        if factory is None:
            from quorumkv.transport import PeerTransport as factory
        self.transport = factory(
            self.member_id, self.cluster_id, **self._peer_credentials(), on_messages=self._on_peer_messages,
            on_unreachable=self._on_peer_unreachable, rng=random.Random(self.member_id ^ time.time_ns()),
            on_snapshot_status=self._on_snapshot_status)
        self.transport.register_handler("lease_renew", self._handle_lease_renew)
        self.transport.register_handler("lease_ttl", self._handle_lease_ttl)
        self.transport.register_handler("member_promote", self._handle_member_promote)
        self.transport.register_handler("cluster_info", self._handle_cluster_info)
        if hasattr(self.transport, "open_methods"):
            self.transport.open_methods.add("cluster_info")
            self.transport.on_removed = self._on_refused_as_removed
        await self.transport.start(list(self.settings.listen_peer_urls))
        if self.joining:
            await self._join()
        self._sync_peers()

    def _peer_credentials(self) -> dict[str, Any]:
        """gRPC credentials for the peer service from the --peer-* TLS flags (none: plaintext peers)."""
        s = self.settings
        if not s.peer_cert_file:
            return {}
        import grpc

        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()
        key, cert = read(s.peer_key_file), read(s.peer_cert_file)
        ca = read(s.peer_trusted_ca_file) if s.peer_trusted_ca_file else None
        return {
            "server_credentials": grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=s.peer_client_cert_auth and ca is not None),
            "channel_credentials": grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                                certificate_chain=cert),
        }

    async def _join(self) -> None:
        """A new member of a running cluster: learn the cluster ID and members from a live member, check that
        this member was added (``member add``), then start an empty node that the leader will catch up."""
        assert self.transport is not None
        s = self.settings
        my_urls = sorted(s.initial_advertise_peer_urls)
        errors_seen: list[str] = []
        for name, urls in self.join_peers.items():
            probe = compute_member_id(urls, s.initial_cluster_token)
            self.transport.add_peer(probe, self._dial_urls(urls))
            try:
                data = await self.transport.call(probe, "cluster_info", b"", 5.0)
            except Exception as exc:  # try the next member
                errors_seen.append(f"{name} ({','.join(urls)}): {exc}")
                continue
            finally:
                self.transport.remove_peer(probe)
            info = json.loads(data)
            members = [membership.Member.from_json(json.dumps(m).encode()) for m in info["members"]]
            mine = [m for m in members if sorted(m.peer_urls) == my_urls]
            if not mine:
                raise EtcdError("FAILED_PRECONDITION",
                                f"this member (peer URLs {','.join(my_urls)}) has not been added to the cluster "
                                f"{int(info['cluster_id'], 16):x}: run 'member add {s.name} "
                                f"--peer-urls={','.join(my_urls)}' on the cluster first")
            self.member_id = mine[0].id
            self.cluster_id = int(info["cluster_id"], 16)
            self.transport.member_id = self.member_id
            self.transport.cluster_id = self.cluster_id
            with self.backend.write_txn() as c:
                meta_set(c, "member_id", f"{self.member_id:x}")
                meta_set(c, "cluster_id", f"{self.cluster_id:x}")
                for m in members:
                    membership.upsert_member(c, m)
            self.ids = IdGenerator(self.member_id, int(time.time() * 1000))
            self.joining = False
            self._node = self._make_node(self._fsync_observer)
            return
        raise EtcdError("UNAVAILABLE", "cannot join: no member of --initial-cluster answered: "
                        + "; ".join(errors_seen))

    def _dial_urls(self, urls: list[str]) -> list[str]:
        """Peer URLs to dial: as advertised, unless the test-only ``QUORUMKV_TEST_PEER_DIAL_MAP``
        (``advertisedURL=dialURL,...``, set by ``quorumkv.testing.cluster`` to route links through fault proxies)
        says otherwise."""
        return [self._dial_map.get(u, u) for u in urls]

    def _sync_peers(self) -> None:
        """Point the transport at the current member list (after start and after each membership change)."""
        if self.transport is None:
            return
        with read_txn(self.reader):
            members = membership.load_members(self.reader)
        known = set(self._peer_urls)
        for mid, m in members.items():
            if mid == self.member_id:
                continue
            if mid not in known:
                self.transport.add_peer(mid, self._dial_urls(m.peer_urls))
            elif self._peer_urls[mid] != m.peer_urls:
                self.transport.update_peer(mid, self._dial_urls(m.peer_urls))
            self._peer_urls[mid] = list(m.peer_urls)
        for mid in known - set(members):
            self.transport.remove_peer(mid)
            del self._peer_urls[mid]

    def _send_raft_messages(self, messages: list[Any]) -> None:
        if self.transport is not None:
            self.transport.send(messages)

    def _on_peer_messages(self, messages: list[Any]) -> None:
        if self._node is not None:
            self._node.step(messages)  # type: ignore[union-attr]

    def _on_peer_unreachable(self, peer: int) -> None:
        if isinstance(self._node, RaftNode):
            self._node.report_unreachable(peer)

    def _on_snapshot_status(self, peer: int, ok: bool) -> None:
        if isinstance(self._node, RaftNode):
            self._node.report_snapshot(peer, ok)

    def _on_leader_change(self, lead: int, is_leader: bool) -> None:
        if lead:
            self.leader_changes += 1
        if is_leader and not self._is_leader:
            # a new leader restarts every lease clock, extended by an election timeout (as etcd's Promote):
            # no lease expires early because leadership moved
            self.lessor.promote(dict(self.applier.leases), extend_s=self.settings.election_timeout_ms / 1000)
            log.info("became leader", extra={"member-id": f"{self.member_id:x}", "term": self.node.term})
        elif not is_leader and self._is_leader:
            self.lessor.promote({})
        self._is_leader = is_leader

    def _on_conf_applied(self, cc: Any) -> None:
        from quorumkv.raft.messages import ConfChangeType

        self._sync_peers()
        if cc.type == ConfChangeType.REMOVE_NODE and cc.node_id == self.member_id:
            log.warning("this member was removed from the cluster; stopping",
                        extra={"member-id": f"{self.member_id:x}"})
            self._removed.set()

    def _on_refused_as_removed(self, peer: int) -> None:
        """A peer refused us as a removed member: we missed applying our own removal (it was committed after
        the leader stopped talking to us). Record it, so a restart on this data dir is refused too."""
        if self._removed.is_set():
            return
        log.warning("a peer says this member was removed from the cluster; stopping",
                    extra={"member-id": f"{self.member_id:x}", "peer": f"{peer:x}"})
        try:
            with self.backend.write_txn() as c:
                c.execute("INSERT OR IGNORE INTO removed_member(id) VALUES (?)", (to_i64(self.member_id),))
        except Exception as exc:  # the refusal on restart is a convenience; stopping is what matters
            log.warning("could not record the removal: %r", exc)
        self._removed.set()

    def _on_node_fatal(self, exc: BaseException) -> None:
        log.error("member stopped serving writes after a fatal error: %r", exc)

    async def _publish_attributes(self) -> None:
        """Tell the cluster this member's name and client URLs (etcd's publish), retrying until it lands."""
        m = membership.Member(self.member_id, self.settings.name, [], list(self.settings.advertise_client_urls))
        while True:
            try:
                await self._propose(EntryKind.MEMBER_ATTRS, m.to_json())
                return
            except EtcdError as exc:
                if exc is errors.NOT_SUPPORTED_FOR_LEARNER or exc.message == errors.NOT_SUPPORTED_FOR_LEARNER.message:
                    await asyncio.sleep(1.0)  # a learner cannot propose; wait for promotion
                    continue
                log.info("publishing member attributes failed, retrying: %s", exc.message)
                await asyncio.sleep(0.5)

    async def _call_leader(self, method: str, payload: bytes) -> bytes:
        """Run ``method`` on the leader (lease clocks live there) and return its answer."""
        node = self.node
        assert isinstance(node, RaftNode)
        lead = node.lead
        if lead == 0:
            raise errors.NO_LEADER
        if lead == self.member_id:
            raise errors.LEADER_CHANGED  # leadership is moving to us right now: the client retries
        try:
            data: bytes = await self.transport.call(lead, method, payload, self.settings.request_timeout_s)
        except Exception as exc:
            log.info("forwarding %s to the leader failed: %r", method, exc)
            raise errors.TIMEOUT from exc
        return _unwrap_answer(data)

    async def _handle_lease_renew(self, payload: bytes) -> bytes:
        if not self._is_leader:
            return _wrap_error(errors.NOT_LEADER)
        lease_id = int.from_bytes(payload, "big", signed=True)
        ttl = self.lessor.renew(lease_id)
        return b"\x00" + (0 if ttl is None else ttl).to_bytes(8, "big", signed=True)

    async def _handle_lease_ttl(self, payload: bytes) -> bytes:
        if not self._is_leader:
            return _wrap_error(errors.NOT_LEADER)
        resp = self._lease_time_to_live_here(pb.LeaseTimeToLiveRequest.FromString(payload))
        return b"\x00" + resp.SerializeToString()

    async def _handle_member_promote(self, payload: bytes) -> bytes:
        try:
            resp = await self.member_promote(pb.MemberPromoteRequest.FromString(payload))
        except EtcdError as exc:
            return _wrap_error(exc)
        return b"\x00" + resp.SerializeToString()

    async def _handle_cluster_info(self, payload: bytes) -> bytes:
        with read_txn(self.reader):
            members = membership.load_members(self.reader)
        return json.dumps({"cluster_id": f"{self.cluster_id:x}",
                           "members": [json.loads(m.to_json()) for m in members.values()]}).encode()

    # -- membership API --------------------------------------------------------------------------------------

    def _members(self) -> dict[int, membership.Member]:
        with read_txn(self.reader):
            return membership.load_members(self.reader)

    def _member_pbs(self) -> list[pb.Member]:
        out = []
        for mid in sorted(self._members()):
            m = self._members()[mid]
            out.append(pb.Member(ID=mid, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls,
                                 isLearner=m.is_learner))
        return out

    def _raft_node(self) -> RaftNode:
        node = self.node
        if not isinstance(node, RaftNode):
            raise errors.MEMBERSHIP_NOT_SUPPORTED
        return node

    async def _propose_conf_change(self, cc_type: Any, node_id: int, member: membership.Member | None) -> None:
        node = self._raft_node()
        request_id = self.ids.next()
        fut = node.propose_conf_change(cc_type, node_id, member, request_id)
        await self._wait_applied(fut, request_id)

    async def member_add(self, req: pb.MemberAddRequest) -> pb.MemberAddResponse:
        from quorumkv.raft.messages import ConfChangeType

        self._raft_node()
        urls = list(req.peerURLs)
        if not urls or not all(_valid_peer_url(u) for u in urls):
            raise errors.MEMBER_BAD_URLS
        members = self._members()
        taken = {u for m in members.values() for u in m.peer_urls}
        if taken & set(urls):
            raise errors.PEER_URL_EXIST
        if req.isLearner and sum(m.is_learner for m in members.values()) >= 1:
            raise errors.TOO_MANY_LEARNERS
        new_id = compute_member_id(urls, "", int(time.time()))
        if new_id in members:
            raise errors.MEMBER_EXIST
        m = membership.Member(new_id, "", urls, [], bool(req.isLearner))
        await self._propose_conf_change(
            ConfChangeType.ADD_LEARNER_NODE if req.isLearner else ConfChangeType.ADD_NODE, new_id, m)
        resp = pb.MemberAddResponse(member=pb.Member(ID=new_id, peerURLs=urls, isLearner=bool(req.isLearner)))
        resp.members.extend(self._member_pbs())
        resp.header.revision = self.current_revision
        return resp

    async def member_remove(self, req: pb.MemberRemoveRequest) -> pb.MemberRemoveResponse:
        from quorumkv.raft.messages import ConfChangeType

        self._raft_node()
        if req.ID not in self._members():
            raise errors.MEMBER_NOT_FOUND
        change = asyncio.ensure_future(self._propose_conf_change(ConfChangeType.REMOVE_NODE, req.ID, None))
        if req.ID == self.member_id:
            # Removing ourselves: the leader may stop talking to us before we apply it; a peer refusing us as
            # removed (or applying it) proves the removal committed.
            removed = asyncio.ensure_future(self._removed.wait())
            await asyncio.wait([change, removed], return_when=asyncio.FIRST_COMPLETED)
            removed.cancel()
            if not change.done():
                change.cancel()
            elif change.exception() is not None:
                raise change.exception()  # type: ignore[misc]
        else:
            await change
        resp = pb.MemberRemoveResponse()
        resp.members.extend(m for m in self._member_pbs() if m.ID != req.ID)
        resp.header.revision = self.current_revision
        return resp

    async def member_update(self, req: pb.MemberUpdateRequest) -> pb.MemberUpdateResponse:
        self._raft_node()
        members = self._members()
        if req.ID not in members:
            raise errors.MEMBER_NOT_FOUND
        urls = list(req.peerURLs)
        if not urls or not all(_valid_peer_url(u) for u in urls):
            raise errors.MEMBER_BAD_URLS
        taken = {u for mid, m in members.items() if mid != req.ID for u in m.peer_urls}
        if taken & set(urls):
            raise errors.PEER_URL_EXIST
        m = membership.Member(req.ID, members[req.ID].name, urls, members[req.ID].client_urls)
        await self._propose(EntryKind.MEMBER_UPDATE, m.to_json())
        resp = pb.MemberUpdateResponse()
        resp.members.extend(self._member_pbs())
        resp.header.revision = self.current_revision
        return resp

    async def member_promote(self, req: pb.MemberPromoteRequest) -> pb.MemberPromoteResponse:
        """Only the leader knows how far a learner got: a follower forwards the request to it."""
        from quorumkv.raft.messages import ConfChangeType

        node = self._raft_node()
        members = self._members()
        if req.ID not in members:
            raise errors.MEMBER_NOT_FOUND
        if not members[req.ID].is_learner:
            raise errors.MEMBER_NOT_LEARNER
        if not node.is_leader:
            data = await self._call_leader("member_promote", req.SerializeToString())
            return pb.MemberPromoteResponse.FromString(data)
        progress = node.raw.status().progress.get(req.ID)  # type: ignore[call-overload]
        last = node.last_index
        # etcd: a learner is ready once its match index is at least 90 % of the leader's
        if progress is None or progress.match < last * 0.9:
            raise errors.LEARNER_NOT_READY
        m = members[req.ID]
        m.is_learner = False
        await self._propose_conf_change(ConfChangeType.ADD_NODE, req.ID, m)
        resp = pb.MemberPromoteResponse()
        resp.members.extend(self._member_pbs())
        resp.header.revision = self.current_revision
        return resp

    # -- maintenance / cluster -------------------------------------------------------------------------------

    @property
    def current_revision(self) -> int:
        return self.hub.last_rev if self.hub is not None else self.applier.revision

    def status(self) -> pb.StatusResponse:
        st = self.node.status()
        resp = pb.StatusResponse(
            version=ETCD_COMPAT_VERSION,
            dbSize=self.backend.size_bytes(),
            leader=self.member_id if isinstance(self.node, (LocalNode, ProcessNode)) else self.node.lead,
            raftIndex=st.commit_index,
            raftTerm=st.term,
            raftAppliedIndex=st.applied_index,
            dbSizeInUse=self.backend.size_in_use_bytes(self.reader),
            isLearner=isinstance(self.node, RaftNode) and self.node.is_learner,
        )
        resp.errors.extend(alarm_text(a) for a in self.applier.alarm_members())
        resp.header.revision = self.current_revision
        return resp

    async def alarm(self, req: pb.AlarmRequest) -> pb.AlarmResponse:
        """GET is answered from the applied state; ACTIVATE/DEACTIVATE go through the log (they persist)."""
        if req.action == pb.AlarmRequest.GET:
            resp = pb.AlarmResponse()
            resp.alarms.extend(self.applier.alarm_members(req.alarm))
        else:
            resp = await self._propose(EntryKind.ALARM, req.SerializeToString())
        resp.header.revision = self.current_revision
        return resp

    async def snapshot(self) -> AsyncIterator[pb.SnapshotResponse]:
        """Stream a point-in-time copy of the whole store in chunks, then its SHA-256 (etcd's framing)."""
        loop = asyncio.get_running_loop()
        tmp = self.datadir.path / f"snapshot-{uuid.uuid4().hex}.tmp"
        try:
            async with self._file_lock:
                size = await loop.run_in_executor(None, snapshot.export_etcd_database, self.datadir.db_path, tmp)
            log.info("sending database snapshot", extra={"size-bytes": size})
            for remaining, blob in snapshot.iter_chunks(tmp):
                yield pb.SnapshotResponse(remaining_bytes=remaining, blob=blob)
        finally:
            tmp.unlink(missing_ok=True)

    async def defragment(self) -> pb.DefragmentResponse:
        """Rebuild the database file compactly while serving (see quorumkv.server.defrag)."""
        loop = asyncio.get_running_loop()
        async with self._file_lock:
            started = time.perf_counter()
            before = self.backend.size_bytes()
            node = self.node
            # a cluster of one stores log rows only on demand: from before the copy's snapshot on
            local = node if isinstance(node, LocalNode) else None
            if local is not None:
                await loop.run_in_executor(None, local.pin_log)
            try:
                rebuild = await loop.run_in_executor(
                    None, defrag.Rebuild, self.datadir.db_path, self.applier.min_lease_ttl_seconds)
                try:
                    for _ in range(defrag.MAX_ROUNDS):
                        if await loop.run_in_executor(None, rebuild.catch_up) < defrag.SMALL_ROUND_ENTRIES:
                            break
                    # checkpoint now, so closing the old file in the pause below has little WAL left to copy
                    await loop.run_in_executor(None, self.backend.checkpoint)
                    await loop.run_in_executor(None, rebuild.catch_up)
                    await loop.run_in_executor(None, node.write_lock.acquire)
                    paused = time.perf_counter()
                    try:
                        await loop.run_in_executor(None, rebuild.finish, self.applier.applied_index)
                        old_file = self.backend.swap_file(rebuild.path)
                        self.reader = self.backend.new_reader()
                        if self.hub is not None:
                            self.hub.reader = self.reader
                    finally:
                        node.write_lock.release()
                        self.last_defrag_pause_s = time.perf_counter() - paused
                except BaseException:
                    rebuild.abort()
                    raise
            finally:
                if local is not None:
                    local.log_pin = None
            await loop.run_in_executor(None, old_file.unlink)
        log.info("defragmented", extra={"size-before-bytes": before, "size-after-bytes": self.backend.size_bytes(),
                                        "took-s": round(time.perf_counter() - started, 3),
                                        "writer-pause-s": round(self.last_defrag_pause_s, 4)})
        resp = pb.DefragmentResponse()
        resp.header.revision = self.current_revision
        return resp

    async def hash(self) -> pb.HashResponse:
        """etcd's Hash: a hash of the whole replicated content (see quorumkv.server.maintenance)."""
        async with self._file_lock:
            return await asyncio.get_running_loop().run_in_executor(None, self._hash_work)

    def _hash_work(self) -> pb.HashResponse:
        with self.backend.temp_reader() as conn, read_txn(conn):
            return pb.HashResponse(header=pb.ResponseHeader(revision=store.current_revision(conn)),
                                   hash=maintenance.hash_backend(conn))

    async def hash_kv(self, req: pb.HashKVRequest) -> pb.HashKVResponse:
        """etcd's HashKV: the key revisions up to ``req.revision`` (0: current); compact_revision -1 if none."""
        def work() -> pb.HashKVResponse:
            with self.backend.temp_reader() as conn, read_txn(conn):
                current = store.current_revision(conn)
                compacted = store.compact_revision(conn)
                if req.revision > 0 and req.revision <= compacted:
                    raise errors.COMPACTED
                if req.revision > current:
                    raise errors.FUTURE_REV
                rev = req.revision or current
                return pb.HashKVResponse(header=pb.ResponseHeader(revision=current),
                                         hash=maintenance.hash_kv(conn, rev),
                                         compact_revision=compacted if compacted > 0 else -1)
        async with self._file_lock:
            return await asyncio.get_running_loop().run_in_executor(None, work)

    async def move_leader(self, req: pb.MoveLeaderRequest) -> pb.MoveLeaderResponse:
        """etcd's MoveLeader: only the leader can hand over, to a voting member; waits for the new leader."""
        node = self.node
        resp = pb.MoveLeaderResponse()
        if isinstance(node, (LocalNode, ProcessNode)):
            if req.targetID != self.member_id:  # a single member is already leader
                raise errors.BAD_LEADER_TRANSFEREE
            resp.header.revision = self.current_revision
            return resp
        if not node.is_leader:
            raise errors.NOT_LEADER
        if req.targetID not in node.conf_state.voters:
            raise errors.BAD_LEADER_TRANSFEREE
        if req.targetID != self.member_id:
            await self._transfer_leadership(req.targetID, self.settings.request_timeout_s)
        resp.header.revision = self.current_revision
        return resp

    async def _hand_over_leadership(self) -> None:
        """Graceful stop of a leader: hand leadership to the most caught-up voter first (as etcd on SIGTERM),
        so the cluster does not wait an election timeout. Best effort, bounded by an election timeout."""
        node = self.node
        assert isinstance(node, RaftNode)
        progress = node.raw.status().progress
        voters = [v for v in node.conf_state.voters if v != self.member_id and v in progress]
        if not voters:
            return
        target = max(voters, key=lambda v: progress[v].match)
        try:
            await self._transfer_leadership(target, max(1.0, 2 * self.settings.election_timeout_ms / 1000))
            log.info("handed leadership over before stopping", extra={"new-leader": f"{target:x}"})
        except EtcdError as exc:
            log.warning("could not hand leadership over before stopping: %s", exc.message)

    async def _transfer_leadership(self, target: int, timeout_s: float) -> None:
        node = self.node
        assert isinstance(node, RaftNode)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        node.transfer_leadership(target)
        while node.lead != target:
            if loop.time() > deadline:
                raise errors.TIMEOUT_LEADER_TRANSFER
            await asyncio.sleep(0.02)

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


def _remove_stale_temp_files(data_dir: Path) -> None:
    """Snapshot copies and defrag copies a crash left behind (never the database itself)."""
    for p in data_dir.glob("snapshot-*.tmp"):
        p.unlink(missing_ok=True)
    (data_dir / "quorumkv.db.old").unlink(missing_ok=True)
    from quorumkv.storage.datadir import DB_FILE
    defrag.discard(data_dir / (DB_FILE + defrag.DEFRAG_FILE_SUFFIX))


def _valid_peer_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port is not None
    except ValueError:
        return False


def _wrap_error(err: EtcdError) -> bytes:
    return b"\x01" + json.dumps({"code": err.code, "message": err.message}).encode()


def _unwrap_answer(data: bytes) -> bytes:
    """A forwarded call's answer: ``0x00`` + payload, or ``0x01`` + an etcd error as JSON."""
    if data[:1] == b"\x00":
        return data[1:]
    if data[:1] == b"\x01":
        d = json.loads(data[1:])
        raise EtcdError(str(d["code"]), str(d["message"]))
    raise EtcdError("INTERNAL", "quorumkv: malformed answer from the leader")


def alarm_text(a: pb.AlarmMember) -> str:
    """An alarm as etcd's Status ``errors`` shows it (Go's proto text form): ``memberID:N alarm:NOSPACE ``."""
    return f"memberID:{a.memberID} alarm:{pb.AlarmType.Name(a.alarm)} "


def is_txn_read_only(req: pb.TxnRequest) -> bool:
    for ops in (req.success, req.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which in ("request_put", "request_delete_range"):
                return False
            if which == "request_txn" and not is_txn_read_only(op.request_txn):
                return False
    return True
