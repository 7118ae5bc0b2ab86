"""The Ready processor: how a member persists, sends and applies each ``Ready`` (sans-IO, written once).

The production node (``quorumkv.server.raft_node``), the seeded simulator (``quorumkv.testing.sim``) and the
test harness (``quorumkv.testing.harness``) all run this code; they differ only in their ``LogStore`` (SQLite
rows vs. memory), their ``StateMachine`` and how they send messages and schedule work.

One ``Ready`` goes through two calls:

``start(rd) -> Plan``
    decides whether this Ready must be synced and whether its messages may leave *before* the sync. Only a
    member that was leader before the Ready and still is after it sends early (etcd's leader does the same,
    Raft thesis §10.2.1): its term and vote were synced before, and it applies -- so acknowledges -- an entry
    only in a later Ready, after this one is durable. Every other message waits for the sync.
``finish(plan) -> Outcome``
    in ONE ``LogStore.transaction``: the snapshot (if any) is installed in the log and the state machine, the
    new entries are stored (replacing a conflicting suffix), the hard state saved, the committed entries
    applied (membership changes through ``RawNode.apply_conf_change`` too). Only what Raft needs durable before
    its messages go out (new entries, term, vote, snapshot) asks for a sync: a Ready that only applies is
    committed without one (lost in a crash, it is redone from the synced log). Once the transaction is
    committed the in-memory log (what the core reads) is updated, the remaining messages are sent, and
    ``advance`` is called.

A sole voter (the configuration is this member alone, no learner, no defrag pin) whose store applies in the
same transaction stores no log rows: the applied state *is* the log, and the log's start moves past it.

``maybe_compact()`` keeps the log bounded: past ``snapshot_count`` applied entries, everything but the last
``catchup_entries`` is dropped (never at or above ``log_pin``; a sole voter storing no rows keeps at most
``SOLE_VOTER_LOG_ENTRIES``); the snapshot a lagging follower needs is the state machine dumped on demand
(``AppliedStateStorage``).

Failpoints (``quorumkv.server.failpoints``) are hit at each boundary; see docs/raft.md.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from quorumkv.raft.ids import Index
from quorumkv.raft.memory_storage import MemoryStorage
from quorumkv.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
    SnapshotMetadata,
    StateType,
)
from quorumkv.raft.rawnode import RawNode, Ready
from quorumkv.raft.storage import SnapshotTemporarilyUnavailableError
from quorumkv.server.failpoints import DISABLED, Failpoints

#: Applied entries a sole voter whose store applies in the log's transaction keeps in memory (at most; half of them
#: after each compaction) instead of ``snapshot_count``. Nothing reads them: it stores no log rows, and the
#: applied state is the log; only a member added later could be sent them instead of a snapshot. With
#: ``snapshot_count`` (100,000 by default, as etcd) the in-memory log of a sole voter held up to that many
#: requests' payloads: ~150 MB of a 320 MB peak RSS while 44,000 puts of 1-8 KiB were written
#: (bench/datascale.py, docs/performance.md). Once the configuration has another member the usual retention
#: applies again.
SOLE_VOTER_LOG_ENTRIES = 1_000


class LogStore(Protocol):
    """The durable Raft log and hard state. Writes are made inside ``transaction`` and are durable (atomically)
    once it exits without an exception; one that raises leaves nothing behind."""

    #: Whether the state machine's writes share the log's transaction (then a sole voter needs no rows).
    applies_in_transaction: bool

    def transaction(self, sync: bool) -> AbstractContextManager[None]:
        """Open the transaction of one Ready; ``sync=False``: it may be lost in a crash (not acknowledged)."""
        ...

    def install_snapshot(self, meta: SnapshotMetadata) -> None:
        """Drop every stored entry: the log now starts after ``meta.index``."""
        ...

    def append(self, entries: list[Entry]) -> None:
        """Store ``entries``, replacing any stored suffix from the first one's index on."""
        ...

    def skip_to(self, index: Index, term: int) -> None:
        """The entries up to ``index`` are applied in this transaction: store no rows for them (deleting any)
        and start the log after ``(index, term)``."""
        ...

    def save_hard_state(self, hs: HardState) -> None: ...

    def compact(self, index: Index, term: int) -> None:
        """Drop the stored entries at or below ``index`` (its own transaction; losing it only keeps more)."""
        ...


class StateMachine(Protocol):
    """What the log is applied to. Its writes join the ``LogStore``'s transaction where it has one."""

    @property
    def applied_index(self) -> int: ...

    def apply_entries(self, entries: list[Entry]) -> None:
        """Apply consecutive normal entries in order; an entry at or below ``applied_index`` is skipped."""
        ...

    def conf_change_of(self, entry: Entry) -> ConfChange:
        """The membership change that a configuration-change entry carries."""
        ...

    def apply_conf_change(self, entry: Entry, cc: ConfChange) -> None:
        """The state machine's side of a membership change; raises ``ValueError`` to reject it."""
        ...

    def conf_change_applied(self, entry: Entry, cc: ConfChange, conf_state: ConfState,
                            rejected: ValueError | None) -> None:
        """Record that ``entry`` is applied (``conf_state`` is the configuration now in force)."""
        ...

    def finish_apply(self) -> None:
        """The Ready's committed entries are all applied (still inside the transaction)."""
        ...

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole state with ``snapshot`` (inside the transaction)."""
        ...

    def dump(self) -> bytes:
        """The state as of ``applied_index``, as a snapshot's data."""
        ...

    @property
    def halted(self) -> bool:
        """This member was removed while applying: stop applying."""
        ...


class AppliedStateStorage(MemoryStorage):
    """The in-memory Raft log whose ``snapshot()`` is the state machine as of the applied index, dumped on
    demand (only a leader sending to a follower that is too far behind asks for it).

    Invariant: a snapshot's data is the state at its metadata's index. While a Ready's transaction is open
    (``in_transaction``: the state machine may be ahead of the published applied index, e.g. when applying a
    membership change makes the core send) no new dump is made: ``SnapshotTemporarilyUnavailableError``."""

    __slots__ = ("_applied_conf", "_applied_index", "_dump", "in_transaction", "snapshots_made")

    def __init__(self, dump: Callable[[], bytes]) -> None:
        super().__init__()
        self._dump = dump
        self._applied_index = 0
        self._applied_conf = ConfState()
        self.snapshots_made = 0
        self.in_transaction = False

    def set_applied(self, index: int, conf: ConfState) -> None:
        self._applied_index = index
        self._applied_conf = conf

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The configuration a restarted core starts from is the one in force at the applied index (entries
        above it are applied again, membership changes included)."""
        return self.hard_state, self._applied_conf

    def snapshot(self) -> Snapshot:
        current = super().snapshot()
        idx = self._applied_index
        if idx > current.metadata.index and idx <= self.last_index():
            if self.in_transaction:
                if current.metadata.index >= self.first_index() - 1 and not current.is_empty():
                    return current
                raise SnapshotTemporarilyUnavailableError
            term = self.term(Index(idx))
            self._snapshot = Snapshot(self._dump(), SnapshotMetadata(self._applied_conf, Index(idx), term))
            self.snapshots_made += 1
        return super().snapshot()


@dataclass(slots=True)
class Plan:
    """What ``finish`` will do with ``ready``."""

    ready: Ready
    #: The Ready's messages were handed to the transport before its sync.
    sent_early: bool = False
    #: The transaction must be synced before anything that depends on it is sent or acknowledged.
    sync: bool = False


@dataclass(slots=True)
class Outcome:
    ready: Ready
    conf_changes: list[ConfChange] = field(default_factory=list)
    #: This member was leader before the Ready.
    was_leader: bool = False


class ReadyProcessor:
    """Runs every ``Ready`` of one ``RawNode`` against a ``LogStore`` and a ``StateMachine``. ``memory`` is the
    in-memory log the core reads (an ``AppliedStateStorage`` where the leader may need snapshots).

    Published state (updated as each Ready is finished): ``term``, ``commit_index``, ``lead``, ``raft_state``
    and ``conf_state``. ``log_pin`` (None or an index) keeps log rows at and above it (online defrag)."""

    def __init__(self, raw: RawNode, memory: MemoryStorage, store: LogStore, sm: StateMachine,
                 send: Callable[[list[Message]], None], *, member_id: int, conf_state: ConfState,
                 snapshot_count: int, catchup_entries: int,
                 failpoints: Failpoints = DISABLED) -> None:
        self.raw = raw
        self.memory = memory
        self.store = store
        self.sm = sm
        self.send = send
        self.member_id = member_id
        self.snapshot_count = snapshot_count
        self.catchup_entries = catchup_entries
        self.failpoints = failpoints
        self.log_pin: int | None = None
        hs = memory.hard_state
        self.term = int(hs.term)
        self.commit_index = int(hs.commit)
        self.lead = 0
        self.raft_state = StateType.FOLLOWER
        self.conf_state = conf_state

    @property
    def is_sole_voter(self) -> bool:
        cs = self.conf_state
        return cs.voters == (self.member_id,) and not cs.learners

    def _hit(self, name: str) -> None:
        fp = self.failpoints
        if fp.active:
            fp.hit(name)

    def _sends_early(self, plan: Plan) -> bool:
        rd = plan.ready
        return bool(rd.messages) and self.raft_state == StateType.LEADER and (
            rd.soft_state is None or rd.soft_state.raft_state == StateType.LEADER)

    def start(self, rd: Ready) -> Plan:
        """Plan ``rd``; a steady leader's messages are sent now, before the sync."""
        plan = Plan(rd, sync=rd.must_sync or rd.snapshot is not None)
        if self._sends_early(plan):
            self._hit("before_leader_send")
            plan.sent_early = True
            self.send(rd.messages)
        return plan

    def finish(self, plan: Plan) -> Outcome:
        """Persist and apply ``plan.ready`` in one transaction, then send what waited for it and advance."""
        rd = plan.ready
        out = Outcome(rd)
        self._hit("before_log_save")
        memory = self.memory
        if rd.entries or rd.hard_state is not None or rd.snapshot is not None or rd.committed_entries:
            dumps = memory if isinstance(memory, AppliedStateStorage) else None
            if dumps is not None:
                dumps.in_transaction = True
            try:
                with self.store.transaction(plan.sync):
                    self._persist_and_apply(rd, out)
            finally:
                if dumps is not None:
                    dumps.in_transaction = False
        # else: only messages or read states (heartbeats, ReadIndex rounds): nothing to persist, no transaction
        # durable: the in-memory log follows
        if rd.snapshot is not None:
            memory.apply_snapshot(rd.snapshot)
            self.conf_state = rd.snapshot.metadata.conf_state
        if rd.entries:
            memory.append(rd.entries)
        if rd.hard_state is not None:
            memory.set_hard_state(rd.hard_state)
            self.term = int(rd.hard_state.term)
            self.commit_index = int(rd.hard_state.commit)
        if isinstance(memory, AppliedStateStorage):
            memory.set_applied(self.sm.applied_index, self.conf_state)
        self._hit("after_log_save")
        if rd.snapshot is not None:
            self._hit("after_snapshot_install")
        if rd.messages and not plan.sent_early:
            self.send(rd.messages)
        if rd.soft_state is not None:
            out.was_leader = self.raft_state == StateType.LEADER
            self.lead = int(rd.soft_state.lead)
            self.raft_state = rd.soft_state.raft_state
        self.raw.advance(rd)
        return out

    def _persist_and_apply(self, rd: Ready, out: Outcome) -> None:
        """The body of the Ready's transaction."""
        store = self.store
        if rd.snapshot is not None:
            self._hit("before_snapshot_install")
            store.install_snapshot(rd.snapshot.metadata)
            self.sm.restore(rd.snapshot)
        if rd.entries:
            last = rd.entries[-1]
            if (store.applies_in_transaction and rd.committed_entries
                    and rd.committed_entries[-1].index >= last.index
                    and self.log_pin is None and self.is_sole_voter):
                store.skip_to(last.index, int(last.term))
            else:
                store.append(rd.entries)
        if rd.hard_state is not None:
            store.save_hard_state(rd.hard_state)
        if rd.committed_entries:
            self._hit("before_apply")
            self._apply(rd.committed_entries, out.conf_changes)
            self._hit("after_apply")

    def handle(self, rd: Ready) -> Outcome:
        """``start`` then ``finish`` at once (a disk with no simulated latency)."""
        return self.finish(self.start(rd))

    def _apply(self, entries: list[Entry], conf_changes: list[ConfChange]) -> None:
        sm = self.sm
        run: list[Entry] = []
        for e in entries:
            if e.type != EntryType.CONF_CHANGE:
                run.append(e)
                continue
            if run:
                sm.apply_entries(run)
                run = []
            if e.index <= sm.applied_index:
                continue
            cc = sm.conf_change_of(e)
            rejected: ValueError | None = None
            try:
                sm.apply_conf_change(e, cc)
                self.conf_state = self.raw.apply_conf_change(cc)
            except ValueError as exc:
                rejected = exc
            sm.conf_change_applied(e, cc, self.conf_state, rejected)
            conf_changes.append(cc)
            if sm.halted:
                return
        if run:
            sm.apply_entries(run)
        sm.finish_apply()

    def maybe_compact(self) -> bool:
        """Past ``snapshot_count`` applied entries, drop all but the last ``catchup_entries`` (memory, and
        stored rows if any). A sole voter that stores no log rows keeps at most ``SOLE_VOTER_LOG_ENTRIES`` (see
        there). Returns whether anything was compacted."""
        memory = self.memory
        applied = self.sm.applied_index
        first = int(memory.first_index())
        threshold, keep = self.snapshot_count, self.catchup_entries
        if self.store.applies_in_transaction and self.log_pin is None and self.is_sole_voter:
            threshold = min(threshold, SOLE_VOTER_LOG_ENTRIES)
            keep = min(keep, SOLE_VOTER_LOG_ENTRIES // 2)
        if applied - first < threshold:
            return False
        upto = applied - keep
        if self.log_pin is not None:
            upto = min(upto, self.log_pin - 1)
        if upto < first:
            return False
        term = int(memory.term(Index(upto)))
        memory.compact(Index(upto))
        self.store.compact(Index(upto), term)
        self._hit("after_compact")
        return True
