"""Typed client errors, mapped from a gRPC status code and etcd's message text.

Invariant: every error a client method raises for a failed RPC is an :class:`EtcdError` (or a subclass); the
gRPC status code name and the server's message are kept on it (``code``, ``message``).
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "AuthenticationError",
    "CompactedError",
    "DeadlineExceededError",
    "DuplicateKeyError",
    "EmptyKeyError",
    "EtcdError",
    "FutureRevisionError",
    "InvalidArgumentError",
    "KeyTooLongError",
    "LeaderChangedError",
    "LeaseExpiredError",
    "LeaseNotFoundError",
    "MemberNotFoundError",
    "NoLeaderError",
    "NoSpaceError",
    "NotLeaderError",
    "PermissionDeniedError",
    "RequestTooLargeError",
    "TooManyOpsError",
    "TooManyRequestsError",
    "UnavailableError",
    "from_rpc_error",
]


class EtcdError(Exception):
    """A failed etcd request. ``code`` is the gRPC status code name ("" when no RPC failed)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgumentError(EtcdError):
    """The server rejected the request's arguments (INVALID_ARGUMENT)."""


class EmptyKeyError(InvalidArgumentError):
    """``etcdserver: key is not provided``."""


class KeyTooLongError(InvalidArgumentError):
    """The key is longer than the server accepts."""


class RequestTooLargeError(InvalidArgumentError):
    """``etcdserver: request is too large`` (over --max-request-bytes)."""


class TooManyOpsError(InvalidArgumentError):
    """``etcdserver: too many operations in txn request`` (over --max-txn-ops)."""


class DuplicateKeyError(InvalidArgumentError):
    """``etcdserver: duplicate key given in txn request``."""


class CompactedError(EtcdError):
    """The requested revision was compacted. ``compact_revision`` is the compaction point when known (else 0)."""

    def __init__(self, message: str, code: str = "OUT_OF_RANGE", compact_revision: int = 0) -> None:
        super().__init__(message, code)
        self.compact_revision = compact_revision


class FutureRevisionError(EtcdError):
    """The requested revision is newer than the store's current revision."""


class LeaseNotFoundError(EtcdError):
    """``etcdserver: requested lease not found`` (never granted, revoked or expired)."""


class LeaseExpiredError(LeaseNotFoundError):
    """A managed lease's keep-alive found the lease gone (TTL 0) or could not renew it before it expired."""


class MemberNotFoundError(EtcdError):
    """``etcdserver: member not found``."""


class PermissionDeniedError(EtcdError):
    """The authenticated user may not do this (PERMISSION_DENIED)."""


class AuthenticationError(EtcdError):
    """Bad credentials or an invalid/expired token (UNAUTHENTICATED, or Authenticate failed)."""


class NotLeaderError(EtcdError):
    """``etcdserver: not leader`` (a leader-only request reached a follower)."""


class NoSpaceError(EtcdError):
    """``etcdserver: mvcc: database space exceeded`` (NOSPACE alarm raised)."""


class TooManyRequestsError(EtcdError):
    """``etcdserver: too many requests`` (the server is behind applying)."""


class UnavailableError(EtcdError):
    """No endpoint could serve the request (UNAVAILABLE): connection refused/lost, server stopping, ..."""


class NoLeaderError(UnavailableError):
    """``etcdserver: no leader``."""


class LeaderChangedError(UnavailableError):
    """``etcdserver: leader changed`` (the request may or may not have been applied)."""


class DeadlineExceededError(EtcdError, TimeoutError):
    """The call's deadline passed (DEADLINE_EXCEEDED, or the client's own timeout); outcome unknown for writes."""


#: (substring of the server's message, error class), checked in order before the status code.
_BY_MESSAGE: tuple[tuple[str, type[EtcdError]], ...] = (
    ("required revision has been compacted", CompactedError),
    ("required revision is a future revision", FutureRevisionError),
    ("requested lease not found", LeaseNotFoundError),
    ("etcdserver: no leader", NoLeaderError),
    ("etcdserver: leader changed", LeaderChangedError),
    ("etcdserver: not leader", NotLeaderError),
    ("key is not provided", EmptyKeyError),
    ("request is too large", RequestTooLargeError),
    ("key is too long", KeyTooLongError),
    ("too many operations in txn request", TooManyOpsError),
    ("duplicate key given in txn request", DuplicateKeyError),
    ("database space exceeded", NoSpaceError),
    ("too many requests", TooManyRequestsError),
    ("member not found", MemberNotFoundError),
    ("permission denied", PermissionDeniedError),
    ("invalid auth token", AuthenticationError),
    ("authentication failed", AuthenticationError),
    ("user name is empty", AuthenticationError),
)

_BY_CODE: dict[str, type[EtcdError]] = {
    "INVALID_ARGUMENT": InvalidArgumentError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": AuthenticationError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
}


def error_for(code: str, message: str, compact_revision: int = 0) -> EtcdError:
    """The typed error for a status code name and a server message (pure; used by both clients)."""
    for needle, cls in _BY_MESSAGE:
        if needle in message:
            if cls is CompactedError:
                return CompactedError(message, code, compact_revision)
            return cls(message, code)
    return _BY_CODE.get(code, EtcdError)(message, code)


def from_rpc_error(err: Any) -> EtcdError:
    """Map a ``grpc.RpcError`` (sync or aio) to a typed :class:`EtcdError`."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return error_for(name, details or name)
