"""Client histories of etcd KV operations, as recorded by :mod:`quorumkv.testing.recorder` and checked by
:mod:`quorumkv.testing.linearizability`.

An :class:`Operation` is one client request: who issued it (``client``), when it was invoked and when the
client saw its answer (``call`` / ``ret``, :func:`time.monotonic_ns` of the recording process), what it asked
(``input``) and what it got (``output``). ``output is None`` means the request *failed* on the client side (a
timeout, UNAVAILABLE, a dropped connection, …): the client cannot know whether it took effect. The checker
treats a failed write as *maybe applied* — it may take effect at any moment after its invocation, or never (its
return time is taken as infinity) — and drops failed reads, which cannot have changed anything.

The model is etcd's v3 KV restricted to single keys:

========================== ============================================================================
input                      output
========================== ============================================================================
``Put(key, value)``        ``PutResult(revision)``: the revision the put created
``Get(key)`` (linearizable) ``GetResult(value | None, mod_revision, revision)``: ``mod_revision`` is 0 and
                           ``value`` None for a missing key; ``revision`` is the response header's (the
                           store revision the read saw)
``Delete(key)``            ``DeleteResult(deleted, revision)``: ``revision`` is the header's (the delete's
                           revision when it deleted something, else the store revision)
``Txn(compare, success,    ``TxnResult(succeeded, results, revision)``: one result per operation of the
failure)``                 branch taken, in order; results inside a txn carry the txn's header revision
========================== ============================================================================

A txn compares single keys (``Compare(key, "value", v)``: the key exists and holds ``v``;
``Compare(key, "mod_revision", r)``: the key's mod_revision is ``r``, 0 when missing), all on the state before
the txn, then runs the chosen branch's puts/gets/deletes in order (later ops see earlier ones). A request takes
at most one revision: a txn that changes something takes exactly one.

Histories serialise to JSON (:meth:`History.to_json` / :meth:`History.from_json`) so a failing fault run can be
saved and re-checked. :func:`request_to_pb` / :func:`output_from_pb` convert to and from etcd's protobufs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

from quorumkv.api.etcdserverpb import rpc_pb2 as pb


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Get:
    key: str


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


#: What a txn branch may contain.
TxnOp: TypeAlias = Put | Get | Delete
CompareTarget: TypeAlias = Literal["value", "mod_revision"]


@dataclass(frozen=True, slots=True)
class Compare:
    """``key``'s value equals ``expected`` (a str; false for a missing key), or its mod_revision does (an int)."""

    key: str
    target: CompareTarget
    expected: str | int

    def __post_init__(self) -> None:
        if self.target == "value" and not isinstance(self.expected, str):
            raise TypeError("a value compare expects a str")
        if self.target == "mod_revision" and (not isinstance(self.expected, int) or isinstance(self.expected, bool)):
            raise TypeError("a mod_revision compare expects an int")
        if self.target not in ("value", "mod_revision"):
            raise ValueError(f"unknown compare target {self.target!r}")


@dataclass(frozen=True, slots=True)
class Txn:
    compare: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...] = ()


Request: TypeAlias = Put | Get | Delete | Txn


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int


@dataclass(frozen=True, slots=True)
class GetResult:
    value: str | None
    mod_revision: int
    revision: int


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int
    revision: int


TxnOpResult: TypeAlias = PutResult | GetResult | DeleteResult


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    results: tuple[TxnOpResult, ...]
    revision: int


Response: TypeAlias = PutResult | GetResult | DeleteResult | TxnResult


def is_write(request: Request) -> bool:
    """Whether the request can change the store (a txn can, if any branch holds a put or a delete)."""
    if isinstance(request, Txn):
        return any(not isinstance(op, Get) for op in (*request.success, *request.failure))
    return not isinstance(request, Get)


def request_keys(request: Request) -> tuple[str, ...]:
    """Every key the request compares, reads or writes, in order of first mention."""
    if isinstance(request, Txn):
        keys = [c.key for c in request.compare] + [op.key for op in (*request.success, *request.failure)]
        return tuple(dict.fromkeys(keys))
    return (request.key,)


@dataclass(frozen=True, slots=True)
class Operation:
    """One client request. ``output is None``: failed/timed out (``error`` says how), outcome unknown."""

    id: int
    client: int
    call: int
    ret: int
    input: Request
    output: Response | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.output is None

    def describe(self, origin: int = 0) -> str:
        """``#12 c3 put(k1, 'c3.5') -> rev 17 [1.234567s, 1.235012s]``, times relative to ``origin`` (ns)."""
        span = f"[{(self.call - origin) / 1e9:.6f}s, {(self.ret - origin) / 1e9:.6f}s]"
        if self.output is not None:
            out = describe_output(self.output)
        else:
            maybe = ", maybe applied" if is_write(self.input) else ""
            out = f"FAILED ({self.error or 'no response'}){maybe}"
        return f"#{self.id} c{self.client} {describe_request(self.input)} -> {out} {span}"


def _describe_op(op: TxnOp) -> str:
    if isinstance(op, Put):
        return f"put({op.key!r}, {op.value!r})"
    if isinstance(op, Get):
        return f"get({op.key!r})"
    return f"delete({op.key!r})"


def describe_request(request: Request) -> str:
    if not isinstance(request, Txn):
        return _describe_op(request)
    cmps = " && ".join(f"{c.target}({c.key!r}) == {c.expected!r}" for c in request.compare) or "true"
    then = ", ".join(_describe_op(op) for op in request.success)
    other = ", ".join(_describe_op(op) for op in request.failure)
    return f"txn(if {cmps} then [{then}] else [{other}])"


def _describe_result(result: TxnOpResult) -> str:
    if isinstance(result, PutResult):
        return "ok"
    if isinstance(result, GetResult):
        return "missing" if result.value is None else f"{result.value!r}@mod {result.mod_revision}"
    return f"deleted {result.deleted}"


def describe_output(output: Response) -> str:
    if isinstance(output, PutResult):
        return f"rev {output.revision}"
    if isinstance(output, GetResult):
        shown = "missing" if output.value is None else f"{output.value!r}@mod {output.mod_revision}"
        return f"{shown}, rev {output.revision}"
    if isinstance(output, DeleteResult):
        return f"deleted {output.deleted}, rev {output.revision}"
    results = ", ".join(_describe_result(r) for r in output.results)
    return f"{'succeeded' if output.succeeded else 'failed'} [{results}], rev {output.revision}"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch on the history's keys: ``value`` None is a delete. ``received``: when the watcher
    got it (same clock as operations), so the write had taken effect by then."""

    revision: int
    key: str
    value: str | None
    received: int


@dataclass
class History:
    """A recorded history: the store's state when recording began, then every operation (any order).

    ``initial_revision`` / ``initial_values`` (key -> (value, mod_revision)) describe the keys the history
    touches as one linearizable read saw them before any operation was invoked. A fresh etcd is at revision 1
    with no keys. The checker assumes the history's clients were the store's only writers while recording
    (every revision is accounted for).

    ``watch`` (optional): the events a watch on the history's keys delivered, starting right after
    ``initial_revision``; ``watch_through``: the revision up to which that watch is known to be complete (0:
    not known complete). The checker uses them only to *resolve* failed writes (which took effect, at which
    revision, or never), exactly as etcd's robustness tests do; they never make a verdict more lenient.
    """

    operations: list[Operation] = field(default_factory=list)
    initial_revision: int = 1
    initial_values: dict[str, tuple[str, int]] = field(default_factory=dict)
    watch: list[WatchEvent] | None = None
    watch_through: int = 0

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    def __len__(self) -> int:
        return len(self.operations)

    @property
    def origin(self) -> int:
        """The earliest invocation time (for relative timestamps in descriptions)."""
        return min((op.call for op in self.operations), default=0)

    def by_id(self, op_id: int) -> Operation:
        for op in self.operations:
            if op.id == op_id:
                return op
        raise KeyError(op_id)

    def replace_output(self, op_id: int, output: Response | None) -> History:
        """A copy with one operation's output replaced (used to plant anomalies)."""
        if not any(op.id == op_id for op in self.operations):
            raise KeyError(op_id)
        return self.with_operations(replace(op, output=output) if op.id == op_id else op for op in self.operations)

    def with_operations(self, operations: Iterable[Operation]) -> History:
        """A copy with other operations (same initial state and watch)."""
        watch = None if self.watch is None else list(self.watch)
        return History(list(operations), self.initial_revision, dict(self.initial_values), watch, self.watch_through)

    def without_watch(self) -> History:
        return History(list(self.operations), self.initial_revision, dict(self.initial_values))

    def stats(self) -> dict[str, int]:
        failed = [op for op in self.operations if op.failed]
        return {
            "operations": len(self.operations),
            "clients": len({op.client for op in self.operations}),
            "failed": len(failed),
            "failed_writes": sum(1 for op in failed if is_write(op.input)),
        }

    # -- JSON -------------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "initial_revision": self.initial_revision,
                "initial_values": {k: list(v) for k, v in sorted(self.initial_values.items())},
                "operations": [_op_to_obj(op) for op in self.operations],
                "watch": None
                if self.watch is None
                else [[e.revision, e.key, e.value, e.received] for e in self.watch],
                "watch_through": self.watch_through,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> History:
        data = json.loads(text)
        return cls(
            operations=[_op_from_obj(o) for o in data["operations"]],
            initial_revision=int(data["initial_revision"]),
            initial_values={k: (str(v[0]), int(v[1])) for k, v in data["initial_values"].items()},
            watch=None
            if data.get("watch") is None
            else [WatchEvent(int(r), str(k), None if v is None else str(v), int(t)) for r, k, v, t in data["watch"]],
            watch_through=int(data.get("watch_through", 0)),
        )


def _txn_op_to_obj(op: TxnOp) -> dict[str, Any]:
    if isinstance(op, Put):
        return {"put": [op.key, op.value]}
    if isinstance(op, Get):
        return {"get": op.key}
    return {"delete": op.key}


def _txn_op_from_obj(obj: Mapping[str, Any]) -> TxnOp:
    if "put" in obj:
        return Put(str(obj["put"][0]), str(obj["put"][1]))
    if "get" in obj:
        return Get(str(obj["get"]))
    return Delete(str(obj["delete"]))


def _request_to_obj(request: Request) -> dict[str, Any]:
    if isinstance(request, Txn):
        return {
            "txn": {
                "compare": [[c.key, c.target, c.expected] for c in request.compare],
                "success": [_txn_op_to_obj(op) for op in request.success],
                "failure": [_txn_op_to_obj(op) for op in request.failure],
            }
        }
    return _txn_op_to_obj(request)


def _request_from_obj(obj: Mapping[str, Any]) -> Request:
    if "txn" in obj:
        t = obj["txn"]
        return Txn(
            compare=tuple(Compare(str(k), target, exp) for k, target, exp in t["compare"]),
            success=tuple(_txn_op_from_obj(o) for o in t["success"]),
            failure=tuple(_txn_op_from_obj(o) for o in t["failure"]),
        )
    return _txn_op_from_obj(obj)


def _result_to_obj(result: Response) -> dict[str, Any]:
    if isinstance(result, PutResult):
        return {"put": {"revision": result.revision}}
    if isinstance(result, GetResult):
        return {"get": {"value": result.value, "mod_revision": result.mod_revision, "revision": result.revision}}
    if isinstance(result, DeleteResult):
        return {"delete": {"deleted": result.deleted, "revision": result.revision}}
    return {
        "txn": {
            "succeeded": result.succeeded,
            "results": [_result_to_obj(r) for r in result.results],
            "revision": result.revision,
        }
    }


def _result_from_obj(obj: Mapping[str, Any]) -> Response:
    if "put" in obj:
        return PutResult(int(obj["put"]["revision"]))
    if "get" in obj:
        g = obj["get"]
        return GetResult(None if g["value"] is None else str(g["value"]), int(g["mod_revision"]), int(g["revision"]))
    if "delete" in obj:
        return DeleteResult(int(obj["delete"]["deleted"]), int(obj["delete"]["revision"]))
    t = obj["txn"]
    results: list[TxnOpResult] = []
    for r in t["results"]:
        one = _result_from_obj(r)
        if isinstance(one, TxnResult):
            raise ValueError("nested txn results are not part of the model")
        results.append(one)
    return TxnResult(bool(t["succeeded"]), tuple(results), int(t["revision"]))


def _op_to_obj(op: Operation) -> dict[str, Any]:
    return {
        "id": op.id,
        "client": op.client,
        "call": op.call,
        "ret": op.ret,
        "input": _request_to_obj(op.input),
        "output": None if op.output is None else _result_to_obj(op.output),
        "error": op.error,
    }


def _op_from_obj(obj: Mapping[str, Any]) -> Operation:
    return Operation(
        id=int(obj["id"]),
        client=int(obj["client"]),
        call=int(obj["call"]),
        ret=int(obj["ret"]),
        input=_request_from_obj(obj["input"]),
        output=None if obj["output"] is None else _result_from_obj(obj["output"]),
        error=obj.get("error"),
    )


# -- protobuf conversion ----------------------------------------------------------------------------------------


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", errors="surrogateescape")


def decode_value(data: bytes) -> str:
    """Bytes read from the store as a str; bytes no put of the history wrote stay distinct (surrogate escapes)."""
    return data.decode("utf-8", errors="surrogateescape")


def _txn_op_to_pb(op: TxnOp) -> pb.RequestOp:
    if isinstance(op, Put):
        return pb.RequestOp(request_put=pb.PutRequest(key=_key_bytes(op.key), value=_key_bytes(op.value)))
    if isinstance(op, Get):
        return pb.RequestOp(request_range=pb.RangeRequest(key=_key_bytes(op.key)))
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=_key_bytes(op.key)))


def _compare_to_pb(c: Compare) -> pb.Compare:
    if c.target == "value":
        assert isinstance(c.expected, str)
        return pb.Compare(
            result=pb.Compare.EQUAL, target=pb.Compare.VALUE, key=_key_bytes(c.key), value=_key_bytes(c.expected)
        )
    assert isinstance(c.expected, int)
    return pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=_key_bytes(c.key), mod_revision=c.expected)


def request_to_pb(request: Request) -> pb.RangeRequest | pb.PutRequest | pb.DeleteRangeRequest | pb.TxnRequest:
    """The etcd request for ``request`` (a ``Get`` is a linearizable single-key Range)."""
    if isinstance(request, Put):
        return pb.PutRequest(key=_key_bytes(request.key), value=_key_bytes(request.value))
    if isinstance(request, Get):
        return pb.RangeRequest(key=_key_bytes(request.key))
    if isinstance(request, Delete):
        return pb.DeleteRangeRequest(key=_key_bytes(request.key))
    return pb.TxnRequest(
        compare=[_compare_to_pb(c) for c in request.compare],
        success=[_txn_op_to_pb(op) for op in request.success],
        failure=[_txn_op_to_pb(op) for op in request.failure],
    )


def _range_result(resp: pb.RangeResponse, revision: int) -> GetResult:
    if not resp.kvs:
        return GetResult(None, 0, revision)
    kv = resp.kvs[0]
    return GetResult(decode_value(kv.value), kv.mod_revision, revision)


def output_from_pb(request: Request, response: Any) -> Response:
    """The history output for etcd's ``response`` to ``request``."""
    revision = int(response.header.revision)
    if isinstance(request, Put):
        return PutResult(revision)
    if isinstance(request, Get):
        return _range_result(response, revision)
    if isinstance(request, Delete):
        return DeleteResult(int(response.deleted), revision)
    results: list[TxnOpResult] = []
    ops: Sequence[TxnOp] = request.success if response.succeeded else request.failure
    if len(ops) != len(response.responses):
        raise ValueError(f"txn answered {len(response.responses)} responses for {len(ops)} operations")
    for op, r in zip(ops, response.responses, strict=True):
        if isinstance(op, Put):
            results.append(PutResult(revision))
        elif isinstance(op, Get):
            results.append(_range_result(r.response_range, revision))
        else:
            results.append(DeleteResult(int(r.response_delete_range.deleted), revision))
    return TxnResult(bool(response.succeeded), tuple(results), revision)
