"""gRPC and HTTP/1.1 on one client port, as etcd 3.4 serves them (its ``cmux``).

grpcio cannot adopt an accepted socket, so the client URL is held by a small asyncio front: each accepted
connection's first bytes are *peeked* (``MSG_PEEK``: nothing is consumed) and the connection then goes

- to gRPC when it opens with the HTTP/2 preface (``PRI * HTTP/2.0``), or, on an ``https://`` URL, when its TLS
  ClientHello offers ALPN ``h2`` without ``http/1.1`` (what gRPC clients offer: grpc-go ``h2``, grpc-core
  ``grpc-exp,h2``). Plaintext bytes are spliced unchanged to the member's gRPC servers listening on private
  unix sockets; TLS is terminated first by ``security/tls_front.py`` (which names why it refuses a client
  certificate, and passes the verified certificate's CN on to auth);
- otherwise to the HTTP/1.1 server (``api/http.py``: the JSON gateway, /health, /version, /metrics ...),
  with TLS terminated here (a browser or curl offering ``h2,http/1.1`` gets HTTP/1.1).

Plaintext URLs are accepted by a child process, the router (``api/cmux_router.py``): it sniffs, splices
gRPC connections to the gRPC servers in its own epoll loop (off this process's event loop and GIL) and hands
every other connection back here with its file descriptor, where it is routed as below. It dies with the
member; if it exits first, this process accepts on the same listeners itself. ``QUORUMKV_CLIENT_PORT_SPLICE``
chooses: ``process`` (the default), ``thread`` (the router's loop in a thread of this process) or ``loop``
(everything on the event loop, as secure URLs always are).

TLS URLs (their gRPC through the TLS front) and plaintext ones without the router are served on the event loop; the
plaintext gRPC splice there is two asyncio
Protocols writing into each other's transports with flow control (no streams, no copies beyond the event
loop's own). With ``--listen-client-http-urls`` the client URLs serve gRPC only, bound by the gRPC servers
themselves (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from quorumkv.api import cmux_router
from quorumkv.api.cmux_router import (
    GRPC,
    H2_PREFACE,
    HTTP,
    MAX_LOG_BYTES,
    MSG_HTTP,
    MSG_LOG,
    SNIFF_TIMEOUT_S,
    Router,
    classify_plain,
)
from quorumkv.security.tls_front import TLSFront, bind_listeners

__all__ = ["GRPC", "H2_PREFACE", "HTTP", "SNIFF_TIMEOUT_S", "ClientMux", "classify_plain", "classify_tls",
           "client_hello_alpn"]

log = logging.getLogger("quorumkv.cmux")

#: Enough for any ClientHello (it is bounded by its 3-byte length, but real ones are a few KiB at most).
MAX_SNIFF_BYTES = 64 * 1024
#: Read size of the splice (per event: a large buffer keeps the number of loop wake-ups low).
SPLICE_READ_BYTES = 256 * 1024

#: ``QUORUMKV_CLIENT_PORT_SPLICE``: where plaintext gRPC connections are spliced (see the module docstring).
SPLICE_ENV = "QUORUMKV_CLIENT_PORT_SPLICE"
SPLICE_MODES = ("process", "thread", "loop")
#: How long closing waits for the router process to exit before killing it.
ROUTER_EXIT_WAIT_S = 5.0


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


def _peer_of(sock: socket.socket) -> tuple[Any, ...] | None:
    try:
        return tuple(sock.getpeername())
    except OSError:
        return None


def _https_refusal(exc: ssl.SSLError) -> tuple[str, str]:
    """(kind of cause, log text) for a TLS handshake an HTTPS client failed on the shared client port."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"verify-{exc.verify_code}",
                f"tls: failed to verify client certificate: {exc.verify_message} (an HTTPS client; "
                "'quorumkv check certs' with the same flags, or the gRPC refusal lines, name the certificates)")
    return (f"ssl-{exc.reason}", f"tls: handshake with an HTTPS client failed: {exc.reason or exc}")


def splice_mode() -> str:
    """The ``QUORUMKV_CLIENT_PORT_SPLICE`` setting (``process`` when unset); an unknown value raises ValueError
    naming the accepted ones (checked before the member starts, and again when the port starts accepting)."""
    mode = os.environ.get(SPLICE_ENV, "process") or "process"
    if mode not in SPLICE_MODES:
        raise ValueError(f"{SPLICE_ENV}={mode!r} is not one of {', '.join(SPLICE_MODES)}; unset it or pick one")
    return mode


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
        #: the router (process or thread) splicing the plaintext listeners' gRPC connections, if any
        self._router: _RouterHandle | None = None
        self._tls_front: TLSFront | None = None

    def listen(self, host: str, port: int, *, secure: bool) -> int:
        """Bind and listen on every address ``host`` resolves to; returns the port (port 0: the one chosen)."""
        bound = bind_listeners(host, port)
        for sock in bound:
            sock.setblocking(False)
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
        plain = [sock for sock in self._listeners if not self._secure[sock.fileno()]]
        mode = splice_mode()
        if mode == "process" and (getattr(sys, "frozen", False) or not sys.executable):
            mode = "loop"  # no Python interpreter to start the router with (a frozen application)
        if plain and grpc_paths.get(False) and mode != "loop":
            try:
                self._router = (_RouterProcess if mode == "process" else _RouterThread)(
                    self, plain, grpc_paths[False])
            except OSError as exc:
                log.warning("cannot start the client port router; plaintext gRPC is spliced on the event loop",
                            extra={"error": str(exc)})
        for sock in self._listeners:
            if self._router is None or self._secure[sock.fileno()]:
                self._loop.add_reader(sock.fileno(), self._accept, sock, self._secure[sock.fileno()])

    def _handed_back(self, sock: socket.socket) -> None:
        """A plaintext connection the router did not splice (HTTP/1.1): routed here, its bytes unread."""
        if self._closing:
            sock.close()
            return
        sock.setblocking(False)
        task = self._loop.create_task(self._route(sock, False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _router_ended(self, detail: str) -> None:
        """The router stopped on its own: accept on its listeners here (its spliced connections are gone)."""
        self._router = None
        if self._closing:
            return
        log.warning("the client port router stopped; plaintext connections are now served on the event loop",
                    extra={"detail": detail})
        for sock in self._listeners:
            if not self._secure[sock.fileno()]:
                self._loop.add_reader(sock.fileno(), self._accept, sock, False)

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
        verdict: str | None = None
        try:
            verdict = await self._sniff(sock, secure)
            if verdict is None or self._closing:
                sock.close()
                return
            if verdict == GRPC and secure in self._grpc_paths:
                if secure and self._tls_front is not None:  # TLS terminated here (security/tls_front.py)
                    await self._tls_front.serve(sock, next(self._grpc_paths[secure]))
                else:
                    await self._splice(sock, next(self._grpc_paths[secure]))
            else:
                await self._serve_http(sock, secure)
        except ssl.SSLError as exc:
            if verdict == HTTP and self._tls_front is not None:  # an HTTPS client refused: logged as gRPC's are
                self._tls_front.refused(_peer_of(sock), *_https_refusal(exc))
            log.debug("client connection failed", extra={"error": str(exc)})
            sock.close()
        except (OSError, TimeoutError) as exc:
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
        router, self._router = self._router, None
        if router is not None:
            await router.stop()
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


class _RouterHandle:
    """The member's side of a router: hand-backs arrive through :meth:`ClientMux._handed_back`."""

    async def stop(self) -> None:
        raise NotImplementedError


class _RouterProcess(_RouterHandle):
    """``api/cmux_router.py`` as a child process, given the plaintext listeners and one end of a unix
    SOCK_SEQPACKET pair (hand-backs arrive on the other end with their file descriptor; its end of file means
    the child is gone). The child runs ``python -I -S FILE``: the standard library only, whatever the host's
    paths are."""

    def __init__(self, mux: ClientMux, listeners: list[socket.socket], grpc_paths: list[str]) -> None:
        self._mux = mux
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds = [s.fileno() for s in listeners]
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(cmux_router.__file__), str(os.getpid()),
                 str(theirs.fileno()), ",".join(map(str, fds)), ",".join(grpc_paths)],
                pass_fds=[theirs.fileno(), *fds], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._reading = True
        self._loop.add_reader(ours.fileno(), self._on_readable)
        log.debug("client port router started", extra={"pid": self.proc.pid})

    def _on_readable(self) -> None:
        for _ in range(256):
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self._sock, 16 + MAX_LOG_BYTES, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                msg, fds = b"", []
                log.debug("client port router pair failed", extra={"error": str(exc)})
            if not msg and not fds:
                self._ended()
                return
            if msg.startswith(MSG_LOG):
                log.warning("client port router", extra={"detail": msg[1:].decode(errors="replace")})
            for fd in fds:
                sock = socket.socket(fileno=fd)
                if msg == MSG_HTTP:
                    self._mux._handed_back(sock)
                else:
                    sock.close()

    def _ended(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        code = self.proc.poll()
        if code is None:  # closed its end but lives: end it
            self.proc.kill()
            code = self.proc.wait(ROUTER_EXIT_WAIT_S)
        self._mux._router_ended(f"router exited with code {code}")

    async def stop(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()  # the child's end of file: it closes everything and exits
        deadline = self._loop.time() + ROUTER_EXIT_WAIT_S
        while self.proc.poll() is None and self._loop.time() < deadline:
            await asyncio.sleep(0.005)
        if self.proc.poll() is None:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, ROUTER_EXIT_WAIT_S)


class _RouterThread(_RouterHandle):
    """The router's loop in a thread of this process (a measurement variant: it still takes the GIL)."""

    def __init__(self, mux: ClientMux, listeners: list[socket.socket], grpc_paths: list[str]) -> None:
        loop = asyncio.get_running_loop()
        self._stop_w, stop_r = socket.socketpair()
        dups = [socket.socket(fileno=os.dup(s.fileno())) for s in listeners]  # the router closes its own

        def hand_back(sock: socket.socket) -> bool:
            loop.call_soon_threadsafe(mux._handed_back, sock)
            return True

        self._router = Router(dups, grpc_paths, hand_back, stop_r,
                              lambda text: log.warning("client port router", extra={"detail": text}))
        self._thread = threading.Thread(target=self._run, args=(stop_r,), name="client-port-router", daemon=True)
        self._thread.start()

    def _run(self, stop_r: socket.socket) -> None:
        try:
            self._router.run()
        finally:
            stop_r.close()

    async def stop(self) -> None:
        self._stop_w.close()
        await asyncio.to_thread(self._thread.join, ROUTER_EXIT_WAIT_S)
