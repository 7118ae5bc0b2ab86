"""A synchronous in-process cluster of ``RawNode``s for unit tests.

Messages are delivered in FIFO order, immediately, unless a link is cut; each node's ``Ready`` is handled
by the contract (persist, send, apply, advance). Deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from quorumkv.raft.core import Config, ProposalDroppedError
from quorumkv.raft.ids import NONE, Index, NodeId, Term
from quorumkv.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    StateType,
    decode_conf_change,
)
from quorumkv.raft.rawnode import RawNode
from quorumkv.raft.read_only import ReadState
from quorumkv.testing.raft_storage import MemoryStorage


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
    applied: dict[NodeId, list[Entry]] = field(default_factory=dict)
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
            _bugs=self.bugs,
        )

    def add_node(self, nid: int, storage: MemoryStorage | None = None) -> RawNode:
        st = storage if storage is not None else MemoryStorage()
        n = NodeId(nid)
        self.storages[n] = st
        self.nodes[n] = RawNode(self.config(nid, st, st.snapshot().metadata.index))
        self.applied.setdefault(n, [])
        self.read_states.setdefault(n, [])
        return self.nodes[n]

    def restart(self, nid: int) -> RawNode:
        """Crash and restart ``nid`` from what it persisted (volatile state is lost)."""
        st = self.storages[NodeId(nid)]
        self.applied[NodeId(nid)] = []
        node = RawNode(self.config(nid, st, st.snapshot().metadata.index))
        self.nodes[NodeId(nid)] = node
        return node

    # ------------------------------------------------------------------------------------------ driving

    def node(self, nid: int) -> RawNode:
        return self.nodes[NodeId(nid)]

    def process_ready(self, nid: int) -> None:
        n = NodeId(nid)
        node = self.nodes[n]
        st = self.storages[n]
        while node.has_ready():
            rd = node.ready()
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
            st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            self.queue.extend(rd.messages)
            for e in rd.committed_entries:
                if e.type == EntryType.CONF_CHANGE:
                    node.apply_conf_change(decode_conf_change(e.data))
                elif e.data:
                    self.applied[n].append(e)
            self.read_states[n].extend(rd.read_states)
            node.advance(rd)

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
