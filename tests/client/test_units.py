"""Pure pieces of the client: error mapping, retry rule, endpoints, the watch cursor, txn encoding."""

from __future__ import annotations

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.client import (
    CompactedError,
    DeadlineExceededError,
    EtcdError,
    FutureRevisionError,
    LeaderChangedError,
    LeaseNotFoundError,
    NoLeaderError,
    PermissionDeniedError,
    RequestTooLargeError,
    UnavailableError,
    prefix_end,
    value,
    version,
)
from quorumkv.client._conn import WatchCursor, backoff_s, parse_endpoints, should_failover
from quorumkv.client._errors import error_for


@pytest.mark.parametrize(("code", "message", "cls"), [
    ("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted", CompactedError),
    ("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision", FutureRevisionError),
    ("NOT_FOUND", "etcdserver: requested lease not found", LeaseNotFoundError),
    ("UNAVAILABLE", "etcdserver: no leader", NoLeaderError),
    ("UNAVAILABLE", "etcdserver: leader changed", LeaderChangedError),
    ("UNAVAILABLE", "failed to connect to all addresses", UnavailableError),
    ("INVALID_ARGUMENT", "etcdserver: request is too large", RequestTooLargeError),
    ("PERMISSION_DENIED", "etcdserver: permission denied", PermissionDeniedError),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceededError),
    ("INTERNAL", "something else", EtcdError),
])  # fmt: skip
def test_error_mapping(code: str, message: str, cls: type[EtcdError]) -> None:
    err = error_for(code, message)
    assert type(err) is cls and err.code == code and err.message == message
    assert isinstance(error_for("DEADLINE_EXCEEDED", "x"), TimeoutError)
    assert isinstance(error_for("UNAVAILABLE", "etcdserver: no leader"), UnavailableError)


def test_retry_rule_never_resends_a_sent_write() -> None:
    refused = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
    assert should_failover("UNAVAILABLE", refused, idempotent=False)
    assert should_failover("UNAVAILABLE", refused, idempotent=True)
    assert not should_failover("UNAVAILABLE", "Socket closed", idempotent=False)
    assert should_failover("UNAVAILABLE", "Socket closed", idempotent=True)
    assert not should_failover("UNAVAILABLE", "etcdserver: leader changed", idempotent=False)
    assert not should_failover("DEADLINE_EXCEEDED", "Deadline Exceeded", idempotent=True)
    assert not should_failover("INVALID_ARGUMENT", "etcdserver: key is not provided", idempotent=True)
    assert [backoff_s(a, 3) for a in (1, 2, 3, 6, 9, 30)] == [0.0, 0.0, 0.1, 0.2, 0.4, 1.0]


def test_parse_endpoints() -> None:
    assert parse_endpoints("http://127.0.0.1:1,127.0.0.1:2") == (("127.0.0.1:1", "127.0.0.1:2"), False)
    assert parse_endpoints(["https://a:1"]) == (("a:1",), True)
    with pytest.raises(ValueError):
        parse_endpoints(" , ")


def test_prefix_end() -> None:
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def _resp(rev: int, *mod_revs: int, created: bool = False) -> rpc_pb2.WatchResponse:
    return rpc_pb2.WatchResponse(
        header=rpc_pb2.ResponseHeader(revision=rev), created=created,
        events=[kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k", mod_revision=r)) for r in mod_revs],
    )  # fmt: skip


def test_watch_cursor_resumes_without_loss_or_repeat() -> None:
    cursor = WatchCursor(b"k", b"", 0, prev_kv=False, progress_notify=False)
    assert cursor.create_request().create_request.start_revision == 0
    assert cursor.on_response(_resp(10, created=True)) is None
    assert cursor.next_rev == 11
    out = cursor.on_response(_resp(12, 11, 12))
    assert out is not None and [e.kv.mod_revision for e in out.events] == [11, 12]
    assert cursor.next_rev == 13
    cursor.on_reconnect()
    assert cursor.create_request().create_request.start_revision == 13
    cursor.on_response(_resp(14, created=True))
    assert cursor.next_rev == 13  # a resumed watch keeps its own position
    again = cursor.on_response(_resp(14, 12, 13, 14))  # a server repeating old events is filtered
    assert again is not None and [e.kv.mod_revision for e in again.events] == [13, 14]
    progress = cursor.on_response(_resp(20))
    assert progress is not None and progress.progress_notify and cursor.next_rev == 21
    with pytest.raises(CompactedError) as err:
        cursor.on_response(rpc_pb2.WatchResponse(canceled=True, compact_revision=30))
    assert err.value.compact_revision == 30
    with pytest.raises(EtcdError, match="permission denied"):
        cursor.on_response(rpc_pb2.WatchResponse(canceled=True, cancel_reason="etcdserver: permission denied"))


def test_compare_encoding() -> None:
    c = (value("k", prefix=True) == "v").to_proto()
    assert c.target == rpc_pb2.Compare.VALUE and c.result == rpc_pb2.Compare.EQUAL and c.value == b"v"
    assert c.range_end == b"l"
    g = (version(b"k") > 3).to_proto()
    assert g.target == rpc_pb2.Compare.VERSION and g.result == rpc_pb2.Compare.GREATER and g.version == 3
