"""gRPC and HTTP/1.1 on one client port, as etcd 3.4 serves them (its ``cmux``).

grpcio cannot adopt an accepted socket, so the client URL is held by a small asyncio front: each accepted
connection's first bytes are *peeked* (``MSG_PEEK``: nothing is consumed) and the connection then goes

- to gRPC when it opens with the HTTP/2 preface (``PRI * HTTP/2.0``), or, on an ``https://`` URL, when its TLS
  ClientHello offers ALPN ``h2`` without ``http/1.1`` (what gRPC clients offer: grpc-go ``h2``, grpc-core
  ``grpc-exp,h2``). Plaintext bytes are spliced unchanged to the member's gRPC servers listening on private
  unix sockets; TLS is terminated first by ``api/tls_front.py`` (which names why it refuses a client
  certificate, and passes the verified certificate's CN on to auth);
- otherwise to the HTTP/1.1 server (``api/http.py``: the JSON gateway, /health, /version, /metrics ...),
  with TLS terminated here (a browser or curl offering ``h2,http/1.1`` gets HTTP/1.1).

The splice is two asyncio Protocols writing into each other's transports with flow control (no streams,
no copies beyond the event loop's own). It costs a little throughput; with ``--listen-client-http-urls``
the client URLs serve gRPC only, bound by the gRPC servers themselves (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from quorumkv.api.tls_front import TLSFront

log = logging.getLogger("quorumkv.cmux")

#: The HTTP/2 client connection preface (RFC 9113 3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: A connection that has not said enough to be classified in this time is closed.
SNIFF_TIMEOUT_S = 10.0
#: Enough for any ClientHello (it is bounded by its 3-byte length, but real ones are a few KiB at most).
MAX_SNIFF_BYTES = 64 * 1024
#: Read size of the splice (per event: a large buffer keeps the number of loop wake-ups low).
SPLICE_READ_BYTES = 256 * 1024

GRPC = "grpc"
HTTP = "http"


def classify_plain(data: bytes) -> str | None:
    """``grpc`` for the HTTP/2 preface, ``http`` for anything else, None while a prefix of the preface."""
    n = min(len(data), len(H2_PREFACE))
    if data[:n] != H2_PREFACE[:n]:
        return HTTP
    return GRPC if len(data) >= len(H2_PREFACE) else None


def client_hello_alpn(data: bytes) -> list[bytes] | None:
    """The ALPN protocols a TLS ClientHello offers ([] when none or not a ClientHello); None when ``data`` is
    an incomplete ClientHello (more bytes are needed)."""
    hello = bytearray()
    pos = 0
    need = -1
    while need < 0 or len(hello) < need:
        if len(data) < pos + 5:
            return None
        if data[pos] != 0x16:  # not a handshake record
            return []
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if len(data) < pos + 5 + length:
            return None
        hello += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if need < 0 and len(hello) >= 4:
            if hello[0] != 1:  # not a ClientHello
                return []
            need = 4 + int.from_bytes(hello[1:4], "big")
        if length == 0 and need < 0:
            return []
    return _alpn_of(bytes(hello[4:need]))


def _alpn_of(body: bytes) -> list[bytes]:
    try:
        p = 2 + 32  # client_version, random
        p += 1 + body[p]  # session id
        p += 2 + int.from_bytes(body[p:p + 2], "big")  # cipher suites
        p += 1 + body[p]  # compression methods
        if p + 2 > len(body):
            return []
        end = p + 2 + int.from_bytes(body[p:p + 2], "big")
        p += 2
        while p + 4 <= min(end, len(body)):
            ext_type = int.from_bytes(body[p:p + 2], "big")
            ext_len = int.from_bytes(body[p + 2:p + 4], "big")
            ext = body[p + 4:p + 4 + ext_len]
            p += 4 + ext_len
            if ext_type == 16:  # application_layer_protocol_negotiation
                out = []
                q = 2
                while q < len(ext):
                    n = ext[q]
                    out.append(ext[q + 1:q + 1 + n])
                    q += 1 + n
                return out
    except IndexError:
        return []
    return []


def classify_tls(data: bytes) -> str | None:
    """``grpc`` when the ClientHello offers h2 and not http/1.1; ``http`` otherwise; None: need more bytes."""
    alpn = client_hello_alpn(data)
    if alpn is None:
        return None if len(data) < MAX_SNIFF_BYTES else HTTP
    return GRPC if b"h2" in alpn and b"http/1.1" not in alpn else HTTP


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Splice(asyncio.Protocol):
    """One direction's reader and the other direction's writer: bytes read here are written to ``other``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Splice | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.got_eof = False
        #: bytes for this side's transport that arrived before it was made
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        assert self.transport is not None
        with contextlib.suppress(Exception):
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.early:
            self.transport.writelines(self.early)
            self.early.clear()

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None:
            return
        if other.transport is None:
            other.early.append(data)
        elif not other.transport.is_closing():
            other.transport.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        other = self.other
        if other is None or other.transport is None or other.got_eof or not other.transport.can_write_eof():
            return False  # both directions done (or no half-close possible): close
        with contextlib.suppress(Exception):
            other.transport.write_eof()
        return True  # half-close: keep the other direction flowing

    # flow control: our transport's write buffer is full -> stop reading from the other side
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()
        if not self.closed.done():
            self.closed.set_result(None)


class ClientMux:
    """The front of one or more client URLs: :meth:`listen` binds them, :meth:`start` begins accepting (the
    gRPC servers and the HTTP side must be up by then)."""

    def __init__(self, *, stream_limit: int) -> None:
        self._grpc_paths: dict[bool, itertools.cycle[str]] = {}
        self._http_connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any] | None = None
        self._http_ssl: ssl.SSLContext | None = None
        self._stream_limit = stream_limit
        self._listeners: list[socket.socket] = []
        self._secure: dict[int, bool] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._splices: set[_Splice] = set()
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._tls_front: TLSFront | None = None

    def listen(self, host: str, port: int, *, secure: bool) -> int:
        """Bind and listen on every address ``host`` resolves to; returns the port (port 0: the one chosen)."""
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        seen: set[Any] = set()
        bound: list[socket.socket] = []
        try:
            for family, type_, proto, _, sockaddr in infos:
                if (family, sockaddr) in seen:
                    continue
                seen.add((family, sockaddr))
                try:
                    sock = socket.socket(family, type_, proto)
                except OSError:
                    continue  # an address family this host lacks (no IPv6 ...)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if port == 0 and bound:
                        sockaddr = (sockaddr[0], bound[0].getsockname()[1], *sockaddr[2:])
                    sock.bind(sockaddr)
                except OSError as exc:
                    sock.close()
                    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                        continue  # e.g. "localhost" resolving to ::1 on a host without IPv6, as grpc skips it
                    raise
                bound.append(sock)
                sock.listen(1024)
                sock.setblocking(False)
            if not bound:
                raise OSError(errno.EADDRNOTAVAIL, f"no address of {host!r} can be bound")
        except BaseException:
            for sock in bound:
                sock.close()
            raise
        for sock in bound:
            self._listeners.append(sock)
            self._secure[sock.fileno()] = secure
        return int(bound[0].getsockname()[1])

    def start(self, grpc_paths: dict[bool, list[str]],
              http_connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
              http_ssl: ssl.SSLContext | None, tls_front: TLSFront | None = None) -> None:
        """Accept on every bound URL. ``grpc_paths[secure]``: the gRPC servers' unix socket paths (one per
        server; connections are spread round-robin); ``http_connected``: the HTTP server's stream callback;
        ``http_ssl``: the HTTPS context for ``https://`` URLs; ``tls_front``: terminates TLS for gRPC on them
        (then ``grpc_paths[True]`` are plaintext gRPC servers)."""
        self._tls_front = tls_front
        self._grpc_paths = {k: itertools.cycle(v) for k, v in grpc_paths.items() if v}
        self._http_connected = http_connected
        self._http_ssl = http_ssl
        for sock in self._listeners:
            self._loop.add_reader(sock.fileno(), self._accept, sock, self._secure[sock.fileno()])

    def _accept(self, lsock: socket.socket, secure: bool) -> None:
        for _ in range(64):
            try:
                sock, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: logged, the listener stays
                log.warning("accepting a client connection failed", extra={"error": str(exc)})
                return
            sock.setblocking(False)
            task = self._loop.create_task(self._route(sock, secure))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _sniff(self, sock: socket.socket, secure: bool) -> str | None:
        classify = classify_tls if secure else classify_plain
        deadline = self._loop.time() + SNIFF_TIMEOUT_S
        fd = sock.fileno()
        while True:
            try:
                data = sock.recv(MAX_SNIFF_BYTES, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                data = None
            if data == b"":
                return None  # closed before saying anything
            if data:
                verdict = classify(data)
                if verdict is not None:
                    return verdict
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return None
            if data:  # a partial preface or ClientHello: the socket stays readable, so poll gently
                await asyncio.sleep(min(0.01, remaining))
                continue
            ready: asyncio.Future[None] = self._loop.create_future()
            self._loop.add_reader(fd, _set_once, ready)
            try:
                await asyncio.wait_for(ready, remaining)
            except TimeoutError:
                return None
            finally:
                self._loop.remove_reader(fd)

    async def _route(self, sock: socket.socket, secure: bool) -> None:
        try:
            verdict = await self._sniff(sock, secure)
            if verdict is None or self._closing:
                sock.close()
                return
            if verdict == GRPC and secure in self._grpc_paths:
                if secure and self._tls_front is not None:  # TLS terminated here (api/tls_front.py)
                    await self._tls_front.serve(sock, next(self._grpc_paths[secure]))
                else:
                    await self._splice(sock, next(self._grpc_paths[secure]))
            else:
                await self._serve_http(sock, secure)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.debug("client connection failed", extra={"error": str(exc)})
            sock.close()
        except asyncio.CancelledError:
            sock.close()
            raise

    async def _splice(self, sock: socket.socket, path: str) -> None:
        front, back = _Splice(), _Splice()
        front.other, back.other = back, front
        self._splices.add(front)
        try:
            await self._loop.create_unix_connection(lambda: back, path)
        except BaseException:
            self._splices.discard(front)
            sock.close()
            raise
        try:
            # the peeked bytes are still in the socket: the front reads them first
            await self._loop.connect_accepted_socket(lambda: front, sock)
        except BaseException:
            self._splices.discard(front)
            if back.transport is not None:
                back.transport.close()
            raise
        front.closed.add_done_callback(lambda _f: self._splices.discard(front))

    async def _serve_http(self, sock: socket.socket, secure: bool) -> None:
        assert self._http_connected is not None
        reader = asyncio.StreamReader(limit=self._stream_limit, loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, self._http_connected, loop=self._loop)
        ctx = self._http_ssl if secure else None
        await self._loop.connect_accepted_socket(lambda: protocol, sock, ssl=ctx,
                                                 ssl_handshake_timeout=SNIFF_TIMEOUT_S if ctx else None)

    async def close(self) -> None:
        """Stop accepting and close every connection this front spliced (the HTTP ones belong to the HTTP
        server, which closes them)."""
        self._closing = True
        for sock in self._listeners:
            if self._http_connected is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for splice in list(self._splices):
            for side in (splice, splice.other):
                if side is not None and side.transport is not None:
                    side.transport.close()
        self._splices.clear()
