"""The node engine's interface, as the member façade (``QuorumServer``) uses it.

Every member runs one engine, :class:`quorumkv.server.raft_node.RaftNode` -- a single member is a Raft cluster of
one voter. ``Node`` names what the rest of the server may rely on, so that the façade and its tests depend on the
protocol, not on the engine's internals.

Threading: every method here is called on the event loop, except ``pin_log`` and ``stop`` (they block: call them
off the loop). Attributes are published by the engine's own thread after each ``Ready`` and only read elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from quorumkv.raft.messages import ConfChangeType, ConfState, Message
from quorumkv.storage.membership import Member

#: etcd's expected duration of applying one request: slower ones are reported ("apply request took too long").
SLOW_APPLY_S = 0.1


class CommitObserver(Protocol):
    """Told (on the engine's thread) how long the COMMIT of one Ready's transaction took; ``synced``: it was
    fsynced (etcd's WAL fsync), ``applied``: it applied committed entries (etcd's backend commit)."""

    def __call__(self, seconds: float, *, synced: bool = True, applied: bool = True) -> None: ...


@dataclass
class NodeStatus:
    term: int
    commit_index: int
    applied_index: int


class Node(Protocol):
    """A member's replicated log and state machine driver."""

    #: Entries at or above this index keep their ``raft_log`` rows (online defrag); None: no pin.
    log_pin: int | None
    slow_apply_s: float
    slow_apply_observer: Callable[[int, bytes, float], None] | None
    parked_timeout_s: float
    #: ``peer -> match index`` as the leader last saw it (empty elsewhere); published after each turn.
    progress_match: dict[int, int]
    #: Resolves once the engine's thread finished its first turn (see ``RaftNode.start``).
    first_turn: asyncio.Future[None]

    # published state (read-only here)
    @property
    def term(self) -> int: ...
    @property
    def lead(self) -> int: ...
    @property
    def commit_index(self) -> int: ...
    @property
    def conf_state(self) -> ConfState: ...
    @property
    def is_leader(self) -> bool: ...
    @property
    def is_learner(self) -> bool: ...
    @property
    def is_sole_voter(self) -> bool: ...
    @property
    def last_index(self) -> int: ...
    @property
    def pending_proposals(self) -> int: ...

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def stop(self) -> None: ...
    def propose(self, kind: int, payload: bytes, request_id: int) -> None:
        """The entry's waiter (registered by the caller in the member's ``WaitRegistry``) is triggered when it
        is applied here."""
    def propose_conf_change(self, cc_type: ConfChangeType, node_id: int, member: Member | None,
                            request_id: int) -> None: ...
    def forget(self, request_id: int) -> None: ...
    def read_index(self) -> asyncio.Future[None]: ...
    def step(self, messages: list[Message]) -> None: ...
    def transfer_leadership(self, to: int) -> None: ...
    def report_unreachable(self, peer: int) -> None: ...
    def report_snapshot(self, peer: int, ok: bool) -> None: ...
    def status(self) -> NodeStatus: ...
    def pin_log(self) -> int: ...
    def pause_writes(self) -> AbstractAsyncContextManager[None]:
        """Hold the engine between two turns (nothing appended, applied or committed) for the duration."""
