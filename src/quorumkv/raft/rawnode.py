"""``RawNode``: the application-facing, single-threaded façade over the Raft state machine."""

from __future__ import annotations

from dataclasses import dataclass, field

from quorumkv.raft.core import Config, Raft, Status
from quorumkv.raft.ids import NONE, Index, NodeId, Term
from quorumkv.raft.messages import (
    LOCAL_MESSAGES,
    RESPONSE_MESSAGES,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SoftState,
    encode_conf_change,
)
from quorumkv.raft.read_only import ReadState

MT = MessageType


@dataclass(slots=True)
class Ready:
    """Everything the node produced since the last ``advance()``. The application MUST, in order:

    1. Persist ``snapshot`` (if any), then ``entries`` (appending, after truncating any conflicting suffix),
       then ``hard_state`` (if not None) -- atomically if ``must_sync``.
    2. Only then send ``messages``: vote grants depend on the persisted vote, append acknowledgements on
       the persisted entries. Exception (Raft thesis §10.2.1): a member that was leader before this Ready
       and still is may send in parallel with its write, since its term and vote are already durable and
       its own entries count towards a commit that it applies only in a later Ready. quorumkv's Ready
       processor (``quorumkv.server.ready``) does so.
    3. Apply ``snapshot`` to the state machine, then ``committed_entries`` in order (calling
       ``RawNode.apply_conf_change`` for ``EntryType.CONF_CHANGE``); serve reads in ``read_states`` once
       the applied index reaches their index.
    4. Call ``advance(ready)``. No new ``Ready`` is produced until then (``step``/``tick``/``propose``
       remain allowed in between).

    ``hard_state``/``soft_state`` are None when unchanged. ``committed_entries`` may include entries from
    ``entries`` (they are committed but must be persisted first, as above).
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    read_states: list[ReadState] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    must_sync: bool = False


class RawNode:
    __slots__ = ("_outstanding", "_outstanding_hard", "_prev_hard", "_prev_soft", "raft")

    def __init__(self, config: Config) -> None:
        self.raft = self._new_raft(config)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        self._outstanding: Ready | None = None
        self._outstanding_hard: HardState | None = None

    def _new_raft(self, config: Config) -> Raft:
        return Raft(config)

    def _hard_state_for_ready(self, hs: HardState) -> HardState:
        """The hard state handed out in a ``Ready`` (what the application persists): the core's own."""
        return hs

    # ------------------------------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Advance the logical clock by one tick (elections, heartbeats, check-quorum)."""
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled)."""
        self.raft.step(Message(MT.HUP, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        """Propose a normal entry; raises ``ProposalDroppedError`` when it cannot be accepted here."""
        self.raft.step(
            Message(MT.PROP, frm=self.raft.id, entries=(Entry(Term(0), Index(0), EntryType.NORMAL, data),))
        )

    def propose_batch(self, datas: list[bytes]) -> None:
        """Propose several normal entries as one message (one append, one replication round)."""
        ents = tuple(Entry(Term(0), Index(0), EntryType.NORMAL, d) for d in datas)
        self.raft.step(Message(MT.PROP, frm=self.raft.id, entries=ents))

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a single-server membership change. Only one may be pending at a time."""
        e = Entry(Term(0), Index(0), EntryType.CONF_CHANGE, encode_conf_change(cc))
        self.raft.step(Message(MT.PROP, frm=self.raft.id, entries=(e,)))

    def step(self, m: Message) -> None:
        """Deliver a message received from the network."""
        if m.type in LOCAL_MESSAGES:
            raise ValueError(f"cannot step local message {m.type.name} from the network")
        if m.type in RESPONSE_MESSAGES and m.frm not in self.raft.tracker.progress:
            return  # response from a node not in our configuration
        self.raft.step(m)

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read; a ``ReadState`` with this ``ctx`` appears in a later ``Ready``."""
        self.raft.step(Message(MT.READ_INDEX, frm=NONE, context=ctx))

    def transfer_leadership(self, to: NodeId) -> None:
        """Ask the leader to hand leadership to ``to`` (§3.10): catch it up, then send TimeoutNow."""
        self.raft.step(Message(MT.TRANSFER_LEADER, frm=to))

    def report_unreachable(self, nid: NodeId) -> None:
        self.raft.step(Message(MT.UNREACHABLE, frm=nid))

    def report_snapshot(self, nid: NodeId, ok: bool) -> None:
        self.raft.step(Message(MT.SNAP_STATUS, frm=nid, reject=not ok))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(cc)

    # ------------------------------------------------------------------------------------------ outputs

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        r = self.raft
        if r.msgs or r.log.unstable.entries or r.read_states or r.log.unstable.snapshot is not None:
            return True
        if r.log.has_next_committed_ents():
            return True
        if r.lead != self._prev_soft.lead or r.state != self._prev_soft.raft_state:
            return True
        ph = self._prev_hard
        return r.term != ph.term or r.vote != ph.vote or r.log.committed != ph.commit

    def ready(self) -> Ready:
        """Collect pending output. At most one Ready is outstanding: call ``advance`` before the next."""
        if self._outstanding is not None:
            raise RuntimeError("previous Ready not advanced")
        r = self.raft
        rd = Ready()
        rd.entries = r.log.unstable_entries()
        rd.snapshot = r.log.unstable.snapshot
        rd.committed_entries = r.log.next_committed_ents()
        rd.messages = r.msgs
        r.msgs = []
        rd.read_states = r.read_states
        r.read_states = []
        ss = r.soft_state()
        if ss != self._prev_soft:
            rd.soft_state = ss
        hs = r.hard_state()
        if hs != self._prev_hard:
            self._outstanding_hard = hs
            hs = self._hard_state_for_ready(hs)
            rd.hard_state = hs
            rd.must_sync = hs.term != self._prev_hard.term or hs.vote != self._prev_hard.vote
        rd.must_sync = rd.must_sync or bool(rd.entries)
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """Acknowledge that ``rd`` was persisted, sent and applied as its contract describes."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() with a Ready that is not the outstanding one")
        log = self.raft.log
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if self._outstanding_hard is not None:
            self._prev_hard = self._outstanding_hard
            self._outstanding_hard = None
        if rd.snapshot is not None:
            log.stable_snap_to(rd.snapshot.metadata.index)
            log.applied_to(rd.snapshot.metadata.index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
        self._outstanding = None

    def status(self) -> Status:
        return self.raft.status()
