"""A synchronous in-process cluster of ``RawNode``s for unit tests, and the in-memory ``LogStore``.

Messages are delivered in FIFO order, immediately, unless a link is cut; each node's ``Ready`` is handled by
the production ``ReadyProcessor`` (persist, send, apply, advance) over ``MemoryLogStore``. Deterministic for a
given seed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from quorumkv.raft.core import Config, ProposalDroppedError
from quorumkv.raft.ids import NONE, Index, NodeId, Term
from quorumkv.raft.memory_storage import MemoryStorage
from quorumkv.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    StateType,
    decode_conf_change,
)
from quorumkv.raft.rawnode import RawNode
from quorumkv.raft.read_only import ReadState
from quorumkv.server.failpoints import DISABLED, Failpoints
from quorumkv.server.ready import ReadyProcessor, StateMachine
from quorumkv.testing.planted import new_raw_node, ready_processor_class

#: ``snapshot_count`` of a processor that never compacts on its own (tests compact explicitly).
NEVER_COMPACT = 1 << 62


class MemoryLogStore:
    """A ``LogStore`` whose disk is the node's in-memory log (``MemoryStorage``): the processor writes that only
    after the transaction, so nothing of a Ready is durable until its transaction is over, and a crash inside
    it loses all of it. ``on_commit`` runs when a transaction ends without an exception."""

    applies_in_transaction = False

    def __init__(self, on_commit: Callable[[], None] | None = None) -> None:
        self.on_commit = on_commit

    def transaction(self, sync: bool) -> MemoryLogStore:
        return self  # a plain context manager: the simulator opens one per Ready

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None and self.on_commit is not None:
            self.on_commit()

    def install_snapshot(self, meta: SnapshotMetadata) -> None:
        pass

    def append(self, entries: list[Entry]) -> None:
        pass

    def skip_to(self, index: Index, term: int) -> None:
        raise AssertionError("a memory store never applies in its transaction")

    def save_hard_state(self, hs: HardState) -> None:
        pass

    def compact(self, index: Index, term: int) -> None:
        pass


class RecordingStateMachine:
    """A ``StateMachine`` that records the normal entries with data it applies."""

    halted = False

    def __init__(self, applied_index: int = 0) -> None:
        self.applied: list[Entry] = []
        self._applied_index = applied_index

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def apply_entries(self, entries: list[Entry]) -> None:
        for e in entries:
            if e.index <= self._applied_index:
                continue
            if e.data:
                self.applied.append(e)
            self._applied_index = int(e.index)

    def conf_change_of(self, entry: Entry) -> ConfChange:
        return decode_conf_change(entry.data)

    def apply_conf_change(self, entry: Entry, cc: ConfChange) -> None:
        pass

    def conf_change_applied(self, entry: Entry, cc: ConfChange, conf_state: ConfState,
                            rejected: ValueError | None) -> None:
        self._applied_index = int(entry.index)

    def finish_apply(self) -> None:
        pass

    def restore(self, snapshot: Snapshot) -> None:
        self._applied_index = int(snapshot.metadata.index)

    def dump(self) -> bytes:
        return b""


def memory_processor(raw: RawNode, storage: MemoryStorage, sm: StateMachine,
                     send: Callable[[list[Message]], None], *, bugs: frozenset[str] = frozenset(),
                     failpoints: Failpoints = DISABLED, store: MemoryLogStore | None = None,
                     snapshot_count: int = NEVER_COMPACT, catchup_entries: int = 0) -> ReadyProcessor:
    """The production ``ReadyProcessor`` over an in-memory log (``storage``), or a planted-bug variant."""
    cls = ready_processor_class(bugs)
    return cls(raw, storage, store if store is not None else MemoryLogStore(), sm, send,
               member_id=int(raw.raft.id), conf_state=raw.raft.conf_state(), snapshot_count=snapshot_count,
               catchup_entries=catchup_entries, failpoints=failpoints)


def bootstrap_storage(
    voters: tuple[int, ...], learners: tuple[int, ...] = (), index: int = 0, term: int = 0
) -> MemoryStorage:
    """Storage whose snapshot (possibly empty, ``index`` 0) carries the initial configuration."""
    st = MemoryStorage()
    cs = ConfState(tuple(NodeId(v) for v in voters), tuple(NodeId(v) for v in learners))
    st.apply_snapshot(Snapshot(b"", SnapshotMetadata(cs, Index(index), Term(term))))
    return st


@dataclass
class Cluster:
    voters: tuple[int, ...] = (1, 2, 3)
    learners: tuple[int, ...] = ()
    seed: int = 0
    pre_vote: bool = False
    check_quorum: bool = False
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    max_size_per_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    snapshot_chunk_size_bytes: int = 1 << 20
    bugs: frozenset[str] = frozenset()
    nodes: dict[NodeId, RawNode] = field(default_factory=dict)
    storages: dict[NodeId, MemoryStorage] = field(default_factory=dict)
    machines: dict[NodeId, RecordingStateMachine] = field(default_factory=dict)
    processors: dict[NodeId, ReadyProcessor] = field(default_factory=dict)
    read_states: dict[NodeId, list[ReadState]] = field(default_factory=dict)
    queue: deque[Message] = field(default_factory=deque)
    cut: set[tuple[int, int]] = field(default_factory=set)
    down: set[int] = field(default_factory=set)
    delivered: list[Message] = field(default_factory=list)
    drop_types: set[MessageType] = field(default_factory=set)

    def __post_init__(self) -> None:
        for nid in (*self.voters, *self.learners):
            self.add_node(nid, bootstrap_storage(self.voters, self.learners))

    def config(self, nid: int, storage: MemoryStorage, applied: int = 0) -> Config:
        return Config(
            id=NodeId(nid),
            storage=storage,
            rng=random.Random(f"{self.seed}:{nid}"),
            election_timeout_ticks=self.election_timeout_ticks,
            heartbeat_interval_ticks=self.heartbeat_interval_ticks,
            applied=Index(applied),
            max_size_per_msg_bytes=self.max_size_per_msg_bytes,
            max_inflight_msgs=self.max_inflight_msgs,
            snapshot_chunk_size_bytes=self.snapshot_chunk_size_bytes,
            check_quorum=self.check_quorum,
            pre_vote=self.pre_vote,
        )

    @property
    def applied(self) -> dict[NodeId, list[Entry]]:
        """The normal entries with data each node applied since it (re)started."""
        return {n: sm.applied for n, sm in self.machines.items()}

    def _start(self, n: NodeId) -> RawNode:
        st = self.storages[n]
        snap_index = int(st.snapshot().metadata.index)
        node = new_raw_node(self.config(n, st, snap_index), self.bugs)
        sm = RecordingStateMachine(snap_index)
        self.nodes[n] = node
        self.machines[n] = sm
        self.processors[n] = memory_processor(node, st, sm, self.queue.extend, bugs=self.bugs)
        return node

    def add_node(self, nid: int, storage: MemoryStorage | None = None) -> RawNode:
        n = NodeId(nid)
        self.storages[n] = storage if storage is not None else MemoryStorage()
        self.read_states.setdefault(n, [])
        return self._start(n)

    def restart(self, nid: int) -> RawNode:
        """Crash and restart ``nid`` from what it persisted (volatile state is lost)."""
        return self._start(NodeId(nid))

    # ------------------------------------------------------------------------------------------ driving

    def node(self, nid: int) -> RawNode:
        return self.nodes[NodeId(nid)]

    def process_ready(self, nid: int) -> None:
        n = NodeId(nid)
        node = self.nodes[n]
        proc = self.processors[n]
        while node.has_ready():
            rd = node.ready()
            proc.handle(rd)
            self.read_states[n].extend(rd.read_states)

    def deliver_one(self) -> Message | None:
        """Deliver the oldest queued message (None if dropped by a cut/drop rule)."""
        m = self.queue.popleft()
        if (m.frm, m.to) in self.cut or m.to in self.down or m.frm in self.down:
            return None
        if m.type in self.drop_types or m.to not in self.nodes:
            return None
        self.delivered.append(m)
        try:
            self.nodes[m.to].step(m)
        except ProposalDroppedError:
            pass
        self.process_ready(m.to)
        return m

    def deliver_all(self) -> None:
        while self.queue:
            self.deliver_one()

    def stabilize(self) -> None:
        for nid in list(self.nodes):
            if nid not in self.down:
                self.process_ready(nid)
        self.deliver_all()

    def tick(self, nid: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[NodeId(nid)].tick()
            self.stabilize()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for nid, node in self.nodes.items():
                if nid not in self.down:
                    node.tick()
            self.stabilize()

    def campaign(self, nid: int) -> None:
        self.nodes[NodeId(nid)].campaign()
        self.stabilize()

    def propose(self, nid: int, data: bytes) -> None:
        self.nodes[NodeId(nid)].propose(data)
        self.stabilize()

    def propose_conf_change(self, nid: int, cc: ConfChange) -> None:
        self.nodes[NodeId(nid)].propose_conf_change(cc)
        self.stabilize()

    def isolate(self, nid: int) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def heal(self) -> None:
        self.cut.clear()
        self.drop_types.clear()

    # ------------------------------------------------------------------------------------------ inspecting

    def state(self, nid: int) -> StateType:
        return self.nodes[NodeId(nid)].raft.state

    def term(self, nid: int) -> int:
        return self.nodes[NodeId(nid)].raft.term

    def leader(self) -> NodeId:
        leaders = [
            nid for nid, n in self.nodes.items() if n.raft.state == StateType.LEADER and nid not in self.down
        ]
        return leaders[0] if len(leaders) == 1 else NONE

    def committed(self, nid: int) -> int:
        return self.nodes[NodeId(nid)].raft.log.committed

    def applied_data(self, nid: int) -> list[bytes]:
        return [e.data for e in self.applied[NodeId(nid)]]
