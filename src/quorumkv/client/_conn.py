"""Connection policy shared by both clients (pure): endpoints, channel settings, retry rules, watch resumption.

Retry rule (invariant): a call is resent to another endpoint only when that cannot apply it twice, i.e. when
gRPC says the request never left the client (no connection could be made), or when the call is idempotent
(a read, a status, a keep-alive) and failed with UNAVAILABLE. Writes that fail after being sent are raised.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.client._codec import watch_create_request, watch_response
from quorumkv.client._errors import CompactedError, EtcdError, error_for
from quorumkv.client._types import WatchResponse

#: gRPC's words for "no connection could be made": the request was never sent, so resending is safe.
_NOT_SENT_MARKERS = (
    "failed to connect to all addresses",
    "connection refused",
    "connections to all backends failing",
    "failed to connect to remote host",
    "empty address list",
    "dns resolution failed",
)
#: Stream errors after which a watch or keep-alive reconnects (anything else is raised to the caller).
RESUMABLE_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN", "CANCELLED", "DEADLINE_EXCEEDED"})

#: Quick reconnects to a member that comes back. (Not ``grpc.min_reconnect_backoff_ms``: gRPC also uses it as the
#: connect timeout, and a TLS handshake on a busy host can take longer than a short one.)
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
]


#: etcd's "require leader" metadata: a member without a leader cancels the watch stream ("etcdserver: no
#: leader", UNAVAILABLE) instead of keeping it open silently, so the watch resumes on another member.
REQUIRE_LEADER = (("hasleader", "true"),)


def with_require_leader(md: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...]:
    return (md or ()) + REQUIRE_LEADER


def parse_endpoints(endpoints: str | Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """``host:port`` targets and whether any endpoint said ``https://``; accepts a comma-separated string."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    targets: list[str] = []
    secure = False
    for item in (i.strip() for i in items):
        if not item:
            continue
        if "://" in item:
            parts = urlsplit(item)
            secure = secure or parts.scheme in ("https", "unixs")
            item = parts.netloc
        targets.append(item)
    if not targets:
        raise ValueError("at least one endpoint is required")
    return tuple(targets), secure


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def channel_credentials(ca_cert: str | Path | None, cert: str | Path | None, key: str | Path | None,
                        secure: bool) -> Any:  # fmt: skip
    """``grpc.ssl_channel_credentials`` from PEM file paths, or None for plaintext (no TLS option given)."""
    if (cert is None) != (key is None):
        raise ValueError("cert and key must be given together")
    if ca_cert is None and cert is None and not secure:
        return None
    return grpc.ssl_channel_credentials(root_certificates=_read(ca_cert), private_key=_read(key),
                                        certificate_chain=_read(cert))


def channel_options(server_name: str | None) -> list[tuple[str, Any]]:
    opts = list(CHANNEL_OPTIONS)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


def not_sent(code: str, details: str) -> bool:
    """True when gRPC reports the request never reached a server (no connection)."""
    text = details.lower()
    return code == "UNAVAILABLE" and any(marker in text for marker in _NOT_SENT_MARKERS)


def should_failover(code: str, details: str, idempotent: bool) -> bool:
    """Whether a failed call may be resent to the next endpoint (the module's retry rule)."""
    if not_sent(code, details):
        return True
    return idempotent and code == "UNAVAILABLE"


def backoff_s(attempt: int, n_endpoints: int) -> float:
    """No wait while other endpoints are untried; then 0.1 s doubling to 1 s per full round."""
    if attempt % max(n_endpoints, 1) != 0:
        return 0.0
    return min(0.1 * 2.0 ** (attempt // max(n_endpoints, 1) - 1), 1.0)


def is_auth_expired(code: str, details: str) -> bool:
    """The token must be fetched again: expired or unknown (``invalid auth token``), or issued before the auth
    store changed (``revision of auth store is old``, which etcd 3.5's client also answers with a new token)."""
    return code == "UNAUTHENTICATED" or "invalid auth token" in details or "revision of auth store is old" in details


def status_name(err: Any) -> tuple[str, str]:
    """(status code name, details) of a grpc.RpcError (sync or aio)."""
    try:
        code = err.code()
        details = err.details() or ""
    except Exception:  # not a call error (e.g. raised while building the call)
        return "UNKNOWN", str(err)
    return (code.name if isinstance(code, grpc.StatusCode) else str(code)), details


class Deadline:
    """A monotonic deadline; ``None`` timeout means none."""

    def __init__(self, timeout_s: float | None) -> None:
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float | None:
        return None if self.at is None else max(self.at - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


@dataclass
class WatchCursor:
    """Where a watch is: the next revision it must deliver. Resuming from ``next_rev`` loses and repeats nothing.

    Invariant: every event delivered so far has ``mod_revision < next_rev``; ``next_rev`` is 0 only until the
    first stream is created (then it is the creation revision + 1, or the caller's start revision).
    """

    key: bytes
    range_end: bytes
    start_revision: int
    prev_kv: bool
    progress_notify: bool
    filters: tuple[str, ...] = ()
    next_rev: int = 0
    resumed: bool = False

    def __post_init__(self) -> None:
        self.next_rev = self.start_revision

    def create_request(self) -> rpc_pb2.WatchRequest:
        return watch_create_request(self.key, self.range_end, self.next_rev, prev_kv=self.prev_kv,
                                    progress_notify=self.progress_notify, filters=self.filters)

    def on_reconnect(self) -> None:
        self.resumed = True

    def on_response(self, m: rpc_pb2.WatchResponse) -> WatchResponse | None:
        """The response to hand to the user (None for bookkeeping-only ones); raises on cancellation."""
        if m.compact_revision:
            raise CompactedError(
                f"etcdserver: mvcc: required revision has been compacted (compact revision {m.compact_revision})",
                "OUT_OF_RANGE", int(m.compact_revision),
            )
        if m.canceled:
            raise error_for("CANCELLED", m.cancel_reason or "watch canceled by the server")
        if m.created:
            if self.next_rev == 0:
                self.next_rev = int(m.header.revision) + 1
            return None
        out = watch_response(m)
        if self.resumed and out.events:
            out = WatchResponse(out.header, tuple(e for e in out.events if e.kv.mod_revision >= self.next_rev))
            if not out.events:
                return None
        if out.events:
            self.next_rev = max(self.next_rev, out.events[-1].kv.mod_revision + 1)
        elif out.progress_notify:
            self.next_rev = max(self.next_rev, out.header.revision + 1)
        return out


def watch_failed(err: BaseException) -> EtcdError | None:
    """None when a broken watch stream may be resumed, else the error to raise."""
    if isinstance(err, EtcdError):
        return err
    code, details = status_name(err)
    if code in RESUMABLE_CODES:
        return None
    return error_for(code, details or code)
