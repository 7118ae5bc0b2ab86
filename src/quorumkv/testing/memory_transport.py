"""An in-process peer transport: ``MemoryHub`` connects several ``MemoryTransport`` s without sockets.

``MemoryTransport`` offers the same ``quorumkv.transport.Transport`` surface as the gRPC ``PeerTransport`` and
behaves like it where a node can tell: messages are encoded and decoded (so codec problems show up), each
``send`` becomes one batch per destination, delivered later on the event loop in FIFO order per link, never
inside ``send``; the same refusals (cluster ID mismatch, member mismatch, removed sender) with the same
wording; undeliverable messages are dropped and reported through ``on_unreachable`` (and
``on_snapshot_status`` for snapshot chunks).

The hub adds fault controls for tests of the clustered node: ``partition``, ``isolate``, one-way ``block``,
``heal``, a seeded random ``drop_rate`` and a random per-batch delay. Peers are found by URL: a transport is
reachable at the URLs it was ``start`` ed on.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quorumkv.raft.messages import LOCAL_MESSAGES, Message, MessageType, decode_message, encode_message
from quorumkv.transport.base import (
    CallErrorKind,
    CallHandler,
    OnMessages,
    OnSnapshotStatus,
    OnUnreachable,
    PeerCallError,
    PeerStats,
    RemoteCallError,
    check_peer_urls,
    cluster_mismatch_message,
    member_mismatch_message,
    removed_member_message,
    unknown_method_message,
)

if TYPE_CHECKING:
    from quorumkv.transport.base import Transport
    from quorumkv.transport.grpc_transport import PeerTransport


class MemoryHub:
    """The network joining in-process transports. ``rng`` drives drops and delays (seed it for replay)."""

    def __init__(self, rng: random.Random | None = None, *, delay_s: tuple[float, float] = (0.0, 0.0)) -> None:
        self.rng = rng or random.Random(0)
        #: each batch is delayed by uniform(*delay_s) seconds (FIFO per link is kept)
        self.delay_s = delay_s
        #: probability that a message is silently lost (like a lost packet; nobody is told)
        self.drop_rate = 0.0
        self._by_url: dict[str, MemoryTransport] = {}
        self._blocked: set[tuple[int, int]] = set()
        self._isolated: set[int] = set()
        #: messages lost to ``drop_rate``
        self.lost = 0

    def transport(
        self,
        member_id: int,
        cluster_id: int,
        on_messages: OnMessages,
        on_unreachable: OnUnreachable,
        rng: random.Random | None = None,
        *,
        on_snapshot_status: OnSnapshotStatus | None = None,
        max_queue_messages: int = 4096,
    ) -> MemoryTransport:
        """A transport attached to this hub (the arguments of ``PeerTransport``; ``rng`` is not needed)."""
        del rng
        return MemoryTransport(self, member_id, cluster_id, on_messages, on_unreachable,
                               on_snapshot_status=on_snapshot_status, max_queue_messages=max_queue_messages)

    # ------------------------------------------------------------------------------------------ faults

    def block(self, frm: int, to: int, *, both_ways: bool = False) -> None:
        """Messages and calls from ``frm`` to ``to`` fail (``frm`` is told ``to`` is unreachable)."""
        self._blocked.add((frm, to))
        if both_ways:
            self._blocked.add((to, frm))

    def unblock(self, frm: int, to: int, *, both_ways: bool = False) -> None:
        self._blocked.discard((frm, to))
        if both_ways:
            self._blocked.discard((to, frm))

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between members of different groups (both ways). Members in no group keep their
        links. Adds to the faults already in place; ``heal`` removes them all."""
        sets = [set(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                for x in a:
                    for y in b:
                        self.block(x, y, both_ways=True)

    def isolate(self, member_id: int) -> None:
        """Cut the member off from everyone, including members that join later."""
        self._isolated.add(member_id)

    def heal(self) -> None:
        """Remove every block, partition and isolation (``drop_rate`` and delays stay)."""
        self._blocked.clear()
        self._isolated.clear()

    def can_reach(self, frm: int, to: int) -> bool:
        return frm not in self._isolated and to not in self._isolated and (frm, to) not in self._blocked

    # ------------------------------------------------------------------------------------------ internals

    def _register(self, t: MemoryTransport, urls: Sequence[str]) -> None:
        for url in urls:
            other = self._by_url.get(url)
            if other is not None and other is not t:
                raise OSError(f"cannot listen on {url}: address in use (member {other.member_id:x})")
        for url in urls:
            self._by_url[url] = t

    def _unregister(self, t: MemoryTransport) -> None:
        for url in [u for u, x in self._by_url.items() if x is t]:
            del self._by_url[url]

    def _resolve(self, urls: Sequence[str]) -> tuple[MemoryTransport | None, str]:
        for url in urls:
            t = self._by_url.get(url)
            if t is not None:
                return t, url
        return None, ""

    def _delay(self) -> float:
        lo, hi = self.delay_s
        return lo if hi <= lo else self.rng.uniform(lo, hi)


@dataclass(frozen=True, slots=True)
class _Batch:
    target: MemoryTransport
    frames: list[bytes]
    size: int
    finals: int


@dataclass(eq=False)
class _MemPeer:
    member_id: int
    urls: tuple[str, ...]
    in_flight: int = 0
    in_flight_bytes: int = 0
    sent_messages: int = 0
    sent_bytes: int = 0
    dropped: int = 0
    connects: int = 0
    connected: bool = False
    last_error: str = ""
    #: per lane (messages, snapshots): loop time of the last scheduled delivery, and the batches in flight in
    #: send order; each timer delivers the oldest batch, so FIFO holds even when timers tie
    last_due: list[float] = field(default_factory=lambda: [0.0, 0.0])
    pending: tuple[collections.deque[_Batch], collections.deque[_Batch]] = field(
        default_factory=lambda: (collections.deque(), collections.deque()))


class MemoryTransport:
    """See the module docstring. Create with ``MemoryHub.transport(...)`` or directly."""

    def __init__(
        self,
        hub: MemoryHub,
        member_id: int,
        cluster_id: int,
        on_messages: OnMessages,
        on_unreachable: OnUnreachable,
        *,
        on_snapshot_status: OnSnapshotStatus | None = None,
        max_queue_messages: int = 4096,
    ) -> None:
        if member_id == 0:
            raise ValueError("member ID 0 is reserved (no member)")
        self.hub = hub
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.open_methods: set[str] = set()
        self.on_removed: Callable[[int], None] | None = None
        self._on_messages = on_messages
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        #: messages in flight to one peer before ``send`` drops (like the gRPC transport's queue bound)
        self.max_queue_messages = max_queue_messages
        self._peers: dict[int, _MemPeer] = {}
        self._removed: set[int] = set()
        self._handlers: dict[str, CallHandler] = {}
        self._received: dict[int, list[int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._unreachable_pending: set[int] = set()
        self.bound_urls: list[str] = []

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self, listen_urls: Sequence[str]) -> list[str]:
        if self._loop is not None:
            raise RuntimeError("transport already started")
        check_peer_urls(self.member_id, listen_urls)
        self.hub._register(self, listen_urls)
        self._loop = asyncio.get_running_loop()
        self._running = True
        self.bound_urls = list(listen_urls)
        return list(listen_urls)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self.hub._unregister(self)

    # ------------------------------------------------------------------------------------------ membership

    def add_peer(self, member_id: int, urls: Sequence[str]) -> None:
        if member_id == self.member_id:
            raise ValueError(f"member {member_id:x} is this member; it is not a peer")
        if member_id in self._peers:
            raise ValueError(f"peer {member_id:x} was already added; use update_peer")
        self._removed.discard(member_id)
        self._peers[member_id] = _MemPeer(member_id, check_peer_urls(member_id, urls))

    def update_peer(self, member_id: int, urls: Sequence[str]) -> None:
        peer = self._peers.get(member_id)
        if peer is None:
            raise KeyError(f"unknown peer {member_id:x}")
        peer.urls = check_peer_urls(member_id, urls)

    def remove_peer(self, member_id: int) -> None:
        self._peers.pop(member_id, None)
        self._removed.add(member_id)

    # ------------------------------------------------------------------------------------------ sending

    def _target(self, peer: _MemPeer) -> tuple[MemoryTransport | None, str]:
        """The transport to deliver to, or None and the reason (the wording the gRPC transport would log)."""
        if not self._running:
            return None, "the transport is not running"
        if not self.hub.can_reach(self.member_id, peer.member_id):
            return None, "UNAVAILABLE: network partition (memory hub)"
        t, _ = self.hub._resolve(peer.urls)
        if t is None or not t._running:
            return None, f"UNAVAILABLE: nothing listening on {', '.join(peer.urls)}"
        refusal = t._refusal(self.cluster_id, self.member_id, peer.member_id)
        if refusal is not None:
            return None, f"FAILED_PRECONDITION: {refusal}"
        return t, ""

    def send(self, messages: Sequence[Message]) -> None:
        if self._loop is None:
            raise RuntimeError("transport not started")
        if not self._running:
            return
        groups: dict[tuple[int, bool], list[Message]] = {}
        for m in messages:
            groups.setdefault((m.to, m.type == MessageType.SNAP), []).append(m)
        for (to, snap), msgs in groups.items():
            peer = self._peers.get(to)
            if peer is None:
                if to != self.member_id:
                    self._report_failure(to, snap)
                continue
            target, err = self._target(peer)
            if target is None:
                peer.connected = False
                peer.last_error = err
                peer.dropped += len(msgs)
                self._report_failure(to, snap)
                continue
            if not peer.connected:
                peer.connected = True
                peer.connects += 1
            frames: list[bytes] = []
            finals = 0
            for m in msgs:
                if peer.in_flight + len(frames) >= self.max_queue_messages:
                    peer.dropped += 1
                    self._report_failure(to, snap)
                    continue
                if self.hub.drop_rate and self.hub.rng.random() < self.hub.drop_rate:
                    self.hub.lost += 1
                    continue
                frames.append(encode_message(m))
                if snap and m.snapshot is not None and m.snap_offset + len(m.snapshot.data) >= m.snap_total:
                    finals += 1
            if not frames:
                continue
            size = sum(len(f) for f in frames)
            peer.in_flight += len(frames)
            peer.in_flight_bytes += size
            loop = self._loop
            lane = int(snap)
            due = max(loop.time() + self.hub._delay(), peer.last_due[lane])
            peer.last_due[lane] = due
            peer.pending[lane].append(_Batch(target, frames, size, finals))
            loop.call_at(due, self._arrive, peer, snap)

    def _arrive(self, peer: _MemPeer, snap: bool) -> None:
        batch = peer.pending[int(snap)].popleft()
        target, frames, size, finals = batch.target, batch.frames, batch.size, batch.finals
        peer.in_flight -= len(frames)
        peer.in_flight_bytes -= size
        if not self._running:
            return
        current, err = self._target(peer) if self._peers.get(peer.member_id) is peer else (None, "removed")
        if current is not target:
            # The link broke (partition, stop, removal) while the batch was in flight: lost, like a stream reset.
            if err != "removed":
                peer.connected = False
                peer.last_error = err or "UNAVAILABLE: stream reset"
                peer.dropped += len(frames)
                self._report_failure(peer.member_id, snap)
            return
        peer.sent_messages += len(frames)
        peer.sent_bytes += size
        target._receive(self.member_id, frames)
        for _ in range(finals):
            self._fire_snapshot_status(peer.member_id, True)

    def _report_failure(self, member_id: int, snapshot: bool) -> None:
        if not self._running or self._loop is None:
            return
        if member_id not in self._unreachable_pending:
            self._unreachable_pending.add(member_id)
            self._loop.call_soon(self._fire_unreachable, member_id)
        if snapshot and self._on_snapshot_status is not None:
            self._loop.call_soon(self._fire_snapshot_status, member_id, False)

    def _fire_unreachable(self, member_id: int) -> None:
        self._unreachable_pending.discard(member_id)
        if self._running:
            self._on_unreachable(member_id)

    def _fire_snapshot_status(self, member_id: int, ok: bool) -> None:
        if self._running and self._on_snapshot_status is not None:
            self._on_snapshot_status(member_id, ok)

    # ------------------------------------------------------------------------------------------ receiving

    def _refusal(self, cluster_id: int, sender_id: int, receiver_id: int) -> str | None:
        if cluster_id != self.cluster_id:
            return cluster_mismatch_message(self.cluster_id, cluster_id, sender_id)
        if receiver_id != self.member_id:
            return member_mismatch_message(self.member_id, receiver_id)
        if sender_id in self._removed:
            return removed_member_message(sender_id)
        return None

    def _receive(self, sender_id: int, frames: list[bytes]) -> None:
        msgs = [m for m in (decode_message(f) for f in frames) if m.to == self.member_id
                and m.type not in LOCAL_MESSAGES]
        rx = self._received.setdefault(sender_id, [0, 0])
        rx[0] += len(msgs)
        rx[1] += sum(len(f) for f in frames)
        if msgs:
            self._on_messages(msgs)

    # ------------------------------------------------------------------------------------------ calls

    def register_handler(self, method: str, handler: CallHandler) -> None:
        if not method:
            raise ValueError("method name must not be empty")
        self._handlers[method] = handler

    async def call(self, member_id: int, method: str, payload: bytes, timeout_s: float) -> bytes:
        if not self._running:
            raise PeerCallError(member_id, method, CallErrorKind.UNAVAILABLE, "the transport is not running")
        peer = self._peers.get(member_id)
        if peer is None:
            raise PeerCallError(member_id, method, CallErrorKind.UNKNOWN_PEER, f"member {member_id:x} is not a peer")
        target, err = self._target(peer)
        if target is None:
            kind = CallErrorKind.REFUSED if err.startswith("FAILED_PRECONDITION") else CallErrorKind.UNAVAILABLE
            raise PeerCallError(member_id, method, kind, err.split(": ", 1)[1])
        handler = target._handlers.get(method)
        if handler is None:
            raise PeerCallError(member_id, method, CallErrorKind.UNKNOWN_METHOD, unknown_method_message(method))
        try:
            async with asyncio.timeout(timeout_s):
                return bytes(await handler(bytes(payload)))
        except TimeoutError:
            raise PeerCallError(member_id, method, CallErrorKind.TIMEOUT, f"no answer within {timeout_s:g}s") from None
        except RemoteCallError as exc:
            raise PeerCallError(member_id, method, CallErrorKind.REMOTE, exc.detail) from None
        except Exception as exc:
            raise PeerCallError(member_id, method, CallErrorKind.INTERNAL,
                                f"handler {method!r} failed: {exc!r}") from None

    # ------------------------------------------------------------------------------------------ stats

    def stats(self) -> dict[int, PeerStats]:
        out: dict[int, PeerStats] = {}
        for pid, p in self._peers.items():
            rx = self._received.get(pid, [0, 0])
            connected = p.connected and self._running and self._target(p)[0] is not None
            out[pid] = PeerStats(
                member_id=pid,
                urls=p.urls,
                connected=connected,
                snapshot_connected=connected,
                active_url=self.hub._resolve(p.urls)[1] if connected else "",
                queued=p.in_flight,
                queued_bytes=p.in_flight_bytes,
                sent_messages=p.sent_messages,
                sent_bytes=p.sent_bytes,
                received_messages=rx[0],
                received_bytes=rx[1],
                dropped=p.dropped,
                connects=p.connects,
                last_error=p.last_error,
            )
        return out

    def active_peers(self) -> int:
        return sum(1 for s in self.stats().values() if s.connected)


if TYPE_CHECKING:

    def _both_are_transports(m: MemoryTransport, p: PeerTransport) -> tuple[Transport, Transport]:
        return m, p  # mypy checks that both implementations satisfy the Transport protocol
