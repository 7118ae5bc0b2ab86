"""Running a member: the gRPC listener(s), signal handling, logging setup.

``serve()`` is the asyncio entry used by the CLI and by ``quorumkv.embed``; ``run_server()`` is the blocking
entry the ``quorumkv`` command calls with a validated ServerConfig.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc

from quorumkv.api.servicers import add_servicers
from quorumkv.server.errors import EtcdError
from quorumkv.server.server import QuorumServer, ServerSettings
from quorumkv.storage.backend import StorageError
from quorumkv.storage.datadir import DataDirError

log = logging.getLogger("quorumkv")

#: etcd adds this much to --max-request-bytes for the gRPC receive limit (grpcOverheadBytes).
GRPC_OVERHEAD_BYTES = 512 * 1024


class JsonLogFormatter(logging.Formatter):
    """JSON lines like etcd's zap logger: level, ts, caller, msg, plus any ``extra`` fields."""

    _RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": record.levelname.lower().replace("warning", "warn"),
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "caller": f"{record.module}:{record.lineno}",
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in self._RESERVED:
                out[k] = v
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lvl = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR,
           "panic": logging.CRITICAL, "fatal": logging.CRITICAL}.get(level, logging.INFO)
    root.setLevel(lvl)


@dataclass
class TLSFiles:
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False


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


def _credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    if not tls.cert_file or not tls.key_file:
        raise ValueError("an https:// client URL needs --cert-file and --key-file")
    with open(tls.key_file, "rb") as f:
        key = f.read()
    with open(tls.cert_file, "rb") as f:
        cert = f.read()
    ca = None
    if tls.trusted_ca_file:
        with open(tls.trusted_ca_file, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=tls.client_cert_auth)


class RunningMember:
    """A started member: its QuorumServer and gRPC server. ``await close()`` stops both."""

    def __init__(self, server: QuorumServer, grpc_server: grpc.aio.Server, bound: list[str]) -> None:
        self.server = server
        self.grpc_server = grpc_server
        self.bound = bound

    async def close(self, grace_s: float = 1.0) -> None:
        await self.grpc_server.stop(grace_s)
        await self.server.stop()


async def start_member(settings: ServerSettings, listen_client_urls: list[str],
                       tls: TLSFiles | None = None) -> RunningMember:
    """Open the data dir, start the member and its gRPC listeners; raise on any startup problem."""
    server = QuorumServer(settings)
    try:
        await server.start()
        options = [
            ("grpc.max_receive_message_length", settings.max_request_bytes + GRPC_OVERHEAD_BYTES),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_concurrent_streams", 2**31 - 1),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.so_reuseport", 0),
        ]
        grpc_server = grpc.aio.server(options=options)
        add_servicers(grpc_server, server)
        bound = []
        for url in listen_client_urls:
            addr, secure = listen_address(url)
            if secure:
                port = grpc_server.add_secure_port(addr, _credentials(tls or TLSFiles()))
            else:
                port = grpc_server.add_insecure_port(addr)
            if port == 0:
                raise OSError(f"cannot listen on {url}: address in use or not available; "
                              "choose another --listen-client-urls")
            bound.append(url)
        await grpc_server.start()
    except BaseException:
        await server.stop()
        raise
    log.info("serving client requests", extra={"listen-client-urls": bound, "member-id": f"{server.member_id:x}",
                                                "cluster-id": f"{server.cluster_id:x}"})
    return RunningMember(server, grpc_server, bound)


async def serve(settings: ServerSettings, listen_client_urls: list[str], tls: TLSFiles | None = None,
                *, on_ready: Callable[[RunningMember], None] | None = None,
                stop_event: asyncio.Event | None = None) -> None:
    """Run until ``stop_event`` is set (or SIGTERM/SIGINT when it is None)."""
    member = await start_member(settings, listen_client_urls, tls)
    stop = stop_event or asyncio.Event()
    if stop_event is None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(member)
    try:
        await stop.wait()
    finally:
        log.info("stopping member")
        await member.close()


def run_server(config: Any) -> int:
    """Blocking entry for the ``quorumkv`` command: returns the process exit code."""
    setup_logging(getattr(config, "log_level", "info"), getattr(config, "log_format", "json"))
    settings = ServerSettings.from_config(config)
    tls = TLSFiles(cert_file=getattr(config, "cert_file", ""), key_file=getattr(config, "key_file", ""),
                   trusted_ca_file=getattr(config, "trusted_ca_file", ""),
                   client_cert_auth=bool(getattr(config, "client_cert_auth", False)))
    try:
        asyncio.run(serve(settings, list(config.listen_client_urls), tls))
    except (DataDirError, StorageError, ValueError, OSError) as exc:
        print(f"quorumkv: {exc}", file=sys.stderr)
        return 1
    except EtcdError as exc:
        print(f"quorumkv: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
