"""Running a member: the gRPC listener(s), signal handling, logging setup.

``serve()`` is the asyncio entry used by the CLI and by ``quorumkv.embed``; ``run_server()`` is the blocking
entry the ``quorumkv`` command calls with a validated ServerConfig.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import errno
import gc
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from prometheus_client import CollectorRegistry

from quorumkv.api.cmux import ClientMux, splice_mode
from quorumkv.api.gateway import CORS_HEADERS, Gateway
from quorumkv.api.http import MAX_HEAD_BYTES, HttpServer
from quorumkv.api.servicers import add_servicers
from quorumkv.backup.manager import BackupOptions, SnapshotManager
from quorumkv.backup.scheduler import Clock, SnapshotScheduler
from quorumkv.errors import EtcdError
from quorumkv.observability.health import Health
from quorumkv.observability.metrics import ServerStats, build_registry, instrument_servicer, render, slow_apply_logger
from quorumkv.security.autotls import self_cert
from quorumkv.security.ciphers import openssl_names
from quorumkv.security.reload import reloading_ssl_context
from quorumkv.security.tls_front import TLSFront, private_socket_dir
from quorumkv.server.config import ServerConfig
from quorumkv.server.join import JoinService, Managed, prepare_member, run_promoter
from quorumkv.server.join import grpc_handler as grpc_join_handler
from quorumkv.server.join import token_text as join_token_text
from quorumkv.server.node import SLOW_APPLY_S
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings
from quorumkv.storage.backend import StorageError
from quorumkv.storage.datadir import DataDirError

log = logging.getLogger("quorumkv")

#: etcd adds this much to --max-request-bytes for the gRPC receive limit (grpcOverheadBytes).
GRPC_OVERHEAD_BYTES = 512 * 1024
#: gRPC servers listening on each client URL, sharing its port (SO_REUSEPORT: the kernel spreads the client
#: connections over them). A grpc.aio server accepts one call at a time: it asks the core for the next call
#: only once the previous one's arrival has passed through grpc's poller thread and the event loop, so with
#: hundreds of concurrent clients calls wait to be *accepted* far longer than they take to handle. Each server
#: accepts on its own, so several accept in parallel (+8 to +25 % writes/s under ``check perf --load=l``,
#: docs/performance.md).
CLIENT_GRPC_SERVERS = 4


def _zap_ts(created: float) -> str:
    """zap's ISO8601 time in UTC with milliseconds: 2026-11-22T04:21:51.685Z."""
    dt = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _zap_level(record: logging.LogRecord) -> str:
    return {"WARNING": "warn", "CRITICAL": "fatal"}.get(record.levelname, record.levelname.lower())


def _caller(record: logging.LogRecord) -> str:
    """``package/file.py:line`` like zap's short caller (``etcdserver/server.go:2037``)."""
    parts = record.pathname.replace("\\", "/").rsplit("/", 2)
    return f"{'/'.join(parts[-2:])}:{record.lineno}"


class JsonLogFormatter(logging.Formatter):
    """JSON lines like etcd's zap logger: level, ts, caller, msg, plus any ``extra`` fields."""

    _RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": _zap_level(record),
            "ts": _zap_ts(record.created),
            "caller": _caller(record),
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in self._RESERVED:
                out[k] = v
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"), ensure_ascii=False)


class ConsoleLogFormatter(JsonLogFormatter):
    """zap's console encoder: ``ts<TAB>LEVEL<TAB>caller<TAB>msg<TAB>{extra fields as JSON}``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in self._RESERVED}
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        line = "\t".join((_zap_ts(record.created), _zap_level(record).upper(), _caller(record),
                          record.getMessage()))
        if fields:
            line += "\t" + json.dumps(fields, default=str, separators=(", ", ": "))
        return line


class CapnslogFormatter(logging.Formatter):
    """etcd 3.4's ``--logger=capnslog`` pretty lines: ``2026-12-07 18:00:00.123456 I | quorumkv: msg``."""

    _LEVELS = {"DEBUG": "D", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "C"}

    def format(self, record: logging.LogRecord) -> str:
        dt = datetime.datetime.fromtimestamp(record.created)
        line = (f"{dt.strftime('%Y-%m-%d %H:%M:%S')}.{dt.microsecond:06d} "
                f"{self._LEVELS.get(record.levelname, 'I')} | {record.name}: {record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _log_streams(outputs: list[str] | tuple[str, ...]) -> list[logging.Handler]:
    """--log-outputs: ``default`` and ``stderr`` write to stderr, ``stdout`` to stdout, anything else is a file
    opened for appending (as etcd's zap logger opens it). Raises OSError naming the file that cannot be opened."""
    handlers: list[logging.Handler] = []
    seen: set[str] = set()
    for output in outputs:
        target = "stderr" if output == "default" else output
        if target in seen:
            continue
        seen.add(target)
        if target == "stderr":
            handlers.append(logging.StreamHandler(sys.stderr))
        elif target == "stdout":
            handlers.append(logging.StreamHandler(sys.stdout))
        else:
            try:
                handlers.append(logging.FileHandler(target, mode="a", encoding="utf-8"))
            except OSError as exc:
                raise OSError(f"cannot open --log-outputs file {target!r}: {exc.strerror or exc}; "
                              "give a writable path, stderr or stdout") from None
    return handlers


def setup_logging(level: str = "info", fmt: str = "json", outputs: list[str] | tuple[str, ...] = ("default",),
                  logger: str = "zap") -> None:
    """Route the ``logging`` records as --logger, --log-outputs, --log-level and --log-format say."""
    handlers = _log_streams(outputs)
    formatter: logging.Formatter
    if logger == "capnslog":
        formatter = CapnslogFormatter()
    else:
        formatter = JsonLogFormatter() if fmt == "json" else ConsoleLogFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, logging.FileHandler):
            old.close()
    root.handlers[:] = handlers
    lvl = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR,
           "panic": logging.CRITICAL, "fatal": logging.CRITICAL}.get(level, logging.INFO)
    root.setLevel(lvl)


@dataclass
class TLSFiles:
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    #: --client-crl-file: verified client certificates revoked by it are refused (UNAUTHENTICATED)
    crl_file: str = ""
    #: --cipher-suites as OpenSSL names (colon-joined for OpenSSL), for the HTTPS listeners
    ciphers: list[str] = field(default_factory=list)


def listen_address(url: str) -> tuple[str, bool]:
    """``http://host:port`` → ("host:port", tls?). Raises ValueError naming the URL and the fix."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"listen URL {url!r}: scheme must be http or https (e.g. http://127.0.0.1:2379)")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"listen URL {url!r} needs a host and a port (e.g. http://127.0.0.1:2379)")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}", parts.scheme == "https"


class RunningMember:
    """A started member: its QuorumServer and client gRPC servers. ``await close()`` stops them all."""

    def __init__(self, server: QuorumServer, grpc_servers: list[grpc.aio.Server], bound: list[str], *,
                 stats: ServerStats | None = None, registry: CollectorRegistry | None = None,
                 http_servers: list[HttpServer] | None = None, metrics_urls: list[str] | None = None,
                 client_http_urls: list[str] | None = None,
                 snapshot_scheduler: SnapshotScheduler | None = None,
                 snapshot_task: asyncio.Task[None] | None = None,
                 promoter_task: asyncio.Task[None] | None = None,
                 client_mux: _ClientPorts | None = None) -> None:
        self.server = server
        #: the client gRPC servers (``CLIENT_GRPC_SERVERS`` of them, sharing the client URLs' ports)
        self.grpc_servers = grpc_servers
        self.bound = bound
        self.stats = stats
        self.registry = registry
        self.http_servers = http_servers or []
        #: the metrics and client HTTP URLs actually bound (port 0 resolved), in listen URL order
        self.metrics_urls = metrics_urls or []
        self.client_http_urls = client_http_urls or []
        #: the scheduled snapshots (``--etcd-snapshot-schedule-cron``), None when disabled
        self.snapshot_scheduler = snapshot_scheduler
        self._snapshot_task = snapshot_task
        #: a managed cluster's learner promotion and stall eviction (server/join.py), None otherwise
        self._promoter_task = promoter_task
        #: gRPC and HTTP/1.1 on the client URLs (None: the client URLs serve gRPC only)
        self.client_mux = client_mux

    async def close(self, grace_s: float = 1.0) -> None:
        if self._promoter_task is not None:
            self._promoter_task.cancel()
            try:
                await self._promoter_task
            except asyncio.CancelledError:
                pass
        if self._snapshot_task is not None:
            if self.snapshot_scheduler is not None:
                await self.snapshot_scheduler.stop()
            self._snapshot_task.cancel()
            try:
                await self._snapshot_task
            except asyncio.CancelledError:
                pass
        if self.client_mux is not None:
            await self.client_mux.close_front()
        for srv in self.http_servers:
            await srv.close()
        await _stop_grpc_servers(self.grpc_servers, grace_s)
        if self.client_mux is not None:
            self.client_mux.remove_sockets()
        await self.server.stop()


@dataclass
class HttpOptions:
    """The member's HTTP side: metrics listeners, the JSON gateway listeners, and what they report."""

    listen_client_http_urls: list[str] = field(default_factory=list)
    listen_metrics_urls: list[str] = field(default_factory=list)
    quota_backend_bytes: int = 2 * 1024 * 1024 * 1024
    #: etcd's expected duration of one apply; slower applies log "apply request took too long".
    slow_apply_s: float = SLOW_APPLY_S
    #: ``--metrics``: "basic", or "extensive" for the per-method grpc_server_handling_seconds histograms.
    metrics: str = "basic"

    @classmethod
    def from_config(cls, cfg: Any) -> HttpOptions:
        quota: Any = getattr(cfg, "effective_quota_backend_bytes", None) or getattr(cfg, "quota_backend_bytes", 0)
        return cls(
            listen_client_http_urls=list(getattr(cfg, "listen_client_http_urls", []) or []),
            listen_metrics_urls=list(getattr(cfg, "listen_metrics_urls", []) or []),
            quota_backend_bytes=int(quota) or 2 * 1024 * 1024 * 1024,
            metrics=str(getattr(cfg, "metrics", "basic") or "basic"),
        )


def _http_ssl(tls: TLSFiles | None) -> ssl.SSLContext:
    tls = tls or TLSFiles()
    if not tls.cert_file or not tls.key_file:
        raise ValueError("an https:// metrics or client HTTP URL needs --cert-file and --key-file")
    return reloading_ssl_context(tls.cert_file, tls.key_file, tls.trusted_ca_file,
                                 client_cert_auth=tls.client_cert_auth, ciphers=":".join(tls.ciphers))


def _refuse_busy_address(addr: str, url: str) -> None:
    """Raise OSError naming ``url`` if a socket already listens on ``addr`` ("host:port").

    The client servers bind with SO_REUSEPORT so that several can share a port; without this check a second
    quorumkv (or embedded member) started on the same port would bind too and silently take part of the
    connections. A plain bind (SO_REUSEADDR, as grpc binds) fails on a port something listens on.
    """
    host, _, port_text = addr.rpartition(":")
    port = int(port_text)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError:
        return  # unresolvable: grpc's own bind reports it
    for family, type_, proto, _, sockaddr in infos:
        probe = socket.socket(family, type_, proto)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(f"cannot listen on {url}: address in use; choose another --listen-client-urls"
                              ) from None
            # an address family this host cannot bind (no IPv6, ...): grpc's own bind decides
        finally:
            probe.close()


async def _stop_grpc_servers(grpc_servers: list[grpc.aio.Server], grace_s: float) -> None:
    await asyncio.gather(*(s.stop(grace_s) for s in grpc_servers))


async def _start_http(url: str, srv: HttpServer, tls: TLSFiles | None) -> str:
    listen_address(url)  # validates the URL
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    ctx = _http_ssl(tls) if parts.scheme == "https" else None
    try:
        port = await srv.listen(parts.hostname, parts.port, ssl_ctx=ctx)
    except OSError as exc:
        raise OSError(f"cannot listen on {url}: {exc.strerror or exc}; choose another URL") from exc
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


class _ClientPorts:
    """gRPC and HTTP/1.1 on every client URL (etcd 3.4's cmux, ``api/cmux.py``): the gRPC servers listen on
    private unix sockets (a 0700 temporary directory; one socket per server and per plain/TLS kind) and a front
    listener on each client URL sends each connection to them or to the HTTP server."""

    def __init__(self) -> None:
        self.sock_dir = ""
        self.paths: dict[bool, list[str]] = {False: [], True: []}
        self.front: ClientMux | None = None
        self.tls_front: TLSFront | None = None

    def bind_front(self, urls: list[str]) -> list[str]:
        """Bind every client URL (before the member starts; accepting begins in :meth:`start_front`)."""
        self.front = ClientMux(stream_limit=MAX_HEAD_BYTES)
        bound = []
        for url in urls:
            listen_address(url)  # validates the URL
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None
            try:
                self.front.listen(parts.hostname, parts.port, secure=parts.scheme == "https")
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot listen on {url}: address in use; choose another --listen-client-urls"
                                  ) from None
                raise OSError(f"cannot listen on {url}: {exc.strerror or exc}; "
                              "choose another --listen-client-urls") from exc
            bound.append(url)
        return bound

    def bind_grpc(self, grpc_servers: list[grpc.aio.Server], urls: list[str], tls: TLSFiles | None) -> None:
        kinds = {listen_address(url)[1] for url in urls}  # validates every URL first
        _remove_stale_socket_dirs()
        self.sock_dir = tempfile.mkdtemp(prefix=f"{GRPC_SOCKET_DIR_PREFIX}{os.getpid()}-")
        for n, grpc_server in enumerate(grpc_servers):
            for secure in sorted(kinds):
                path = os.path.join(self.sock_dir, f"{n}{'s' if secure else ''}.sock")
                addr = f"unix:{path}"
                # plaintext on both kinds: the front terminates TLS for https:// URLs (security/tls_front.py)
                port = grpc_server.add_insecure_port(addr)
                if port == 0:
                    raise OSError(f"cannot listen on {addr} (the client gRPC servers' private socket)")
                self.paths[secure].append(path)

    async def bind_grpc_only_tls(self, grpc_servers: list[grpc.aio.Server], url: str, tls: TLSFiles | None) -> None:
        """An https:// client URL that serves gRPC only (--listen-client-http-urls given): TLS is terminated by a
        front that logs each refused handshake with its cause (security/tls_front.py) and forwards to the gRPC
        servers on private unix sockets. Accepting begins with ``tls_front.start_serving()``."""
        if self.tls_front is None:
            tls = tls or TLSFiles()
            self.tls_front = TLSFront(tls.cert_file, tls.key_file, tls.trusted_ca_file,
                                      client_cert_auth=tls.client_cert_auth, crl_file=tls.crl_file,
                                      ciphers=":".join(tls.ciphers))
            _remove_stale_socket_dirs()
            self.sock_dir = private_socket_dir()
            for n, grpc_server in enumerate(grpc_servers):
                path = os.path.join(self.sock_dir, f"{n}s.sock")
                if grpc_server.add_insecure_port(f"unix:{path}") == 0:
                    raise OSError(f"cannot listen on unix:{path} (the client gRPC servers' private socket)")
                self.paths[True].append(path)
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None  # listen_address checked the URL
        await self.tls_front.listen(parts.hostname, parts.port, self.paths[True])

    def start_front(self, urls: list[str], http_server: HttpServer, tls: TLSFiles | None) -> None:
        assert self.front is not None
        secure_any = any(listen_address(url)[1] for url in urls)
        if secure_any:
            tls = tls or TLSFiles()
            self.tls_front = TLSFront(tls.cert_file, tls.key_file, tls.trusted_ca_file,
                                      client_cert_auth=tls.client_cert_auth, crl_file=tls.crl_file,
                                      ciphers=":".join(tls.ciphers))
        self.front.start(self.paths, http_server.serve_connection, _http_ssl(tls) if secure_any else None,
                         self.tls_front)

    async def close_front(self) -> None:
        if self.front is not None:
            await self.front.close()
        if self.tls_front is not None:
            self.tls_front.close()

    def remove_sockets(self) -> None:
        if self.sock_dir:
            shutil.rmtree(self.sock_dir, ignore_errors=True)


#: The client gRPC servers' private unix sockets live in ``<tmp>/quorumkv-grpc-<pid>-<random>/``.
GRPC_SOCKET_DIR_PREFIX = "quorumkv-grpc-"


def _remove_stale_socket_dirs() -> None:
    """Remove the socket directories of members that died without cleaning up (kill -9): those whose pid is no
    longer a live process. A directory without a pid in its name, or whose pid lives, is left alone."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(GRPC_SOCKET_DIR_PREFIX):
            continue
        pid_text = name[len(GRPC_SOCKET_DIR_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive (or not ours to signal): its directory may be in use
        except ProcessLookupError:
            pass
        except OSError:
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)


#: Test-only: ``advertisedPeerURL=dialURL,...`` (set by ``quorumkv.testing.cluster`` to route links through fault
#: proxies); malformed pairs are ignored.
PEER_DIAL_MAP_ENV = "QUORUMKV_TEST_PEER_DIAL_MAP"


def peer_dial_map_from_env(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)


async def start_member(settings: ServerSettings, listen_client_urls: list[str],
                       tls: TLSFiles | None = None, http: HttpOptions | None = None, *,
                       backups: BackupOptions | None = None, snapshot_clock: Clock | None = None,
                       managed: Managed | None = None) -> RunningMember:
    """Open the data dir, start the member, its gRPC listeners and its HTTP listeners (``http``: metrics,
    health, JSON gateway) and, with ``backups`` not disabled, the snapshot schedule (``snapshot_clock``: tests'
    fake clock); raise on any startup problem."""
    http = http or HttpOptions()
    if not http.listen_client_http_urls:
        splice_mode()  # a bad QUORUMKV_CLIENT_PORT_SPLICE is refused before the data dir is touched
    if not settings.peer_dial_map:
        settings.peer_dial_map = peer_dial_map_from_env(os.environ.get(PEER_DIAL_MAP_ENV, ""))
    if settings.cluster_reset_restore_path:  # before the data dir is opened (it is replaced)
        _restore_for_cluster_reset(settings, backups.s3 if backups is not None else None)
    stats = ServerStats(extensive=http.metrics == "extensive")
    server = QuorumServer(settings, on_applied_hooks=[stats.on_applied], fsync_observer=stats.observe_commit)
    if server._node is not None:  # a joining member creates its node once it has joined
        server.node.slow_apply_s = http.slow_apply_s
        server.node.slow_apply_observer = slow_apply_logger(stats, http.slow_apply_s)
    http_servers: list[HttpServer] = []
    metrics_urls: list[str] = []
    client_http_urls: list[str] = []
    grpc_servers: list[grpc.aio.Server] = []
    #: no --listen-client-http-urls: the client URLs serve gRPC and HTTP/1.1 (etcd 3.4), else gRPC only (3.5)
    ports = _ClientPorts() if not http.listen_client_http_urls else None
    grpc_only_tls: _ClientPorts | None = None  # gRPC-only https:// client URLs: their TLS front
    try:
        bound: list[str] = []
        await server.start()
        options = [
            ("grpc.max_receive_message_length", settings.max_request_bytes + GRPC_OVERHEAD_BYTES),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_concurrent_streams", 2**31 - 1),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            # several servers share each port (CLIENT_GRPC_SERVERS); _refuse_busy_address keeps a port that
            # something else listens on refused, as without SO_REUSEPORT
            ("grpc.so_reuseport", 1),
        ]
        # every https:// client URL's TLS front checks --client-crl-file on its connections (security/tls_front.py)
        grpc_servers.extend(grpc.aio.server(options=options) for _ in range(CLIENT_GRPC_SERVERS))
        servicers = add_servicers(grpc_servers, server,
                                  instrument=lambda servicer, name: instrument_servicer(servicer, name, stats),
                                  count_bytes=(stats.count_received_bytes, stats.count_sent_bytes))
        if managed is not None:  # a managed cluster's members serve joins on their client port
            join_handler = grpc_join_handler(JoinService(server, managed))
            for grpc_server in grpc_servers:
                grpc_server.add_generic_rpc_handlers((join_handler,))
        for url in listen_client_urls if ports is None else ():
            addr, secure = listen_address(url)
            _refuse_busy_address(addr, url)
            if secure:  # through a TLS front that logs refused handshakes
                grpc_only_tls = grpc_only_tls or _ClientPorts()
                await grpc_only_tls.bind_grpc_only_tls(grpc_servers, url, tls)
                bound.append(url)
                continue
            for grpc_server in grpc_servers:
                port = grpc_server.add_insecure_port(addr)
                if port == 0:
                    raise OSError(f"cannot listen on {url}: address in use or not available; "
                                  "choose another --listen-client-urls")
                addr = f"{addr.rsplit(':', 1)[0]}:{port}"  # port 0: the others join the port the first got
            bound.append(url)
        if ports is not None:
            ports.bind_grpc(grpc_servers, listen_client_urls, tls)
        for grpc_server in grpc_servers:
            await grpc_server.start()
        if grpc_only_tls is not None and grpc_only_tls.tls_front is not None:
            await grpc_only_tls.tls_front.start_serving()
        registry = build_registry(server, stats, quota_backend_bytes=http.quota_backend_bytes)
        gateway = Gateway(servicers, Health(server, stats), lambda: render(registry))
        body_limit = 2 * settings.max_request_bytes + GRPC_OVERHEAD_BYTES  # base64 JSON of a maximal request
        for url in http.listen_metrics_urls:
            srv = HttpServer(gateway.metrics_handler, max_body_bytes=body_limit)
            http_servers.append(srv)
            metrics_urls.append(await _start_http(url, srv, tls))
        for url in http.listen_client_http_urls:
            srv = HttpServer(gateway.client_handler, max_body_bytes=body_limit, extra_headers=CORS_HEADERS)
            http_servers.append(srv)
            client_http_urls.append(await _start_http(url, srv, tls))
        if ports is not None:
            srv = HttpServer(gateway.client_handler, max_body_bytes=body_limit, extra_headers=CORS_HEADERS)
            http_servers.append(srv)
            # bound once the member serves, as the gRPC-only servers are: a client dialling earlier is refused
            # and retries, rather than waiting in the listen backlog through a long start (a join)
            bound = ports.bind_front(listen_client_urls)
            ports.start_front(listen_client_urls, srv, tls)
    except BaseException:
        for mux in (ports, grpc_only_tls):
            if mux is not None:
                await mux.close_front()
        for srv in http_servers:
            await srv.close()
        await _stop_grpc_servers(grpc_servers, 0)
        for mux in (ports, grpc_only_tls):
            if mux is not None:
                mux.remove_sockets()
        await server.stop()
        raise
    log.info("serving client requests", extra={"listen-client-urls": bound, "member-id": f"{server.member_id:x}",
                                                "cluster-id": f"{server.cluster_id:x}"})
    if http_servers:
        log.info("serving HTTP", extra={"listen-metrics-urls": metrics_urls,
                                        "listen-client-http-urls": client_http_urls})
    scheduler: SnapshotScheduler | None = None
    task: asyncio.Task[None] | None = None
    if backups is not None and not backups.disabled:
        scheduler = SnapshotScheduler(server, SnapshotManager(backups, stats=stats), clock=snapshot_clock)
        task = asyncio.get_running_loop().create_task(scheduler.run(), name="etcd-snapshot-schedule")
        log.info("scheduled snapshots", extra={"cron": backups.cron, "dir": backups.directory,
                                               "retention": backups.retention, "s3": backups.s3 is not None})
    promoter = (asyncio.get_running_loop().create_task(run_promoter(server, managed), name="learner-promoter")
                if managed is not None else None)
    return RunningMember(server, grpc_servers, bound, stats=stats, registry=registry, http_servers=http_servers,
                         metrics_urls=metrics_urls, client_http_urls=client_http_urls,
                         snapshot_scheduler=scheduler, snapshot_task=task, promoter_task=promoter,
                         client_mux=ports or grpc_only_tls)


async def serve(settings: ServerSettings, listen_client_urls: list[str], tls: TLSFiles | None = None,
                *, on_ready: Callable[[RunningMember], None] | None = None,
                stop_event: asyncio.Event | None = None, http: HttpOptions | None = None,
                backups: BackupOptions | None = None, managed: Managed | None = None) -> bool:
    """Run until ``stop_event`` is set (or SIGTERM/SIGINT when it is None). Returns whether the member stopped
    because it was removed from the cluster."""
    member = await start_member(settings, listen_client_urls, tls, http, backups=backups, managed=managed)
    if member.server.reset_removed is not None:  # --cluster-reset/--force-new-cluster: what to do next
        from quorumkv.server.reset import next_steps

        print(next_steps(member.server.member_id, member.server.reset_removed, cluster_reset=settings.cluster_reset,
                         data_dir=settings.data_dir), file=sys.stderr, flush=True)
    stop = stop_event or asyncio.Event()
    if stop_event is None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    tune_gc()
    if on_ready is not None:
        on_ready(member)
    removed = member.server.removed_event
    try:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(removed.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        if removed.is_set():
            log.error("the member has been permanently removed from the cluster; stopping",
                      extra={"member-id": f"{member.server.member_id:x}"})
    finally:
        log.info("stopping member")
        await member.close()
    return removed.is_set() and not stop.is_set()


#: ``QUORUMKV_GC=default`` keeps CPython's collector settings in the ``quorumkv`` command (see tune_gc).
GC_ENV = "QUORUMKV_GC"
#: Allocations (minus deallocations) between two young-generation collections (CPython's default: 700).
GC_THRESHOLD0 = 20_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running server (the ``quorumkv`` command only, never
    an embedding host): everything allocated during startup (modules, protobuf descriptors, gRPC objects) is
    moved out of the collector's sight (``gc.freeze``), and young collections run every 20,000 net
    allocations instead of 700. Under ``check perf`` load the collector otherwise held the GIL ~8 % of the
    time (docs/performance.md). Reference cycles are still collected; only less often."""
    if os.environ.get(GC_ENV) == "default":
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, gen1, gen2)


#: ``QUORUMKV_EVENT_LOOP``: ``uvloop`` (the default when the uvloop package is installed) or ``asyncio``.
EVENT_LOOP_ENV = "QUORUMKV_EVENT_LOOP"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The ``quorumkv`` command's event loop: uvloop's when installed (faster gRPC serving, see
    docs/performance.md) unless ``QUORUMKV_EVENT_LOOP=asyncio``; else asyncio's own."""
    choice = os.environ.get(EVENT_LOOP_ENV, "uvloop")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            log.debug("uvloop is not installed; using asyncio's event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _apply_auto_tls(config: Any) -> Any:
    """--auto-tls: a self-signed certificate in <data-dir>/fixtures/client, as etcd makes it (clients then dial
    with --insecure-skip-tls-verify); ignored when --cert-file is given, as in etcd."""
    if getattr(config, "auto_tls", False) and not getattr(config, "cert_file", ""):
        urls = list(config.listen_client_urls) + list(getattr(config, "listen_client_http_urls", []) or [])
        cert, key = self_cert(os.path.join(str(config.data_dir), "fixtures", "client"), urls)
        log.info("automatically generated client TLS certificate", extra={"cert-file": cert})
        return dataclasses.replace(config, cert_file=cert, key_file=key)
    return config


def _apply_cipher_suites(config: Any) -> list[str]:
    """--cipher-suites as OpenSSL names for the HTTPS listeners. gRPC takes them process-wide from
    GRPC_SSL_CIPHER_SUITES, read once when gRPC is imported: the ``quorumkv`` command sets it before
    (cli/server.py). As in Go, TLS 1.3's suites are not configurable."""
    suites = list(getattr(config, "cipher_suites", []) or [])
    return openssl_names(suites) if suites else []


def _restore_for_cluster_reset(settings: ServerSettings, s3: Any, token: str | None = None,
                               cluster_init: bool = False) -> None:
    """--cluster-reset-restore-path: fetch and verify the snapshot, then restore it as the data dir (the old one
    is kept beside it); the member then starts as a cluster of one (server/reset.py). ``token`` (not None: the
    ``quorumkv`` command, a managed cluster possible): the old data dir's CA and token are carried into the
    restored one; without them, the CA is recovered from the snapshot's bootstrap record with the token."""
    import shutil
    from pathlib import Path

    from quorumkv.backup.restore_source import RestoreSourceError, resolve_restore_source
    from quorumkv.server import reset
    from quorumkv.server.snapshot import SnapshotError

    if Path(settings.data_dir).is_dir():
        reset.check_guard(settings.data_dir)
    target = Path(settings.data_dir)
    work = target.parent / f".{target.name}.reset-download-{os.getpid()}"
    try:
        path = resolve_restore_source(settings.cluster_reset_restore_path, work_dir=work, s3=s3)
        reset.restore_data_dir(path, settings, None if token is None else
                               lambda staging, old: _carry_cluster_ca(staging, old, token, cluster_init))
    except (RestoreSourceError, SnapshotError) as exc:
        raise ValueError(f"--cluster-reset-restore-path: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _carry_cluster_ca(staging: Path, old: Path, token: str, cluster_init: bool) -> None:
    """A managed member's restore: its CA and token stay (from the old data dir), else the snapshot's bootstrap
    record is opened with ``token`` (server/join.py)."""
    import shutil

    from quorumkv.security import cluster_pki as pki
    from quorumkv.server.join import adopt_bootstrap

    if (old / pki.TLS_DIR / pki.CA_CERT).exists() and (old / pki.TLS_DIR / pki.CA_KEY).exists():
        shutil.copytree(old / pki.TLS_DIR, staging / pki.TLS_DIR)
        if (old / pki.TOKEN_FILE).exists():
            shutil.copy2(old / pki.TOKEN_FILE, staging / pki.TOKEN_FILE)
    elif token and not adopt_bootstrap(staging, token) and not cluster_init:
        raise ValueError("--token: the snapshot holds no cluster CA (no /bootstrap/ record: it was not taken from "
                         "a managed cluster); add --cluster-init to make a new CA, or drop --token (nothing was "
                         "changed)")


def run_server(config: Any) -> int:
    """Blocking entry for the ``quorumkv`` command: returns the process exit code."""
    try:
        setup_logging(getattr(config, "log_level", "info"), getattr(config, "log_format", "json"),
                      list(getattr(config, "log_outputs", ["default"]) or ["default"]),
                      getattr(config, "logger", "zap"))
    except OSError as exc:
        print(f"quorumkv: {exc}", file=sys.stderr)
        return 1
    config = _apply_auto_tls(config)
    ciphers = _apply_cipher_suites(config)
    try:
        if isinstance(config, ServerConfig) and config.cluster_reset_restore_path:
            # before prepare_member: a managed cluster's CA may come from the snapshot (with the token)
            backups = BackupOptions.from_config(config) if hasattr(config, "etcd_snapshot_dir") else None
            _restore_for_cluster_reset(ServerSettings.from_config(config), backups.s3 if backups else None,
                                       token=join_token_text(config), cluster_init=config.cluster_init)
            config = dataclasses.replace(config, cluster_reset_restore_path="")
        # at most twice: a managed member removed from its cluster moves its data aside and rejoins once
        for _ in range(2):
            run_config, managed = prepare_member(config) if isinstance(config, ServerConfig) else (config, None)
            settings = ServerSettings.from_config(run_config)
            tls = TLSFiles(cert_file=getattr(run_config, "cert_file", ""), key_file=getattr(run_config, "key_file", ""),
                           trusted_ca_file=getattr(run_config, "trusted_ca_file", ""),
                           client_cert_auth=bool(getattr(run_config, "client_cert_auth", False)),
                           crl_file=getattr(run_config, "client_crl_file", "") or "", ciphers=ciphers)
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                removed = runner.run(serve(
                    settings, list(run_config.listen_client_urls), tls, http=HttpOptions.from_config(run_config),
                    backups=BackupOptions.from_config(run_config) if hasattr(run_config, "etcd_snapshot_dir")
                    else None, managed=managed))
            if not (removed and managed is not None):
                break
    except (DataDirError, StorageError, ValueError, OSError) as exc:
        print(f"quorumkv: {exc}", file=sys.stderr)
        return 1
    except EtcdError as exc:
        print(f"quorumkv: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
