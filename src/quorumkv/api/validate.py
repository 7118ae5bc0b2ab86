"""Request checks done before a request reaches the server, with etcd's errors.

Txn overlap rule (etcd's): within one branch list, a key may be put at most once and may not be both put and
covered by a delete range; puts in the ``success`` and ``failure`` lists of one nested txn may repeat a key
(only one list runs), but otherwise nested txns' puts and deletes count toward their parent's.
"""

from __future__ import annotations

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb

_SORT_ORDERS = frozenset(pb.RangeRequest.SortOrder.values())
_SORT_TARGETS = frozenset(pb.RangeRequest.SortTarget.values())

# A delete interval [start, end); end None means "to the end of the key space".
Interval = tuple[bytes, bytes | None]


def check_range(r: pb.RangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    if r.sort_order not in _SORT_ORDERS or r.sort_target not in _SORT_TARGETS:
        raise errors.INVALID_SORT_OPTION


def check_put(r: pb.PutRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    if r.ignore_value and r.value:
        raise errors.VALUE_PROVIDED
    if r.ignore_lease and r.lease != 0:
        raise errors.LEASE_PROVIDED


def check_delete(r: pb.DeleteRangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_txn(r: pb.TxnRequest, max_txn_ops: int) -> None:
    """etcd's checkTxnRequest: a nested txn gets the budget its parent leaves (max_txn_ops minus its ops)."""
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_txn_ops:
        raise errors.TOO_MANY_OPS
    for c in r.compare:
        if not c.key:
            raise errors.EMPTY_KEY
    for op in (*r.success, *r.failure):
        _check_op(op, max_txn_ops - opc)


def _check_op(op: pb.RequestOp, max_txn_ops: int) -> None:
    which = op.WhichOneof("request")
    if which == "request_range":
        check_range(op.request_range)
    elif which == "request_put":
        check_put(op.request_put)
    elif which == "request_delete_range":
        check_delete(op.request_delete_range)
    elif which == "request_txn":
        check_txn(op.request_txn, max_txn_ops)
    else:
        raise errors.KEY_NOT_FOUND


def check_txn_intervals(r: pb.TxnRequest) -> None:
    """Raise DUPLICATE_KEY if a branch puts a key twice or puts a key it also deletes."""
    _intervals(list(r.success))
    _intervals(list(r.failure))


def _interval(d: pb.DeleteRangeRequest) -> Interval:
    if not d.range_end:
        return (d.key, d.key + b"\x00")
    # etcd 3.4 builds the interval [key, range_end) literally, so a "from key" delete (range_end b"\0") is an
    # interval no key falls in: etcd accepts a put next to it (checked against etcd 3.4.23), and so do we.
    return (d.key, d.range_end)


def _covers(dels: list[Interval], key: bytes) -> bool:
    return any(start <= key and (end is None or key < end) for start, end in dels)


def _intervals(ops: list[pb.RequestOp]) -> tuple[set[bytes], list[Interval]]:
    dels: list[Interval] = [
        _interval(op.request_delete_range) for op in ops if op.WhichOneof("request") == "request_delete_range"
    ]
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _intervals(list(op.request_txn.success))
        puts_else, dels_else = _intervals(list(op.request_txn.failure))
        for k in puts_then:
            if k in puts or _covers(dels, k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        for k in puts_else:
            if k in puts and k not in puts_then:
                raise errors.DUPLICATE_KEY
            if _covers(dels, k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or _covers(dels, k):
            raise errors.DUPLICATE_KEY
        puts.add(k)
    return puts, dels
