"""The transaction builder's pieces: compare targets, comparisons and operations (pure, no I/O).

    txn().if_(value("k") == b"v", version("k") > 0).then(put("k", "w"), get("k")).else_(delete("k")).commit()

Invariant: every object here is immutable and converts to exactly one protobuf message (``to_proto``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quorumkv.api.etcdserverpb import rpc_pb2

__all__ = [
    "Compare",
    "DeleteOp",
    "GetOp",
    "Op",
    "PutOp",
    "TxnOp",
    "TxnSpec",
    "create_revision",
    "delete",
    "get",
    "lease",
    "mod_revision",
    "prefix_end",
    "put",
    "to_bytes",
    "value",
    "version",
]

KeyLike = bytes | str
Target = Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
Result = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
SortOrder = Literal["none", "ascend", "descend"]
SortTarget = Literal["key", "version", "create", "mod", "value"]


def to_bytes(key: KeyLike) -> bytes:
    """``str`` is encoded as UTF-8; ``bytes`` pass unchanged."""
    return key.encode() if isinstance(key, str) else bytes(key)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix`` (``b"\\0"``: all keys, for an empty prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def range_end_for(key: bytes, range_end: KeyLike | None, prefix: bool) -> bytes:
    if prefix:
        return prefix_end(key)
    return to_bytes(range_end) if range_end is not None else b""


@dataclass(frozen=True, slots=True)
class Compare:
    """``target(key) <result> operand``; with ``range_end`` it must hold for every key in the range."""

    key: bytes
    target: Target
    result: Result
    operand: int | bytes
    range_end: bytes = b""

    def to_proto(self) -> rpc_pb2.Compare:
        c = rpc_pb2.Compare(key=self.key, range_end=self.range_end, target=self.target, result=self.result)
        if self.target == "VALUE":
            assert isinstance(self.operand, bytes)
            c.value = self.operand
        else:
            assert isinstance(self.operand, int)
            field = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "LEASE": "lease"}
            setattr(c, field[self.target], self.operand)
        return c


class CompareTarget:
    """What a comparison looks at; ``==``, ``!=``, ``<`` and ``>`` build a :class:`Compare`."""

    __slots__ = ("_key", "_range_end", "_target")

    def __init__(self, key: KeyLike, target: Target, range_end: KeyLike | None = None, prefix: bool = False) -> None:
        self._key = to_bytes(key)
        self._target: Target = target
        self._range_end = range_end_for(self._key, range_end, prefix)

    def _make(self, result: Result, operand: object) -> Compare:
        if self._target == "VALUE":
            if not isinstance(operand, bytes | str):
                raise TypeError(f"value() compares with bytes or str, not {type(operand).__name__}")
            return Compare(self._key, self._target, result, to_bytes(operand), self._range_end)
        if not isinstance(operand, int) or isinstance(operand, bool):
            raise TypeError(f"{self._target.lower()}() compares with int, not {type(operand).__name__}")
        return Compare(self._key, self._target, result, operand, self._range_end)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make("EQUAL", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make("NOT_EQUAL", other)

    def __lt__(self, other: object) -> Compare:
        return self._make("LESS", other)

    def __gt__(self, other: object) -> Compare:
        return self._make("GREATER", other)

    __hash__ = None  # type: ignore[assignment]


def value(key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False) -> CompareTarget:
    return CompareTarget(key, "VALUE", range_end, prefix)


def version(key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False) -> CompareTarget:
    return CompareTarget(key, "VERSION", range_end, prefix)


def create_revision(key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False) -> CompareTarget:
    return CompareTarget(key, "CREATE", range_end, prefix)


def mod_revision(key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False) -> CompareTarget:
    return CompareTarget(key, "MOD", range_end, prefix)


def lease(key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False) -> CompareTarget:
    return CompareTarget(key, "LEASE", range_end, prefix)


_SORT_ORDER = {"none": 0, "ascend": 1, "descend": 2}
_SORT_TARGET = {"key": 0, "version": 1, "create": 2, "mod": 3, "value": 4}


def range_request(
    key: KeyLike,
    range_end: KeyLike | None = None,
    *,
    prefix: bool = False,
    limit: int = 0,
    revision: int = 0,
    sort_order: SortOrder = "none",
    sort_target: SortTarget = "key",
    keys_only: bool = False,
    count_only: bool = False,
    serializable: bool = False,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> rpc_pb2.RangeRequest:
    k = to_bytes(key)
    return rpc_pb2.RangeRequest(
        key=k, range_end=range_end_for(k, range_end, prefix), limit=limit, revision=revision,
        sort_order=_SORT_ORDER[sort_order],  # type: ignore[arg-type]
        sort_target=_SORT_TARGET[sort_target],  # type: ignore[arg-type]
        keys_only=keys_only, count_only=count_only, serializable=serializable,
        min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
        min_create_revision=min_create_revision, max_create_revision=max_create_revision,
    )  # fmt: skip


def put_request(
    key: KeyLike, val: KeyLike, *, lease: int = 0, prev_kv: bool = False, ignore_value: bool = False,
    ignore_lease: bool = False,
) -> rpc_pb2.PutRequest:  # fmt: skip
    return rpc_pb2.PutRequest(key=to_bytes(key), value=to_bytes(val), lease=lease, prev_kv=prev_kv,
                              ignore_value=ignore_value, ignore_lease=ignore_lease)


def delete_request(
    key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False, prev_kv: bool = False
) -> rpc_pb2.DeleteRangeRequest:
    k = to_bytes(key)
    return rpc_pb2.DeleteRangeRequest(key=k, range_end=range_end_for(k, range_end, prefix), prev_kv=prev_kv)


@dataclass(frozen=True, slots=True)
class GetOp:
    request: rpc_pb2.RangeRequest

    def to_proto(self) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(request_range=self.request)


@dataclass(frozen=True, slots=True)
class PutOp:
    request: rpc_pb2.PutRequest

    def to_proto(self) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(request_put=self.request)


@dataclass(frozen=True, slots=True)
class DeleteOp:
    request: rpc_pb2.DeleteRangeRequest

    def to_proto(self) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(request_delete_range=self.request)


@dataclass(frozen=True, slots=True)
class TxnOp:
    """A nested transaction as one op."""

    spec: TxnSpec

    def to_proto(self) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(request_txn=self.spec.to_proto())


Op = GetOp | PutOp | DeleteOp | TxnOp


def get(
    key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False, limit: int = 0, revision: int = 0,
    sort_order: SortOrder = "none", sort_target: SortTarget = "key", keys_only: bool = False,
    count_only: bool = False,
) -> GetOp:  # fmt: skip
    """A Range op for a transaction."""
    return GetOp(range_request(key, range_end, prefix=prefix, limit=limit, revision=revision,
                               sort_order=sort_order, sort_target=sort_target, keys_only=keys_only,
                               count_only=count_only))


def put(key: KeyLike, val: KeyLike, *, lease: int = 0, prev_kv: bool = False) -> PutOp:
    """A Put op for a transaction."""
    return PutOp(put_request(key, val, lease=lease, prev_kv=prev_kv))


def delete(key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False, prev_kv: bool = False) -> DeleteOp:
    """A DeleteRange op for a transaction."""
    return DeleteOp(delete_request(key, range_end, prefix=prefix, prev_kv=prev_kv))


@dataclass(frozen=True, slots=True)
class TxnSpec:
    """An immutable transaction: compares, then-ops and else-ops."""

    compares: tuple[Compare, ...] = ()
    success: tuple[Op, ...] = ()
    failure: tuple[Op, ...] = ()

    def to_proto(self) -> rpc_pb2.TxnRequest:
        return rpc_pb2.TxnRequest(
            compare=[c.to_proto() for c in self.compares],
            success=[o.to_proto() for o in self.success],
            failure=[o.to_proto() for o in self.failure],
        )

    @property
    def read_only(self) -> bool:
        """True when no branch writes (such a txn is safe to retry on another endpoint)."""
        return all(
            isinstance(op, GetOp) or (isinstance(op, TxnOp) and op.spec.read_only)
            for op in (*self.success, *self.failure)
        )
