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
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quorumkv import ETCD_COMPAT_VERSION
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.lease.lessor import Clock, Lessor, SystemClock
from quorumkv.mvcc import store
from quorumkv.server import compactor, defrag, errors, maintenance, snapshot
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
    #: Append/apply/commit in a child process (``quorumkv.server.applyproc``) instead of a thread of this one.
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
            apply_process=bool(getattr(cfg, "experimental_apply_process", False)),
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
            _remove_stale_temp_files(self.datadir.path)
            self.backend = Backend(self.datadir.db_path)
            self.applier = Applier(self.backend.writer, min_lease_ttl_seconds=settings.min_lease_ttl_seconds)
            self._init_membership()
            self.node: LocalNode | ProcessNode
            if settings.apply_process:
                self.node = ProcessNode(self.backend, self.applier, on_applied=self._on_applied,
                                        fsync_observer=fsync_observer, lock_fd=self.datadir.lock_fd)
            else:
                self.node = LocalNode(self.backend, self.applier, on_applied=self._on_applied,
                                      fsync_observer=fsync_observer)
        except BaseException:
            self.datadir.close()
            raise
        self.reader = self.backend.new_reader()
        self._allocated_bytes: int | None = None
        self.lessor = Lessor(self.clock)
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
        if isinstance(self.node, ProcessNode):
            self.node.events_wanted = lambda: self.hub is not None and self.hub.has_synced_watchers
        self.lessor.promote(dict(self.applier.leases))
        self.node.start(loop)
        self.hub.advance(self.applier.revision)
        self._tasks.append(loop.create_task(self._lease_expiry_loop(), name="lease-expiry"))
        self._tasks.append(loop.create_task(self._progress_notify_loop(), name="watch-progress"))
        if self.compactor is not None:
            self._tasks.append(loop.create_task(self._auto_compaction_loop(self.compactor), name="auto-compaction"))
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
        self._allocated_bytes = None  # the store changed: re-read its size on the next quota check
        for lid, ttl in result.leases_granted:
            self.lessor.granted(lid, ttl)
        for lid in result.leases_revoked:
            self.lessor.revoked(lid)
        hub = self.hub
        if hub is not None:
            if result.events:
                hub.notify(result.events)
            if result.revision:  # a batch whose events nobody needed
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
        return await self.node.propose(kind, payload)

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
                size = await loop.run_in_executor(None, snapshot.copy_database, self.datadir.db_path, tmp)
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
            rebuild = await loop.run_in_executor(
                None, defrag.Rebuild, self.datadir.db_path, self.applier.min_lease_ttl_seconds)
            try:
                for _ in range(defrag.MAX_ROUNDS):
                    if await loop.run_in_executor(None, rebuild.catch_up) < defrag.SMALL_ROUND_ENTRIES:
                        break
                # checkpoint now, so closing the old file in the pause below has little WAL left to copy
                await loop.run_in_executor(None, self.backend.checkpoint)
                await loop.run_in_executor(None, rebuild.catch_up)
                await loop.run_in_executor(None, self.node.write_lock.acquire)
                paused = time.perf_counter()
                try:
                    await loop.run_in_executor(None, rebuild.finish, self.applier.applied_index)
                    old_file = self.backend.swap_file(rebuild.path)
                    self.reader = self.backend.new_reader()
                    if self.hub is not None:
                        self.hub.reader = self.reader
                finally:
                    self.node.write_lock.release()
                    self.last_defrag_pause_s = time.perf_counter() - paused
            except BaseException:
                rebuild.abort()
                raise
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

    def move_leader(self, req: pb.MoveLeaderRequest) -> pb.MoveLeaderResponse:
        """A single member is already leader: moving to itself succeeds, any other target is no member."""
        if req.targetID != self.member_id:
            raise errors.BAD_LEADER_TRANSFEREE
        resp = pb.MoveLeaderResponse()
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


def _remove_stale_temp_files(data_dir: Path) -> None:
    """Snapshot copies and defrag copies a crash left behind (never the database itself)."""
    for p in data_dir.glob("snapshot-*.tmp"):
        p.unlink(missing_ok=True)
    (data_dir / "quorumkv.db.old").unlink(missing_ok=True)
    from quorumkv.storage.datadir import DB_FILE
    defrag.discard(data_dir / (DB_FILE + defrag.DEFRAG_FILE_SUFFIX))


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
