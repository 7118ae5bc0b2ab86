"""Helpers for the transport tests: endpoints that record what their transport reports, bounded waits."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import Message, MessageType
from quorumkv.transport import PeerTransport, TransportOptions

CLUSTER = 0xC1D2
#: small timeouts and backoff so failure paths finish in milliseconds
FAST = TransportOptions(
    connect_timeout_s=0.5,
    write_timeout_s=1.0,
    snapshot_write_timeout_s=1.0,
    backoff_base_s=0.02,
    backoff_max_s=0.2,
    stop_grace_s=0.05,
)


def hb(frm: int, to: int, term: int = 1, commit: int = 0) -> Message:
    return Message(MessageType.HEARTBEAT, to=NodeId(to), frm=NodeId(frm), term=Term(term), commit=Index(commit))


async def eventually(pred: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll ``pred`` every 5 ms; fail the test if it is not true within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Endpoint:
    """A transport plus everything it reported."""

    member_id: int
    transport: PeerTransport = field(init=False)
    received: list[list[Message]] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)
    snapshot_status: list[tuple[int, bool]] = field(default_factory=list)
    url: str = ""

    def messages(self) -> list[Message]:
        return [m for batch in self.received for m in batch]


MakeEndpoint = Callable[..., Awaitable[Endpoint]]


def link(*eps: Endpoint) -> None:
    """Make every endpoint a peer of every other."""
    for a in eps:
        for b in eps:
            if a is not b:
                a.transport.add_peer(b.member_id, [b.url])
