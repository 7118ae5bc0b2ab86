"""Leader-side view of each follower's log (Raft thesis §3.5 / etcd's progress tracking).

A follower's ``Progress`` is in one of three states:

* PROBE: the leader does not know where the logs match; it sends one append at a time
  (``msg_app_flow_paused`` until a response or heartbeat response) and walks ``next`` back on rejections.
* REPLICATE: logs match up to ``match``; the leader streams appends optimistically, advancing ``next``
  past what it sent, limited by ``Inflights`` (count and bytes).
* SNAPSHOT: the follower needs a snapshot at ``pending_snapshot``; nothing else is sent until it is
  acknowledged or reported failed (or times out after an election timeout, then PROBE again).

Invariant: ``0 <= match < next``.
"""

from __future__ import annotations

import enum

from quorumkv.raft.ids import Index, NodeId
from quorumkv.raft.quorum import VoteResult, committed_index, vote_result


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """A bounded FIFO of (last index, bytes) of append messages sent but not yet acknowledged.

    Full when it holds ``capacity`` messages or ``max_bytes`` bytes (``0`` = no byte limit)."""

    __slots__ = ("_bytes", "_idx", "_sizes", "capacity", "max_bytes")

    def __init__(self, capacity: int, max_bytes: int = 0) -> None:
        if capacity <= 0:
            raise ValueError("inflights capacity must be positive")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._idx: list[int] = []
        self._sizes: list[int] = []
        self._bytes = 0

    def add(self, index: Index, size: int) -> None:
        if self._idx and index <= self._idx[-1]:
            raise AssertionError("inflights must be added in increasing index order")
        self._idx.append(index)
        self._sizes.append(size)
        self._bytes += size

    def free_le(self, to: Index) -> None:
        """Free every message whose last index is ``<= to``."""
        n = 0
        idx = self._idx
        while n < len(idx) and idx[n] <= to:
            n += 1
        if n:
            self._bytes -= sum(self._sizes[:n])
            del idx[:n]
            del self._sizes[:n]

    def free_first_one(self) -> None:
        if self._idx:
            self.free_le(Index(self._idx[0]))

    def full(self) -> bool:
        return len(self._idx) >= self.capacity or (self.max_bytes > 0 and self._bytes >= self.max_bytes)

    def count(self) -> int:
        return len(self._idx)

    def reset(self) -> None:
        self._idx.clear()
        self._sizes.clear()
        self._bytes = 0


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "msg_app_flow_paused",
        "next",
        "pending_snapshot",
        "recent_active",
        "snapshot_elapsed_ticks",
        "state",
    )

    def __init__(self, match: Index, next_: Index, inflights: Inflights, is_learner: bool = False) -> None:
        self.match = match
        self.next = next_
        self.state = ProgressState.PROBE
        self.pending_snapshot = Index(0)
        self.recent_active = False
        self.msg_app_flow_paused = False
        self.inflights = inflights
        self.is_learner = is_learner
        self.snapshot_elapsed_ticks = 0

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = Index(0)
        self.state = state
        self.snapshot_elapsed_ticks = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = Index(max(self.match + 1, pending + 1))
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = Index(self.match + 1)

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = Index(self.match + 1)

    def become_snapshot(self, snapshot_index: Index) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.next = Index(snapshot_index + 1)

    def sent_entries(self, n_entries: int, size: int, last_index: Index) -> None:
        """Record that an append carrying ``n_entries`` ending at ``last_index`` was sent."""
        if self.state == ProgressState.REPLICATE:
            if n_entries:
                self.next = Index(last_index + 1)
                self.inflights.add(last_index, size)
        elif self.state == ProgressState.PROBE:
            self.msg_app_flow_paused = True

    def maybe_update(self, n: Index) -> bool:
        """An append up to ``n`` was acknowledged; False if the ack is stale."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.msg_app_flow_paused = False
        if self.next < n + 1:
            self.next = Index(n + 1)
        return updated

    def maybe_decr_to(self, rejected: Index, match_hint: Index) -> bool:
        """An append at ``rejected`` was refused; move ``next`` back. False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = Index(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False
        self.next = Index(max(min(rejected, match_hint + 1), self.match + 1, 1))
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.msg_app_flow_paused
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self) -> str:
        s = f"{self.state.name} match={self.match} next={self.next}"
        if self.is_learner:
            s += " learner"
        if self.state == ProgressState.SNAPSHOT:
            s += f" pending_snapshot={self.pending_snapshot}"
        if self.msg_app_flow_paused:
            s += " paused"
        if self.inflights.count():
            s += f" inflight={self.inflights.count()}"
        return s


class ProgressTracker:
    """The configuration (voters, learners) plus a ``Progress`` for every member.

    Invariant: ``progress.keys() == voters | learners`` and ``voters & learners`` is empty."""

    __slots__ = ("learners", "max_inflight_bytes", "max_inflight_msgs", "progress", "voters", "votes")

    def __init__(self, max_inflight_msgs: int, max_inflight_bytes: int = 0) -> None:
        self.voters: frozenset[NodeId] = frozenset()
        self.learners: frozenset[NodeId] = frozenset()
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.max_inflight_msgs = max_inflight_msgs
        self.max_inflight_bytes = max_inflight_bytes

    def new_progress(self, match: Index, next_: Index, is_learner: bool) -> Progress:
        return Progress(match, next_, Inflights(self.max_inflight_msgs, self.max_inflight_bytes), is_learner)

    def committed(self) -> Index:
        prs = self.progress
        return committed_index(self.voters, lambda v: prs[v].match)

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def quorum_active(self) -> bool:
        """True if a majority of voters were recently active (the caller counts itself active)."""
        active = {v: self.progress[v].recent_active for v in self.voters}
        return vote_result(self.voters, active) == VoteResult.WON

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: NodeId, granted: bool) -> None:
        self.votes.setdefault(node, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = sum(1 for v, g in self.votes.items() if g and v in self.voters)
        rejected = sum(1 for v, g in self.votes.items() if not g and v in self.voters)
        return granted, rejected, vote_result(self.voters, self.votes)
