"""quorumkv's Python etcd v3 client: sync (:class:`Client`) and asyncio (:class:`AsyncClient`).

    from quorumkv.client import Client, value, put, get

    with Client(["127.0.0.1:2379", "127.0.0.1:22379"]) as client:
        client.put("greeting", "hello")
        result = client.txn().if_(value("greeting") == "hello").then(put("greeting", "hi"), get("greeting")).commit()
        for event in client.watch_prefix("jobs/"):
            ...

Works against etcd 3.4+ and quorumkv alike. Calls fail over between endpoints only when resending cannot apply a
write twice; watches resume from the next revision; managed leases report keep-alive failures. See
``docs/client.md``.
"""

from __future__ import annotations

from quorumkv.client._async import AsyncClient, AsyncLease, AsyncRawStream, AsyncTxn, AsyncWatch
from quorumkv.client._async_recipes import AsyncElection, AsyncLock
from quorumkv.client._errors import (
    AuthenticationError,
    CompactedError,
    DeadlineExceededError,
    DuplicateKeyError,
    EmptyKeyError,
    EtcdError,
    FutureRevisionError,
    InvalidArgumentError,
    KeyTooLongError,
    LeaderChangedError,
    LeaseExpiredError,
    LeaseNotFoundError,
    MemberNotFoundError,
    NoLeaderError,
    NoSpaceError,
    NotLeaderError,
    PermissionDeniedError,
    RequestTooLargeError,
    TooManyOpsError,
    TooManyRequestsError,
    UnavailableError,
)
from quorumkv.client._recipes import Election, Lock
from quorumkv.client._sync import Client, Lease, RawStream, Txn, Watch
from quorumkv.client._txn import (
    Compare,
    TxnSpec,
    create_revision,
    delete,
    get,
    lease,
    mod_revision,
    prefix_end,
    put,
    value,
    version,
)
from quorumkv.client._types import (
    Alarm,
    DeleteResult,
    Event,
    GetResult,
    HashKVResult,
    KeyValue,
    LeaseGrant,
    LeaseInfo,
    Member,
    MemberChange,
    PutResult,
    ResponseHeader,
    Status,
    TxnResult,
    WatchResponse,
)

__all__ = [
    "Alarm",
    "AsyncClient",
    "AsyncElection",
    "AsyncLease",
    "AsyncLock",
    "AsyncRawStream",
    "AsyncTxn",
    "AsyncWatch",
    "AuthenticationError",
    "Client",
    "CompactedError",
    "Compare",
    "DeadlineExceededError",
    "DeleteResult",
    "DuplicateKeyError",
    "Election",
    "EmptyKeyError",
    "EtcdError",
    "Event",
    "FutureRevisionError",
    "GetResult",
    "HashKVResult",
    "InvalidArgumentError",
    "KeyTooLongError",
    "KeyValue",
    "LeaderChangedError",
    "Lease",
    "LeaseExpiredError",
    "LeaseGrant",
    "LeaseInfo",
    "LeaseNotFoundError",
    "Lock",
    "Member",
    "MemberChange",
    "MemberNotFoundError",
    "NoLeaderError",
    "NoSpaceError",
    "NotLeaderError",
    "PermissionDeniedError",
    "PutResult",
    "RawStream",
    "RequestTooLargeError",
    "ResponseHeader",
    "Status",
    "TooManyOpsError",
    "TooManyRequestsError",
    "Txn",
    "TxnResult",
    "TxnSpec",
    "UnavailableError",
    "Watch",
    "WatchResponse",
    "create_revision",
    "delete",
    "get",
    "lease",
    "mod_revision",
    "prefix_end",
    "put",
    "value",
    "version",
]
