"""What every peer transport offers: the ``Transport`` protocol, per-peer statistics, errors, and the
wording of refusals shared by the gRPC transport and the in-memory one.

A transport carries Raft messages between the members of one cluster. It never blocks its caller: ``send``
queues and returns; when a message cannot be delivered it is dropped and the owner hears about it through
``on_unreachable(peer)`` (and, for snapshot chunks, ``on_snapshot_status(peer, False)``), the signals Raft
uses to retry. Callbacks are always invoked from the event loop, never from inside ``send``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from quorumkv.raft.messages import Message

#: Receives each batch of messages that arrived from one peer, in the order the peer sent them.
OnMessages = Callable[[list[Message]], None]
#: Told that messages to this member ID were dropped (queue full, connection down): Raft's ReportUnreachable.
OnUnreachable = Callable[[int], None]
#: Told whether a snapshot (all its chunks) went out to a member: Raft's ReportSnapshot.
OnSnapshotStatus = Callable[[int, bool], None]
#: A handler for ``Transport.call``: request payload in, response payload out.
CallHandler = Callable[[bytes], Awaitable[bytes]]


class TransportError(Exception):
    """Base class of the transport's errors."""


class CallErrorKind(enum.Enum):
    UNKNOWN_PEER = "unknown peer"  # this member has no URLs for the target
    UNAVAILABLE = "unavailable"  # the target could not be reached (down, refused, this transport stopped)
    TIMEOUT = "timeout"  # no answer within the timeout
    UNKNOWN_METHOD = "unknown method"  # the target has no handler of that name
    REFUSED = "refused"  # the target refused the request: other cluster, other member, or sender removed
    REMOTE = "remote"  # the handler raised RemoteCallError; ``detail`` is its message, verbatim
    INTERNAL = "internal"  # the handler failed unexpectedly, or the answer was malformed


class PeerCallError(TransportError):
    """``Transport.call`` failed. ``kind`` says how; ``detail`` is the human-readable reason."""

    def __init__(self, member_id: int, method: str, kind: CallErrorKind, detail: str) -> None:
        super().__init__(f"call {method!r} to member {member_id:x} failed ({kind.value}): {detail}")
        self.member_id = member_id
        self.method = method
        self.kind = kind
        self.detail = detail


class RemoteCallError(TransportError):
    """Raised by a call handler to answer with an application error; the caller gets a ``PeerCallError`` of
    kind ``REMOTE`` whose ``detail`` is this exception's message, unchanged (e.g. an etcd error string)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


#: etcd's buckets for etcd_network_peer_round_trip_time_seconds: ExponentialBuckets(0.0001, 2, 16).
RTT_BUCKETS = tuple(0.0001 * 2**i for i in range(16))


@dataclass(frozen=True, slots=True)
class PeerStats:
    """A snapshot of one peer's counters. Counters only grow while the peer stays added.

    Mapping to etcd's metrics: ``sent_bytes`` → ``etcd_network_peer_sent_bytes_total{To}``,
    ``received_bytes`` → ``etcd_network_peer_received_bytes_total{From}``, ``dropped`` →
    ``etcd_network_peer_sent_failures_total{To}``, ``connected`` (summed over peers) →
    ``etcd_network_active_peers``. Byte counts are encoded Raft message sizes (no framing).
    """

    member_id: int
    urls: tuple[str, ...]
    #: the message stream to this peer is established and was accepted by the peer
    connected: bool
    #: the snapshot stream to this peer is established and was accepted by the peer
    snapshot_connected: bool
    #: the URL the message stream is connected to ("" when not connected)
    active_url: str
    #: messages waiting to be written, both streams
    queued: int
    queued_bytes: int
    sent_messages: int
    sent_bytes: int
    received_messages: int
    received_bytes: int
    #: messages that were not delivered: queue full, peer unreachable, or lost with a failed stream
    dropped: int
    #: times the message stream to this peer was established (1 after the first connect; more after reconnects)
    connects: int
    #: the most recent connection or send error ("" if none yet)
    last_error: str
    #: round trips of the transport's probe calls to this peer: per-bucket counts over ``RTT_BUCKETS`` (the last
    #: one past the largest bound) and their sum in seconds (``etcd_network_peer_round_trip_time_seconds{To}``)
    rtt_counts: tuple[int, ...] = ()
    rtt_sum_s: float = 0.0


@runtime_checkable
class Transport(Protocol):
    """The surface a clustered node uses; ``PeerTransport`` (gRPC) and ``MemoryTransport`` (tests) offer it.

    The owner passes ``on_messages``, ``on_unreachable`` (and optionally ``on_snapshot_status``) to the
    constructor; all methods except ``start``/``stop``/``call`` are synchronous, cheap and never block.
    """

    member_id: int
    cluster_id: int
    #: Call methods served to senders that are not (yet) members of this cluster (a joiner's ``cluster_info``).
    open_methods: set[str]
    #: Called with a peer's ID when that peer refuses us as a removed member.
    on_removed: Callable[[int], None] | None

    async def start(self, listen_urls: Sequence[str]) -> list[str]:
        """Start serving on ``listen_urls``; return the bound URLs (port 0 resolved), in the same order."""
        ...

    async def stop(self) -> None:
        """Close every connection and listener; no callback runs after this returns."""
        ...

    def add_peer(self, member_id: int, urls: Sequence[str]) -> None: ...

    def update_peer(self, member_id: int, urls: Sequence[str]) -> None: ...

    def remove_peer(self, member_id: int) -> None:
        """Forget the peer and refuse its streams from now on (it was removed from the cluster)."""
        ...

    def send(self, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for their ``to`` members. Never blocks; undeliverable messages are dropped and
        reported through ``on_unreachable`` / ``on_snapshot_status``."""
        ...

    async def call(self, member_id: int, method: str, payload: bytes, timeout_s: float) -> bytes:
        """Run the handler ``method`` on member ``member_id``; raise ``PeerCallError`` on any failure."""
        ...

    def register_handler(self, method: str, handler: CallHandler) -> None: ...

    def stats(self) -> dict[int, PeerStats]: ...


# ---------------------------------------------------------------------------------------------- wording


def cluster_mismatch_message(local_cluster_id: int, remote_cluster_id: int, sender_id: int) -> str:
    """The refusal of a peer from another cluster (etcd logs "request cluster ID mismatch" with both IDs)."""
    return (
        f"request cluster ID mismatch: local member cluster ID {local_cluster_id:x}, "
        f"remote peer {sender_id:x} cluster ID {remote_cluster_id:x}"
    )


def member_mismatch_message(local_member_id: int, requested_member_id: int) -> str:
    return f"request member ID mismatch: this member is {local_member_id:x}, the request is for {requested_member_id:x}"


def removed_member_message(sender_id: int) -> str:
    return f"rejected request from member {sender_id:x}: it has been removed from the cluster"


def unknown_method_message(method: str) -> str:
    return f"unknown peer method {method!r}"


# ---------------------------------------------------------------------------------------------- URLs


def peer_address(url: str) -> tuple[str, bool]:
    """``http://host:port`` → ("host:port", tls?). Raises ValueError naming the URL and the fix."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"peer URL {url!r}: scheme must be http or https (e.g. http://127.0.0.1:2380)")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"peer URL {url!r}: {exc}") from exc
    if not parts.hostname or port is None:
        raise ValueError(f"peer URL {url!r} needs a host and a port (e.g. http://127.0.0.1:2380)")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}", parts.scheme == "https"


def check_peer_urls(member_id: int, urls: Sequence[str]) -> tuple[str, ...]:
    if not urls:
        raise ValueError(f"member {member_id:x} needs at least one peer URL")
    for url in urls:
        peer_address(url)
    return tuple(urls)
