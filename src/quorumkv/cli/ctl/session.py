"""How ``quorumkvctl`` talks to a server: a :class:`quorumkv.client.Client` set up from the global flags, with
etcdctl 3.4's dial, timeouts, warning line, error texts and exit codes.

Invariants: a :class:`Session` talks to one endpoint (the first of ``--endpoints`` unless told which), connects
within ``--dial-timeout`` before its first call, bounds each unary call by ``--command-timeout`` and never resends
a call (etcdctl reports the first failure). Every failure reaching a command is a :class:`CtlError`, or a
:class:`quorumkv.client.EtcdError` the command turns into one.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from quorumkv.client import Client, DeadlineExceededError, EtcdError, RawStream

__all__ = [
    "EXIT_BAD_ARGS",
    "EXIT_BAD_CONNECTION",
    "EXIT_BAD_FEATURE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID_INPUT",
    "EXIT_IO",
    "CtlError",
    "Session",
    "Settings",
    "error_text",
    "go_code_name",
    "is_secure",
    "keepalive_options",
    "raw_error_text",
    "strip_scheme",
    "zap_line",
]

# etcdctl's exit codes (etcdctl/ctlv3/command/error.go)
EXIT_ERROR = 1
EXIT_BAD_CONNECTION = 2
EXIT_INVALID_INPUT = 3
EXIT_BAD_FEATURE = 4
EXIT_INTERRUPTED = 5
EXIT_IO = 6
EXIT_BAD_ARGS = 128

#: gRPC status code names whose Go spelling differs by more than case.
_GO_CODE_NAMES = {"CANCELLED": "Canceled"}
#: gRPC's texts for a call cancelled on the client side (clientv3 reports them as the context's error).
_LOCAL_CANCEL = ("", "Cancelled", "Locally cancelled by application!")


class CtlError(Exception):
    """Ends the command with ``Error: <message>`` on stderr and ``code`` as the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def go_code_name(code: str) -> str:
    """Go's name of a gRPC status code given by its Python name (``DEADLINE_EXCEEDED`` -> ``DeadlineExceeded``)."""
    return _GO_CODE_NAMES.get(code) or "".join(part.capitalize() for part in code.split("_"))


def _details(err: EtcdError) -> str:
    """The server's status message (the client stores the code name when the status had no message)."""
    return "" if err.message == err.code else err.message


def error_text(err: EtcdError) -> str:
    """What clientv3 3.4 turns a failed call into: etcd's own message, or gRPC's ``rpc error: ...``."""
    code, details = err.code, _details(err)
    if code == "DEADLINE_EXCEEDED":
        return "context deadline exceeded"
    if code == "CANCELLED" and details in _LOCAL_CANCEL:
        return "context canceled"
    if details.startswith("etcdserver: "):
        return details
    return f"rpc error: code = {go_code_name(code)} desc = {details}"


def raw_error_text(err: EtcdError) -> str:
    """gRPC-Go's text of the status (what the retry interceptor logs)."""
    code, details = err.code, _details(err)
    if code == "DEADLINE_EXCEEDED" and not details.startswith("etcdserver: "):
        details = "context deadline exceeded"
    return f"rpc error: code = {go_code_name(code)} desc = {details}"


def zap_timestamp() -> str:
    """zap's ISO8601 time encoder: local time with milliseconds and a numeric zone (``Z`` for UTC)."""
    now = time.time()
    local = time.localtime(now)
    millis = int((now % 1) * 1000)
    offset = local.tm_gmtoff or 0
    if offset == 0:
        zone = "Z"
    else:
        sign = "+" if offset > 0 else "-"
        zone = f"{sign}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{millis:03d}" + zone


def zap_line(level: str, caller: str, msg: str, **fields: Any) -> str:
    record: dict[str, Any] = {"level": level, "ts": zap_timestamp(), "caller": caller, "msg": msg}
    record.update(fields)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def strip_scheme(endpoint: str) -> str:
    for scheme in ("http://", "https://", "unix://", "unixs://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :]
    return endpoint


@dataclass
class Settings:
    """The resolved global flags (command line beats ``ETCDCTL_*`` beats the default)."""

    endpoints: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])
    dial_timeout: float = 2.0
    command_timeout: float = 5.0
    keepalive_time: float = 2.0
    keepalive_timeout: float = 6.0
    write_out: str = "simple"
    hex: bool = False
    cacert: str = ""
    cert: str = ""
    key: str = ""
    insecure_transport: bool = True
    insecure_skip_tls_verify: bool = False
    user: str = ""
    password: str = ""
    debug: bool = False
    cluster: bool = False


def is_secure(settings: Settings, endpoint: str) -> bool:
    """TLS when the endpoint says https/unixs or any of --cacert/--cert/--key is given (as etcdctl)."""
    return endpoint.startswith(("https://", "unixs://")) or bool(settings.cacert or settings.cert or settings.key)


def keepalive_options(settings: Settings) -> list[tuple[str, Any]]:
    """gRPC channel options for --keepalive-time/--keepalive-timeout (clientv3's DialKeepAlive*)."""
    return [
        ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def auth_credentials(settings: Settings) -> tuple[str, str]:
    """etcdctl's rule: ``--user name:password``, or ``--user name --password pw``, or prompt for the password."""
    if settings.password:
        return settings.user, settings.password
    name, sep, password = settings.user.partition(":")
    if not sep:
        import getpass

        password = getpass.getpass("Password: ")
    return name, password


def _go_file_error(exc: OSError) -> str:
    """Go's text for a TLS file that cannot be read (``open /x: no such file or directory``)."""
    op = "read" if isinstance(exc, IsADirectoryError) else "open"
    return f"{op} {exc.filename}: {(exc.strerror or str(exc)).lower()}"


class Session:
    """One etcdctl-style connection to one endpoint, over :class:`quorumkv.client.Client`."""

    def __init__(self, settings: Settings, endpoint: str | None = None) -> None:
        self.settings = settings
        self.endpoint = endpoint if endpoint is not None else settings.endpoints[0]
        self.target = strip_scheme(self.endpoint)
        self._client_id = uuid.uuid4()
        self._dialled = False
        if bool(settings.cert) != bool(settings.key):
            raise CtlError(EXIT_BAD_ARGS, f"KeyFile and CertFile must both be present[key: {settings.key}, "
                                          f"cert: {settings.cert}]")
        secure = is_secure(settings, self.endpoint)
        # is_secure decides (a scheme-less endpoint with a TLS flag is TLS too); https:// tells the client so
        url = f"https://{self.target}" if secure else self.target
        user, password = auth_credentials(settings) if settings.user else (None, None)
        try:
            self.client = Client(
                [url],
                timeout=settings.command_timeout,
                max_retries=0,
                ca_cert=settings.cacert or None,
                cert=settings.cert or None,
                key=settings.key or None,
                user=user,
                password=password,
                grpc_options=keepalive_options(settings),
            )
        except OSError as exc:
            raise CtlError(EXIT_BAD_ARGS, _go_file_error(exc)) from None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dial(self) -> None:
        """Wait (up to --dial-timeout) for the connection, as clientv3.New does with a blocking dial."""
        if self._dialled:
            return
        try:
            self.client.wait_ready(self.settings.dial_timeout)
        except DeadlineExceededError:
            raise CtlError(EXIT_ERROR, "context deadline exceeded" + self._tls_cause()) from None
        self._dialled = True
        if self.settings.user:  # clientv3 logs in while dialling: a refused login is a connection error
            try:
                self.client.authenticate()
            except EtcdError as err:
                self.warn(err)
                raise CtlError(EXIT_BAD_CONNECTION, error_text(err)) from None

    def _tls_cause(self) -> str:
        """Why a TLS dial failed, named by quorumkv.security.diagnose ("" when not TLS or nothing found)."""
        if not is_secure(self.settings, self.endpoint) or self.settings.insecure_skip_tls_verify:
            return ""
        from quorumkv.security.diagnose import DialTLS, diagnose_dial

        host, _, port = self.target.rpartition(":")
        if not port.isdigit():
            return ""
        s = self.settings
        cause = diagnose_dial(host.strip("[]"), int(port), DialTLS(s.cacert, s.cert, s.key),
                              timeout_s=min(2.0, s.dial_timeout))
        return f" (TLS: {cause})" if cause else ""

    def warn(self, err: EtcdError) -> None:
        """The line clientv3's retry interceptor logs for every failed unary call."""
        line = zap_line(
            "warn",
            "clientv3/retry_interceptor.go:62",
            "retrying of unary invoker failed",
            target=f"endpoint://client-{self._client_id}/{self.target}",
            attempt=0,
            error=raw_error_text(err),
        )
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def call(self, service: str, method: str, request: Message, *, idempotent: bool = False, log: bool = True) -> Any:
        """A unary call (raw response); a failure is logged (unless ``log`` is False) and raised as CtlError."""
        self.dial()
        try:
            return self.client.raw_call(service, method, request, idempotent=idempotent)
        except EtcdError as err:
            if log:
                self.warn(err)
            raise CtlError(EXIT_ERROR, error_text(err)) from None

    def stream(self, service: str, method: str, request: Message | Iterable[Message],
               timeout: float | None = None) -> RawStream:  # fmt: skip
        """A streaming call (raw responses); iterating raises :class:`EtcdError` when the stream fails."""
        self.dial()
        return self.client.raw_stream(service, method, request, timeout=timeout)
