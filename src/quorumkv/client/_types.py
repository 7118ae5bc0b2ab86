"""Immutable result types. Every field is a plain Python value decoded from the protobuf response."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Alarm",
    "DeleteResult",
    "Event",
    "GetResult",
    "HashKVResult",
    "KeyValue",
    "LeaseGrant",
    "LeaseInfo",
    "Member",
    "MemberChange",
    "PutResult",
    "ResponseHeader",
    "Status",
    "TxnResult",
    "WatchResponse",
]


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """The header every etcd response carries; ``revision`` is the store revision when the request was served."""

    cluster_id: int
    member_id: int
    revision: int
    raft_term: int


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key's state. ``version`` counts puts since creation (0: the key does not exist)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """A change seen by a watch. For DELETE, ``kv.mod_revision`` is the deleting revision and value is empty."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class GetResult:
    """A Range answer: ``kvs`` in the requested order; ``count`` is the number of keys in range (not limited)."""

    header: ResponseHeader
    kvs: tuple[KeyValue, ...]
    more: bool
    count: int


@dataclass(frozen=True, slots=True)
class PutResult:
    header: ResponseHeader
    prev_kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    header: ResponseHeader
    deleted: int
    prev_kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``responses`` holds one result per op of the branch that ran (``then`` if ``succeeded``)."""

    header: ResponseHeader
    succeeded: bool
    responses: tuple[GetResult | PutResult | DeleteResult | TxnResult, ...]


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


@dataclass(frozen=True, slots=True)
class MemberChange:
    """The answer to a membership change: the member concerned (add only) and the membership afterwards."""

    header: ResponseHeader
    members: tuple[Member, ...]
    member: Member | None = None


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    header: ResponseHeader
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease's time to live: ``ttl`` is the remaining seconds (-1: the lease does not exist)."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Status:
    header: ResponseHeader
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: tuple[str, ...]
    db_size_in_use: int
    is_learner: bool


@dataclass(frozen=True, slots=True)
class Alarm:
    member_id: int
    alarm: str


@dataclass(frozen=True, slots=True)
class HashKVResult:
    header: ResponseHeader
    hash: int
    compact_revision: int


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One batch from a watch. A progress notification has no events and ``progress_notify`` set:
    every event up to ``header.revision`` has been delivered."""

    header: ResponseHeader
    events: tuple[Event, ...] = field(default=())
    progress_notify: bool = False
