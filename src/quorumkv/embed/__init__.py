"""Embed a quorumkv member in a Python program (like etcd's Go ``embed`` package).

    from quorumkv.embed import ServerConfig, start

    with start(ServerConfig(name="m1", data_dir="/var/lib/app/m1", ...), isolation="process") as member:
        print(member.client_endpoints)  # ["127.0.0.1:2379"]

The configuration is :class:`~quorumkv.server.config.ServerConfig` (one field per etcd flag). ``isolation``
picks where the member runs: ``"in-process"`` (an event loop in a daemon thread of the host; lowest latency,
shares the GIL and CPU) or ``"process"`` (a supervised ``python -m quorumkv`` child that a busy host cannot
stall; restarted with backoff if it crashes). See ``docs/embedding.md``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import grpc

from quorumkv.embed._args import client_endpoints, config_to_args
from quorumkv.embed._handle import EmbedError, Handle, Isolation
from quorumkv.embed._inprocess import InProcessHandle
from quorumkv.embed._process import ProbeTarget, ProcessHandle, default_log_path
from quorumkv.server.config import ConfigError, ServerConfig

__all__ = [
    "ConfigError",
    "EmbedError",
    "Handle",
    "Isolation",
    "ServerConfig",
    "client_endpoints",
    "config_to_args",
    "default_log_path",
    "start",
]


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def _probe_targets(config: ServerConfig, endpoints: list[str]) -> list[ProbeTarget]:
    """One readiness probe per listen client URL; https ones use the config's CA and (for mTLS) client cert.

    The TLS name verified is the host of the first https advertise client URL (certificates name what is
    advertised), or the endpoint's own host when none is https.
    """
    advertised = [urlsplit(u).hostname for u in config.advertise_client_urls if u.lower().startswith("https://")]
    server_name = advertised[0] if advertised else None
    targets: list[ProbeTarget] = []
    for url, endpoint in zip(config.listen_client_urls, endpoints, strict=True):
        if not url.lower().startswith("https://"):
            targets.append(ProbeTarget(endpoint))
            continue
        cert_auth = config.client_cert_auth
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(config.trusted_ca_file),
            private_key=_read(config.key_file) if cert_auth else None,
            certificate_chain=_read(config.cert_file) if cert_auth else None,
        )
        targets.append(ProbeTarget(endpoint, credentials, server_name))
    return targets


def start(
    config: ServerConfig,
    *,
    isolation: Isolation = "in-process",
    ready_timeout_s: float | None = 30.0,
    restart_on_crash: bool = True,
    max_restarts: int = 5,
    log_path: str | Path | None = None,
) -> Handle:
    """Start a member and, unless ``ready_timeout_s`` is None, wait until it serves client requests.

    Process mode only: ``restart_on_crash``/``max_restarts`` bound the supervisor's restarts of a child that
    dies after it was ready (``max_restarts`` consecutive crashes, backoff 0.5 s doubling to 8 s; a child up
    for 60 s resets both); ``log_path`` (default :func:`default_log_path`) receives the child's output.
    ``ready_timeout_s`` (30 s when None) also bounds each restarted child's startup.

    Raises :class:`ConfigError` for a config embedding cannot use (a listen port of 0, a list element the
    command line cannot carry) and :class:`EmbedError` if the member does not become ready; in that case
    everything started is stopped before raising. Startup errors keep the original message (in-process the
    original exception is the ``__cause__``; in process mode the message ends with the child's log tail).
    """
    if isolation not in ("in-process", "process"):
        raise ValueError(f"isolation must be 'in-process' or 'process', got {isolation!r}")
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    endpoints = client_endpoints(config)
    handle: InProcessHandle | ProcessHandle
    if isolation == "in-process":
        handle = InProcessHandle(config, endpoints)
    else:
        handle = ProcessHandle(
            config,
            endpoints,
            log_path=Path(log_path) if log_path is not None else default_log_path(config),
            ready_timeout_s=30.0 if ready_timeout_s is None else ready_timeout_s,
            restart_on_crash=restart_on_crash,
            max_restarts=max_restarts,
            probes=_probe_targets(config, endpoints),
        )
    handle.start()
    if ready_timeout_s is not None:
        try:
            handle.wait_ready(ready_timeout_s)
        except BaseException:
            handle.close()
            raise
    return handle
