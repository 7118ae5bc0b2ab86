"""TLS terminated in Python in front of a plaintext gRPC server, so that the member that refuses a handshake
can say why: the client URLs (``https://``, whether they share the port with HTTP through ``api/cmux.py`` or
serve gRPC only with ``--listen-client-http-urls``) and the peer listener (``https://`` --listen-peer-urls,
``transport/grpc_transport.py``).

grpc core rejects a bad certificate inside its own handshake and tells the application nothing, so a member
could not say why a client or a peer was refused. Here the front does the TLS itself (Python's ``ssl`` over
memory BIOs, with the listener's settings: certificate and key re-read when they change, the trusted CA file,
client certificate verification, the CRL, ``--cipher-suites``, ALPN ``h2``, TLS 1.2 and 1.3 as etcd 3.4) and
forwards the decrypted HTTP/2 bytes to a plaintext gRPC server on a private unix socket (in a 0700 directory,
:func:`private_socket_dir`). A :class:`Role` names the flags of each kind of listener (:data:`CLIENT`,
:data:`PEER`) in the messages.

- A refused handshake: OpenSSL verifies the dialler's chain and sends the TLS alert (unknown CA, certificate
  expired, unsupported certificate purpose, certificate required); the certificates the dialler sent are read
  from its Certificate message as it passes (the context's message callback), so the member logs the exact
  cause and fix (``security.diagnose.client_handshake_refusal``: both CAs' fingerprints, the dates, the
  missing clientAuth usage ...), once per remote address (and kind of cause) per minute: ``rejected
  connection`` (client URLs) or ``rejected peer connection`` (the peer listener).
- A revoked certificate (the front's ``crl_file``: ``--client-crl-file``) is refused right after the
  handshake, as etcd 3.4 does: the connection is closed and logged the same way. The peer listener's front
  leaves ``--peer-crl-file`` and ``--peer-cert-allowed-cn`` to the peer service, which reads the verified
  certificate with :func:`verified_peer` and refuses the stream or call with the cause.
- Who the dialler is: each forwarded connection's unix socket is bound to a unique path before it connects,
  which gRPC reports as the call's peer (``unix:<path>``); :func:`verified_peer` maps that path to the verified
  certificate (and the dialler's TCP address) while the connection lives, and :func:`verified_common_name` to
  its common name (``caller()`` in ``api/servicers.py`` uses it as etcd does: with ``--client-cert-auth`` the
  CN is the user when no token is given). A connection that did not come through the front (the socket
  directory is private to the member's user) has no such path and no identity.
- :meth:`TLSFront.listen` binds a TCP address whose every connection goes through the front (the peer
  listener, gRPC-only client URLs); the shared client port's mux hands its gRPC connections to
  :meth:`TLSFront.serve` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from quorumkv.security.certs import describe, load_crl
from quorumkv.security.diagnose import certificate_message_chain, client_handshake_refusal
from quorumkv.security.reload import WatchedFiles, reloading_ssl_context

__all__ = ["CLIENT", "PEER", "SOCKET_DIR_PREFIX", "Role", "TLSFront", "Verified", "private_socket_dir",
           "verified_common_name", "verified_peer"]

log = logging.getLogger("quorumkv.cmux")


@dataclass(frozen=True)
class Role:
    """The kind of listener a front serves: its name in messages, its flags, its logger and refusal line."""

    name: str
    cert_flags: str
    crl_flag: str
    logger: str
    refusal: str


CLIENT = Role("client", "--cert-file and --key-file", "--client-crl-file", "quorumkv.cmux", "rejected connection")
PEER = Role("peer", "--peer-cert-file and --peer-key-file", "--peer-crl-file", "quorumkv.transport",
            "rejected peer connection")

#: Private socket directories are ``<tmp>/quorumkv-grpc-<pid>-<random>/`` (the member removes those of dead
#: pids at start-up, ``app._remove_stale_socket_dirs``).
SOCKET_DIR_PREFIX = "quorumkv-grpc-"


def private_socket_dir() -> str:
    """A new directory only this user can enter (0700), for a gRPC server's private unix socket."""
    return tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-")


@dataclass(frozen=True)
class Verified:
    """A connection forwarded by a front: its verified certificate (DER, b"" when none was asked for), the
    common name passed on as identity ("" unless client certificates are verified) and the TCP address."""

    common_name: str
    der: bytes
    remote: str

#: A client that has not completed its handshake in this time is disconnected.
HANDSHAKE_TIMEOUT_S = 10.0
#: Largest plaintext read from the TLS object per call.
READ_BYTES = 256 * 1024
#: A refused client address is logged at most once in this many seconds.
LOG_INTERVAL_S = 60.0

#: unix socket path of a forwarded connection -> what the front verified
_identities: dict[str, Verified] = {}
_names = itertools.count(1)


def verified_peer(peer: str) -> Verified | None:
    """What the front verified for a call that came through it (``peer``: gRPC's ``context.peer()``), None for
    any other call."""
    if not peer.startswith("unix:"):
        return None
    return _identities.get(peer[5:])


def verified_common_name(peer: str) -> str | None:
    """The verified client certificate CN of a call that came through a TLS front (``peer``: gRPC's
    ``context.peer()``), None for any other call."""
    found = verified_peer(peer)
    return (found.common_name or None) if found is not None else None


def _address(remote: tuple[Any, ...] | None) -> str:
    if not remote:
        return "?"
    return f"[{remote[0]}]:{remote[1]}" if ":" in str(remote[0]) else f"{remote[0]}:{remote[1]}"


def _on_message(conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes) -> None:
    """The context's message callback: keeps the client's Certificate message for the diagnosis."""
    if direction == "read" and msg_type == _CERTIFICATE and content_type == _HANDSHAKE:
        proto = _CONNS.get(id(conn))
        if proto is not None:
            tls13 = version == ssl.TLSVersion.TLSv1_3
            proto.client_chain = (certificate_message_chain(data, tls13)
                                  or certificate_message_chain(data, not tls13))


_HANDSHAKE, _CERTIFICATE = 22, 11  # TLS content type handshake, handshake message certificate (RFC 8446)


def _set_message_callback(ctx: ssl.SSLContext) -> None:
    """``ctx._msg_callback = _on_message`` without ``ssl``'s wrapper, which turns each call's numbers into enums
    (about 45 calls per handshake: it cost ~0.4 ms per connection); the wrapper where that is not possible."""
    raw = getattr(ssl.SSLContext.__mro__[1], "_msg_callback", None)
    if raw is not None and hasattr(raw, "__set__"):
        try:
            raw.__set__(ctx, _on_message)
            return
        except (TypeError, AttributeError):
            pass
    _set_message_callback(ctx)


#: id(SSLObject) -> its connection, while the handshake runs (the message callback only gets the SSLObject)
_CONNS: dict[int, _FrontConn] = {}


def _configure(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # etcd 3.4: TLS 1.2 and 1.3
    ctx.set_alpn_protocols(["h2"])
    ctx.num_tickets = 0  # gRPC clients do not resume sessions: no TLS 1.3 tickets to make and send
    _set_message_callback(ctx)


class TLSFront:
    """The TLS settings of a listener and its refusal log; :meth:`serve` takes one accepted connection,
    :meth:`listen` binds an address all of whose connections it takes."""

    def __init__(self, cert_file: str, key_file: str, ca_file: str = "", *, client_cert_auth: bool = False,
                 crl_file: str = "", ciphers: str = "", role: Role = CLIENT) -> None:
        if not cert_file or not key_file:
            raise ValueError(f"an https:// {role.name} URL needs {role.cert_flags}")
        self.role = role
        self.log = logging.getLogger(role.logger)
        self.ca_file = ca_file
        self.client_cert_auth = client_cert_auth and bool(ca_file)
        self.context = reloading_ssl_context(cert_file, key_file, ca_file, client_cert_auth=self.client_cert_auth,
                                             ciphers=ciphers, what=role.name, configure=_configure)
        self._crl_file = crl_file
        self._crl = load_crl(crl_file, role.crl_flag) if crl_file else None
        self._crl_watch = WatchedFiles([crl_file])
        self._crl_watch.accepted = self._crl_watch.stamp()
        self._crl_verdicts: dict[bytes, str | None] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self.refusals = 0  # handshakes refused (tests and metrics)
        self._conns: set[_FrontConn] = set()
        self._servers: list[asyncio.AbstractServer] = []

    async def listen(self, host: str, port: int, grpc_paths: Sequence[str]) -> int:
        """Bind every address ``host`` resolves to (port 0: one free port for all) and take each connection
        to it through this front to one of ``grpc_paths`` (round-robin); accepting begins with
        :meth:`start_serving`. Returns the port."""
        if not grpc_paths:
            raise ValueError("a TLS front needs a gRPC server to forward to")
        loop = asyncio.get_running_loop()
        paths = itertools.cycle(list(grpc_paths))
        bound = bind_listeners(host, port)
        try:
            for sock in bound:
                sock.setblocking(False)
                self._servers.append(await loop.create_server(
                    lambda: self.connection(next(paths)), sock=sock, start_serving=False, backlog=1024))
        except BaseException:
            for sock in bound:
                sock.close()
            raise
        return int(bound[0].getsockname()[1])

    async def start_serving(self) -> None:
        """Accept on every address :meth:`listen` bound."""
        for server in self._servers:
            await server.start_serving()

    def connection(self, grpc_path: str) -> asyncio.Protocol:
        """A protocol for one new connection, forwarded to ``grpc_path`` once its handshake succeeds."""
        conn = _FrontConn(self, grpc_path, None)
        self._conns.add(conn)
        return conn

    def close(self) -> None:
        """Stop accepting and close every connection (the member stops)."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()

    def revoked(self, der: bytes) -> str | None:
        """Why a verified certificate is revoked by the CRL file (``--client-crl-file``; re-read when it
        changes)."""
        if not self._crl_file:
            return None
        flag = self.role.crl_flag
        if (stamp := self._crl_watch.changed()) is not None:
            try:
                self._crl = load_crl(self._crl_file, flag)
                self._crl_watch.accepted = stamp
                self._crl_verdicts.clear()
            except Exception:
                self.log.warning(f"cannot reload {flag}; keeping the previous list", exc_info=True)
        if der not in self._crl_verdicts:
            assert self._crl is not None
            verdict = None
            if self._crl.get_revoked_certificate_by_serial_number(
                    (cert := x509.load_der_x509_certificate(der)).serial_number) is not None:
                info = describe(cert)
                role = self.role.name
                verdict = (f"{role} certificate '{info.common_name}' (serial {cert.serial_number:x}, SHA-256 "
                           f"{info.fingerprint}) is revoked by {flag} {self._crl_file}; the {role} "
                           "needs a new certificate")
            self._crl_verdicts[der] = verdict
        return self._crl_verdicts[der]

    def refused(self, remote: tuple[Any, ...] | None, kind: str, reason: str) -> None:
        """Log a refused dialler, once per address and kind of cause (``kind``: OpenSSL's verify code or
        reason, a small set) per minute."""
        self.refusals += 1
        key = (str(remote[0]) if remote else "?", kind)
        now = asyncio.get_running_loop().time()
        if now - self._logged.get(key, -1e18) < LOG_INTERVAL_S:
            return
        if len(self._logged) > 10_000:  # bounded: forget addresses not logged within the interval
            self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_INTERVAL_S}
        self._logged[key] = now
        self.log.warning(self.role.refusal, extra={"remote-addr": _address(remote), "error": reason})

    async def serve(self, sock: socket.socket, grpc_path: str) -> None:
        """Handshake on the accepted ``sock`` (its ClientHello still unread) and forward it to the plaintext gRPC
        server at ``grpc_path``; returns once the connection is set up (or refused)."""
        loop = asyncio.get_running_loop()
        try:
            remote = sock.getpeername()
        except OSError:
            sock.close()
            return
        conn = _FrontConn(self, grpc_path, tuple(remote))
        self._conns.add(conn)
        try:
            await loop.connect_accepted_socket(lambda: conn, sock)
        except BaseException:
            self._conns.discard(conn)
            _CONNS.pop(id(conn.sslobj), None)
            sock.close()
            raise


class _Back(asyncio.Protocol):
    """The plaintext side (to the gRPC server): its bytes are encrypted to the client."""

    def __init__(self, front: _FrontConn) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.front.send(data)

    def eof_received(self) -> bool:
        self.front.close()
        return False

    def pause_writing(self) -> None:
        self.front.pause("back-full")

    def resume_writing(self) -> None:
        self.front.resume("back-full")

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.close()


class _FrontConn(asyncio.Protocol):
    """The client's TCP connection: TLS records in, plaintext to the gRPC server (and back)."""

    def __init__(self, owner: TLSFront, grpc_path: str, remote: tuple[Any, ...] | None) -> None:
        self.owner = owner
        self.grpc_path = grpc_path
        self.remote = remote
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = owner.context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.client_chain: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.back: _Back | None = None
        self.early: list[bytes] = []  # plaintext read before the gRPC connection is up
        self.handshaken = False
        self.closing = False
        self.path = ""
        self._paused: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        _CONNS[id(self.sslobj)] = self

    # -- the client's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        if self.remote is None:  # accepted by the front's own listener
            peername = transport.get_extra_info("peername")
            self.remote = tuple(peername) if isinstance(peername, (tuple, list)) else None
        with contextlib.suppress(Exception):
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        if not self.handshaken:
            log.debug("client TLS handshake timed out", extra={"remote-addr": str(self.remote)})
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.incoming.write(data)
        if not self.handshaken:
            self._handshake()
            if not self.handshaken:
                return
        self._decrypt()

    def eof_received(self) -> bool:
        self.incoming.write_eof()
        if self.handshaken and not self.closing:
            self._decrypt()
        if self.back is not None and self.back.transport is not None and self.back.transport.can_write_eof():
            with contextlib.suppress(Exception):
                self.back.transport.write_eof()
            return True  # the gRPC server's answers may still flow
        self.close()
        return False

    def _flush(self) -> None:
        if self.outgoing.pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.outgoing.read())

    def _handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert
            _CONNS.pop(id(self.sslobj), None)
            try:
                reason = client_handshake_refusal(self.client_chain, exc, self.owner.ca_file, self.owner.role.name)
            except Exception:  # a diagnosis that fails must not lose the refusal
                log.exception("diagnosing a refused TLS handshake failed")
                reason = f"TLS handshake failed: {exc.reason or exc}"
            if reason is None:
                log.debug("client TLS handshake failed", extra={"remote-addr": str(self.remote), "error": str(exc)})
            else:
                self.owner.refused(self.remote, str(getattr(exc, "verify_code", None) or exc.reason), reason)
            self.close()
            return
        self._flush()  # session tickets
        _CONNS.pop(id(self.sslobj), None)
        self.handshaken = True
        if self._timer is not None:
            self._timer.cancel()
        der = self.sslobj.getpeercert(binary_form=True)
        if der and (reason := self.owner.revoked(der)) is not None:
            self.owner.refused(self.remote, "revoked", reason)
            self.close()
            return
        name = ""
        if der and self.owner.client_cert_auth:
            cns = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            name = str(cns[0].value) if cns else ""
        self.pause("connecting")
        task = asyncio.get_running_loop().create_task(self._connect(Verified(name, der or b"",
                                                                             _address(self.remote))))
        task.add_done_callback(_log_failure)

    async def _connect(self, verified: Verified) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            self.path = os.path.join(os.path.dirname(self.grpc_path), f"c{next(_names)}.peer")
            sock.bind(self.path)
            _identities[self.path] = verified
            try:
                await loop.sock_connect(sock, self.grpc_path)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)  # the socket keeps its name (gRPC's peer) without the file
            if self.closing:
                raise ConnectionAbortedError("client left")
            back = _Back(self)
            await loop.create_unix_connection(lambda: back, sock=sock)
        except BaseException:
            sock.close()
            _identities.pop(self.path, None)
            self.close()
            raise
        self.back = back
        if self.closing:
            if back.transport is not None:
                back.transport.close()
            return
        if self.early:
            assert back.transport is not None
            back.transport.writelines(self.early)
            self.early.clear()
        self.resume("connecting")
        self._decrypt()

    def _decrypt(self) -> None:
        chunks: list[bytes] = []
        eof = False
        while True:
            try:
                data = self.sslobj.read(READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                eof = True
                break
            except ssl.SSLError as exc:
                log.debug("client TLS connection failed", extra={"remote-addr": str(self.remote), "error": str(exc)})
                self._flush()
                self.close()
                return
            if not data:
                eof = True
                break
            chunks.append(data)
        self._flush()  # key updates, alerts
        back = self.back.transport if self.back is not None else None
        if chunks:
            if back is None:
                self.early.extend(chunks)
            elif not back.is_closing():
                back.writelines(chunks)
        if eof and back is not None and back.can_write_eof():
            with contextlib.suppress(Exception):
                back.write_eof()

    def send(self, data: bytes) -> None:
        """Plaintext from the gRPC server, to the client."""
        if self.closing:
            return
        try:
            self.sslobj.write(data)
        except ssl.SSLError as exc:
            log.debug("client TLS connection failed", extra={"remote-addr": str(self.remote), "error": str(exc)})
            self.close()
            return
        self._flush()

    # flow control: the client's socket is full -> stop reading the gRPC server, and the other way round
    def pause_writing(self) -> None:
        if self.back is not None and self.back.transport is not None:
            self.back.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.back is not None and self.back.transport is not None:
            self.back.transport.resume_reading()

    def pause(self, why: str) -> None:
        if not self._paused and self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.pause_reading()
        self._paused.add(why)

    def resume(self, why: str) -> None:
        self._paused.discard(why)
        if not self._paused and self.transport is not None and not self.closing:
            with contextlib.suppress(Exception):
                self.transport.resume_reading()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
        _CONNS.pop(id(self.sslobj), None)
        if self.handshaken and self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(ssl.SSLError, ValueError):
                self.sslobj.unwrap()  # close_notify
            self._flush()
        if self.transport is not None:
            self.transport.close()
        if self.back is not None and self.back.transport is not None:
            self.back.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        self.owner._conns.discard(self)
        if self.path:
            _identities.pop(self.path, None)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(exc, ConnectionError):
        log.warning("forwarding a client connection to gRPC failed", extra={"error": str(exc)})


def bind_listeners(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (port 0: the one free port the first got, for
    all). Addresses this host cannot bind (``localhost``'s ::1 without IPv6) are skipped, as grpc skips them;
    none at all raises OSError. IPv6 sockets are IPv6-only, so IPv4 and IPv6 can share the port."""
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
                continue  # an address family this host lacks
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and bound:
                    sockaddr = (sockaddr[0], bound[0].getsockname()[1], *sockaddr[2:])
                sock.bind(sockaddr)
                sock.listen(backlog)
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue
                raise
            bound.append(sock)
        if not bound:
            raise OSError(errno.EADDRNOTAVAIL, f"no address of {host!r} can be bound")
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound
