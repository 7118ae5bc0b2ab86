"""The node engine of every member: the Raft core (``quorumkv.raft``) driven by one thread, persisting to SQLite.

A single member is a Raft cluster of one voter: it campaigns as soon as it starts, and since its own fsync is a
majority, every entry is appended, committed and applied in ONE transaction with one fsync. While the
configuration is a sole voter (no learner, no defrag pin) those entries need no ``raft_log`` rows: the applied
state *is* the log, and ``log_trimmed_index``/``log_trimmed_term`` advance with it. ``member add`` turns it into
a cluster like any other; a new member catches up from a state snapshot.

One thread (``quorumkv-raft``) owns the ``RawNode``, its in-memory log and the SQLite writer. Each turn it takes
everything queued (proposals, messages from peers, read requests, membership changes), steps the core, ticks it
on schedule, then hands each ``Ready`` to the ``ReadyProcessor`` (``quorumkv.server.ready``, shared with the
simulator and the test harness) over ``SqliteLogStore`` and ``ApplierStateMachine``:

1. a member that was leader before this ``Ready`` and still is hands its messages to the transport first;
2. in ONE SQLite transaction: the snapshot (if any), the new log entries (``storage/raftlog.py``, replacing a
   conflicting suffix), the hard state, and the committed entries applied with the applied index -- then
   COMMIT (fsync, unless the Ready only applies);
3. the other messages go to the transport (on the event loop), and ``advance`` is called;

then this shell hands the results to the event loop (responses to waiting requests, watch events), releases
read requests whose index is applied, and reports leadership and membership changes. Failpoints
(``QUORUMKV_FAILPOINTS``, ``quorumkv.server.failpoints``) mark each boundary.

Nothing is acknowledged before it is durable; apply is idempotent (entries at or below the stored applied index
are skipped), so a crash between any two steps is recovered by replaying the log.

The event-loop side (``propose``, ``read_index``, ``propose_conf_change``, ``step``) never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import sqlite3
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quorumkv.errors import EtcdError
from quorumkv.raft.core import Config, ProposalDroppedError
from quorumkv.raft.ids import NONE, Index, NodeId, Term
from quorumkv.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
    SnapshotMetadata,
    StateType,
    decode_conf_change,
    encode_conf_change,
)
from quorumkv.raft.rawnode import RawNode, Ready
from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.server.entries import EntryKind, decode_entry, encode_entry
from quorumkv.server.failpoints import Failpoints
from quorumkv.server.node import CommitObserver, Node, NodeStatus
from quorumkv.server.ready import AppliedStateStorage, ReadyProcessor
from quorumkv.server.wait import WaitRegistry
from quorumkv.storage import membership, schema, state_snapshot
from quorumkv.storage.backend import Backend, truncate_wal
from quorumkv.storage.raftlog import RaftLogTable

log = logging.getLogger("quorumkv.raft-node")

_NOOP_DATA = encode_entry(EntryKind.NOOP, 0, b"")
#: Unanswered read-index requests are sent again after this long (a lost message must not stall reads).
READ_INDEX_RETRY_S = 0.5
PROPOSALS_PER_TURN_MAX = 4000
#: The last resort when the WAL was not rewound (``Backend.rewind_wal_tail``; a reader held an old snapshot for
#: long, or the checkpointer fell behind): a TRUNCATE checkpoint, which waits for readers and copies every pending
#: frame while no commit can land (3-17 s on a 100-IOPS disk, docs/performance.md), once the WAL file is larger
#: than this (4 x the 64 MiB at which the rewind starts); checked every few committing turns, and logged.
WAL_TRUNCATE_BYTES = 256 * 1024 * 1024
WAL_CHECK_EVERY_COMMITS = 32


class NodeRemovedError(Exception):
    """This member was removed from the cluster."""


def conf_change_context(request_id: int, member: membership.Member | None) -> bytes:
    """A configuration change's context: the proposer's request ID, then the member record (JSON)."""
    return struct.pack(">Q", request_id) + (member.to_json() if member is not None else b"")


def split_conf_change_context(ctx: bytes) -> tuple[int, bytes]:
    if len(ctx) < 8:
        return 0, ctx
    return struct.unpack_from(">Q", ctx)[0], ctx[8:]


class SqliteLogStore:
    """The ``LogStore`` of a member: ``raft_log`` rows and the meta rows, in the Ready's SQLite transaction."""

    applies_in_transaction = True

    def __init__(self, backend: Backend, *, trimmed_index: int, rows_stored: bool,
                 fsync_observer: CommitObserver | None) -> None:
        self.backend = backend
        self.table = RaftLogTable()
        #: ``meta.log_trimmed_index`` as stored: ``raft_log`` rows cover (trimmed, last index].
        self.trimmed_index = trimmed_index
        #: Whether ``raft_log`` holds any row above the trimmed index.
        self.rows_stored = rows_stored
        self.fsync_observer = fsync_observer
        self._conn: sqlite3.Connection | None = None
        #: Set by the state machine when the open transaction applied committed entries.
        self.applied_in_txn = False

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "outside a Ready's transaction"
        return self._conn

    @contextmanager
    def transaction(self, sync: bool) -> Iterator[None]:
        self.applied_in_txn = False
        with self.backend.write_txn(sync=sync) as conn:
            self._conn = conn
            try:
                yield
            finally:
                self._conn = None
            commit_started = time.perf_counter()
        if self.fsync_observer is not None and (sync or self.applied_in_txn):
            self.fsync_observer(time.perf_counter() - commit_started, synced=sync, applied=self.applied_in_txn)

    def install_snapshot(self, meta: SnapshotMetadata) -> None:
        self.table.clear(self.conn, meta.index, meta.term)
        self.trimmed_index = int(meta.index)
        self.rows_stored = False

    def append(self, entries: list[Entry]) -> None:
        self.table.append(self.conn, entries)
        self.rows_stored = True

    def skip_to(self, index: Index, term: int) -> None:
        if self.rows_stored:
            self.table.trim_to(self.conn, index, term)
            self.rows_stored = False
        else:
            schema.save_log_start(self.conn, index, term)
        self.trimmed_index = int(index)

    def save_hard_state(self, hs: HardState) -> None:
        schema.save_hard_state(self.conn, hs)

    def compact(self, index: Index, term: int) -> None:
        if index <= self.trimmed_index:  # no rows there (a sole voter's log): only memory is compacted
            return
        with self.backend.write_txn(sync=False) as conn:  # losing a trim in a crash only keeps more log
            self.table.trim_to(conn, index, term)
        self.trimmed_index = int(index)


class ApplierStateMachine:
    """The ``StateMachine`` of a member: the ``Applier`` (MVCC store, leases, members) in the Ready's transaction.
    ``result`` collects what the event loop is told about (responses, watch events, ...)."""

    halted = False

    def __init__(self, backend: Backend, applier: Applier, store: SqliteLogStore) -> None:
        self.backend = backend
        self.applier = applier
        self.store = store
        self.result = ApplyResult()

    @property
    def applied_index(self) -> int:
        return self.applier.applied_index

    def apply_entries(self, entries: list[Entry]) -> None:
        self.store.applied_in_txn = True
        self.applier.apply_many(self.store.conn, [(int(e.index), e.data or _NOOP_DATA) for e in entries],
                                self.result)

    def conf_change_of(self, entry: Entry) -> ConfChange:
        cc = decode_conf_change(entry.data)
        _request_id, member_json = split_conf_change_context(cc.context)
        return ConfChange(cc.type, cc.node_id, member_json)

    def apply_conf_change(self, entry: Entry, cc: ConfChange) -> None:
        membership.apply_conf_change(self.store.conn, cc)

    def conf_change_applied(self, entry: Entry, cc: ConfChange, conf_state: ConfState,
                            rejected: ValueError | None) -> None:
        request_id, _member_json = split_conf_change_context(decode_conf_change(entry.data).context)
        schema.save_conf_state(self.store.conn, conf_state)
        self.applier.applied_index = int(entry.index)
        self.result.members_changed = True
        if request_id:
            self.result.responses[request_id] = (
                conf_state if rejected is None else EtcdError("INVALID_ARGUMENT", f"etcdserver: {rejected}"))

    def finish_apply(self) -> None:
        self.applier.finish(self.store.conn, self.result)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the state machine with a leader's snapshot (inside the Ready's transaction)."""
        meta = snapshot.metadata
        log.info("restoring a state snapshot from the leader", extra={"index": meta.index, "term": meta.term,
                                                                         "size-bytes": len(snapshot.data)})
        conn = self.store.conn
        state_snapshot.restore(conn, snapshot.data)
        schema.save_conf_state(conn, meta.conf_state)
        schema.save_applied_index(conn, meta.index)
        self.applier.reload(conn)
        self.backend.forget_allocation()  # the store was replaced: measure it after the next batch

    def dump(self) -> bytes:
        data = state_snapshot.dump(self.backend.writer)
        log.info("created a state snapshot for a follower", extra={"size-bytes": len(data)})
        return data


@dataclass
class PendingRead:
    futures: list[asyncio.Future[None]] = field(default_factory=list)
    sent_at: float = 0.0
    index: int | None = None


@dataclass(frozen=True, slots=True)
class Propose:
    data: bytes


@dataclass(frozen=True, slots=True)
class ProposeConfChange:
    cc: ConfChange


@dataclass(frozen=True, slots=True)
class Step:
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class ReadIndex:
    fut: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class TransferLeadership:
    to: int


@dataclass(frozen=True, slots=True)
class Unreachable:
    peer: int


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    peer: int
    ok: bool


@dataclass(frozen=True, slots=True)
class Stop:
    pass


#: What the event loop hands the Raft thread (its inbox); the thread alone touches the core.
Inbox = Propose | ProposeConfChange | Step | ReadIndex | TransferLeadership | Unreachable | SnapshotStatus | Stop


class RaftNode:
    """A member of a Raft cluster. ``propose`` etc. are called on the event loop; the rest on the Raft thread."""

    def __init__(self, backend: Backend, applier: Applier, *, member_id: int,
                 on_applied: Callable[[ApplyResult], None],
                 send: Callable[[list[Message]], None],
                 bootstrap: list[membership.Member] | None = None,
                 heartbeat_interval_ms: int = 100, election_timeout_ms: int = 1000,
                 snapshot_count: int = 10_000, snapshot_catchup_entries: int = 5_000,
                 rng: random.Random | None = None,
                 fsync_observer: CommitObserver | None = None,
                 on_leader_change: Callable[[int, bool], None] | None = None,
                 on_conf_applied: Callable[[ConfChange], None] | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 failpoints: Failpoints | None = None, waits: WaitRegistry | None = None,
                 pre_vote: bool = True) -> None:
        self.backend = backend
        self.log_table = RaftLogTable()
        self.applier = applier
        self.member_id = member_id
        self._on_applied = on_applied
        self._send = send
        self._fsync_observer = fsync_observer
        self._on_leader_change = on_leader_change
        self._on_conf_applied = on_conf_applied
        self._on_fatal = on_fatal
        self.tick_s = heartbeat_interval_ms / 1000
        self.election_ticks = max(2, election_timeout_ms // max(1, heartbeat_interval_ms))
        self.snapshot_count = snapshot_count
        self.snapshot_catchup_entries = min(snapshot_catchup_entries, max(1, snapshot_count // 2))
        self.slow_apply_observer: Callable[[int, bytes, float], None] | None = None
        self.slow_apply_s = 0.1
        self.write_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        #: The member's wait registry: proposers register, this node only reports applied results.
        self.waits = waits if waits is not None else WaitRegistry()
        #: ``peer -> match index`` as the leader's progress tracker last said (published by the Raft thread after
        #: each turn; empty on a follower), so no other thread reads the core.
        self.progress_match: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.fatal: BaseException | None = None
        self._parked: list[tuple[float, bytes]] = []
        #: Request IDs whose callers stopped waiting; their parked proposals are dropped, not proposed.
        self._abandoned: set[int] = set()
        #: A parked proposal older than this is dropped (its caller has timed out by then).
        self.parked_timeout_s = 60.0
        self._reads: dict[bytes, PendingRead] = {}
        self._waiting_reads: list[PendingRead] = []
        self._read_seq = 0
        self._pending_cc: list[tuple[float, ConfChange]] = []
        self._commits = 0
        self.log_store = SqliteLogStore(backend, trimmed_index=0, rows_stored=False, fsync_observer=fsync_observer)
        self._sm = ApplierStateMachine(backend, applier, self.log_store)
        self.storage = AppliedStateStorage(self._sm.dump)
        # a put proposed on another member is answered there: don't build its response here
        applier.response_wanted = self.waits.__contains__
        conf_state = self._load(bootstrap)
        self.raw = RawNode(Config(
            id=NodeId(member_id), storage=self.storage, rng=rng or random.Random(member_id ^ time.time_ns()),
            election_timeout_ticks=self.election_ticks, heartbeat_interval_ticks=1,
            applied=Index(self.applier.applied_index), check_quorum=True, pre_vote=pre_vote,
            max_size_per_msg_bytes=1 << 20, max_inflight_msgs=256,
        ))
        self.failpoints = failpoints if failpoints is not None else Failpoints.from_env()
        self._ready = ReadyProcessor(
            self.raw, self.storage, self.log_store, self._sm, self._send_from_thread, member_id=member_id,
            conf_state=conf_state, snapshot_count=snapshot_count, catchup_entries=self.snapshot_catchup_entries,
            failpoints=self.failpoints)

    # -- published state (read from the event loop) ---------------------------------------------------------

    @property
    def term(self) -> int:
        return self._ready.term

    @property
    def commit_index(self) -> int:
        return self._ready.commit_index

    @property
    def lead(self) -> int:
        return self._ready.lead

    @property
    def raft_state(self) -> StateType:
        return self._ready.raft_state

    @property
    def conf_state(self) -> ConfState:
        return self._ready.conf_state

    @property
    def log_pin(self) -> int | None:
        """Entries at or above this index keep their ``raft_log`` rows (online defrag); None: no pin."""
        return self._ready.log_pin

    @log_pin.setter
    def log_pin(self, pin: int | None) -> None:
        self._ready.log_pin = pin

    # -- startup --------------------------------------------------------------------------------------------

    def _load(self, bootstrap: list[membership.Member] | None) -> ConfState:
        """Rebuild the in-memory log and the hard state from SQLite (or bootstrap a new cluster); returns the
        configuration in force."""
        conn = self.backend.writer
        if schema.hard_state(conn) is None:
            last = self.log_table.last_index(conn)
            if last is not None or self.applier.applied_index > 0:
                # A data dir written by the single-member node of release 0.1 (no Raft state): it was the only
                # voter, and it applied each entry in the transaction that logged it, so every stored entry is
                # applied. Upgrade in place: a sole-voter configuration whose log starts after the applied index.
                end = max(int(last or 0), self.applier.applied_index)
                term = Term(schema.legacy_term(conn))
                with self.backend.write_txn() as c:
                    self.log_table.clear(c, end, term)
                    schema.save_hard_state(c, HardState(term, NONE, Index(end)))
                    schema.save_conf_state(c, ConfState((NodeId(self.member_id),)))
                log.info("upgraded a single-member data dir to a Raft cluster of one",
                         extra={"applied-index": end, "term": int(term)})
            elif bootstrap:
                self._bootstrap(bootstrap)
        hs = schema.hard_state(conn) or HardState()
        cs = schema.conf_state(conn) or ConfState()
        trimmed, trimmed_term = schema.log_start(conn)
        st = self.storage
        st.apply_snapshot(Snapshot(b"", SnapshotMetadata(cs, Index(trimmed), Term(trimmed_term))))
        entries = self.log_table.read(conn, trimmed + 1)
        if entries:
            st.append(entries)
        self.log_store.trimmed_index = trimmed
        self.log_store.rows_stored = bool(entries)
        st.set_hard_state(hs)
        st.set_applied(self.applier.applied_index, cs)
        return cs

    def _bootstrap(self, members: list[membership.Member]) -> None:
        """A new cluster: every initial member writes the same configuration entries at term 1 (as etcd)."""
        entries = []
        for k, m in enumerate(sorted(members, key=lambda m: m.id), start=1):
            cc = ConfChange(ConfChangeType.ADD_NODE, NodeId(m.id), conf_change_context(0, m))
            entries.append(Entry(Term(1), Index(k), EntryType.CONF_CHANGE, encode_conf_change(cc)))
        with self.backend.write_txn() as c:
            self.log_table.append(c, entries)
            schema.save_hard_state(c, HardState(Term(1), NONE, Index(len(entries))))
            schema.save_conf_state(c, ConfState())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the Raft thread. ``first_turn`` resolves once it has applied what the log already commits
        and, as a sole voter, elected itself (so a cluster of one serves at once)."""
        self._loop = loop
        self.first_turn: asyncio.Future[None] = loop.create_future()
        self.backend.start_checkpointer()
        self._thread = threading.Thread(target=self._run, name="quorumkv-raft", daemon=True)
        self._thread.start()

    # -- the event loop side --------------------------------------------------------------------------------

    def propose(self, kind: int, payload: bytes, request_id: int) -> None:
        """Queue a normal entry; ``request_id``'s waiter (registered by the caller in ``waits``) is triggered
        with its response once the entry is committed and applied here."""
        if self._stopped:
            self.waits.trigger(request_id, EtcdError("UNAVAILABLE", "etcdserver: server stopped"))
            return
        self._queue.put(Propose(encode_entry(kind, request_id, payload)))

    def propose_conf_change(self, cc_type: ConfChangeType, node_id: int, member: membership.Member | None,
                            request_id: int) -> None:
        """Queue a membership change; its waiter is triggered with the new configuration (or an error)."""
        cc = ConfChange(cc_type, NodeId(node_id), conf_change_context(request_id, member))
        self._queue.put(ProposeConfChange(cc))

    def forget(self, request_id: int) -> None:
        """The caller gave up waiting (timeout): drop its waiter, and its proposal if it is still parked here
        waiting for a leader (then it is never proposed). One already handed to Raft may still be applied."""
        self.waits.cancel(request_id)
        self._abandoned.add(request_id)

    def read_index(self) -> asyncio.Future[None]:
        """Resolves once this member has applied everything committed before the call (linearizable read).
        Cancel the future to give the request up: it is then no longer sent again."""
        assert self._loop is not None, "node not started"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(ReadIndex(fut))
        return fut

    def step(self, messages: list[Message]) -> None:
        """Messages from peers (called by the transport on the event loop)."""
        self._queue.put(Step(messages))

    def transfer_leadership(self, to: int) -> None:
        self._queue.put(TransferLeadership(to))

    def report_unreachable(self, peer: int) -> None:
        self._queue.put(Unreachable(peer))

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self._queue.put(SnapshotStatus(peer, ok))

    def _deliver(self, result: ApplyResult) -> None:
        self._on_applied(result)
        trigger = self.waits.trigger
        for request_id, response in result.responses.items():
            trigger(request_id, response)

    def _fail_all(self, err: BaseException) -> None:
        self.waits.fail_all(err)

    @property
    def pending_proposals(self) -> int:
        return len(self.waits)

    @property
    def last_index(self) -> int:
        return int(self.storage.last_index())

    @property
    def is_leader(self) -> bool:
        return self.raft_state == StateType.LEADER

    @property
    def is_learner(self) -> bool:
        return self.member_id in self.conf_state.learners

    @property
    def is_sole_voter(self) -> bool:
        """The configuration is this member alone (no other voter, no learner)."""
        cs = self.conf_state
        return cs.voters == (self.member_id,) and not cs.learners

    @contextlib.asynccontextmanager
    async def pause_writes(self) -> AsyncIterator[None]:
        """Hold the Raft thread between two turns for the duration (an online defrag's swap): nothing is
        appended, applied or committed meanwhile. Taken off the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.write_lock.acquire)
        try:
            yield
        finally:
            self.write_lock.release()

    def pin_log(self) -> int:
        """Keep ``raft_log`` rows for every entry above the applied index (until ``log_pin`` is cleared), so an
        online defrag can replay them into its copy; returns the pin. Blocks until the Raft thread's turn in
        flight is done. Call it off the event loop."""
        with self.write_lock:
            pin = self.applier.applied_index + 1
            self.log_pin = pin
        return pin

    def status(self) -> NodeStatus:
        return NodeStatus(term=self.term, commit_index=self.commit_index, applied_index=self.applier.applied_index)

    def apply_committed(self) -> int:
        """Before ``start``, on the calling thread: persist and apply what the stored log commits (a cluster
        reset; server/reset.py). Messages are dropped. Returns the applied index; the node is spent afterwards."""
        assert self._thread is None, "apply_committed runs before start"
        with self.write_lock:
            while self.raw.has_ready():
                rd = self.raw.ready()
                self._sm.result = self.applier.new_result()
                self._ready.handle(rd)
        return self.applier.applied_index

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(Stop())
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the Raft thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop_forever()
        except BaseException as exc:  # storage failure or a bug: this member cannot go on safely
            log.exception("the raft loop stopped")
            self.fatal = exc
            loop = self._loop
            if loop is not None and not loop.is_closed():
                err = EtcdError("UNAVAILABLE", f"quorumkv: member failed: {exc!r}")
                loop.call_soon_threadsafe(self._fail_all, err)
                if self._on_fatal is not None:
                    loop.call_soon_threadsafe(self._on_fatal, exc)

    def _loop_forever(self) -> None:
        q = self._queue
        raw = self.raw
        with self.write_lock:
            while raw.has_ready():  # a new cluster's bootstrap configuration is applied first
                self._handle_ready(raw.ready())
            if self.is_sole_voter and self.raft_state != StateType.LEADER:
                # a cluster of one need not wait an election timeout to learn that nobody else leads (etcd
                # advances its ticks for the same reason): it wins at once
                raw.campaign()
                while raw.has_ready():
                    self._handle_ready(raw.ready())
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(_set_done, self.first_turn)
        next_tick = time.monotonic() + self.tick_s
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            items: list[Inbox] = []
            try:
                items.append(q.get(timeout=timeout))
                while len(items) < PROPOSALS_PER_TURN_MAX:
                    items.append(q.get_nowait())
            except queue.Empty:
                pass
            with self.write_lock:
                now = time.monotonic()
                if now >= next_tick:
                    raw.tick()
                    next_tick += self.tick_s
                    if next_tick < now:  # we fell far behind (a long fsync): don't burst-tick
                        next_tick = now + self.tick_s
                    self._retry_reads(now)
                proposals: list[bytes] = []
                new_reads: list[asyncio.Future[None]] = []
                for item in items:
                    if type(item) is Propose:  # the common case first
                        proposals.append(item.data)
                        continue
                    match item:
                        case Step(messages):
                            for m in messages:
                                try:
                                    raw.step(m)
                                except Exception as exc:  # a malformed or unexpected message must not kill us
                                    log.warning("dropping a peer message: %r", exc)
                        case ReadIndex(fut):
                            new_reads.append(fut)
                        case ProposeConfChange(cc):
                            self._pending_cc.append((now, cc))
                        case TransferLeadership(to):
                            raw.transfer_leadership(NodeId(to))
                        case Unreachable(peer):
                            raw.report_unreachable(NodeId(peer))
                        case SnapshotStatus(peer, ok):
                            raw.report_snapshot(NodeId(peer), ok)
                        case Stop():
                            return
                self._propose(proposals, now)
                if new_reads:
                    self._request_read(new_reads, now)
                while raw.has_ready():
                    self._handle_ready(raw.ready())
                self._maybe_compact_log()
                self._publish_progress()

    def _propose(self, proposals: list[bytes], now: float) -> None:
        raw = self.raw
        if self._parked and raw.raft.lead != NONE:
            # proposals that waited for a leader, unless their caller gave up (timed out) meanwhile
            parked, self._parked = self._parked, []
            abandoned = self._abandoned
            kept = []
            for t, d in parked:
                request_id = decode_entry(d).request_id
                if request_id in abandoned:
                    abandoned.discard(request_id)
                elif now - t < self.parked_timeout_s:
                    kept.append(d)
            proposals = kept + proposals
        if self._pending_cc and raw.raft.lead != NONE:
            pending, self._pending_cc = self._pending_cc, []
            for t, cc in pending:
                try:
                    raw.propose_conf_change(cc)
                except ProposalDroppedError:
                    if now - t < 60:
                        self._pending_cc.append((t, cc))
        if not proposals:
            return
        if raw.raft.lead == NONE:
            self._parked.extend((now, d) for d in proposals)
            return
        try:
            raw.propose_batch(proposals)
        except ProposalDroppedError:
            self._parked.extend((now, d) for d in proposals)

    def _request_read(self, futures: list[asyncio.Future[None]], now: float) -> None:
        self._read_seq += 1
        ctx = struct.pack(">QQ", self.member_id, self._read_seq)
        self._reads[ctx] = PendingRead(futures, now)
        self.raw.read_index(ctx)

    def _retry_reads(self, now: float) -> None:
        for ctx, pr in list(self._reads.items()):
            if all(f.done() for f in pr.futures):  # every caller gave up (cancelled the future): ask no more
                del self._reads[ctx]
                continue
            if now - pr.sent_at >= READ_INDEX_RETRY_S:
                pr.sent_at = now
                self.raw.read_index(ctx)

    def _send_from_thread(self, messages: list[Message]) -> None:
        loop = self._loop
        if loop is None:  # apply_committed before start (a cluster reset): nobody to send to
            return
        loop.call_soon_threadsafe(self._send, messages)

    def _handle_ready(self, rd: Ready) -> None:
        """Persist, send and apply ``rd`` (``ReadyProcessor``), then tell the event loop what changed."""
        applier = self.applier
        result = applier.new_result() if rd.committed_entries else ApplyResult()
        self._sm.result = result
        started = time.perf_counter()
        loop = self._loop
        assert loop is not None
        out = self._ready.handle(rd)
        if rd.committed_entries:
            result.allocated_bytes = self.backend.allocation_after_commit(
                sum(len(e.data) for e in rd.committed_entries))
        if rd.soft_state is not None:
            if self._on_leader_change is not None:
                loop.call_soon_threadsafe(self._on_leader_change, self.lead, self.raft_state == StateType.LEADER)
            if out.was_leader and self.raft_state != StateType.LEADER:
                log.info("lost leadership", extra={"term": self.term, "leader": f"{self.lead:x}"})
        for rs in rd.read_states:
            pr = self._reads.pop(rs.request_ctx, None)
            if pr is not None:
                pr.index = int(rs.index)
                self._waiting_reads.append(pr)
        if self._waiting_reads:
            applied = applier.applied_index
            ready = [pr for pr in self._waiting_reads if pr.index is not None and pr.index <= applied]
            if ready:
                self._waiting_reads = [pr for pr in self._waiting_reads if pr not in ready]
                futs = [f for pr in ready for f in pr.futures]
                loop.call_soon_threadsafe(_release_reads, futs)
        if result.compacted_to:
            result.compaction_s = time.perf_counter() - started  # the writer was busy with it (a pause)
        if result.responses or result.events or result.revision or result.leases_granted or result.leases_revoked \
                or result.leases_checkpointed \
                or result.compacted_to or result.alarms_changed or result.members_changed or result.auth_changed \
                or rd.snapshot:
            if rd.snapshot is not None:
                result.members_changed = True
                result.restored = True
            loop.call_soon_threadsafe(self._deliver, result)
        for cc in out.conf_changes:
            if self._on_conf_applied is not None:
                loop.call_soon_threadsafe(self._on_conf_applied, cc)
        if rd.committed_entries:
            self._commits += 1
            self._rewind_wal_tail()
            if self._commits % WAL_CHECK_EVERY_COMMITS == 0:
                self._maybe_truncate_wal()
        took = time.perf_counter() - started
        if took > self.slow_apply_s and rd.committed_entries and self.slow_apply_observer is not None:
            e = rd.committed_entries[0]
            try:
                self.slow_apply_observer(int(e.index), e.data, took)
            except Exception:
                log.exception("slow apply observer failed")

    def _rewind_wal_tail(self) -> None:
        """The writer's short part of rewinding the WAL (``Backend.rewind_wal_tail``), between two turns."""
        try:
            self.backend.rewind_wal_tail()
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed: %r", exc)

    def _maybe_truncate_wal(self) -> None:
        """Reset a WAL that was not rewound in place (the last resort, see WAL_TRUNCATE_BYTES)."""
        try:
            size = os.path.getsize(str(self.backend.db_path) + "-wal")
            if size > WAL_TRUNCATE_BYTES:
                started = time.perf_counter()
                truncate_wal(self.backend.writer)
                log.warning("the WAL (%d MiB) was not rewound in place; reset it with a TRUNCATE checkpoint in "
                            "%.1f s, during which no commit could land", size >> 20, time.perf_counter() - started)
        except (OSError, sqlite3.Error) as exc:
            log.warning("WAL checkpoint failed: %r", exc)

    def _publish_progress(self) -> None:
        """The leader's view of each member's match index, for the event loop (a new dict, never mutated).
        Only its peers' entries are read (learner promotion, hand-over), so a sole voter publishes nothing."""
        raft = self.raw.raft
        progress = raft.tracker.progress
        if raft.state == StateType.LEADER and len(progress) > 1:
            self.progress_match = {int(pid): int(pr.match) for pid, pr in progress.items()}
        elif self.progress_match:
            self.progress_match = {}

    def _maybe_compact_log(self) -> None:
        """Keep the log bounded: past ``snapshot_count`` applied entries, drop all but the last few thousand."""
        self._ready.maybe_compact()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _release_reads(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)


if TYPE_CHECKING:
    def _is_a_node(node: RaftNode) -> Node:  # mypy checks that RaftNode offers the whole Node protocol
        return node
