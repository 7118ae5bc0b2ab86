"""TEST-ONLY planted bugs: subclasses of the Raft core and of the Ready processor that break the protocol on
purpose, so the simulator's and the tests' checkers can be shown to catch each of them.

None of this is reachable from production code: the core (``quorumkv.raft``) and the shell
(``quorumkv.server``) know nothing about planted bugs. A test asks for a node with ``new_raw_node(config,
bugs)`` and for a Ready processor with ``ready_processor_class(bugs)``.
"""

from __future__ import annotations

from quorumkv.raft.core import Config, Raft
from quorumkv.raft.ids import NONE
from quorumkv.raft.messages import HardState, Message, MessageType
from quorumkv.raft.rawnode import RawNode
from quorumkv.server.ready import Plan, ReadyProcessor

MT = MessageType

#: Bugs in the Raft core (``PlantedRaft``/``PlantedRawNode``).
CORE_BUGS = frozenset(
    {
        "commit_previous_term",  # commit an entry of an earlier term by counting replicas (breaks §5.4.2)
        "double_vote",  # grant a vote even after voting for someone else in the same term
        "skip_persist_vote",  # Ready.hard_state never carries the vote (it is lost on crash)
        "read_without_quorum",  # serve ReadIndex from the local commit index without a heartbeat round
        "vote_ignores_log",  # grant votes without the §5.4.1 up-to-date check
    }
)
#: Bugs in the node shell (``PlantedReadyProcessor``).
SHELL_BUGS = frozenset(
    {
        "ack_before_durable",  # every member (not only a steady leader) sends before its own sync
    }
)
KNOWN_BUGS = CORE_BUGS | SHELL_BUGS


def check_bugs(bugs: frozenset[str]) -> None:
    unknown = bugs - KNOWN_BUGS
    if unknown:
        raise ValueError(f"unknown planted bugs: {sorted(unknown)}")


class PlantedRaft(Raft):
    """A ``Raft`` with the core bugs named in ``bugs``."""

    def __init__(self, c: Config, bugs: frozenset[str]) -> None:
        check_bugs(bugs)
        self.bugs = bugs
        super().__init__(c)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
            or "double_vote" in self.bugs
        )
        up_to_date = self.log.is_up_to_date(m.index, m.log_term) or "vote_ignores_log" in self.bugs
        self._answer_vote_request(m, can_vote, up_to_date)

    def _maybe_commit(self) -> bool:
        if "commit_previous_term" not in self.bugs:
            return super()._maybe_commit()
        return self.log.maybe_commit(self.tracker.committed(), self.term, require_current_term=False)

    def _leader_read_index(self, m: Message) -> None:
        if "read_without_quorum" in self.bugs:
            self._respond_read(m, self.log.committed)
            return
        super()._leader_read_index(m)


class PlantedRawNode(RawNode):
    """A ``RawNode`` over a ``PlantedRaft``; with ``skip_persist_vote`` its Ready never carries the vote."""

    __slots__ = ("bugs",)

    def __init__(self, config: Config, bugs: frozenset[str]) -> None:
        self.bugs = bugs
        super().__init__(config)

    def _new_raft(self, config: Config) -> Raft:
        return PlantedRaft(config, self.bugs)

    def _hard_state_for_ready(self, hs: HardState) -> HardState:
        if "skip_persist_vote" in self.bugs:
            return HardState(hs.term, NONE, hs.commit)
        return hs


def new_raw_node(config: Config, bugs: frozenset[str] = frozenset()) -> RawNode:
    """A production ``RawNode`` without bugs, else one with the planted core bugs among ``bugs``."""
    check_bugs(bugs)
    core = bugs & CORE_BUGS
    return PlantedRawNode(config, core) if core else RawNode(config)


def new_raft(config: Config, bugs: frozenset[str] = frozenset()) -> Raft:
    check_bugs(bugs)
    core = bugs & CORE_BUGS
    return PlantedRaft(config, core) if core else Raft(config)


class AckBeforeDurableReadyProcessor(ReadyProcessor):
    """``ack_before_durable``: every member hands its messages to the transport before its own sync, so a
    follower acknowledges entries it has not persisted and the leader may commit -- and acknowledge -- an entry
    held durably by fewer than a quorum."""

    def _sends_early(self, plan: Plan) -> bool:
        return bool(plan.ready.messages)


def ready_processor_class(bugs: frozenset[str]) -> type[ReadyProcessor]:
    check_bugs(bugs)
    if "ack_before_durable" in bugs:
        return AckBeforeDurableReadyProcessor
    return ReadyProcessor


__all__ = [
    "CORE_BUGS",
    "KNOWN_BUGS",
    "SHELL_BUGS",
    "PlantedRaft",
    "PlantedRawNode",
    "new_raft",
    "new_raw_node",
    "ready_processor_class",
]
