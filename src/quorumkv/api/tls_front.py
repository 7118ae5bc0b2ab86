"""TLS for gRPC on an ``https://`` client URL, terminated by the client port's front (``api/cmux.py``).

grpc core rejects a bad client certificate inside its own handshake and tells the application nothing, so a
member with ``--client-cert-auth`` could not say why a client was refused. Here the front does the TLS itself
(Python's ``ssl`` over memory BIOs, with the gRPC server's settings: certificate and key re-read when they
change, ``--trusted-ca-file``, ``--client-cert-auth``, ``--client-crl-file``, ``--cipher-suites``, ALPN ``h2``,
TLS 1.2 and 1.3 as etcd 3.4) and forwards the decrypted HTTP/2 bytes to a plaintext gRPC server on a private
unix socket (in the member's 0700 socket directory).

- A refused handshake: OpenSSL verifies the client's chain and sends the TLS alert (unknown CA, certificate
  expired, unsupported certificate purpose, certificate required); the certificates the client sent are read
  from its Certificate message as it passes (the context's message callback), so the member logs the exact
  cause and fix (``security.diagnose.client_handshake_refusal``: both CAs' fingerprints, the dates, the
  missing clientAuth usage ...), once per client address (and kind of cause) per minute: ``rejected
  connection``.
- A revoked certificate (``--client-crl-file``) is refused right after the handshake, as etcd 3.4 does: the
  connection is closed and logged the same way.
- Who the client is: each forwarded connection's unix socket is bound to a unique path before it connects,
  which gRPC reports as the call's peer (``unix:<path>``); :func:`verified_common_name` maps that path to the
  verified certificate's common name while the connection lives (``caller()`` in ``api/servicers.py`` uses it
  as etcd does: with ``--client-cert-auth`` the CN is the user when no token is given). A connection that did
  not come through the front (the socket directory is private to the member's user) has no such path and no
  identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from quorumkv.security.certs import describe, load_crl
from quorumkv.security.diagnose import certificate_message_chain, client_handshake_refusal
from quorumkv.security.reload import WatchedFiles, reloading_ssl_context

__all__ = ["TLSFront", "verified_common_name"]

log = logging.getLogger("quorumkv.cmux")

#: A client that has not completed its handshake in this time is disconnected.
HANDSHAKE_TIMEOUT_S = 10.0
#: Largest plaintext read from the TLS object per call.
READ_BYTES = 256 * 1024
#: A refused client address is logged at most once in this many seconds.
LOG_INTERVAL_S = 60.0

#: unix socket path of a forwarded connection -> the verified client certificate's common name ("" for none)
_identities: dict[str, str] = {}
_names = itertools.count(1)


def verified_common_name(peer: str) -> str | None:
    """The verified client certificate CN of a call that came through a TLS front (``peer``: gRPC's
    ``context.peer()``), None for any other call."""
    if not peer.startswith("unix:"):
        return None
    return _identities.get(peer[5:]) or None


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
    """The TLS settings of the client URLs and the refusal log; :meth:`serve` takes one accepted connection."""

    def __init__(self, cert_file: str, key_file: str, ca_file: str = "", *, client_cert_auth: bool = False,
                 crl_file: str = "", ciphers: str = "") -> None:
        if not cert_file or not key_file:
            raise ValueError("an https:// client URL needs --cert-file and --key-file")
        self.ca_file = ca_file
        self.client_cert_auth = client_cert_auth and bool(ca_file)
        self.context = reloading_ssl_context(cert_file, key_file, ca_file, client_cert_auth=self.client_cert_auth,
                                             ciphers=ciphers, configure=_configure)
        self._crl_file = crl_file
        self._crl = load_crl(crl_file, "--client-crl-file") if crl_file else None
        self._crl_watch = WatchedFiles([crl_file])
        self._crl_watch.accepted = self._crl_watch.stamp()
        self._crl_verdicts: dict[bytes, str | None] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self.refusals = 0  # handshakes refused (tests and metrics)
        self._conns: set[_FrontConn] = set()

    def close(self) -> None:
        """Close every connection (the member stops)."""
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()

    def revoked(self, der: bytes) -> str | None:
        """Why a verified client certificate is revoked by ``--client-crl-file`` (re-read when it changes)."""
        if not self._crl_file:
            return None
        if (stamp := self._crl_watch.changed()) is not None:
            try:
                self._crl = load_crl(self._crl_file, "--client-crl-file")
                self._crl_watch.accepted = stamp
                self._crl_verdicts.clear()
            except Exception:
                log.warning("cannot reload --client-crl-file; keeping the previous list", exc_info=True)
        if der not in self._crl_verdicts:
            assert self._crl is not None
            verdict = None
            if self._crl.get_revoked_certificate_by_serial_number(
                    (cert := x509.load_der_x509_certificate(der)).serial_number) is not None:
                info = describe(cert)
                verdict = (f"client certificate '{info.common_name}' (serial {cert.serial_number:x}, SHA-256 "
                           f"{info.fingerprint}) is revoked by --client-crl-file {self._crl_file}; the client "
                           "needs a new certificate")
            self._crl_verdicts[der] = verdict
        return self._crl_verdicts[der]

    def refused(self, remote: tuple[Any, ...] | None, kind: str, reason: str) -> None:
        """Log a refused client, once per address and kind of cause (``kind``: OpenSSL's verify code or
        reason, a small set) per minute."""
        self.refusals += 1
        key = (str(remote[0]) if remote else "?", kind)
        now = asyncio.get_running_loop().time()
        if now - self._logged.get(key, -1e18) < LOG_INTERVAL_S:
            return
        if len(self._logged) > 10_000:  # bounded: forget addresses not logged within the interval
            self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_INTERVAL_S}
        self._logged[key] = now
        addr = f"[{remote[0]}]:{remote[1]}" if remote and ":" in str(remote[0]) else (
            f"{remote[0]}:{remote[1]}" if remote else "?")
        log.warning("rejected connection", extra={"remote-addr": addr, "error": reason})

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

    def __init__(self, owner: TLSFront, grpc_path: str, remote: tuple[Any, ...]) -> None:
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
                reason = client_handshake_refusal(self.client_chain, exc, self.owner.ca_file)
            except Exception:  # a diagnosis that fails must not lose the refusal
                log.exception("diagnosing a refused client handshake failed")
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
        task = asyncio.get_running_loop().create_task(self._connect(name))
        task.add_done_callback(_log_failure)

    async def _connect(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            self.path = os.path.join(os.path.dirname(self.grpc_path), f"c{next(_names)}.peer")
            sock.bind(self.path)
            _identities[self.path] = name
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
