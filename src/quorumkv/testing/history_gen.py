"""Synthetic linearizable histories: a sequential run of etcd's KV (the :class:`~quorumkv.testing.model.Model`
oracle, not the checker's own model) with each operation's call and return times spread around its
linearization point, so operations of different clients overlap at random.

Used by the checker's property tests (every generated history must be accepted) and by ``bench/`` (checker
speed on histories of realistic size). The generator never consults :mod:`quorumkv.testing.linearizability`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.testing.history import (
    Compare,
    Delete,
    Get,
    GetResult,
    History,
    Operation,
    Put,
    PutResult,
    Request,
    Response,
    Txn,
    TxnOp,
    TxnResult,
    WatchEvent,
    is_write,
    output_from_pb,
    request_to_pb,
)
from quorumkv.testing.model import DELETE, Model


@dataclass(frozen=True)
class GenParams:
    operations: int = 100
    clients: int = 5
    keys: int = 3
    #: Fraction of writes whose client sees a failure (the write is then applied or not, half and half).
    maybe_fraction: float = 0.0
    #: Fraction of reads whose client sees a failure (the checker drops them).
    failed_read_fraction: float = 0.0
    #: Operation kinds' weights: put, get, delete, txn.
    weights: tuple[int, int, int, int] = (4, 4, 1, 2)
    #: How far (in linearization steps) a call may precede and a return may follow the linearization point.
    max_spread: int = 4
    #: Also record what a watch on every key would have delivered (the history's ``watch``, complete).
    watch: bool = False


_STEP = 1000  # ns between consecutive linearization points


def _run(model: Model, request: Request) -> Response:
    pbreq = request_to_pb(request)
    resp: object
    if isinstance(pbreq, pb.PutRequest):
        resp = model.put(pbreq)
    elif isinstance(pbreq, pb.RangeRequest):
        resp = model.range(pbreq)
    elif isinstance(pbreq, pb.DeleteRangeRequest):
        resp = model.delete_range(pbreq)
    else:
        resp = model.txn(pbreq)
    return output_from_pb(request, resp)


def _txn(rng: random.Random, key: str, value: str, known: dict[str, list[tuple[str, int]]]) -> Txn:
    """A compare-and-set as a client would issue it: against the key's last value/mod_revision this history saw
    returned (which may be stale by now) or an older one; put on success, read (maybe delete) on failure."""
    history = known.get(key, [])
    choice = history[-1] if history and rng.random() < 0.7 else (rng.choice(history) if history else None)
    cmp: Compare
    if rng.random() < 0.5:
        cmp = Compare(key, "value", choice[0] if choice else "never-written")
    else:
        cmp = Compare(key, "mod_revision", choice[1] if choice else 0)
    failure: tuple[TxnOp, ...] = (Get(key),) if rng.random() < 0.8 else (Get(key), Delete(key))
    return Txn((cmp,), (Put(key, value),), failure)


def _learn(known: dict[str, list[tuple[str, int]]], request: Request, output: Response) -> None:
    """Remember the values and mod_revisions an answered operation revealed."""
    if isinstance(request, Put) and isinstance(output, PutResult):
        known.setdefault(request.key, []).append((request.value, output.revision))
    elif isinstance(request, Get) and isinstance(output, GetResult) and output.value is not None:
        known.setdefault(request.key, []).append((output.value, output.mod_revision))
    elif isinstance(request, Txn) and isinstance(output, TxnResult):
        ops = request.success if output.succeeded else request.failure
        for op, result in zip(ops, output.results, strict=True):
            if isinstance(op, Put):
                known.setdefault(op.key, []).append((op.value, output.revision))
            elif isinstance(op, Get) and isinstance(result, GetResult) and result.value is not None:
                known.setdefault(op.key, []).append((result.value, result.mod_revision))


def generate_history(rng: random.Random, params: GenParams = GenParams()) -> History:
    """A linearizable history of ``params.operations`` operations (failed ones included)."""
    model = Model()
    keys = [f"k{i}" for i in range(params.keys)]
    busy_until = [-1] * params.clients
    known: dict[str, list[tuple[str, int]]] = {}
    ops: list[Operation] = []
    events: list[WatchEvent] = []
    point = 0
    kinds = ("put", "get", "delete", "txn")
    spread = params.max_spread * _STEP
    for i in range(params.operations):
        point += _STEP
        free = [c for c in range(params.clients) if busy_until[c] < point]
        if not free:
            point = min(busy_until) + 1
            free = [c for c in range(params.clients) if busy_until[c] < point]
        client = rng.choice(free)
        call = rng.randint(max(busy_until[client] + 1, point - spread), point)
        key = rng.choice(keys)
        kind = rng.choices(kinds, weights=params.weights)[0]
        value = f"v{i}"
        request: Request
        event_value: str | None
        if kind == "put":
            request = Put(key, value)
        elif kind == "get":
            request = Get(key)
        elif kind == "delete":
            request = Delete(key)
        else:
            request = _txn(rng, key, value, known)
        write = is_write(request)
        fails = rng.random() < (params.maybe_fraction if write else params.failed_read_fraction)
        applied = not fails or (write and rng.random() < 0.5)
        output: Response | None = None
        if applied:
            before = len(model.events)
            response = _run(model, request)
            for ev in model.events[before:]:
                event_value = None if ev.type == DELETE else ev.kv.value.decode()
                received = point + rng.randint(0, spread)
                events.append(WatchEvent(ev.revision, ev.kv.key.decode(), event_value, received))
            if not fails:
                output = response
                _learn(known, request, response)
        if fails:
            # The client gives up at some moment after its call, which may be before the write takes effect.
            ret = call + rng.randint(0, spread)
        else:
            ret = point + rng.randint(0, spread)
        busy_until[client] = ret
        ops.append(Operation(i, client, call, ret, request, output, "timeout" if fails else None))
    if not params.watch:
        return History(ops, initial_revision=1)
    return History(ops, initial_revision=1, watch=events, watch_through=model.revision)
