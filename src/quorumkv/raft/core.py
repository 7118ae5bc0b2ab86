"""The Raft state machine: roles, elections, replication, reads, membership and leadership transfer.

Pure and synchronous: the only inputs are ``step(message)`` and ``tick()``; outputs accumulate in
``msgs`` and ``read_states`` and are collected by ``RawNode.ready()``. Randomness comes only from the
injected ``Config.rng``. Role behaviour is a pair of swapped callables (``_step_fn``, ``_tick_fn``); the
term rules common to every role (§5.1: adopt a higher term, reject a lower one) live once in ``step``.

Invariants (Raft paper Figure 2/3):
* ``vote`` is only ever set once per ``term`` (Election Safety), and is persisted before granting.
* the leader never overwrites or deletes entries in its log (Leader Append-Only);
* commit only advances by counting replicas of an entry from the current term (§5.4.2).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from quorumkv.raft.confchange import ConfChangeError, apply_change
from quorumkv.raft.ids import INDEX0, NONE, Index, NodeId, Term
from quorumkv.raft.log import RaftLog
from quorumkv.raft.messages import (
    CAMPAIGN_TRANSFER,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
    vote_resp_type,
)
from quorumkv.raft.progress import Progress, ProgressState, ProgressTracker
from quorumkv.raft.quorum import VoteResult, vote_result
from quorumkv.raft.read_only import ReadOnly, ReadState
from quorumkv.raft.storage import CompactedError, SnapshotTemporarilyUnavailableError, Storage

MT = MessageType


class ProposalDroppedError(Exception):
    """The proposal was not appended: no known leader, a leadership transfer is in progress, another
    membership change is pending, or this node was removed. The caller may retry."""


@dataclass(slots=True)
class Config:
    """Node configuration. Times are in ticks; sizes in bytes."""

    id: NodeId
    storage: Storage
    rng: random.Random
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    applied: Index = INDEX0
    max_size_per_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0
    max_committed_size_per_ready_bytes: int | None = None
    snapshot_chunk_size_bytes: int = 1 << 20
    max_uncommitted_entries: int = 4096
    check_quorum: bool = True
    pre_vote: bool = True
    disable_proposal_forwarding: bool = False

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("cannot use 0 as node id")
        if self.heartbeat_interval_ticks <= 0:
            raise ValueError("heartbeat interval must be positive")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ValueError("election timeout must be greater than the heartbeat interval")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max inflight messages must be positive")
        if self.snapshot_chunk_size_bytes <= 0:
            raise ValueError("snapshot chunk size must be positive")
        if self.max_uncommitted_entries <= 0:
            raise ValueError("max uncommitted entries must be positive")


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: Index
    next: Index
    state: ProgressState
    is_learner: bool
    recent_active: bool
    paused: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    hard_state: HardState
    soft_state: SoftState
    applied: Index
    conf_state: ConfState
    lead_transferee: NodeId
    progress: dict[NodeId, PeerStatus]  # only filled on the leader


class Raft:
    """One Raft participant. Use through ``RawNode``; attributes are public for tests and inspection."""

    def __init__(self, c: Config) -> None:
        c.validate()
        self.id = c.id
        self.log = RaftLog(c.storage, c.max_committed_size_per_ready_bytes)
        self.tracker = ProgressTracker(c.max_inflight_msgs, c.max_inflight_bytes)
        self.rng = c.rng
        self.election_timeout = c.election_timeout_ticks
        self.heartbeat_timeout = c.heartbeat_interval_ticks
        self.max_msg_size = c.max_size_per_msg_bytes
        self.snapshot_chunk_size = c.snapshot_chunk_size_bytes
        self.max_uncommitted_entries = c.max_uncommitted_entries
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.disable_proposal_forwarding = c.disable_proposal_forwarding

        self.term = Term(0)
        self.vote = NONE
        self.lead = NONE
        self.state = StateType.FOLLOWER
        self.is_learner = False
        self.lead_transferee = NONE
        self.pending_conf_index = Index(0)
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_read_index_messages: list[Message] = []
        self._peers: tuple[NodeId, ...] = ()
        self._snap_buf: tuple[SnapshotMetadata, int, dict[int, bytes]] | None = None
        self._step_fn: Callable[[Message], None] = self._step_follower
        self._tick_fn: Callable[[], None] = self._tick_election

        hs, cs = c.storage.initial_state()
        self._switch_to_config(cs)
        if not hs.is_empty():
            if hs.commit > self.log.last_index():
                raise ValueError(f"hard state commit {hs.commit} beyond last index {self.log.last_index()}")
            self.log.committed = Index(max(hs.commit, self.log.committed))
            self.term = hs.term
            self.vote = hs.vote
        if c.applied > 0:
            self.log.applied_to(c.applied)
        self.become_follower(self.term, NONE)

    # ------------------------------------------------------------------------------------------ state

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def conf_state(self) -> ConfState:
        return ConfState(tuple(sorted(self.tracker.voters)), tuple(sorted(self.tracker.learners)))

    def promotable(self) -> bool:
        return self.id in self.tracker.voters

    def status(self) -> Status:
        prs: dict[NodeId, PeerStatus] = {}
        if self.state == StateType.LEADER:
            for nid, pr in self.tracker.progress.items():
                prs[nid] = PeerStatus(
                    pr.match, pr.next, pr.state, pr.is_learner, pr.recent_active, pr.is_paused()
                )
        return Status(
            self.id,
            self.hard_state(),
            self.soft_state(),
            self.log.applied,
            self.conf_state(),
            self.lead_transferee,
            prs,
        )

    # ------------------------------------------------------------------------------------------ roles

    def _reset(self, term: Term) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(self.election_timeout)
        self.lead_transferee = NONE
        self.tracker.reset_votes()
        last = self.log.last_index()
        tr = self.tracker
        for nid, pr in list(tr.progress.items()):
            tr.progress[nid] = tr.new_progress(
                last if nid == self.id else Index(0), Index(last + 1), pr.is_learner
            )
        self.pending_conf_index = Index(0)
        self.read_only = ReadOnly()
        self.pending_read_index_messages = []

    def become_follower(self, term: Term, lead: NodeId) -> None:
        self._step_fn = self._step_follower
        self._tick_fn = self._tick_election
        self._reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER

    def become_pre_candidate(self) -> None:
        assert self.state != StateType.LEADER, "leader cannot become pre-candidate"
        # A pre-candidate changes neither term nor vote (thesis §9.6).
        self._step_fn = self._step_candidate
        self._tick_fn = self._tick_election
        self.tracker.reset_votes()
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE

    def become_candidate(self) -> None:
        assert self.state != StateType.LEADER, "leader cannot become candidate"
        self._step_fn = self._step_candidate
        self._tick_fn = self._tick_election
        self._reset(Term(self.term + 1))
        self.vote = self.id
        self.state = StateType.CANDIDATE

    def become_leader(self) -> None:
        assert self.state != StateType.FOLLOWER, "follower cannot become leader directly"
        self._step_fn = self._step_leader
        self._tick_fn = self._tick_heartbeat
        self._reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        pr = self.tracker.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # No membership change until every entry from earlier terms is applied (and the new term's
        # empty entry is committed): fixes the single-server-change bug described in docs/raft.md.
        self.pending_conf_index = self.log.last_index()
        self._append_entries([Entry(self.term, Index(self.log.last_index() + 1))])

    # ------------------------------------------------------------------------------------------ ticking

    def tick(self) -> None:
        self._tick_fn()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self.promotable():
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, frm=self.id))
            if self.state == StateType.LEADER and self.lead_transferee != NONE:
                self._abort_leader_transfer()  # did not complete within an election timeout
        if self.state != StateType.LEADER:
            return
        for pr in self.tracker.progress.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_elapsed_ticks += 1
                if pr.snapshot_elapsed_ticks >= self.election_timeout:
                    # Snapshot (or its acknowledgement) presumed lost: probe again, which resends.
                    pr.pending_snapshot = Index(0)
                    pr.become_probe()
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))

    # ------------------------------------------------------------------------------------------ elections

    def _has_unapplied_conf_changes(self) -> bool:
        log = self.log
        if log.applied >= log.committed:
            return False
        lo = Index(max(log.applied + 1, log.first_index()))
        return any(e.type == EntryType.CONF_CHANGE for e in log.slice(lo, Index(log.committed + 1), None))

    def _hup(self, transfer: bool) -> None:
        if self.state == StateType.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf_changes():
            return  # our configuration may be stale; wait until the application catches up
        if self.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            vote_type = MT.PRE_VOTE
            term = Term(self.term + 1)  # the term we would campaign in; not adopted yet
        else:
            self.become_candidate()
            vote_type = MT.VOTE
            term = self.term
        if self._poll(self.id, True) == VoteResult.WON:
            # Single-voter configuration: won immediately.
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self.become_leader()
                self._bcast_append()
            return
        last = self.log.last_index()
        last_term = self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self.tracker.voters):
            if nid != self.id:
                self.msgs.append(Message(vote_type, nid, self.id, term, last_term, last, context=ctx))

    def _poll(self, nid: NodeId, granted: bool) -> VoteResult:
        self.tracker.record_vote(nid, granted)
        return vote_result(self.tracker.voters, self.tracker.votes)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        self._answer_vote_request(m, can_vote, self.log.is_up_to_date(m.index, m.log_term))

    def _answer_vote_request(self, m: Message, can_vote: bool, up_to_date: bool) -> None:
        if can_vote and up_to_date:
            # A pre-vote grant, or a real vote: answer in the candidate's term.
            self.msgs.append(Message(vote_resp_type(m.type), m.frm, self.id, m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.msgs.append(Message(vote_resp_type(m.type), m.frm, self.id, self.term, reject=True))

    # ------------------------------------------------------------------------------------------ step

    def step(self, m: Message) -> None:
        """Process one message. Raises ``ProposalDroppedError`` for proposals that cannot be accepted."""
        if m.term == 0:
            pass  # local message, or a forwarded proposal / read / transfer request
        elif m.term > self.term:
            if m.type == MT.VOTE or m.type == MT.PRE_VOTE:
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum and self.lead != NONE and self.election_elapsed < self.election_timeout
                )
                if not force and in_lease:
                    # §4.2.3: we heard from a leader recently; ignore a disruptive (possibly removed) node.
                    return
            if m.type == MT.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the future term; we adopt it only by campaigning
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # Tell a stale leader about the newer term so it steps down (otherwise, with pre-vote or
                # check-quorum, a partitioned node with a higher term could never rejoin).
                self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term))
            elif m.type == MT.PRE_VOTE:
                self.msgs.append(Message(MT.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
            return

        t = m.type
        if t == MT.HUP:
            self._hup(transfer=False)
        elif t == MT.VOTE or t == MT.PRE_VOTE:
            self._handle_vote_request(m)
        else:
            self._step_fn(m)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot_chunk(m)
        elif t == MT.PROP:
            if self.lead == NONE:
                raise ProposalDroppedError(f"{self.id}: no leader at term {self.term}")
            if self.disable_proposal_forwarding:
                raise ProposalDroppedError(f"{self.id}: proposal forwarding disabled")
            self.msgs.append(replace(m, to=self.lead, frm=m.frm or self.id))
        elif t == MT.TRANSFER_LEADER:
            if self.lead != NONE:
                self.msgs.append(replace(m, to=self.lead))
        elif t == MT.TIMEOUT_NOW:
            # §3.10: the leader asks us to start an election now, bypassing pre-vote and leases.
            self._hup(transfer=True)
        elif t == MT.READ_INDEX:
            if self.lead != NONE:
                self.msgs.append(replace(m, to=self.lead, frm=m.frm or self.id))
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = MT.PRE_VOTE_RESP if self.state == StateType.PRE_CANDIDATE else MT.VOTE_RESP
        if t == MT.PROP:
            raise ProposalDroppedError(f"{self.id}: no leader (campaigning) at term {self.term}")
        if t == MT.APP:
            self.become_follower(m.term, m.frm)  # a leader exists for this term
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot_chunk(m)
        elif t == my_resp:
            res = self._poll(m.frm, not m.reject)
            if res == VoteResult.WON:
                if self.state == StateType.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self.become_leader()
                    self._bcast_append()
            elif res == VoteResult.LOST:
                # A pre-candidate keeps its term; a candidate stays in the term it started.
                self.become_follower(self.term, NONE)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self._bcast_heartbeat(self.read_only.last_pending_ctx())
            return
        if t == MT.CHECK_QUORUM:
            self.tracker.progress[self.id].recent_active = True
            if not self.tracker.quorum_active():
                self.become_follower(self.term, NONE)  # §6.2: step down without a quorum
                return
            for nid, other in self.tracker.progress.items():
                if nid != self.id:
                    other.recent_active = False
            return
        if t == MT.PROP:
            self._leader_propose(m)
            return
        if t == MT.READ_INDEX:
            self._leader_read_index(m)
            return
        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            self._leader_app_resp(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.msg_app_flow_paused = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                # An append may have been lost: free one slot so the stream (and its rejection-driven
                # recovery) can continue.
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index() or pr.state == ProgressState.PROBE:
                self._maybe_send_append(m.frm)
            if not m.context:
                return
            acks = self.read_only.recv_ack(m.frm, m.context)
            if acks is None or vote_result(self.tracker.voters, acks) != VoteResult.WON:
                return
            for rs in self.read_only.advance(m.context):
                self._respond_read(rs.req, rs.index)
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = Index(0)
            pr.become_probe()
            pr.msg_app_flow_paused = True  # wait for a heartbeat response before probing again
        elif t == MT.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif t == MT.TRANSFER_LEADER:
            self._leader_transfer(m, pr)

    # ------------------------------------------------------------------------------------------ leader

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise ValueError("empty proposal")
        if self.id not in self.tracker.progress:
            raise ProposalDroppedError(f"{self.id}: removed from the configuration")
        if self.lead_transferee != NONE:
            raise ProposalDroppedError(
                f"{self.id}: leadership transfer to {self.lead_transferee} in progress"
            )
        last = self.log.last_index()
        if last - self.log.committed + len(m.entries) > self.max_uncommitted_entries:
            raise ProposalDroppedError(f"{self.id}: {last - self.log.committed} uncommitted entries")
        term = self.term
        ents = []
        conf_index = Index(0)
        for i, e in enumerate(m.entries, start=1):
            if e.type == EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.log.applied or conf_index:
                    raise ProposalDroppedError(
                        f"{self.id}: membership change pending at {self.pending_conf_index}"
                        f" (applied {self.log.applied})"
                    )
                conf_index = Index(last + i)
            ents.append(Entry(term, Index(last + i), e.type, e.data))
        if conf_index:
            self.pending_conf_index = conf_index
        self._append_entries(ents)
        self._bcast_append()

    def _append_entries(self, ents: list[Entry]) -> None:
        li = self.log.append(ents)
        self.tracker.progress[self.id].maybe_update(li)
        self._maybe_commit()

    def _maybe_commit(self) -> bool:
        mci = self.tracker.committed()
        return self.log.maybe_commit(mci, self.term)

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.zero_term_on_err(self.log.committed) == self.term

    def _leader_app_resp(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                # Fast backtracking: skip every entry of ours whose term is newer than the follower's.
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._maybe_send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if pr.maybe_update(m.index) or (pr.match == m.index and pr.state == ProgressState.PROBE):
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()
            elif pr.state == ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            if self._maybe_commit():
                self._release_pending_read_index()
                self._bcast_append()
            elif old_paused:
                self._maybe_send_append(m.frm)
            while self._maybe_send_append(m.frm, send_if_empty=False):
                pass
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self._send_timeout_now(m.frm)

    def _leader_transfer(self, m: Message, pr: Progress) -> None:
        if pr.is_learner:
            return
        target = m.frm
        if self.lead_transferee != NONE:
            if self.lead_transferee == target:
                return
            self._abort_leader_transfer()
        if target == self.id:
            return
        # The transfer must finish within one election timeout, else it is aborted (§3.10).
        self.election_elapsed = 0
        self.lead_transferee = target
        if pr.match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._maybe_send_append(target)

    def _send_timeout_now(self, to: NodeId) -> None:
        self.msgs.append(Message(MT.TIMEOUT_NOW, to, self.id, self.term))

    def _abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    def _leader_read_index(self, m: Message) -> None:
        if self.tracker.is_singleton():
            self._respond_read(m, self.log.committed)
            return
        if not self._committed_entry_in_current_term():
            # §6.4 step 1: our commit index is only known to be current once we committed in our term.
            self.pending_read_index_messages.append(m)
            return
        self._send_read_index_heartbeat(m)

    def _send_read_index_heartbeat(self, m: Message) -> None:
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, m.context)
        self._bcast_heartbeat(m.context)

    def _release_pending_read_index(self) -> None:
        if not self.pending_read_index_messages or not self._committed_entry_in_current_term():
            return
        pending, self.pending_read_index_messages = self.pending_read_index_messages, []
        for m in pending:
            self._send_read_index_heartbeat(m)

    def _respond_read(self, req: Message, index: Index) -> None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index, req.context))
        else:
            self.msgs.append(
                Message(MT.READ_INDEX_RESP, req.frm, self.id, self.term, index=index, context=req.context)
            )

    def _bcast_append(self) -> None:
        for nid in self._peers:
            self._maybe_send_append(nid)

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        prs = self.tracker.progress
        committed = self.log.committed
        for nid in self._peers:
            # Never tell a follower to commit beyond what it is known to have.
            commit = min(prs[nid].match, committed)
            self.msgs.append(
                Message(MT.HEARTBEAT, nid, self.id, self.term, commit=Index(commit), context=ctx)
            )

    def _maybe_send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        pr = self.tracker.progress[to]
        if pr.is_paused():
            return False
        prev = Index(pr.next - 1)
        try:
            prev_term = self.log.term(prev)
            ents = self.log.entries(pr.next, self.max_msg_size)
        except CompactedError:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        if ents:
            size = 0
            for e in ents:
                size += e.size()
            last = ents[-1].index
        else:
            size = 0
            last = prev
        self.msgs.append(
            Message(MT.APP, to, self.id, self.term, prev_term, prev, tuple(ents), self.log.committed)
        )
        pr.sent_entries(len(ents), size, last)
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False
        assert not snap.is_empty(), "entries compacted but no snapshot"
        pr.become_snapshot(snap.metadata.index)
        data = snap.data
        total = len(data)
        step = self.snapshot_chunk_size
        for off in range(0, max(total, 1), step):
            chunk = Snapshot(data[off : off + step], snap.metadata)
            self.msgs.append(
                Message(MT.SNAP, to, self.id, self.term, snapshot=chunk, snap_offset=off, snap_total=total)
            )
        return True

    # ------------------------------------------------------------------------------------------ follower

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term, index=last_new))
            return
        # Reject with a hint: the largest index <= m.index whose term is <= m.log_term (fast backtracking).
        hint = Index(min(m.index, self.log.last_index()))
        hint, hint_term = self.log.find_conflict_by_term(hint, m.log_term)
        self.msgs.append(
            Message(MT.APP_RESP, m.frm, self.id, self.term, hint_term, m.index, reject=True, reject_hint=hint)
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self.msgs.append(Message(MT.HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context))

    def _handle_snapshot_chunk(self, m: Message) -> None:
        """Reassemble a chunked snapshot. Chunks may arrive reordered or duplicated; a chunk of a
        different snapshot restarts the transfer. Missing chunks make the leader retry after a timeout."""
        s = m.snapshot
        assert s is not None
        if m.snap_offset == 0 and len(s.data) == m.snap_total:
            self._snap_buf = None
            self._handle_snapshot(s)
            return
        meta = s.metadata
        buf = self._snap_buf
        if buf is None or buf[0] != meta or buf[1] != m.snap_total:
            buf = self._snap_buf = (meta, m.snap_total, {})
        chunks = buf[2]
        chunks[m.snap_offset] = s.data
        have = 0
        for off in sorted(chunks):
            if off != have:
                return
            have += len(chunks[off])
        if have != m.snap_total:
            return
        self._snap_buf = None
        self._handle_snapshot(Snapshot(b"".join(chunks[o] for o in sorted(chunks)), meta))

    def _handle_snapshot(self, s: Snapshot) -> None:
        if self._restore(s):
            self.msgs.append(Message(MT.APP_RESP, self.lead, self.id, self.term, index=self.log.last_index()))
        else:
            self.msgs.append(Message(MT.APP_RESP, self.lead, self.id, self.term, index=self.log.committed))

    def _restore(self, s: Snapshot) -> bool:
        meta = s.metadata
        if meta.index <= self.log.committed:
            return False
        cs = meta.conf_state
        # The snapshot may predate our own addition (its configuration excludes us): that is fine, the
        # entries after it (which the leader sends next) add us, exactly as when replaying the log.
        if self.log.match_term(meta.index, meta.term):
            # We already have the entries: just fast-forward the commit index.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(s)
        self._switch_to_config(cs)
        return True

    # ------------------------------------------------------------------------------------------ membership

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed membership change (called by the application in log order). Invalid changes
        leave the configuration unchanged, identically on every member."""
        try:
            cs = apply_change(self.conf_state(), cc)
        except ConfChangeError:
            return self.conf_state()
        self._switch_to_config(cs)
        return cs

    def _switch_to_config(self, cs: ConfState) -> None:
        tr = self.tracker
        voters = frozenset(cs.voters)
        learners = frozenset(cs.learners)
        old = tr.progress
        last = self.log.last_index()
        new: dict[NodeId, Progress] = {}
        added: list[NodeId] = []
        for nid in sorted(voters | learners):
            existing = old.get(nid)
            if existing is not None:
                pr = existing
            else:
                pr = tr.new_progress(last if nid == self.id else Index(0), Index(last + 1), False)
                pr.recent_active = True
                added.append(nid)
            pr.is_learner = nid in learners
            new[nid] = pr
        tr.voters = voters
        tr.learners = learners
        tr.progress = new
        self._peers = tuple(n for n in new if n != self.id)
        self.is_learner = self.id in learners
        if self.state != StateType.LEADER:
            return
        if self.id not in voters:
            # The leader was removed (or demoted): step down; the rest elect a new leader.
            self.become_follower(self.term, NONE)
            return
        if self.lead_transferee != NONE and self.lead_transferee not in voters:
            self._abort_leader_transfer()
        if self._maybe_commit():
            self._bcast_append()
        else:
            for nid in self._peers:
                self._maybe_send_append(nid, send_if_empty=nid in added)
