"""ReadIndex bookkeeping (Raft thesis §6.4).

The leader records the commit index when a read arrives, broadcasts a heartbeat carrying the read's
context, and releases the read once a majority acknowledged that heartbeat: at that moment it was still
the leader, so its recorded commit index covers every write acknowledged before the read arrived.
Requests are released in arrival order; acknowledging a later request releases all earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quorumkv.raft.ids import Index, NodeId
from quorumkv.raft.messages import Message


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read may be served once the local applied index reaches ``index``."""

    index: Index
    request_ctx: bytes


@dataclass(slots=True)
class ReadIndexStatus:
    req: Message
    index: Index
    acks: dict[NodeId, bool] = field(default_factory=dict)


class ReadOnly:
    """Pending leader-side read requests, keyed by context. Invariant: ``queue`` holds exactly the keys of
    ``pending`` in arrival order."""

    __slots__ = ("pending", "queue")

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: Index, m: Message) -> None:
        ctx = m.context
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(m, index)
        self.queue.append(ctx)

    def recv_ack(self, frm: NodeId, ctx: bytes) -> dict[NodeId, bool] | None:
        st = self.pending.get(ctx)
        if st is None:
            return None
        st.acks[frm] = True
        return st.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Pop and return every request up to and including ``ctx``."""
        if ctx not in self.pending:
            return []
        pos = self.queue.index(ctx) + 1
        done = [self.pending.pop(c) for c in self.queue[:pos]]
        del self.queue[:pos]
        return done

    def last_pending_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""
