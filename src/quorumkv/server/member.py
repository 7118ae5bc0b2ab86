"""The state every part of a member shares, and what they all use: the node, headers, proposals, reads.

``QuorumServer`` is assembled from one class per etcd interface (``MemberKV``, ``MemberLeases``,
``MemberCluster``, ``MemberMaintenance``, in ``server/kv.py`` …), as etcd's ``EtcdServer`` is one struct whose
methods live in several files. Each of them derives from ``MemberCore``, which declares the shared attributes
(set by ``QuorumServer.__init__``) and the methods one part calls on another. Everything runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.lease.lessor import Clock, Lessor
from quorumkv.mvcc import store
from quorumkv.mvcc.watch import WatchHub
from quorumkv.server.apply import Applier
from quorumkv.server.entries import EntryKind
from quorumkv.server.heartbeats import HeartbeatDetector
from quorumkv.server.identity import IdGenerator
from quorumkv.server.node import CommitObserver, Node
from quorumkv.server.read_index import ReadIndexBatcher
from quorumkv.server.settings import ServerSettings
from quorumkv.server.wait import WaitRegistry
from quorumkv.storage import membership
from quorumkv.storage.backend import Backend
from quorumkv.storage.datadir import DataDir
from quorumkv.transport.base import Transport

log = logging.getLogger("quorumkv.server")


class _ProposalTimeout(Exception):
    """A proposal's result did not arrive within ``--request-timeout`` (set on its future by a timer)."""


def _expire_proposal(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(_ProposalTimeout())


class MemberCore:
    """Shared state and helpers of a member (see the module docstring)."""

    settings: ServerSettings
    clock: Clock
    datadir: DataDir
    backend: Backend
    applier: Applier
    reader: Any
    #: The counts of recent list pages read on ``reader`` (``store.PageCounts``).
    page_counts: store.PageCounts
    lessor: Lessor
    hub: WatchHub | None
    ids: IdGenerator
    member_id: int
    cluster_id: int
    alarms: frozenset[tuple[int, int]]
    transport: Transport | None
    transport_factory: Any
    joining: bool
    join_peers: dict[str, list[str]]
    bootstrap_members: list[membership.Member] | None
    leader_changes: int
    last_defrag_pause_s: float
    _node: Node | None
    _allocated_bytes: int | None
    _file_lock: asyncio.Lock
    _is_leader: bool
    _peer_urls: dict[int, list[str]]
    _removed: asyncio.Event
    _transport_starting: asyncio.Task[None] | None
    _fsync_observer: CommitObserver | None
    waits: WaitRegistry
    _heartbeats: HeartbeatDetector
    #: The linearizable read coalescer, made on the first read that needs a ReadIndex round.
    _read_index_batcher: ReadIndexBatcher | None = None

    @property
    def heartbeat_send_failures(self) -> int:
        """Leader heartbeats sent late (etcd_server_heartbeat_send_failures_total)."""
        return self._heartbeats.failures

    # implemented by QuorumServer and the other parts
    def _make_node(self, fsync_observer: CommitObserver | None) -> Node:
        raise NotImplementedError

    async def _handle_lease_renew(self, payload: bytes) -> bytes:
        raise NotImplementedError

    async def _handle_lease_ttl(self, payload: bytes) -> bytes:
        raise NotImplementedError

    async def member_promote(self, req: pb.MemberPromoteRequest) -> pb.MemberPromoteResponse:
        raise NotImplementedError

    async def _call_leader(self, method: str, payload: bytes) -> bytes:
        raise NotImplementedError

    async def _transfer_leadership(self, target: int, timeout_s: float) -> None:
        raise NotImplementedError

    async def compact(self, req: pb.CompactionRequest) -> pb.CompactionResponse:
        raise NotImplementedError

    @property
    def node(self) -> Node:
        if self._node is None:
            raise errors.STOPPED  # a joining member before it has joined
        return self._node

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

    async def _propose(self, kind: int, payload: bytes) -> Any:
        if len(payload) > self.settings.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        node = self.node
        if node.is_learner:
            raise errors.NOT_SUPPORTED_FOR_LEARNER
        request_id = self.ids.next()
        fut = self.waits.register(request_id)
        node.propose(kind, payload, request_id)
        return await self._wait_applied(fut, request_id)

    async def _wait_applied(self, fut: asyncio.Future[Any], request_id: int) -> Any:
        """Wait a bounded time for a proposal: etcd's timeout errors, never a false success."""
        node = self.node
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
        """Before a linearizable read: wait until everything committed before now is applied here (ReadIndex),
        then the caller serves the read from this member's applied state, on a follower too. Reads are batched:
        one ReadIndex round in flight at a time confirms every read queued before it (``server/read_index.py``).
        A sole voter that leads needs nothing: it applies each entry before acknowledging it, and no other member
        can be elected while it is the only voter, so its reads see every acknowledged write."""
        node = self.node
        if node.is_sole_voter and node.is_leader:
            return
        if node.is_learner:
            raise errors.NOT_SUPPORTED_FOR_LEARNER
        batcher = self._read_index_batcher
        if batcher is None:
            batcher = self._read_index_batcher = ReadIndexBatcher(self.settings.request_timeout_s)
        batcher.timeout_s = self.settings.request_timeout_s
        await batcher.wait(node)

    @property
    def slow_read_indexes(self) -> int:
        """ReadIndex rounds that timed out (etcd_server_slow_read_indexes_total)."""
        return self._read_index_batcher.slow_rounds if self._read_index_batcher is not None else 0

    @property
    def read_index_rounds(self) -> int:
        """ReadIndex rounds this member started for its linearizable reads (one per batch of reads)."""
        return self._read_index_batcher.rounds if self._read_index_batcher is not None else 0

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

    @property
    def current_revision(self) -> int:
        return self.hub.last_rev if self.hub is not None else self.applier.revision
