"""The gRPC side of ``quorumkvctl``: endpoints, channels, unary calls and etcdctl-style errors."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from quorumkv.api.etcdserverpb import rpc_pb2_grpc

__all__ = [
    "EXIT_BAD_ARGS",
    "EXIT_BAD_CONNECTION",
    "EXIT_BAD_FEATURE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID_INPUT",
    "EXIT_IO",
    "Client",
    "CtlError",
    "Settings",
    "channel_credentials",
    "grpc_error_text",
    "is_secure",
]

# etcdctl's exit codes (etcdctl/ctlv3/command/error.go)
EXIT_ERROR = 1
EXIT_BAD_CONNECTION = 2
EXIT_INVALID_INPUT = 3
EXIT_BAD_FEATURE = 4
EXIT_INTERRUPTED = 5
EXIT_IO = 6
EXIT_BAD_ARGS = 128

R = TypeVar("R", bound=Message)

#: Python's status code names where Go's differ by more than case.
_GO_CODE_NAMES = {"CANCELLED": "Canceled"}


class CtlError(Exception):
    """Ends the command with ``Error: <message>`` on stderr and ``code`` as the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def go_code_name(code: grpc.StatusCode) -> str:
    name = code.name
    return _GO_CODE_NAMES.get(name) or "".join(part.capitalize() for part in name.split("_"))


def grpc_error_text(err: grpc.RpcError) -> str:
    """What clientv3 3.4 turns a gRPC error into: etcd's own message, or gRPC's ``rpc error: ...``."""
    code: grpc.StatusCode = err.code()
    details: str = err.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "context deadline exceeded"
    if code == grpc.StatusCode.CANCELLED and details in ("", "Cancelled", "Locally cancelled by application!"):
        return "context canceled"
    if details.startswith("etcdserver: "):
        return details
    return f"rpc error: code = {go_code_name(code)} desc = {details}"


def _raw_grpc_text(err: grpc.RpcError) -> str:
    code: grpc.StatusCode = err.code()
    details: str = err.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and "Deadline" in details:
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


def _stub(name: str, channel: grpc.Channel) -> Any:
    """A generated service stub (the generated module is untyped)."""
    return getattr(rpc_pb2_grpc, name)(channel)


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


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """TLS credentials from --cacert/--cert/--key; an unreadable file is a bad-arguments error."""

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    try:
        return grpc.ssl_channel_credentials(
            root_certificates=read(settings.cacert),
            private_key=read(settings.key),
            certificate_chain=read(settings.cert),
        )
    except OSError as exc:
        raise CtlError(EXIT_BAD_ARGS, str(exc)) from None


class Client:
    """One gRPC connection to one endpoint, with etcd's service stubs."""

    def __init__(self, settings: Settings, endpoint: str | None = None) -> None:
        self.settings = settings
        self.endpoint = endpoint if endpoint is not None else settings.endpoints[0]
        self.target = strip_scheme(self.endpoint)
        self._client_id = uuid.uuid4()
        options = [
            ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_receive_message_length", 2**31 - 1),
        ]
        if is_secure(settings, self.endpoint):
            self.channel = grpc.secure_channel(self.target, channel_credentials(settings), options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.kv = _stub("KVStub", self.channel)
        self.watch = _stub("WatchStub", self.channel)
        self.lease = _stub("LeaseStub", self.channel)
        self.cluster = _stub("ClusterStub", self.channel)
        self.maintenance = _stub("MaintenanceStub", self.channel)
        self._metadata: list[tuple[str, str]] = []
        self._dialled = False

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dial(self) -> None:
        """Wait (up to --dial-timeout) for the connection, as clientv3.New does with a blocking dial."""
        if self._dialled:
            return
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.settings.dial_timeout)
        except grpc.FutureTimeoutError:
            raise CtlError(EXIT_ERROR, "context deadline exceeded" + self._tls_cause()) from None
        self._dialled = True

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

    def warn(self, err: grpc.RpcError) -> None:
        """The line clientv3's retry interceptor logs for every failed unary call."""
        line = zap_line(
            "warn",
            "clientv3/retry_interceptor.go:62",
            "retrying of unary invoker failed",
            target=f"endpoint://client-{self._client_id}/{self.target}",
            attempt=0,
            error=_raw_grpc_text(err),
        )
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def call(self, method: Callable[..., R], request: Message, timeout: float | None = None) -> R:
        """A unary call with --command-timeout; a gRPC error is logged and raised as :class:`CtlError`."""
        self.dial()
        try:
            return method(
                request,
                timeout=self.settings.command_timeout if timeout is None else timeout,
                metadata=self._metadata or None,
            )
        except grpc.RpcError as err:
            self.warn(err)
            raise CtlError(EXIT_ERROR, grpc_error_text(err)) from None

    def call_raw(self, method: Callable[..., R], request: Message, timeout: float | None = None) -> R:
        """Like :meth:`call` but lets :class:`grpc.RpcError` through (after logging it)."""
        self.dial()
        try:
            return method(
                request,
                timeout=self.settings.command_timeout if timeout is None else timeout,
                metadata=self._metadata or None,
            )
        except grpc.RpcError as err:
            self.warn(err)
            raise

    def stream(self, method: Callable[..., Iterator[R]], request: Any, timeout: float | None = None) -> Iterator[R]:
        self.dial()
        result: Iterator[R] = method(request, timeout=timeout, metadata=self._metadata or None)
        return result


def fail(code: int, message: str) -> NoReturn:
    raise CtlError(code, message)
