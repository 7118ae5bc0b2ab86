"""TLS credentials that re-read their files when they change, so a renewed (or an expired then replaced)
certificate is served without a restart, as etcd reloads its files per handshake.

gRPC servers use ``grpc.dynamic_ssl_server_credentials``, whose fetcher gRPC calls before each handshake: it
stats the files (at most once a second) and hands gRPC a new configuration only when one changed and the new
pair is usable (a key that does not match the certificate yet, as between two ``cp`` commands, keeps the old
pair and is retried). Client channels (peer links) ask :meth:`ReloadingChannelCredentials.get` when they dial.
HTTPS listeners swap their ``ssl.SSLContext`` from the SNI callback, which runs during each handshake.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from quorumkv.security.certs import Endpoint, TLSFileError, check_endpoint, load_certs, load_key

__all__ = ["ReloadingChannelCredentials", "ReloadingServerCredentials", "WatchedFiles", "reloading_ssl_context"]

log = logging.getLogger("quorumkv.security")

#: How often the files are looked at (a stat each), at most.
CHECK_INTERVAL_S = 1.0


class WatchedFiles:
    """A set of files and the (inode, size, mtime) they had when last accepted."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = [p for p in paths if p]
        self.accepted: tuple[Any, ...] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def stamp(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for p in self.paths:
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def changed(self) -> tuple[Any, ...] | None:
        """The new stamp if the files changed since accepted (checked at most every CHECK_INTERVAL_S)."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < CHECK_INTERVAL_S and self.accepted is not None:
                return None
            self._checked = now
        stamp = self.stamp()
        return None if stamp == self.accepted else stamp


def _usable(cert_file: str, key_file: str) -> str | None:
    """Why the pair cannot be served (unreadable, or the key does not match), else None."""
    try:
        load_certs(cert_file)
        load_key(key_file)
    except TLSFileError as exc:
        return exc.problem.line()
    for p in check_endpoint(Endpoint("client", cert_file, key_file)):
        if "does not match" in p.problem:
            return p.line()
    return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _Reloading:
    def __init__(self, cert_file: str, key_file: str, ca_file: str, what: str) -> None:
        self.cert_file, self.key_file, self.ca_file = cert_file, key_file, ca_file
        self.files = WatchedFiles([cert_file, key_file, ca_file])
        self.what = what
        self.reloads = 0
        self._refused: tuple[Any, ...] | None = None

    def _load(self) -> tuple[bytes, bytes, bytes | None] | None:
        """The files' contents if they changed and are usable; None to keep what is served."""
        stamp = self.files.changed()
        if stamp is None:
            return None
        reason = _usable(self.cert_file, self.key_file)
        if reason is not None:
            if stamp != self._refused:
                self._refused = stamp
                log.warning("not reloading the changed TLS files: keeping the previous certificate",
                            extra={"tls": self.what, "error": reason})
            return None
        try:
            loaded = (_read(self.cert_file), _read(self.key_file), _read(self.ca_file) if self.ca_file else None)
        except OSError:
            return None
        first = self.files.accepted is None
        self.files.accepted = stamp
        if not first:
            self.reloads += 1
            log.info("reloaded TLS certificate", extra={"tls": self.what, "cert-file": self.cert_file})
        return loaded


class ReloadingServerCredentials:
    """gRPC server credentials over files that are re-read when they change. Each :meth:`credentials` call
    makes a new object with its own file state: gRPC asks a dynamic credential's fetcher for its first
    configuration on every port it is added to, so one object cannot serve two ports or servers."""

    def __init__(self, cert_file: str, key_file: str, ca_file: str = "", *, client_cert_auth: bool = False,
                 what: str = "client") -> None:
        self.cert_file, self.key_file, self.ca_file, self.what = cert_file, key_file, ca_file, what
        self.client_cert_auth = client_cert_auth and bool(ca_file)

    def credentials(self) -> grpc.ServerCredentials:
        state = _Reloading(self.cert_file, self.key_file, self.ca_file, self.what)
        loaded = state._load()
        if loaded is None:
            raise TLSFileError(check_endpoint(Endpoint("client", self.cert_file, self.key_file))[0])

        def config(loaded: tuple[bytes, bytes, bytes | None]) -> Any:
            cert, key, ca = loaded
            return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

        def fetch() -> Any:
            try:
                new = state._load()
            except Exception:  # never let an exception escape into gRPC's handshaker
                log.exception("checking the TLS files failed")
                return None
            return None if new is None else config(new)

        return grpc.dynamic_ssl_server_credentials(config(loaded), fetch,
                                                   require_client_authentication=self.client_cert_auth)


class ReloadingChannelCredentials(_Reloading):
    """gRPC channel credentials (a peer dialling with its peer certificate), rebuilt when the files change."""

    def __init__(self, cert_file: str, key_file: str, ca_file: str = "", what: str = "peer") -> None:
        super().__init__(cert_file, key_file, ca_file, what)
        self._creds: grpc.ChannelCredentials | None = None

    def get(self) -> grpc.ChannelCredentials:
        loaded = self._load()
        if loaded is not None or self._creds is None:
            if loaded is None:  # first use with unusable files: let gRPC report it on the handshake
                loaded = (_read(self.cert_file), _read(self.key_file),
                          _read(self.ca_file) if self.ca_file else None)
            cert, key, ca = loaded
            self._creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                       certificate_chain=cert)
        return self._creds


def reloading_ssl_context(cert_file: str, key_file: str, ca_file: str = "", *, client_cert_auth: bool = False,
                          ciphers: str = "", what: str = "client",
                          configure: Callable[[ssl.SSLContext], None] | None = None) -> ssl.SSLContext:
    """A server ``SSLContext`` whose certificate is re-read when the files change (swapped per handshake).
    ``configure`` is applied to every context built (the first and each reloaded one)."""
    state = _Reloading(cert_file, key_file, ca_file, what)

    def build() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_file, key_file)
        if ca_file:
            ctx.load_verify_locations(ca_file)
        if client_cert_auth:
            ctx.verify_mode = ssl.CERT_REQUIRED
        if ciphers:
            ctx.set_ciphers(ciphers)
        if configure is not None:
            configure(ctx)
        return ctx

    state._load()
    outer = build()
    current = [outer]

    def on_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
        try:
            if state._load() is not None:
                current[0] = build()
                current[0].sni_callback = on_sni
        except Exception:
            log.exception("reloading the TLS files failed")
        if current[0] is not outer:
            sock.context = current[0]
        return None

    outer.sni_callback = on_sni
    return outer
