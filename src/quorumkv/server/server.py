"""The member: storage, the node, watch, leases and membership behind one façade the API layer calls.

Every method runs on the asyncio event loop. Every member runs the one node engine (``RaftNode``; a single
member is a Raft cluster of one voter). Writes become log entries (``node.propose``) and resolve once durable
and applied; reads run against a read-only SQLite connection (a consistent snapshot of everything applied so
far); a linearizable read first waits for ReadIndex, except on a sole voter, whose applied state already holds
every acknowledged write.

``QuorumServer`` is the lifecycle and the wiring; its API is assembled from one class per etcd interface
(``server/kv.py``, ``lease.py``, ``cluster.py``, ``maintenance.py`` over ``member.MemberCore``). The API layer
depends on the protocols in ``server/interfaces.py``, not on this class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quorumkv import errors
from quorumkv.errors import EtcdError
from quorumkv.lease.lessor import Clock, Lessor, SystemClock
from quorumkv.mvcc import store
from quorumkv.mvcc.watch import WatchHub
from quorumkv.server import compactor, defrag, reset
from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.server.auth import MemberAuth
from quorumkv.server.cluster import MemberCluster
from quorumkv.server.heartbeats import HeartbeatDetector
from quorumkv.server.identity import IdGenerator, compute_cluster_id, compute_member_id, parse_initial_cluster
from quorumkv.server.kv import MemberKV
from quorumkv.server.lease import MemberLeases
from quorumkv.server.maintenance import MemberMaintenance
from quorumkv.server.node import CommitObserver, Node
from quorumkv.server.raft_node import RaftNode
from quorumkv.server.settings import ServerSettings
from quorumkv.server.wait import WaitRegistry
from quorumkv.storage import membership, schema
from quorumkv.storage.backend import Backend, read_txn
from quorumkv.storage.datadir import DataDir, open_data_dir
from quorumkv.transport.base import Transport

log = logging.getLogger("quorumkv.server")


class QuorumServer(MemberKV, MemberLeases, MemberCluster, MemberMaintenance, MemberAuth):
    """One member. ``await start()`` after construction on the event loop; ``await stop()`` to close."""

    def __init__(self, settings: ServerSettings, *, clock: Clock | None = None,
                 on_applied_hooks: list[Callable[[ApplyResult], None]] | None = None,
                 fsync_observer: CommitObserver | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._hooks = on_applied_hooks or []
        _ = self.tokens  # a bad --auth-token (an unreadable key) fails the start before the data dir is touched
        if settings.cluster_reset and reset.is_fresh(settings.data_dir):
            raise EtcdError("FAILED_PRECONDITION",
                            f"--cluster-reset: data dir {settings.data_dir} holds no member to reset: start without "
                            "--cluster-reset, or give --cluster-reset-restore-path=SNAPSHOT to restore one")
        self.datadir: DataDir = open_data_dir(settings.data_dir)
        try:
            if settings.cluster_reset:
                reset.check_guard(self.datadir.path)
            else:
                reset.clear_guard(self.datadir.path)
            _remove_stale_temp_files(self.datadir.path)
            self.backend = Backend(self.datadir.db_path)
            self.applier = Applier(self.backend.writer, min_lease_ttl_seconds=settings.min_lease_ttl_seconds)
            self._init_membership()
            #: One waiter per proposed request ID, owned here whatever node runs (etcd's wait.Wait).
            self.waits = WaitRegistry()
            self._fsync_observer = fsync_observer
            self._node: Node | None = None
            #: --cluster-reset/--force-new-cluster: the members this start removed (None: no reset).
            self.reset_removed: list[int] | None = None
            if (settings.cluster_reset or settings.force_new_cluster) and not self.joining \
                    and self.bootstrap_members is None:
                self.reset_removed = reset.reset_membership(
                    self.backend, lambda: self._make_node(None), self.member_id, data_dir=str(self.datadir.path))
                if settings.cluster_reset:
                    reset.write_guard(self.datadir.path)
            if not self.joining:
                self._node = self._make_node(fsync_observer)
        except BaseException:
            self.datadir.close()
            raise
        self.reader = self.backend.new_reader()
        self.page_counts = store.PageCounts()
        self._auth_seen = self.applier.auth
        self._failed_auth = {}
        self._allocated_bytes: int | None = None
        self.lessor = Lessor(self.clock, settings.lease_checkpoint_interval_s if settings.lease_checkpoint else None)
        self._heartbeats = HeartbeatDetector(settings.heartbeat_interval_ms / 1000, self.clock)
        self.transport: Transport | None = None
        self._transport_starting: asyncio.Task[None] | None = None
        #: Builds the peer transport (tests inject an in-memory one); None: the gRPC ``PeerTransport``.
        self.transport_factory: Any = None
        #: Raft members: leader changes seen (etcd_server_leader_changes_seen_total) and leadership now.
        self.leader_changes = 0
        self._is_leader = False
        self._peer_urls: dict[int, list[str]] = {}
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

    def _init_membership(self) -> None:
        """Decide who this member is: its ID, its cluster's ID, and whether it bootstraps, joins or restarts.

        A data dir that already has an identity keeps it, whatever the flags say (as etcd). A fresh one takes it
        from ``--initial-cluster`` and bootstraps a new Raft cluster of those members -- one member is a cluster
        of one (every member computes the same IDs from the peer URLs and ``--initial-cluster-token``)."""
        conn = self.backend.writer
        s = self.settings
        stored = schema.member_id(conn)
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
                self.member_id = member_id
                self.cluster_id = 0
                self.join_peers = {name: urls for name, urls in peers.items() if name != s.name}
                return
            cluster_id = compute_cluster_id(list(members.values()))
            with self.backend.write_txn() as c:
                schema.save_identity(c, member_id, cluster_id)
            self.bootstrap_members = [
                membership.Member(mid, name, list(peers.get(name) or my_peers), list(s.advertise_client_urls)
                                  if name == s.name else [])
                for name, mid in members.items()]
        else:
            member_id = stored
            if schema.hard_state(conn) is None:  # a release-0.1 single member: this start's name and client URLs
                with self.backend.write_txn() as c:
                    membership.apply_attributes(
                        c, membership.Member(member_id, s.name, [], list(s.advertise_client_urls)))
        self.member_id = member_id
        self.cluster_id = schema.cluster_id(conn) or 0
        if membership.is_removed(conn, member_id):
            raise EtcdError("FAILED_PRECONDITION",
                            f"member {member_id:x} was removed from the cluster; its data dir "
                            f"{self.settings.data_dir} cannot be used again: remove the data dir, add the member "
                            "again (member add) and start it with --initial-cluster-state existing")

    def _make_node(self, fsync_observer: CommitObserver | None) -> RaftNode:
        s = self.settings
        node = RaftNode(
            self.backend, self.applier, member_id=self.member_id, on_applied=self._on_applied,
            send=self._send_raft_messages, bootstrap=self.bootstrap_members,
            heartbeat_interval_ms=s.heartbeat_interval_ms, election_timeout_ms=s.election_timeout_ms,
            snapshot_count=s.snapshot_count, fsync_observer=fsync_observer,
            on_leader_change=self._on_leader_change, on_conf_applied=self._on_conf_applied,
            on_fatal=self._on_node_fatal, waits=self.waits, pre_vote=s.pre_vote)
        node.parked_timeout_s = s.request_timeout_s
        return node

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.peer_dial_map:
            log.warning("QUORUMKV_TEST_PEER_DIAL_MAP is set: peers are dialled through the URLs it names "
                        "(a test-only setting; unset it in production)", extra={"map": self.settings.peer_dial_map})
        if self.joining or self._has_other_members() or self._has_removed_members():
            await self._start_transport()
        with read_txn(self.reader):
            rev = store.current_revision(self.reader)
            compact_rev = store.compact_revision(self.reader)
        self.hub = WatchHub(self.reader, rev, self._header_for, max_event_bytes=self.settings.max_request_bytes)
        self.hub.compact_rev = compact_rev
        self.hub.start()
        # the Raft thread asks before each batch; a watcher added meanwhile gets the events read back
        self.applier.events_wanted = lambda: self.hub is not None and self.hub.has_synced_watchers
        self.node.start(loop)
        # bounded: a member whose thread failed at once is reported by its fatal handler, not by hanging here
        done, _ = await asyncio.wait([self.node.first_turn], timeout=self.settings.request_timeout_s)
        if not done:
            log.warning("the node's first turn did not finish in time", extra={"member-id": f"{self.member_id:x}"})
        self.hub.advance(self.applier.revision)
        self._tasks.append(loop.create_task(self._publish_attributes(), name="publish-attributes"))
        self._tasks.append(loop.create_task(self._lease_expiry_loop(), name="lease-expiry"))
        self._tasks.append(loop.create_task(self._progress_notify_loop(), name="watch-progress"))
        if self.compactor is not None:
            self._tasks.append(loop.create_task(self._auto_compaction_loop(self.compactor), name="auto-compaction"))
        self.started = True

    async def stop(self) -> None:
        if self.started and self._node is not None and self._node.is_leader:
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
        if self._read_index_batcher is not None:
            self._read_index_batcher.fail_all(errors.STOPPED)
        if self.transport is not None:
            await self.transport.stop()
        self.backend.close()
        self.datadir.close()

    def _on_applied(self, result: ApplyResult) -> None:
        # the store changed: its size as the writer measured it, or re-read it on the next quota check
        self._allocated_bytes = result.allocated_bytes or None
        for lid, ttl in result.leases_granted:
            self.lessor.granted(lid, ttl)
        for lid in result.leases_revoked:
            self.lessor.revoked(lid)
        for lid, _remaining in result.leases_checkpointed:
            self.lessor.checkpointed(lid)  # the leader schedules the lease's next checkpoint
        hub = self.hub
        if result.restored:
            self.lessor.promote(dict(self.applier.leases), remaining=self._lease_remaining())  # a leader's clocks
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
        if result.auth_changed or result.restored:
            before, self._auth_seen = self._auth_seen, self.applier.auth
            self.on_auth_applied(before, self._auth_seen)
        for hook in self._hooks:
            hook(result)

    async def _progress_notify_loop(self) -> None:
        interval_s = max(0.05, self.settings.watch_progress_notify_interval_ms / 1000)
        while True:
            await asyncio.sleep(interval_s)
            if self.hub is not None:
                self.hub.progress_notify_all()

    def _on_node_fatal(self, exc: BaseException) -> None:
        log.error("member stopped serving writes after a fatal error: %r", exc)


def _remove_stale_temp_files(data_dir: Path) -> None:
    """Snapshot copies and defrag copies a crash left behind (never the database itself)."""
    for p in data_dir.glob("snapshot-*.tmp"):
        p.unlink(missing_ok=True)
    (data_dir / "quorumkv.db.old").unlink(missing_ok=True)
    from quorumkv.storage.datadir import DB_FILE
    defrag.discard(data_dir / (DB_FILE + defrag.DEFRAG_FILE_SUFFIX))
