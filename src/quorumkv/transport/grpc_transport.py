"""``PeerTransport``: Raft messages between members over gRPC (``quorumkvpb.Peer``), on the server's event loop.

Sending side, per peer, two *lanes*, each a bounded queue drained by one task that owns one long-lived
``Peer/Stream`` call on its own channel (its own TCP connection):

* the message lane carries everything except snapshot chunks (heartbeats, appends, votes, responses);
* the snapshot lane carries ``MsgSnap`` chunks, so megabytes of snapshot never delay a heartbeat.

A lane task connects (tries the peer's URLs in turn), sends the header frame and waits for the peer's
``StreamAck``; once accepted it writes whatever is queued as one frame per write. When the stream fails, the
messages in flight and in the queue are dropped and reported (Raft retries), and the task reconnects with
exponential backoff and jitter drawn from the injected ``rng``. While a lane is backing off, ``send`` drops
that lane's messages at once rather than letting stale traffic pile up. A full queue drops too. Nothing in
here awaits a peer on the caller's behalf: ``send`` only appends to a deque and sets an event.

Receiving side: the first frame of a stream must name this cluster and this member, and a sender that was
removed is refused; every later frame is decoded as a whole (a malformed frame drops the stream, logged) and
handed to ``on_messages``. ``Peer/Call`` dispatches to handlers registered by name.

TLS on the listener (``https://`` listen URLs): with ``server_front`` the handshake is done by a TLS front
(``security/tls_front.py``) that forwards plaintext HTTP/2 to the peer gRPC server on a private unix socket, so
a handshake it refuses (unknown CA, expired, no clientAuth usage, no certificate ...) is logged here with its
cause, once per address per minute; ``--peer-cert-allowed-cn`` and ``--peer-crl-file`` are then checked on
each stream and call against the certificate the front verified (:meth:`PeerTransport.peer_cert_refusal`).
With only ``server_credentials`` grpc core does the TLS (it reports no refusal). Plaintext listen URLs are
bound by the gRPC server itself, with no front.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import enum
import logging
import random
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc

from quorumkv.api.quorumkvpb import peer_pb2, peer_pb2_grpc
from quorumkv.raft.messages import LOCAL_MESSAGES, DecodeError, Message, MessageType, decode_message, encode_message
from quorumkv.security.tls_front import TLSFront, private_socket_dir, verified_peer
from quorumkv.transport.base import (
    RTT_BUCKETS,
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
    peer_address,
    removed_member_message,
    unknown_method_message,
)

log = logging.getLogger("quorumkv.transport")

MIB = 1024 * 1024
#: room left in a frame for its protobuf framing when one message fills it
_FRAME_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class TransportOptions:
    """Tunables. The defaults suit a LAN cluster; tests shrink the timeouts and backoff."""

    #: per peer, message lane: messages / encoded bytes waiting before ``send`` starts dropping
    max_queue_messages: int = 4096
    max_queue_bytes: int = 64 * MIB
    #: per peer, snapshot lane (a whole snapshot is queued at once, so this bounds the largest snapshot)
    max_snapshot_queue_messages: int = 65536
    max_snapshot_queue_bytes: int = 4096 * MIB
    #: one frame carries queued messages up to this many encoded bytes (a larger single message goes alone)
    max_batch_bytes: int = 1 * MIB
    #: the largest frame this member accepts, and the largest single message it sends
    max_frame_bytes: int = 64 * MIB
    #: time allowed to connect and have the header accepted
    connect_timeout_s: float = 5.0
    #: time one frame may take to be written before the stream is considered stuck and re-established
    write_timeout_s: float = 5.0
    snapshot_write_timeout_s: float = 30.0
    #: reconnect backoff: the n-th consecutive failed round over all URLs waits
    #: d/2 + uniform(0, d/2) where d = min(backoff_max_s, backoff_base_s * 2**n)
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    #: HTTP/2 keepalive pings on idle connections (dead connections are noticed within about interval+timeout)
    keepalive_interval_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    #: grace given to in-flight handlers when the listener stops
    stop_grace_s: float = 0.2
    #: how often each connected peer gets a probe call whose round trip is recorded (etcd probes every few
    #: seconds and exports the RTT histogram); 0: no probes
    probe_interval_s: float = 5.0


#: The transport's own Call method: answered empty by every member, timed by the caller (round-trip time).
PROBE_METHOD = "transport.probe"


async def _answer_probe(payload: bytes) -> bytes:
    return b""


class _LaneState(enum.Enum):
    CONNECTING = "connecting"  # a connection attempt is under way: ``send`` queues
    CONNECTED = "connected"  # the peer accepted the stream: ``send`` queues
    BACKOFF = "backoff"  # the last attempt failed; waiting before the next: ``send`` drops
    CLOSED = "closed"  # the peer was removed or updated, or the transport stopped


@dataclass(eq=False)
class _Lane:
    snapshot: bool
    #: (encoded message, is the final chunk of a snapshot)
    queue: collections.deque[tuple[bytes, bool]] = field(default_factory=collections.deque)
    queued_bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    state: _LaneState = _LaneState.CONNECTING
    task: asyncio.Task[None] | None = None
    #: set by the stream watcher when the peer ends the stream; wakes the writer
    broken: BaseException | None = None
    url: str = ""
    #: index into the peer's URLs of the next URL to try
    url_index: int = 0
    #: times this lane's stream was accepted
    connects: int = 0

    @property
    def name(self) -> str:
        return "snapshot" if self.snapshot else "message"


@dataclass(eq=False)
class _Peer:
    member_id: int
    urls: tuple[str, ...]
    lanes: tuple[_Lane, _Lane]
    sent_messages: int = 0
    sent_bytes: int = 0
    dropped: int = 0
    connects: int = 0
    last_error: str = ""
    call_channels: dict[str, Any] = field(default_factory=dict)
    call_url_index: int = 0
    rtt_counts: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS) + 1))
    rtt_sum_s: float = 0.0


class PeerTransport:
    """The gRPC peer transport (see the module docstring). Every method must be called on the event loop
    that ran ``start``; callbacks run on that loop, never inside ``send``."""

    def __init__(
        self,
        member_id: int,
        cluster_id: int,
        on_messages: OnMessages,
        on_unreachable: OnUnreachable,
        rng: random.Random,
        *,
        on_snapshot_status: OnSnapshotStatus | None = None,
        options: TransportOptions | None = None,
        server_credentials: grpc.ServerCredentials | Callable[[], grpc.ServerCredentials] | None = None,
        channel_credentials: grpc.ChannelCredentials | Callable[[], grpc.ChannelCredentials] | None = None,
        server_front: Callable[[], TLSFront] | None = None,
    ) -> None:
        if member_id == 0:
            raise ValueError("member ID 0 is reserved (no member)")
        self.member_id = member_id
        self.cluster_id = cluster_id
        self._on_messages = on_messages
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._rng = rng
        self.options = options or TransportOptions()
        self._server_credentials = server_credentials
        self._channel_credentials = channel_credentials
        self._server_front = server_front
        self._front: TLSFront | None = None  # terminates TLS on the https:// listen URLs (server_front)
        self._sock_dir = ""  # the peer gRPC server's private unix socket behind the front
        self._front_path = ""
        self._peers: dict[int, _Peer] = {}
        self._removed: set[int] = set()
        #: (sender, its cluster ID) -> when its refused stream was last logged (once per minute).
        self._refusals_logged: dict[tuple[int, int], float] = {}
        self._handlers: dict[str, CallHandler] = {}
        self._received: dict[int, list[int]] = {}  # sender → [messages, bytes]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._unreachable_pending: set[int] = set()
        self.bound_urls: list[str] = []
        #: Called (with the refusing peer's ID) when a peer refuses our stream because we were removed.
        self.on_removed: Callable[[int], None] | None = None
        #: Call methods a member that has not joined yet (cluster ID 0, receiver unknown) may use.
        self.open_methods: set[str] = set()
        #: TLS: why a verified peer certificate is refused anyway (--peer-cert-allowed-cn, --peer-crl-file)
        self.check_peer_cert: Callable[[bytes], str | None] | None = None
        #: TLS: why dialling ``(host, port)`` fails, looked up (in a thread) when an https dial fails
        self.diagnose_tls: Callable[[str, int], str | None] | None = None
        self._tls_reported: dict[str, float] = {}  # peer address -> when its TLS failure was last logged
        self._handlers[PROBE_METHOD] = _answer_probe
        self._probe_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self, listen_urls: Sequence[str]) -> list[str]:
        """Serve the peer service on ``listen_urls`` (``https`` needs ``server_credentials``); start the
        lanes of peers added so far. Returns the bound URLs with port 0 resolved."""
        if self._loop is not None:
            raise RuntimeError("transport already started")
        if not listen_urls:
            raise ValueError("the peer transport needs at least one listen peer URL")
        self._loop = asyncio.get_running_loop()
        o = self.options
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", o.max_frame_bytes),
                ("grpc.max_send_message_length", o.max_frame_bytes),
                ("grpc.keepalive_time_ms", int(o.keepalive_interval_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(o.keepalive_timeout_s * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", int(o.keepalive_interval_s * 500)),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.so_reuseport", 0),
            ]
        )
        peer_pb2_grpc.add_PeerServicer_to_server(_PeerServicer(self), server)  # type: ignore[no-untyped-call]
        bound: list[str] = []
        try:
            for url in listen_urls:
                addr, secure = peer_address(url)
                if secure and self._server_front is not None:
                    port = await self._listen_through_front(server, url)
                elif secure:
                    if self._server_credentials is None:
                        raise ValueError(f"listen peer URL {url!r} is https but no peer TLS credentials were given")
                    creds = self._server_credentials
                    port = server.add_secure_port(addr, creds() if callable(creds) else creds)
                else:
                    port = server.add_insecure_port(addr)
                if port == 0:
                    raise OSError(f"cannot listen on {url}: address in use or not available; "
                                  "choose another --listen-peer-urls")
                host = addr.rsplit(":", 1)[0]
                bound.append(f"{'https' if secure else 'http'}://{host}:{port}")
            await server.start()
            if self._front is not None:
                await self._front.start_serving()
        except BaseException:
            self._close_front()
            await server.stop(0)
            self._loop = None
            raise
        self._server = server
        self.bound_urls = bound
        for peer in self._peers.values():
            self._start_lanes(peer)
        if self.options.probe_interval_s > 0:
            self._probe_task = self._loop.create_task(self._probe_loop(), name="peer-probe")
        log.info("serving peer traffic", extra={"listen-peer-urls": bound, "member-id": f"{self.member_id:x}",
                                                "cluster-id": f"{self.cluster_id:x}"})
        return list(bound)

    async def _listen_through_front(self, server: Any, url: str) -> int:
        """Bind ``url`` (https) to the TLS front, which forwards to ``server`` on a private unix socket."""
        assert self._server_front is not None
        if self._front is None:
            self._sock_dir = private_socket_dir()
            path = f"{self._sock_dir}/peer.sock"
            if server.add_insecure_port(f"unix:{path}") == 0:
                raise OSError(f"cannot listen on unix:{path} (the peer gRPC server's private socket)")
            self._front = self._server_front()
            self._front_path = path
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None  # peer_address checked the URL
        try:
            return await self._front.listen(parts.hostname, parts.port, [self._front_path])
        except OSError as exc:
            raise OSError(f"cannot listen on {url}: {exc.strerror or exc}; choose another --listen-peer-urls"
                          ) from exc

    def _close_front(self) -> None:
        if self._front is not None:
            self._front.close()
            self._front = None
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = ""

    async def stop(self) -> None:
        """Stop every lane and the listener. Queued messages are discarded; no callback runs afterwards."""
        if self._stopped:
            return
        self._stopped = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            try:
                await self._probe_task
            except asyncio.CancelledError:
                pass
            self._probe_task = None
        for peer in self._peers.values():
            for lane in peer.lanes:
                self._close_lane(lane)
        await self._join_tasks()
        for peer in self._peers.values():
            await self._close_call_channels(peer)
        self._close_front()
        if self._server is not None:
            await self._server.stop(self.options.stop_grace_s)
            self._server = None

    async def _join_tasks(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            if pending:  # not expected: every task ends once cancelled; never let stop() hang on one
                log.error("peer transport tasks did not stop", extra={"tasks": [t.get_name() for t in pending]})

    # ------------------------------------------------------------------------------------------ membership

    def add_peer(self, member_id: int, urls: Sequence[str]) -> None:
        if member_id == self.member_id:
            raise ValueError(f"member {member_id:x} is this member; it is not a peer")
        if member_id in self._peers:
            raise ValueError(f"peer {member_id:x} was already added; use update_peer")
        checked = check_peer_urls(member_id, urls)
        self._removed.discard(member_id)
        peer = _Peer(member_id, checked, (_Lane(snapshot=False), _Lane(snapshot=True)))
        self._peers[member_id] = peer
        if self._loop is not None and not self._stopped:
            self._start_lanes(peer)

    def update_peer(self, member_id: int, urls: Sequence[str]) -> None:
        """Change a peer's URLs. The streams are re-established (queued messages are dropped and reported)."""
        peer = self._get_peer(member_id)
        checked = check_peer_urls(member_id, urls)
        if checked == peer.urls:
            return
        peer.urls = checked
        peer.call_url_index = 0
        old_channels = dict(peer.call_channels)
        peer.call_channels.clear()
        for ch in old_channels.values():
            self._spawn(ch.close())
        if self._loop is not None and not self._stopped:
            for lane in peer.lanes:
                self._close_lane(lane, peer, report=True)
            peer.lanes = (_Lane(snapshot=False), _Lane(snapshot=True))
            self._start_lanes(peer)

    def remove_peer(self, member_id: int) -> None:
        """Forget the peer: close its streams, discard its queue, refuse its streams and calls from now on."""
        peer = self._peers.pop(member_id, None)
        self._removed.add(member_id)
        if peer is None:
            return
        for lane in peer.lanes:
            self._close_lane(lane, peer)
        channels = list(peer.call_channels.values())
        peer.call_channels.clear()
        for ch in channels:
            self._spawn(ch.close())

    def _get_peer(self, member_id: int) -> _Peer:
        peer = self._peers.get(member_id)
        if peer is None:
            raise KeyError(f"unknown peer {member_id:x}")
        return peer

    # ------------------------------------------------------------------------------------------ sending

    def send(self, messages: Sequence[Message]) -> None:
        """Queue each message for its ``to`` member (see the module docstring). Never blocks."""
        if self._loop is None:
            raise RuntimeError("transport not started")
        if self._stopped:
            return
        o = self.options
        for m in messages:
            peer = self._peers.get(m.to)
            if peer is None:
                if m.to == self.member_id:
                    log.warning("dropped a message addressed to this member", extra={"type": m.type.name})
                else:
                    log.debug("dropped a message to unknown peer %x", m.to)
                    self._report_failure(m.to, m.type == MessageType.SNAP)
                continue
            snap = m.type == MessageType.SNAP
            lane = peer.lanes[1] if snap else peer.lanes[0]
            data = encode_message(m)
            if snap:
                full = (len(lane.queue) >= o.max_snapshot_queue_messages
                        or lane.queued_bytes + len(data) > o.max_snapshot_queue_bytes)
            else:
                full = len(lane.queue) >= o.max_queue_messages or lane.queued_bytes + len(data) > o.max_queue_bytes
            too_big = len(data) > o.max_frame_bytes - _FRAME_OVERHEAD_BYTES
            if lane.state in (_LaneState.BACKOFF, _LaneState.CLOSED) or full or too_big:
                if too_big:
                    peer.last_error = f"message of {len(data)} bytes exceeds max frame size {o.max_frame_bytes}"
                    log.error("dropped an oversized message", extra={"to": f"{m.to:x}", "bytes": len(data)})
                peer.dropped += 1
                self._report_failure(peer.member_id, snap)
                continue
            final = snap and m.snapshot is not None and m.snap_offset + len(m.snapshot.data) >= m.snap_total
            lane.queue.append((data, final))
            lane.queued_bytes += len(data)
            lane.wake.set()

    def _report_failure(self, member_id: int, snapshot: bool) -> None:
        """Schedule ``on_unreachable`` (coalesced: one pending report per peer) and, for a snapshot chunk,
        ``on_snapshot_status(peer, False)``."""
        if self._stopped or self._loop is None:
            return
        if member_id not in self._unreachable_pending:
            self._unreachable_pending.add(member_id)
            self._loop.call_soon(self._fire_unreachable, member_id)
        if snapshot and self._on_snapshot_status is not None:
            self._loop.call_soon(self._fire_snapshot_status, member_id, False)

    def _fire_unreachable(self, member_id: int) -> None:
        self._unreachable_pending.discard(member_id)
        if self._stopped:
            return
        try:
            self._on_unreachable(member_id)
        except Exception:
            log.exception("on_unreachable callback failed")

    def _fire_snapshot_status(self, member_id: int, ok: bool) -> None:
        if self._stopped or self._on_snapshot_status is None:
            return
        try:
            self._on_snapshot_status(member_id, ok)
        except Exception:
            log.exception("on_snapshot_status callback failed")

    # ------------------------------------------------------------------------------------------ lanes

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_lanes(self, peer: _Peer) -> None:
        for lane in peer.lanes:
            lane.state = _LaneState.CONNECTING
            lane.task = self._spawn(self._run_lane(peer, lane))

    def _close_lane(self, lane: _Lane, peer: _Peer | None = None, report: bool = False) -> None:
        """Stop the lane's task and discard its queue (counted as dropped on ``peer``; reported if ``report``)."""
        lane.state = _LaneState.CLOSED
        lane.wake.set()
        if lane.task is not None:
            lane.task.cancel()
            lane.task = None
        if lane.queue and peer is not None:
            peer.dropped += len(lane.queue)
            if report:
                self._report_failure(peer.member_id, lane.snapshot)
        lane.queue.clear()
        lane.queued_bytes = 0

    def _backoff_s(self, failures: int) -> float:
        o = self.options
        d = min(o.backoff_max_s, o.backoff_base_s * (1 << min(failures, 30)))
        return d / 2 + self._rng.uniform(0, d / 2)

    def _channel(self, url: str) -> Any:
        o = self.options
        target, secure = peer_address(url)
        opts = [
            ("grpc.max_send_message_length", o.max_frame_bytes),
            ("grpc.max_receive_message_length", o.max_frame_bytes),
            ("grpc.use_local_subchannel_pool", 1),  # a lane's connection is its own, never shared
            ("grpc.keepalive_time_ms", int(o.keepalive_interval_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(o.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", int(o.backoff_base_s * 1000)),
            # gRPC uses this as its connect timeout; ours (connect_timeout_s) is meant to fire first.
            ("grpc.min_reconnect_backoff_ms", int((o.connect_timeout_s + 1) * 1000)),
            ("grpc.max_reconnect_backoff_ms", max(int(o.backoff_max_s * 1000), 1)),
        ]
        if secure:
            if self._channel_credentials is None:
                raise ValueError(f"peer URL {url!r} is https but no peer TLS credentials were given")
            creds = self._channel_credentials
            return grpc.aio.secure_channel(target, creds() if callable(creds) else creds, options=opts)
        return grpc.aio.insecure_channel(target, options=opts)

    async def _run_lane(self, peer: _Peer, lane: _Lane) -> None:
        failures = 0  # consecutive failed rounds over all URLs
        tried_in_round = 0
        while lane.state != _LaneState.CLOSED and not self._stopped:
            url = peer.urls[lane.url_index % len(peer.urls)]
            lane.state = _LaneState.CONNECTING
            lane.broken = None
            connects = lane.connects
            err = ""
            channel = None
            try:
                channel = self._channel(url)
                await self._stream(peer, lane, channel, url)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = _describe(exc, self.options)
            finally:
                lane.url = ""
                if lane.state != _LaneState.CLOSED:
                    lane.state = _LaneState.BACKOFF
                self._fail_queue(peer, lane)
                if channel is not None:
                    await channel.close(None)
            if lane.state == _LaneState.CLOSED or self._stopped:
                return
            was_connected = lane.connects > connects
            if not err:
                err = "stream ended by the peer"
            self._note_error(peer, lane, url, err, was_connected)
            if was_connected:
                failures, tried_in_round = 0, 0
                delay = self._backoff_s(0)
            else:
                lane.url_index += 1
                tried_in_round += 1
                if tried_in_round < len(peer.urls):
                    continue  # try the next URL at once
                tried_in_round = 0
                delay = self._backoff_s(failures)
                failures += 1
            await asyncio.sleep(delay)

    def _note_error(self, peer: _Peer, lane: _Lane, url: str, err: str, was_connected: bool) -> None:
        if removed_member_message(self.member_id) in err and self.on_removed is not None:
            self.on_removed(peer.member_id)  # a member refuses us because we were removed from the cluster
        changed = err != peer.last_error
        peer.last_error = err
        extra = {"remote-peer-id": f"{peer.member_id:x}", "url": url, "stream": lane.name, "error": err}
        if not was_connected and self.diagnose_tls is not None and url.startswith("https://"):
            self._diagnose_tls(peer, url)
        if was_connected:
            log.warning("lost peer stream", extra=extra)
        elif changed:
            log.warning("cannot connect to peer", extra=extra)
        else:
            log.debug("cannot connect to peer", extra=extra)

    def _diagnose_tls(self, peer: _Peer, url: str) -> None:
        """Log why TLS to ``url`` fails, once per address per minute (the probe runs in a thread)."""
        assert self.diagnose_tls is not None and self._loop is not None
        now = self._loop.time()
        if now - self._tls_reported.get(url, -1e9) < 60:
            return
        self._tls_reported[url] = now
        diagnose = self.diagnose_tls
        target, _ = peer_address(url)
        host, _, port = target.rpartition(":")

        async def run() -> None:
            cause = await asyncio.to_thread(diagnose, host.strip("[]"), int(port))
            if cause:
                log.warning("TLS handshake with peer failed", extra={"remote-peer-id": f"{peer.member_id:x}",
                                                                     "url": url, "cause": cause})

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def peer_cert_refusal(self, context: Any) -> str | None:
        """Why the calling peer's (verified) certificate is refused, logged once per address per minute. The
        certificate is the one the TLS front verified for this connection (``security/tls_front.py``), or grpc
        core's when it did the TLS."""
        if self.check_peer_cert is None:
            return None
        addr = context.peer()
        if self._front is not None and (verified := verified_peer(addr)) is not None:
            if not verified.der:
                return None
            pem, addr = ssl.DER_cert_to_PEM_cert(verified.der).encode(), verified.remote
        else:
            pems = context.auth_context().get("x509_pem_cert")
            if not pems:
                return None
            pem = pems[0]
        reason = self.check_peer_cert(pem)
        if reason is not None and self._loop is not None:
            now = self._loop.time()
            host = addr.rsplit(":", 1)[0]  # "ipv4:127.0.0.1:54321": once per address, whatever the port
            if now - self._tls_reported.get(host, -1e9) >= 60:
                self._tls_reported[host] = now
                log.warning("rejected peer connection", extra={"remote-addr": addr, "error": reason})
        return reason

    def _fail_queue(self, peer: _Peer, lane: _Lane) -> None:
        """Drop what is queued on a failed lane and report it (Raft resends what still matters)."""
        if lane.queue:
            peer.dropped += len(lane.queue)
            lane.queue.clear()
            lane.queued_bytes = 0
            self._report_failure(peer.member_id, lane.snapshot)

    async def _stream(self, peer: _Peer, lane: _Lane, channel: Any, url: str) -> None:
        """Run one stream until it fails (raises) or the lane closes (returns)."""
        o = self.options
        stub = peer_pb2_grpc.PeerStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Stream()
        watcher: asyncio.Task[None] | None = None
        batch: list[tuple[bytes, bool]] = []
        try:
            header = peer_pb2.StreamHeader(
                cluster_id=self.cluster_id,
                sender_id=self.member_id,
                receiver_id=peer.member_id,
                lane=peer_pb2.SNAPSHOT if lane.snapshot else peer_pb2.MESSAGES,
            )
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that races
            # with completion, which would leave a closed lane's task running.
            async with asyncio.timeout(o.connect_timeout_s):
                ack = await self._handshake(call, header)
            if ack is grpc.aio.EOF:
                raise ConnectionError("the peer ended the stream without accepting it")
            if ack.member_id != peer.member_id:
                raise ConnectionError(
                    f"the peer at {url} is member {ack.member_id:x}, expected {peer.member_id:x}")
            lane.state = _LaneState.CONNECTED
            lane.url = url
            lane.connects += 1
            if not lane.snapshot:
                peer.connects += 1
            if peer.last_error:
                log.info("peer stream established", extra={"remote-peer-id": f"{peer.member_id:x}", "url": url,
                                                            "stream": lane.name})
            watcher = asyncio.ensure_future(self._watch(call, lane))
            timeout = o.snapshot_write_timeout_s if lane.snapshot else o.write_timeout_s
            while lane.state == _LaneState.CONNECTED:
                if lane.broken is not None:
                    raise lane.broken
                if not lane.queue:
                    lane.wake.clear()
                    await lane.wake.wait()
                    continue
                batch = self._take_batch(lane)
                frame = peer_pb2.StreamFrame(messages=[data for data, _ in batch])
                try:
                    async with asyncio.timeout(timeout):
                        await call.write(frame)
                except TimeoutError:
                    raise TimeoutError(f"writing to the peer took longer than {timeout:g}s") from None
                except asyncio.InvalidStateError:
                    # The stream ended while we wrote; the watcher has (or will have) the reason.
                    await asyncio.sleep(0)
                    raise lane.broken or ConnectionError("stream ended by the peer") from None
                n = sum(len(data) for data, _ in batch)
                peer.sent_messages += len(batch)
                peer.sent_bytes += n
                finals = sum(1 for _, final in batch if final)
                batch = []
                if finals and self._on_snapshot_status is not None and self._loop is not None:
                    for _ in range(finals):
                        self._loop.call_soon(self._fire_snapshot_status, peer.member_id, True)
        finally:
            if batch:  # in flight when the stream failed: lost
                peer.dropped += len(batch)
                self._report_failure(peer.member_id, lane.snapshot)
            call.cancel()
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _handshake(self, call: Any, header: Any) -> Any:
        await call.write(peer_pb2.StreamFrame(header=header))
        return await call.read()

    async def _watch(self, call: Any, lane: _Lane) -> None:
        """Wait for the peer to end the stream (it sends nothing after the ack) and wake the writer."""
        try:
            r = await call.read()
            lane.broken = ConnectionError("stream ended by the peer" if r is grpc.aio.EOF
                                          else "unexpected frame from the peer")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lane.broken = exc
        lane.wake.set()

    def _take_batch(self, lane: _Lane) -> list[tuple[bytes, bool]]:
        limit = self.options.max_batch_bytes
        q = lane.queue
        batch = [q.popleft()]
        size = len(batch[0][0])
        while not lane.snapshot and q and size + len(q[0][0]) <= limit:  # snapshot chunks go one per frame
            item = q.popleft()
            size += len(item[0])
            batch.append(item)
        lane.queued_bytes -= size
        return batch

    # ------------------------------------------------------------------------------------------ calls

    def register_handler(self, method: str, handler: CallHandler) -> None:
        """Serve ``method`` for ``call`` from other members (replaces any earlier handler of that name)."""
        if not method:
            raise ValueError("method name must not be empty")
        self._handlers[method] = handler

    async def call(self, member_id: int, method: str, payload: bytes, timeout_s: float) -> bytes:
        """Run ``method`` on member ``member_id``; its URLs are tried in turn within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        if self._stopped or self._loop is None:
            raise PeerCallError(member_id, method, CallErrorKind.UNAVAILABLE, "the transport is not running")
        peer = self._peers.get(member_id)
        if peer is None:
            raise PeerCallError(member_id, method, CallErrorKind.UNKNOWN_PEER, f"member {member_id:x} is not a peer")
        deadline = loop.time() + timeout_s
        request = peer_pb2.CallRequest(cluster_id=self.cluster_id, sender_id=self.member_id,
                                       receiver_id=member_id, method=method, payload=payload)
        errors: list[str] = []
        for _ in range(len(peer.urls)):
            url = peer.urls[peer.call_url_index % len(peer.urls)]
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            channel = peer.call_channels.get(url)
            if channel is None:
                channel = peer.call_channels[url] = self._channel(url)
            try:
                stub = peer_pb2_grpc.PeerStub(channel)  # type: ignore[no-untyped-call]
                response = await stub.Call(request, timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    errors.append(f"{url}: {exc.details()}")
                    peer.call_url_index += 1
                    continue
                raise PeerCallError(member_id, method, _call_error_kind(code), exc.details() or code.name) from None
            return bytes(response.payload)
        if errors:
            raise PeerCallError(member_id, method, CallErrorKind.UNAVAILABLE, "; ".join(errors))
        raise PeerCallError(member_id, method, CallErrorKind.TIMEOUT, f"no answer within {timeout_s:g}s")

    async def _probe_loop(self) -> None:
        """Every ``probe_interval_s``: one probe call to each connected peer; its round trip is recorded."""
        loop = asyncio.get_running_loop()
        interval = self.options.probe_interval_s
        while not self._stopped:
            await asyncio.sleep(interval)
            for pid in list(self._peers):
                peer = self._peers.get(pid)
                if peer is None or peer.lanes[0].state != _LaneState.CONNECTED:
                    continue
                started = loop.time()
                try:
                    await self.call(pid, PROBE_METHOD, b"", min(interval, self.options.connect_timeout_s))
                except Exception as exc:  # unreachable, timed out, stopping: no sample this round
                    log.debug("peer probe failed", extra={"to": f"{pid:x}", "error": str(exc)})
                    continue
                rtt = loop.time() - started
                if self._peers.get(pid) is peer:
                    peer.rtt_counts[bisect.bisect_left(RTT_BUCKETS, rtt)] += 1
                    peer.rtt_sum_s += rtt

    async def _close_call_channels(self, peer: _Peer) -> None:
        channels = list(peer.call_channels.values())
        peer.call_channels.clear()
        for ch in channels:
            await ch.close(None)

    # ------------------------------------------------------------------------------------------ stats

    def stats(self) -> dict[int, PeerStats]:
        out: dict[int, PeerStats] = {}
        for pid, p in self._peers.items():
            msg, snap = p.lanes
            rx = self._received.get(pid, [0, 0])
            out[pid] = PeerStats(
                member_id=pid,
                urls=p.urls,
                connected=msg.state == _LaneState.CONNECTED,
                snapshot_connected=snap.state == _LaneState.CONNECTED,
                active_url=msg.url,
                queued=len(msg.queue) + len(snap.queue),
                queued_bytes=msg.queued_bytes + snap.queued_bytes,
                sent_messages=p.sent_messages,
                sent_bytes=p.sent_bytes,
                received_messages=rx[0],
                received_bytes=rx[1],
                dropped=p.dropped,
                connects=p.connects,
                last_error=p.last_error,
                rtt_counts=tuple(p.rtt_counts),
                rtt_sum_s=p.rtt_sum_s,
            )
        return out

    def active_peers(self) -> int:
        """Peers whose message stream is up (etcd_network_active_peers)."""
        return sum(1 for p in self._peers.values() if p.lanes[0].state == _LaneState.CONNECTED)

    # ------------------------------------------------------------------------------------------ receiving

    def _refusal(self, cluster_id: int, sender_id: int, receiver_id: int) -> str | None:
        if cluster_id != self.cluster_id:
            return cluster_mismatch_message(self.cluster_id, cluster_id, sender_id)
        if receiver_id != self.member_id:
            return member_mismatch_message(self.member_id, receiver_id)
        if sender_id in self._removed:  # the peer matches the first part; the rest is for whoever reads the log
            return removed_member_message(sender_id) + (
                " (wipe its data dir, then 'member add' it and start it with --initial-cluster-state existing)")
        return None

    def _deliver(self, sender_id: int, frames: Sequence[bytes]) -> str | None:
        """Decode one frame and hand it to ``on_messages``. Returns an error (drop the stream) or None."""
        msgs: list[Message] = []
        size = 0
        for data in frames:
            try:
                m = decode_message(data)
            except DecodeError as exc:
                return f"malformed message from member {sender_id:x}: {exc}"
            size += len(data)
            if m.to != self.member_id or m.type in LOCAL_MESSAGES:
                log.warning("ignored a misaddressed or local message from a peer",
                            extra={"remote-peer-id": f"{sender_id:x}", "to": f"{m.to:x}", "type": m.type.name})
                continue
            msgs.append(m)
        rx = self._received.setdefault(sender_id, [0, 0])
        rx[0] += len(msgs)
        rx[1] += size
        if msgs and not self._stopped:
            try:
                self._on_messages(msgs)
            except Exception:
                log.exception("on_messages callback failed")
        return None


def _describe(exc: BaseException, o: TransportOptions) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return str(exc) or f"no answer from the peer within {o.connect_timeout_s:g}s"
    return str(exc) or type(exc).__name__


def _call_error_kind(code: Any) -> CallErrorKind:
    return {
        grpc.StatusCode.DEADLINE_EXCEEDED: CallErrorKind.TIMEOUT,
        grpc.StatusCode.UNIMPLEMENTED: CallErrorKind.UNKNOWN_METHOD,
        grpc.StatusCode.FAILED_PRECONDITION: CallErrorKind.REFUSED,
        grpc.StatusCode.ABORTED: CallErrorKind.REMOTE,
        grpc.StatusCode.UNAVAILABLE: CallErrorKind.UNAVAILABLE,
        grpc.StatusCode.CANCELLED: CallErrorKind.UNAVAILABLE,
    }.get(code, CallErrorKind.INTERNAL)


class _PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, transport: PeerTransport) -> None:
        self.t = transport

    async def Stream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        t = self.t
        if (tls_refusal := t.peer_cert_refusal(context)) is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, tls_refusal)
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        h = first.header
        if not first.HasField("header"):
            log.warning("dropped a peer stream without a header frame", extra={"peer": context.peer()})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame of a peer stream needs a header")
        refusal = t._refusal(h.cluster_id, h.sender_id, h.receiver_id)
        if refusal is not None:
            now = time.monotonic()  # once per peer (and its cluster ID) per minute: it keeps redialling
            if now - t._refusals_logged.get((h.sender_id, h.cluster_id), -1e9) >= 60:
                t._refusals_logged[(h.sender_id, h.cluster_id)] = now
                log.warning("refused a peer stream", extra={"remote-peer-id": f"{h.sender_id:x}", "reason": refusal,
                                                            "local-member-cluster-id": f"{t.cluster_id:x}",
                                                            "remote-peer-cluster-id": f"{h.cluster_id:x}"})
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        yield peer_pb2.StreamAck(member_id=t.member_id)
        sender = h.sender_id
        if first.messages:
            err = t._deliver(sender, first.messages)
            if err is not None:
                log.warning("dropped a peer stream", extra={"remote-peer-id": f"{sender:x}", "error": err})
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, err)
        async for frame in request_iterator:
            if sender in t._removed:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, removed_member_message(sender))
            err = t._deliver(sender, frame.messages)
            if err is not None:
                log.warning("dropped a peer stream", extra={"remote-peer-id": f"{sender:x}", "error": err})
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, err)

    async def Call(self, request: Any, context: Any) -> Any:
        t = self.t
        if (tls_refusal := t.peer_cert_refusal(context)) is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, tls_refusal)
        refusal = t._refusal(request.cluster_id, request.sender_id, request.receiver_id)
        if refusal is not None and request.method in t.open_methods and request.cluster_id == 0:
            refusal = None  # a joining member does not know the cluster ID or our ID yet: it asks for them
        if refusal is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        handler = t._handlers.get(request.method)
        if handler is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, unknown_method_message(request.method))
        assert handler is not None
        try:
            out = await handler(bytes(request.payload))
        except RemoteCallError as exc:
            await context.abort(grpc.StatusCode.ABORTED, exc.detail)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("peer call handler %r failed", request.method)
            await context.abort(grpc.StatusCode.INTERNAL, f"handler {request.method!r} failed: {exc!r}")
        return peer_pb2.CallResponse(payload=out)
