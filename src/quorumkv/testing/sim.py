"""Deterministic, seeded discrete-event simulator for the Raft core.

One seed determines everything: the swarm configuration (which faults are enabled and how hard), the
network, the faults, the clients and every node's election randomness, each drawn from its own
sub-seeded ``random.Random`` so that changing one subsystem does not perturb the others' streams.

A run has a *fault phase* (lossy/duplicating/reordering/delaying network, partitions of several shapes,
crashes that lose unpersisted writes, slow disks, membership changes, leadership transfers, client
writes and linearizable reads) and then a *liveness phase* (everything healed and restarted), in which a
leader must emerge and a fresh write must be applied by every member within a bounded number of ticks.

Checked continuously (a violation stops the run):

* Election Safety -- at most one leader per term (checked whenever a node becomes leader).
* Leader Completeness -- a new leader's log holds the highest entry known committed.
* Log Matching -- every persisted entry ``(index, term)`` is recorded with its data and the term of the
  entry preceding it; two nodes holding the same ``(index, term)`` must agree on both (by induction on
  the index this is the full Log Matching property).
* State Machine Safety -- every node applies the same entry at each index, and the state machine digest
  after index ``i`` is the same everywhere (also checked when restoring a snapshot).
* Durability -- a restarted node's persisted commit point matches the committed log; every committed
  entry stays committed (by the two checks above plus the liveness phase, where every member must catch
  up and therefore re-verify every index).
* Linearizable reads -- see ``_serve_reads``.
* No acknowledgement before durability on a majority -- a write is acknowledged when it is first applied
  (its response is released once the applying transaction is over); at that moment the entry must be held
  durably (in the node's persisted log, or below its snapshot) by a majority of the voters of the applying
  node's configuration (either the one in force or the one before its latest membership change: an entry may
  have been committed just before that change was applied).

Every node runs the production ``ReadyProcessor`` (``quorumkv.server.ready``) over ``MemoryLogStore``
(``quorumkv.testing.harness``): a steady leader's early send, membership changes, snapshot install and log
compaction are the production code's. A slow disk holds a Ready between ``start`` (a leader's messages are
already out) and ``finish`` (persist, apply, send the rest). The state machine is durable as of the last
finished transaction, like the production one; a crash loses the Ready in flight. Failpoints
(``quorumkv.server.failpoints``) crash a node inside the processor with ``failpoint_crash_prob`` per hit.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import struct
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from quorumkv.raft.core import Config, ProposalDroppedError
from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    StateType,
    decode_conf_change,
    encode_conf_change,
)
from quorumkv.raft.rawnode import RawNode
from quorumkv.raft.storage import StorageError
from quorumkv.server.failpoints import NAMES as FAILPOINT_NAMES
from quorumkv.server.failpoints import Failpoints
from quorumkv.server.ready import AppliedStateStorage, Plan, ReadyProcessor
from quorumkv.testing.harness import MemoryLogStore, memory_processor
from quorumkv.testing.planted import check_bugs, new_raw_node

TICK_MS = 10  # simulated milliseconds per tick

_EV_TICK = 0
_EV_DELIVER = 1
_EV_PERSIST = 2
_EV_RESTART = 3
_EV_HEAL = 4
_EV_CRASH = 5

_SNAP_HDR = struct.Struct("<QI")
_WRITE = struct.Struct("<cQ")
#: ``_TRACE_PACKERS[k]`` packs k trace words (little-endian int64), as ``struct.pack(f"<{k}q", ...)``.
_TRACE_PACKERS = [struct.Struct(f"<{k}q").pack for k in range(8)]


@dataclass(frozen=True)
class SimParams:
    """The run's configuration, drawn swarm-style from the seed (faults on/off and their intensity)."""

    nodes: int
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_msgs: int = 64
    max_size_per_msg_bytes: int = 1 << 20
    snapshot_chunk_size_bytes: int = 1 << 20
    max_uncommitted_entries: int = 256
    snapshot_filler_bytes: int = 64
    compact_every_entries: int = 50
    fault_ticks: int = 250
    liveness_ticks: int = 400
    drop_prob: float = 0.0
    dup_prob: float = 0.0
    delay_max_ms: int = 10
    long_delay_prob: float = 0.0
    crash_prob: float = 0.0
    max_down: int = 1
    partition_prob: float = 0.0
    slow_disk_prob: float = 0.0
    conf_change_prob: float = 0.0
    transfer_prob: float = 0.0
    leader_crash_prob: float = 0.0
    leader_isolate_prob: float = 0.0
    vote_crash_prob: float = 0.0
    failpoint_crash_prob: float = 0.0
    writes_per_tick: float = 1.0
    max_batch: int = 1
    reads_per_tick: float = 0.3

    @classmethod
    def swarm(cls, seed: int, nodes: int) -> SimParams:
        r = random.Random(f"{seed}:swarm")
        election = r.choice([6, 8, 10, 15])
        base = cls(
            nodes=nodes,
            election_timeout_ticks=election,
            heartbeat_interval_ticks=r.choice([1, 1, 2, 3]),
            pre_vote=r.random() < 0.7,
            check_quorum=r.random() < 0.7,
            max_inflight_msgs=r.choice([1, 4, 64]),
            max_size_per_msg_bytes=r.choice([100, 1000, 1 << 20]),
            snapshot_chunk_size_bytes=r.choice([16, 64, 1 << 20]),
            snapshot_filler_bytes=r.choice([0, 64, 300]),
            max_uncommitted_entries=r.choice([32, 256]),
            compact_every_entries=r.choice([10, 30, 100, 10_000]),
            fault_ticks=r.choice([120, 200, 300]),
            liveness_ticks=40 * election,
            drop_prob=r.choice([0.0, 0.01, 0.05, 0.2]),
            dup_prob=r.choice([0.0, 0.02, 0.1]),
            delay_max_ms=r.choice([2, 10, 30]),
            long_delay_prob=r.choice([0.0, 0.01, 0.05]),
            crash_prob=r.choice([0.0, 0.01, 0.03, 0.08]),
            max_down=r.choice([1, nodes // 2, nodes - 1]) if nodes > 1 else 0,
            partition_prob=r.choice([0.0, 0.02, 0.05]),
            slow_disk_prob=r.choice([0.0, 0.02, 0.08]),
            conf_change_prob=r.choice([0.0, 0.02, 0.06]),
            transfer_prob=r.choice([0.0, 0.01, 0.04]),
            leader_crash_prob=r.choice([0.0, 0.0, 0.1, 0.3]),
            vote_crash_prob=r.choice([0.0, 0.0, 0.1, 0.3]),
            writes_per_tick=r.choice([0.3, 1.0, 2.5]),
            max_batch=r.choice([1, 3, 8]),
            reads_per_tick=r.choice([0.1, 0.5, 1.0]),
        )
        fp = random.Random(f"{seed}:swarm-failpoints")  # its own stream: the draws above stay as they were
        base = replace(base, failpoint_crash_prob=fp.choice([0.0, 0.0, 0.002, 0.01]))
        if r.random() < 0.3:
            # "Leader churn" regime: isolate and kill leaders while their logs diverge, with small appends
            # so followers acknowledge old-term entries before the new term's first entry (Figure 8).
            base = replace(
                base,
                pre_vote=r.random() < 0.3,
                check_quorum=r.random() < 0.3,
                max_size_per_msg_bytes=100,
                max_inflight_msgs=r.choice([1, 4]),
                partition_prob=r.choice([0.05, 0.1]),
                leader_crash_prob=r.choice([0.3, 0.6]),
                leader_isolate_prob=r.choice([0.2, 0.5]),
                crash_prob=0.02,
                max_down=max(1, nodes // 2),
                writes_per_tick=2.5,
                max_batch=1,
                delay_max_ms=r.choice([10, 30]),
            )
        return base


@dataclass
class SimResult:
    seed: int
    nodes: int
    bugs: tuple[str, ...]
    violations: list[str]
    trace_hash: str
    committed_entries: int
    writes_acked: int
    reads_ok: int
    faults: Counter[str]
    ticks: int
    liveness_ticks: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def reproduce_command(self) -> str:
        cmd = f"python -m quorumkv.sim --seeds 1 --start {self.seed} --nodes {self.nodes}"
        for b in self.bugs:
            cmd += f" --bug {b}"
        return cmd


class Violation(Exception):
    pass


class FailpointCrash(Exception):
    """A failpoint killed the node at this point of its Ready processing."""


class SimNode:
    __slots__ = (
        "busy",
        "conf_state",
        "durable_conf",
        "durable_digest",
        "durable_index",
        "id",
        "incarnation",
        "pending_reads",
        "prev_voters",
        "proc",
        "raw",
        "removed",
        "slow_until_ms",
        "sm_digest",
        "sm_index",
        "storage",
        "up",
        "waiting_reads",
    )

    def __init__(self, nid: NodeId, storage: AppliedStateStorage) -> None:
        self.id = nid
        self.storage = storage
        self.raw: RawNode | None = None
        self.proc: ReadyProcessor | None = None
        self.up = False
        self.removed = False
        self.incarnation = 0
        self.busy = False
        self.sm_index = 0
        self.sm_digest = 0
        self.conf_state = ConfState()
        #: The voters before the latest membership change this node applied.
        self.prev_voters: tuple[NodeId, ...] = ()
        # the state machine as of the last finished transaction (what survives a crash)
        self.durable_index = 0
        self.durable_digest = 0
        self.durable_conf = ConfState()
        self.pending_reads: dict[bytes, int] = {}  # ctx -> floor
        self.waiting_reads: list[tuple[int, bytes, int]] = []  # (read index, ctx, floor)
        self.slow_until_ms = 0

    def commit_durable(self) -> None:
        self.durable_index, self.durable_digest, self.durable_conf = self.sm_index, self.sm_digest, self.conf_state


class SimStateMachine:
    """The log-prefix state machine of one simulated node (its digest chains every applied entry's data)."""

    def __init__(self, sim: Simulation, n: SimNode) -> None:
        self.sim = sim
        self.n = n

    @property
    def applied_index(self) -> int:
        return self.n.sm_index

    @property
    def halted(self) -> bool:
        return self.n.removed

    def apply_entries(self, entries: list[Entry]) -> None:
        n = self.n
        for e in entries:
            if e.index > n.sm_index:
                self.sim._apply(n, e)

    def conf_change_of(self, entry: Entry) -> ConfChange:
        return decode_conf_change(entry.data)

    def apply_conf_change(self, entry: Entry, cc: ConfChange) -> None:
        self.sim._apply(self.n, entry)

    def conf_change_applied(self, entry: Entry, cc: ConfChange, conf_state: ConfState,
                            rejected: ValueError | None) -> None:
        n = self.n
        n.sm_index = int(entry.index)
        n.prev_voters = n.conf_state.voters
        n.conf_state = conf_state
        if cc.type == ConfChangeType.REMOVE_NODE and rejected is None:
            self.sim._remove_node(cc.node_id)

    def finish_apply(self) -> None:
        pass

    def restore(self, snapshot: Snapshot) -> None:
        self.sim._restore_sm(self.n, snapshot)

    def dump(self) -> bytes:
        return self.sim._encode_sm(self.n)


class Simulation:
    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        bugs: frozenset[str] = frozenset(),
        params: SimParams | None = None,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.p = params if params is not None else SimParams.swarm(seed, nodes)
        self.bugs = bugs
        self.trace_enabled = trace
        self.trace_lines: list[str] = []
        self.net_rng = random.Random(f"{seed}:net")
        self.fault_rng = random.Random(f"{seed}:faults")
        self.client_rng = random.Random(f"{seed}:clients")
        self.disk_rng = random.Random(f"{seed}:disk")
        self.failpoint_rng = random.Random(f"{seed}:failpoints")
        check_bugs(bugs)
        self.now = 0
        self.events: list[tuple[int, int, int, Any]] = []
        self.seq = 0
        self.nodes: dict[NodeId, SimNode] = {}
        self.next_id = self.p.nodes + 1
        self.blocked: set[tuple[int, int]] = set()
        self.partition_epoch = 0
        self.healing = False
        self.faults: Counter[str] = Counter()
        self.trace_crc = 0
        self.violations: list[str] = []
        # checker state
        self.leaders_by_term: dict[int, NodeId] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.chain: dict[int, int] = {}
        self.commit_max = 0
        self.log_table: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.max_acked_index = 0
        #: (index, term) of writes first applied in the Ready being finished (acknowledged once it is over).
        self.pending_acks: list[tuple[int, int]] = []
        self.max_read_returned = 0
        self.writes_acked = 0
        self.reads_ok = 0
        self.next_write = 1
        self.next_read = 1
        self.probe_index = 0
        self.probe_id = 0
        self.probe_tick = 0
        self.progress_tick = 0
        self.liveness_ok = False
        self.liveness_started_tick = 0
        self.tick_no = 0
        #: after healing: the highest commit index any live node knows, and the tick it last grew
        self.commit_seen = 0
        self.commit_grew_tick = 0

    # ------------------------------------------------------------------------------------------ setup

    def _config(self, n: SimNode, applied: int) -> Config:
        p = self.p
        return Config(
            id=n.id,
            storage=n.storage,
            rng=random.Random(f"{self.seed}:raft:{n.id}:{n.incarnation}"),
            election_timeout_ticks=p.election_timeout_ticks,
            heartbeat_interval_ticks=p.heartbeat_interval_ticks,
            applied=Index(applied),
            max_size_per_msg_bytes=p.max_size_per_msg_bytes,
            max_inflight_msgs=p.max_inflight_msgs,
            snapshot_chunk_size_bytes=p.snapshot_chunk_size_bytes,
            max_uncommitted_entries=p.max_uncommitted_entries,
            check_quorum=p.check_quorum,
            pre_vote=p.pre_vote,
        )

    def _bootstrap(self) -> None:
        ids = [NodeId(i) for i in range(1, self.p.nodes + 1)]
        boot = [
            Entry(
                Term(1),
                Index(k),
                EntryType.CONF_CHANGE,
                encode_conf_change(ConfChange(ConfChangeType.ADD_NODE, i)),
            )
            for k, i in enumerate(ids, start=1)
        ]
        for i in ids:
            n = SimNode(i, AppliedStateStorage(lambda: b""))
            st = n.storage = self._new_storage(n)
            st.append(boot)
            st.set_hard_state(HardState(Term(1), NodeId(0), Index(len(boot))))
            self.nodes[i] = n
            self._start(n)

    def _new_storage(self, n: SimNode) -> AppliedStateStorage:
        return AppliedStateStorage(lambda: self._encode_sm(n))

    def _new_node(self, nid: NodeId) -> SimNode:
        n = SimNode(nid, AppliedStateStorage(lambda: b""))
        n.storage = self._new_storage(n)
        return n

    def _failpoints(self, n: SimNode) -> Failpoints:
        prob = self.p.failpoint_crash_prob
        if not prob:
            return Failpoints()
        rng = self.failpoint_rng

        def maybe_crash(name: str) -> None:
            if not self.healing and self._down_count() < self.p.max_down and rng.random() < prob:
                self.faults[f"failpoint_{name}"] += 1
                raise FailpointCrash(name)

        return Failpoints({name: maybe_crash for name in FAILPOINT_NAMES})

    def _start(self, n: SimNode) -> None:
        # a restart finds the state machine as of its last finished transaction
        n.sm_index, n.sm_digest, n.conf_state = n.durable_index, n.durable_digest, n.durable_conf
        n.storage.set_applied(n.sm_index, n.conf_state)
        raw = new_raw_node(self._config(n, n.sm_index), self.bugs)
        n.raw = raw
        p = self.p
        every = p.compact_every_entries
        n.proc = memory_processor(
            raw, n.storage, SimStateMachine(self, n), lambda msgs: self._send_from(n, msgs), bugs=self.bugs,
            failpoints=self._failpoints(n), store=MemoryLogStore(on_commit=n.commit_durable),
            snapshot_count=every, catchup_entries=every // 3 if every > 3 else 0)
        n.up = True
        n.busy = False
        # Durability: the persisted commit point must agree with the committed log.
        hs = n.storage.hard_state
        c = hs.commit
        if c in self.committed and c >= n.storage.first_index():
            if n.storage.term(Index(c)) != self.committed[c][0]:
                self._violate(f"durability: node {n.id} restarted with commit {c} not matching committed log")

    # ------------------------------------------------------------------------------------------ events

    def _push(self, t: int, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def _trace(self, *parts: int) -> None:
        self.trace_crc = zlib.crc32(_TRACE_PACKERS[len(parts)](*parts), self.trace_crc)

    def _violate(self, what: str) -> None:
        msg = f"t={self.now}ms tick={self.tick_no}: {what}"
        self.violations.append(msg)
        raise Violation(msg)

    def run(self) -> SimResult:
        self._bootstrap()
        self._push(0, _EV_TICK, None)
        fault_end_tick = self.p.fault_ticks
        progress_deadline_tick = fault_end_tick + self.p.liveness_ticks
        deadline_tick = fault_end_tick + 4 * self.p.liveness_ticks
        try:
            while self.events:
                t, _, kind, payload = heapq.heappop(self.events)
                self.now = t
                if kind == _EV_TICK:
                    if self.tick_no == fault_end_tick:
                        self._heal_all()
                    if self.liveness_ok or self.tick_no >= deadline_tick:
                        break
                    if self.tick_no >= fault_end_tick:
                        self._note_commit_progress()
                    if (self.probe_index == 0 and self.tick_no >= progress_deadline_tick
                            and self.tick_no - self.commit_grew_tick >= self.p.liveness_ticks):
                        # Stuck: no fresh write committed within the budget, and no commit at all for a whole
                        # budget. A cluster still committing its backlog (followers catching up under tight
                        # flow control, seed 24656) gets until the convergence deadline below.
                        self._violate(
                            f"liveness: no leader committed a fresh write within "
                            f"{self.p.liveness_ticks} ticks after healing, and nothing was committed in the "
                            f"last {self.p.liveness_ticks} ticks"
                        )
                    self._on_tick()
                    self.tick_no += 1
                    self._push(t + TICK_MS, _EV_TICK, None)
                elif kind == _EV_DELIVER:
                    self._deliver(payload)
                elif kind == _EV_PERSIST:
                    nid, inc, plan = payload
                    n = self.nodes[nid]
                    if n.up and n.incarnation == inc:
                        n.busy = False
                        self._finish(n, plan)
                        self._process(n)
                elif kind == _EV_RESTART:
                    n = self.nodes[payload]
                    if not n.up and not n.removed:
                        self.faults["restart"] += 1
                        self._trace(t, 3, n.id)
                        self._start(n)
                        self._process(n)
                elif kind == _EV_CRASH:
                    nid, inc = payload
                    n = self.nodes[nid]
                    if (
                        n.up
                        and n.incarnation == inc
                        and not self.healing
                        and self._down_count() < self.p.max_down
                    ):
                        self.faults["crash_targeted"] += 1
                        self._crash(
                            n,
                            restart_after_ticks=self.fault_rng.randint(1, 2 * self.p.election_timeout_ticks),
                        )
                elif kind == _EV_HEAL:
                    if payload == self.partition_epoch:
                        self.blocked = set()
            if not self.liveness_ok and not self.violations:
                self._violate(
                    f"convergence: members did not all apply the committed probe write within "
                    f"{4 * self.p.liveness_ticks} ticks after healing"
                )
        except Violation:
            pass
        except AssertionError as exc:  # an invariant asserted inside the core
            self.violations.append(f"t={self.now}ms tick={self.tick_no}: core assertion: {exc}")
        return SimResult(
            seed=self.seed,
            nodes=self.p.nodes,
            bugs=tuple(sorted(self.bugs)),
            violations=self.violations,
            trace_hash=f"{self.trace_crc:08x}",
            committed_entries=self.commit_max,
            writes_acked=self.writes_acked,
            reads_ok=self.reads_ok,
            faults=self.faults,
            ticks=self.tick_no,
            liveness_ticks=self.progress_tick - fault_end_tick if self.progress_tick else -1,
            params=asdict(self.p),
        )

    # ------------------------------------------------------------------------------------------ ticks

    def _on_tick(self) -> None:
        self._trace(self.now, 0)
        if not self.healing:
            self._inject_faults()
        self._clients()
        for n in list(self.nodes.values()):
            if n.up and n.raw is not None:
                n.raw.tick()
                self._after_input(n)
        if self.healing:
            self._check_liveness()

    def _leader(self) -> SimNode | None:
        best: SimNode | None = None
        best_term = -1
        for n in self.nodes.values():
            if n.up and n.raw is not None and n.raw.raft.state == StateType.LEADER:
                if n.raw.raft.term > best_term:
                    best, best_term = n, n.raw.raft.term
        return best

    def _up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def _inject_faults(self) -> None:
        r = self.fault_rng
        p = self.p
        if p.crash_prob and r.random() < p.crash_prob:
            ups = self._up_nodes()
            if self._down_count() < p.max_down and ups:
                self._crash(r.choice(ups), restart_after_ticks=r.randint(1, 4 * p.election_timeout_ticks))
        if p.partition_prob and r.random() < p.partition_prob:
            self._partition(r)
        if p.slow_disk_prob and r.random() < p.slow_disk_prob:
            ups = self._up_nodes()
            if ups:
                n = r.choice(ups)
                n.slow_until_ms = self.now + r.randint(2, 3 * p.election_timeout_ticks) * TICK_MS
                self.faults["slow_disk"] += 1
        if p.conf_change_prob and r.random() < p.conf_change_prob:
            self._conf_change(r)
        if p.transfer_prob and r.random() < p.transfer_prob:
            lead = self._leader()
            if lead is not None and lead.raw is not None:
                voters = [v for v in lead.raw.raft.tracker.voters if v != lead.id]
                if voters:
                    to = r.choice(sorted(voters))
                    self.faults["transfer_leadership"] += 1
                    lead.raw.transfer_leadership(to)
                    self._after_input(lead)

    def _down_count(self) -> int:
        down = 0
        for n in self.nodes.values():
            if not n.up and not n.removed:
                down += 1
        return down

    def _crash(self, n: SimNode, restart_after_ticks: int) -> None:
        self.faults["crash"] += 1
        self._trace(self.now, 2, n.id)
        n.up = False
        n.raw = None
        n.proc = None
        n.busy = False
        n.incarnation += 1  # pending disk writes of the old incarnation are lost
        n.pending_reads.clear()
        n.waiting_reads.clear()
        self._push(self.now + restart_after_ticks * TICK_MS, _EV_RESTART, n.id)

    def _partition(self, r: random.Random) -> None:
        ids = sorted(n.id for n in self.nodes.values() if not n.removed)
        if len(ids) < 2:
            return
        kind = r.choice(["symmetric", "asymmetric", "leader_isolated", "bridge"])
        blocked: set[tuple[int, int]] = set()
        if kind == "symmetric":
            r.shuffle(ids)
            k = r.randint(1, len(ids) - 1)
            a, b = ids[:k], ids[k:]
            blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        elif kind == "asymmetric":
            r.shuffle(ids)
            k = r.randint(1, len(ids) - 1)
            a, b = ids[:k], ids[k:]
            blocked = {(x, y) for x in a for y in b}  # a cannot reach b, b can reach a
        elif kind == "leader_isolated":
            lead = self._leader()
            self._isolate(lead.id if lead is not None else r.choice(ids), kind)
            return
        else:  # bridge: two halves that only talk through one node
            if len(ids) < 3:
                return
            r.shuffle(ids)
            bridge = ids[0]
            rest = ids[1:]
            k = r.randint(1, len(rest) - 1)
            a, b = rest[:k], rest[k:]
            blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
            del bridge
        self.faults[f"partition_{kind}"] += 1
        self.blocked = blocked
        self.partition_epoch += 1
        self._push(
            self.now + r.randint(3, 5 * self.p.election_timeout_ticks) * TICK_MS,
            _EV_HEAL,
            self.partition_epoch,
        )

    def _isolate(self, x: NodeId, kind: str = "fresh_leader_isolated") -> None:
        ids = [n.id for n in self.nodes.values() if not n.removed and n.id != x]
        self.blocked = {(x, y) for y in ids} | {(y, x) for y in ids}
        self.faults[f"partition_{kind}"] += 1
        self.partition_epoch += 1
        heal_after = self.fault_rng.randint(3, 5 * self.p.election_timeout_ticks)
        self._push(self.now + heal_after * TICK_MS, _EV_HEAL, self.partition_epoch)

    def _conf_change(self, r: random.Random) -> None:
        lead = self._leader()
        if lead is None or lead.raw is None:
            return
        raft = lead.raw.raft
        voters = sorted(raft.tracker.voters)
        learners = sorted(raft.tracker.learners)
        n0 = self.p.nodes
        ops: list[tuple[ConfChangeType, NodeId]] = []
        fresh = NodeId(self.next_id)
        if len(self.nodes) < 3 * n0 + 4:
            ops.append((ConfChangeType.ADD_LEARNER_NODE, fresh))
            if len(voters) < n0 + 2:
                ops.append((ConfChangeType.ADD_NODE, fresh))
        if learners and len(voters) < n0 + 2:
            ops.append((ConfChangeType.ADD_NODE, r.choice(learners)))
        if len(voters) > 3:
            ops.append((ConfChangeType.REMOVE_NODE, r.choice(voters)))
        if learners:
            ops.append((ConfChangeType.REMOVE_NODE, r.choice(learners)))
        if not ops:
            return
        typ, nid = r.choice(ops)
        cc = ConfChange(typ, nid)
        try:
            lead.raw.propose_conf_change(cc)
        except ProposalDroppedError:
            self.faults["conf_change_dropped"] += 1
            return
        self.faults[f"conf_{typ.name.lower()}"] += 1
        if nid == fresh:
            self.next_id += 1
            n = self._new_node(nid)
            self.nodes[nid] = n
            self._start(n)
        self._after_input(lead)

    def _heal_all(self) -> None:
        self.healing = True
        self.liveness_started_tick = self.tick_no
        self.blocked = set()
        self.partition_epoch += 1
        for n in self.nodes.values():
            n.slow_until_ms = 0
            if not n.up and not n.removed:
                self._start(n)
                self.faults["restart"] += 1
        for n in list(self.nodes.values()):
            self._process(n)

    # ------------------------------------------------------------------------------------------ clients

    def _clients(self) -> None:
        r = self.client_rng
        p = self.p
        rate = p.writes_per_tick if not self.healing else min(p.writes_per_tick, 0.3)
        k = int(rate) + (1 if r.random() < rate - int(rate) else 0)
        while k > 0:
            batch = min(k, r.randint(1, p.max_batch))
            k -= batch
            target = self._client_target(r)
            if target is None or target.raw is None:
                continue
            datas = []
            for _ in range(batch):
                datas.append(_WRITE.pack(b"w", self.next_write))
                self.next_write += 1
            try:
                target.raw.propose_batch(datas)
            except ProposalDroppedError:
                self.faults["proposal_dropped"] += 1
            self._after_input(target)
        if r.random() < p.reads_per_tick:
            target = self._client_target(r)
            if target is not None and target.raw is not None:
                ctx = b"r%d" % self.next_read
                self.next_read += 1
                target.pending_reads[ctx] = max(self.max_acked_index, self.max_read_returned)
                target.raw.read_index(ctx)
                self._after_input(target)

    def _client_target(self, r: random.Random) -> SimNode | None:
        if r.random() < 0.7:
            lead = self._leader()
            if lead is not None:
                return lead
        ups = [n for n in self.nodes.values() if n.up]
        return r.choice(ups) if ups else None

    def _note_commit_progress(self) -> None:
        commit = max((int(n.raw.raft.log.committed) for n in self.nodes.values() if n.up and n.raw is not None),
                     default=0)
        if commit > self.commit_seen:
            self.commit_seen = commit
            self.commit_grew_tick = self.tick_no

    def _check_liveness(self) -> None:
        lead = self._leader()
        if lead is None or lead.raw is None:
            return
        if self.probe_index == 0:
            if self.probe_id and self.tick_no - self.probe_tick < 2 * self.p.election_timeout_ticks:
                return  # wait for the outstanding probe (re-proposed if it was lost)
            self.probe_id = self.next_write
            self.probe_tick = self.tick_no
            self.next_write += 1
            try:
                lead.raw.propose(_WRITE.pack(b"p", self.probe_id))
            except ProposalDroppedError:
                return
            self._after_input(lead)
            return
        cs = lead.raw.raft.tracker
        for nid in (*cs.voters, *cs.learners):
            n = self.nodes.get(nid)
            if n is None or n.removed:
                continue
            if n.sm_index < self.probe_index:
                return
        self.liveness_ok = True

    # ------------------------------------------------------------------------------------------ network

    def _send(self, m: Message) -> None:
        r = self.net_rng
        if self.healing:
            self._push(self.now + 1 + r.randrange(self.p.delay_max_ms), _EV_DELIVER, m)
            return
        p = self.p
        if (m.frm, m.to) in self.blocked or (p.drop_prob and r.random() < p.drop_prob):
            self.faults["msg_dropped"] += 1
            if m.type == MessageType.SNAP:
                self._report_snapshot_failure(m)
            return
        copies = 2 if p.dup_prob and r.random() < p.dup_prob else 1
        if copies == 2:
            self.faults["msg_duplicated"] += 1
        for _ in range(copies):
            delay = 1 + r.randrange(p.delay_max_ms)
            if p.long_delay_prob and r.random() < p.long_delay_prob:
                delay += r.randrange(3 * p.election_timeout_ticks * TICK_MS)
                self.faults["msg_delayed"] += 1
            self._push(self.now + delay, _EV_DELIVER, m)

    def _report_snapshot_failure(self, m: Message) -> None:
        sender = self.nodes.get(m.frm)
        if sender is not None and sender.up and sender.raw is not None:
            sender.raw.report_snapshot(m.to, ok=False)
            # Reported asynchronously by a real transport; the output goes out with the next Ready.

    def _deliver(self, m: Message) -> None:
        n = self.nodes.get(m.to)
        if n is None or not n.up or n.raw is None or (m.frm, m.to) in self.blocked:
            if n is not None and not n.up:
                sender = self.nodes.get(m.frm)
                if sender is not None and sender.up and sender.raw is not None:
                    sender.raw.report_unreachable(m.to)
            return
        self._trace(self.now, 1, m.frm, m.to, m.type, m.term, m.index)
        try:
            n.raw.step(m)
        except ProposalDroppedError:
            self.faults["proposal_dropped"] += 1
        self._after_input(n)

    # ------------------------------------------------------------------------------------------ nodes

    def _after_input(self, n: SimNode) -> None:
        raw = n.raw
        if raw is None:
            return
        r = raw.raft
        if r.state == StateType.LEADER:
            self._check_new_leader(n)
        self._process(n)

    def _check_new_leader(self, n: SimNode) -> None:
        assert n.raw is not None
        r = n.raw.raft
        prev = self.leaders_by_term.get(r.term)
        if prev == n.id:
            return
        if prev is not None:
            self._violate(f"election safety: nodes {prev} and {n.id} both leader in term {r.term}")
        self.leaders_by_term[r.term] = n.id
        self._trace(self.now, 4, n.id, r.term)
        if (
            self.p.leader_isolate_prob
            and not self.healing
            and self.fault_rng.random() < self.p.leader_isolate_prob
        ):
            # Nemesis: cut a fresh leader off at once; its first appends, still in flight, are lost.
            self._isolate(n.id)
        if (
            self.p.leader_crash_prob
            and not self.healing
            and self.fault_rng.random() < self.p.leader_crash_prob
        ):
            # Nemesis: kill fresh leaders, before their own-term entries spread (Figure 8 territory).
            self._push(self.now + self.fault_rng.randint(0, 3 * TICK_MS), _EV_CRASH, (n.id, n.incarnation))
        # Leader Completeness (Raft §5.4): a leader of term T holds every entry committed in a term below T.
        # Entries of term T or later are not owed to it: a leader elected late in an old term (its votes were
        # delayed) may lag a newer term's commits; its appends will be refused by a higher term anyway.
        c = self.commit_max
        while c and (rec := self.committed.get(c)) is not None and rec[0] >= r.term:
            c -= 1
        if c and c in self.committed and c >= r.log.first_index() - 1:
            if r.log.last_index() < c or r.log.zero_term_on_err(Index(c)) != self.committed[c][0]:
                self._violate(
                    f"leader completeness: node {n.id} leader in term {r.term} lacks committed entry {c}"
                )

    def _process(self, n: SimNode) -> None:
        while n.up and not n.busy and n.raw is not None and n.raw.has_ready():
            proc = n.proc
            assert proc is not None
            rd = n.raw.ready()
            try:
                plan = proc.start(rd)  # a steady leader's messages leave now
            except FailpointCrash:
                self._failpoint_crash(n)
                return
            if self.now < n.slow_until_ms:
                if plan.sent_early:
                    self.faults["leader_send_before_sync"] += 1
                n.busy = True
                delay = self.disk_rng.randint(5, 4 * TICK_MS)
                self._push(self.now + delay, _EV_PERSIST, (n.id, n.incarnation, plan))
                return
            self._finish(n, plan)

    def _failpoint_crash(self, n: SimNode) -> None:
        self.pending_acks.clear()  # applied in a transaction that never finished: not acknowledged
        self._crash(n, restart_after_ticks=self.fault_rng.randint(1, 2 * self.p.election_timeout_ticks))

    def _finish(self, n: SimNode, plan: Plan) -> None:
        """The Ready's transaction (persist and apply), then the rest of its messages; then reads and
        compaction."""
        rd = plan.ready
        proc = n.proc
        assert proc is not None
        if rd.entries:
            self._check_log_matching(n, rd.entries)
        try:
            proc.finish(plan)
        except FailpointCrash:
            self._failpoint_crash(n)
            return
        if self.pending_acks:
            self._check_acks_durable(n)
        if not n.up:
            return  # removed while applying
        for rs in rd.read_states:
            floor = n.pending_reads.pop(rs.request_ctx, None)
            if floor is not None:
                n.waiting_reads.append((rs.index, rs.request_ctx, floor))
        if n.waiting_reads:
            self._serve_reads(n)
        try:
            if proc.maybe_compact():
                self.faults["log_compacted"] += 1
        except FailpointCrash:
            self._failpoint_crash(n)

    def _send_from(self, n: SimNode, messages: list[Message]) -> None:
        granted_vote = False
        for m in messages:
            self._send(m)
            if m.type == MessageType.VOTE_RESP and not m.reject:
                granted_vote = True
        if granted_vote and self.p.vote_crash_prob and not self.healing:
            if self.fault_rng.random() < self.p.vote_crash_prob:
                # Nemesis: crash right after a vote was granted (and, supposedly, persisted).
                self._push(self.now + self.fault_rng.randint(0, 5), _EV_CRASH, (n.id, n.incarnation))

    def _durable_on(self, nid: NodeId, index: int, term: int) -> bool:
        x = self.nodes.get(nid)
        if x is None:
            return False
        st = x.storage
        first = st.first_index()
        if index < first:
            return index <= x.durable_index  # compacted: it is in the durable state machine
        if index > st.last_index():
            return False
        return st.term(Index(index)) == term

    def _check_acks_durable(self, n: SimNode) -> None:
        """Each write acknowledged by the Ready just finished is durable on a majority of the configuration."""
        acks, self.pending_acks = self.pending_acks, []
        configs = [v for v in (n.conf_state.voters, n.prev_voters) if v]
        for index, term in acks:
            holders: list[NodeId] = []
            for voters in configs:
                holders = [v for v in voters if self._durable_on(v, index, term)]
                if 2 * len(holders) > len(voters):
                    break
            else:
                self._violate(
                    f"ack before durable: write {term}/{index} acknowledged on node {n.id} while durable on "
                    f"{sorted(holders)} only, of voters {sorted(configs[0]) if configs else []}"
                )

    def _check_log_matching(self, n: SimNode, ents: list[Entry]) -> None:
        try:
            prev = int(n.storage.term(Index(ents[0].index - 1)))
        except StorageError:
            prev = -1
        table = self.log_table
        for e in ents:
            key = (e.index, e.term)
            rec = table.get(key)
            if rec is None:
                if prev >= 0:
                    table[key] = (e.data, prev)
            elif rec[0] != e.data or (prev >= 0 and rec[1] != prev):
                self._violate(
                    f"log matching: node {n.id} has entry {e.term}/{e.index} differing from another node's"
                )
            prev = e.term

    def _apply(self, n: SimNode, e: Entry) -> None:
        i = e.index
        if i != n.sm_index + 1:
            self._violate(f"node {n.id} applied {i} after {n.sm_index}")
        rec = self.committed.get(i)
        if rec is None:
            self.committed[i] = (e.term, e.data)
            if i > self.commit_max:
                self.commit_max = i
            if e.data[:1] == b"w":
                self.pending_acks.append((i, int(e.term)))
        elif rec[0] != e.term or rec[1] != e.data:
            self._violate(
                f"state machine safety: node {n.id} applied {e.term}/{i}, another node applied {rec[0]}/{i}"
            )
        n.sm_digest = zlib.crc32(e.data, n.sm_digest) if e.data else zlib.crc32(b"\0", n.sm_digest)
        n.sm_index = i
        d = self.chain.get(i)
        if d is None:
            self.chain[i] = n.sm_digest
        elif d != n.sm_digest:
            self._violate(f"state machine safety: node {n.id} digest diverged at {i}")
        if e.type == EntryType.CONF_CHANGE:
            pass  # the Ready processor applies it to Raft, then ``SimStateMachine.conf_change_applied``
        elif e.data[:1] == b"w":
            if i > self.max_acked_index:
                self.max_acked_index = i
            if rec is None:
                self.writes_acked += 1
        elif e.data[:1] == b"p" and self.probe_index == 0:
            self.probe_index = i  # any liveness probe (only proposed after healing)
            self.progress_tick = self.tick_no

    def _remove_node(self, nid: NodeId) -> None:
        x = self.nodes.get(nid)
        if x is None or x.removed:
            return
        # The operator decommissions a member once the cluster reports its removal committed.
        self.faults["decommissioned"] += 1
        x.removed = True
        x.up = False
        x.raw = None
        x.proc = None
        x.busy = False
        x.incarnation += 1

    def _serve_reads(self, n: SimNode) -> None:
        """Linearizability of reads over the log-prefix state machine: the state after index ``i``
        contains exactly the writes at indexes ``<= i``, so a read returning the state at ``a`` is
        linearizable iff ``a >=`` the index of every write acknowledged before the read was invoked and
        ``a >=`` the result of every read that returned before it was invoked (``floor``, captured at
        invocation). Writes can never appear "too early" because an index ``<= a`` was already assigned
        when the read returned."""
        keep = []
        for idx, ctx, floor in n.waiting_reads:
            if n.sm_index >= idx:
                result = n.sm_index
                if result < floor:
                    self._violate(
                        f"linearizability: read {ctx.decode()} on node {n.id} returned state at {result},"
                        f" older than index {floor} acknowledged before it began"
                    )
                self.reads_ok += 1
                if result > self.max_read_returned:
                    self.max_read_returned = result
            else:
                keep.append((idx, ctx, floor))
        n.waiting_reads = keep

    def _encode_sm(self, n: SimNode) -> bytes:
        fill = self.p.snapshot_filler_bytes
        body = bytes((n.sm_digest + k) & 0xFF for k in range(fill))
        return _SNAP_HDR.pack(n.sm_index, n.sm_digest) + body

    def _decode_sm(self, s: Snapshot) -> tuple[int, int]:
        idx, digest = _SNAP_HDR.unpack_from(s.data, 0)
        body = s.data[_SNAP_HDR.size :]
        if len(body) != self.p.snapshot_filler_bytes or any(
            b != (digest + k) & 0xFF for k, b in enumerate(body)
        ):
            self._violate(f"snapshot at {idx} has corrupt data (chunk reassembly)")
        if idx != s.metadata.index:
            self._violate(f"snapshot data index {idx} != metadata index {s.metadata.index}")
        return int(idx), int(digest)

    def _restore_sm(self, n: SimNode, s: Snapshot) -> None:
        idx, digest = self._decode_sm(s)
        d = self.chain.get(idx)
        if d is not None and d != digest:
            self._violate(f"state machine safety: snapshot {idx} installed on node {n.id} diverges")
        n.sm_index, n.sm_digest = idx, digest
        n.conf_state = s.metadata.conf_state
        self.faults["snapshot_installed"] += 1


def run_seed(seed: int, nodes: int = 3, bugs: frozenset[str] = frozenset()) -> SimResult:
    return Simulation(seed, nodes, bugs).run()


def trace_digest(results: list[SimResult]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for r in results:
        h.update(f"{r.seed}:{r.trace_hash};".encode())
    return h.hexdigest()
