"""Record a client history against etcd-compatible endpoints, for :mod:`quorumkv.testing.linearizability`.

:func:`record_history` runs ``clients`` concurrent workers (asyncio, ``grpc.aio``, the project's generated
stubs) against a list of loopback endpoints. Each worker issues, one at a time, a random mix of puts of unique
values, linearizable gets, compare-and-set txns (``value == v`` or ``mod_revision == r`` against what the
worker last saw, then put, else get) and deletes, over a small key space under a fresh prefix, until
``max_operations`` operations were issued in total or ``max_seconds`` passed (each RPC has its own
``op_timeout_s``, so the run ends at most that much later). An RPC that fails in any way — deadline exceeded,
UNAVAILABLE, a dropped connection, any status — is recorded with ``output=None``: for a write that means
*maybe applied*, and the worker moves to the next endpoint.

Before the workers start, one linearizable Range over the prefix records the initial state and revision. With
``watch=True`` a watch on the prefix (resumed from the next revision on another endpoint if its stream breaks)
records every event from there on, and after the workers stop the recorder waits (bounded) until the watch has
delivered the final revision; the checker uses those events to tell which failed writes took effect.

The history is exact only if the workers are the store's only writers while recording (revisions are global).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.history import (
    Compare,
    Delete,
    DeleteResult,
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
    decode_value,
    output_from_pb,
    request_to_pb,
)

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", -1)]


@dataclass(frozen=True)
class Mix:
    """Relative weights of the operation kinds."""

    put: int = 4
    get: int = 4
    txn: int = 2
    delete: int = 1


@dataclass(frozen=True)
class RecorderConfig:
    endpoints: Sequence[str]
    clients: int = 10
    keys: int = 5
    max_operations: int = 1000
    max_seconds: float = 10.0
    op_timeout_s: float = 2.0
    mix: Mix = Mix()
    seed: int | None = None
    #: Keys are ``{key_prefix}k{i}``; default: a fresh ``lin/<random>/`` prefix, so values never repeat.
    key_prefix: str | None = None
    watch: bool = True
    #: How long to wait, after the workers stop, for the watch to deliver the final revision.
    watch_settle_s: float = 5.0


def _target(endpoint: str) -> str:
    """``host:port`` of a loopback endpoint (``http://`` accepted); anything else is refused."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = parts.hostname or ""
    if not (host in _LOOPBACK or host.startswith("127.")) or parts.port is None:
        raise ValueError(f"refusing endpoint {endpoint!r}: only loopback host:port endpoints are allowed")
    return f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class _Channels:
    """One channel per endpoint, per owner (opened lazily, all closed at the end)."""

    def __init__(self, targets: Sequence[str]) -> None:
        self.targets = list(targets)
        self._open: dict[int, grpc.aio.Channel] = {}

    def kv(self, index: int) -> Any:
        return pb_grpc.KVStub(self._channel(index))  # type: ignore[no-untyped-call]

    def watch(self, index: int) -> Any:
        return pb_grpc.WatchStub(self._channel(index))  # type: ignore[no-untyped-call]

    def _channel(self, index: int) -> grpc.aio.Channel:
        channel = self._open.get(index)
        if channel is None:
            channel = self._open[index] = grpc.aio.insecure_channel(self.targets[index], options=_CHANNEL_OPTIONS)
        return channel

    async def close(self) -> None:
        for channel in self._open.values():
            await channel.close(grace=None)
        self._open.clear()


class _Budget:
    def __init__(self, max_operations: int, deadline: float) -> None:
        self.left = max_operations
        self.deadline = deadline
        self.next_id = 0

    def take(self) -> int | None:
        """An operation id, or None when the count or the time is used up."""
        if self.left <= 0 or time.monotonic() >= self.deadline:
            return None
        self.left -= 1
        op_id = self.next_id
        self.next_id += 1
        return op_id


async def _call(kv: Any, request: Request, timeout: float) -> Any:
    req = request_to_pb(request)
    if isinstance(req, pb.PutRequest):
        return await kv.Put(req, timeout=timeout)
    if isinstance(req, pb.RangeRequest):
        return await kv.Range(req, timeout=timeout)
    if isinstance(req, pb.DeleteRangeRequest):
        return await kv.DeleteRange(req, timeout=timeout)
    return await kv.Txn(req, timeout=timeout)


class _Worker:
    def __init__(self, client: int, config: RecorderConfig, keys: list[str], rng: random.Random) -> None:
        self.client = client
        self.config = config
        self.keys = keys
        self.rng = rng
        self.endpoint = client % len(config.endpoints)
        self.channels = _Channels([_target(e) for e in config.endpoints])
        self.seq = 0
        #: key -> (value, mod_revision) this worker last saw (from its own answered operations)
        self.known: dict[str, tuple[str, int]] = {}

    def _request(self) -> Request:
        mix = self.config.mix
        kind = self.rng.choices(("put", "get", "txn", "delete"), weights=(mix.put, mix.get, mix.txn, mix.delete))[0]
        key = self.rng.choice(self.keys)
        self.seq += 1
        value = f"c{self.client}.{self.seq}"
        if kind == "put":
            return Put(key, value)
        if kind == "get":
            return Get(key)
        if kind == "delete":
            return Delete(key)
        seen = self.known.get(key)
        cmp: Compare
        if self.rng.random() < 0.5:
            cmp = Compare(key, "value", seen[0]) if seen else Compare(key, "mod_revision", 0)
        else:
            cmp = Compare(key, "mod_revision", seen[1] if seen else 0)
        failure: tuple[TxnOp, ...] = (Get(key),)
        return Txn((cmp,), (Put(key, value),), failure)

    def _learn(self, request: Request, output: Response) -> None:
        if isinstance(request, Put) and isinstance(output, PutResult):
            self.known[request.key] = (request.value, output.revision)
        elif isinstance(request, Get) and isinstance(output, GetResult):
            self._saw(request.key, output)
        elif isinstance(request, Delete) and isinstance(output, DeleteResult):
            self.known.pop(request.key, None)
        elif isinstance(request, Txn) and isinstance(output, TxnResult):
            ops = request.success if output.succeeded else request.failure
            for op, result in zip(ops, output.results, strict=True):
                if isinstance(op, Put):
                    self.known[op.key] = (op.value, output.revision)
                elif isinstance(op, Get) and isinstance(result, GetResult):
                    self._saw(op.key, result)
                elif isinstance(op, Delete):
                    self.known.pop(op.key, None)

    def _saw(self, key: str, result: GetResult) -> None:
        if result.value is None:
            self.known.pop(key, None)
        else:
            self.known[key] = (result.value, result.mod_revision)

    async def run(self, budget: _Budget, out: list[Operation]) -> None:
        try:
            while (op_id := budget.take()) is not None:
                request = self._request()
                timeout = self.config.op_timeout_s
                call = time.monotonic_ns()
                output: Response | None = None
                error: str | None = None
                try:
                    response = await _call(self.channels.kv(self.endpoint), request, timeout)
                    output = output_from_pb(request, response)
                except (TimeoutError, grpc.aio.AioRpcError, ValueError) as exc:
                    error = _error_text(exc)
                ret = time.monotonic_ns()
                out.append(Operation(op_id, self.client, call, ret, request, output, error))
                if output is None:
                    self.endpoint = (self.endpoint + 1) % len(self.config.endpoints)
                else:
                    self._learn(request, output)
        finally:
            await self.channels.close()


class _WatchBroken(Exception):
    """The server canceled the watch (it is resumed elsewhere)."""


class _Watcher:
    """A watch on the prefix from ``start`` on, resumed on another endpoint when its stream breaks."""

    def __init__(self, targets: Sequence[str], prefix: bytes, start: int) -> None:
        self.channels = _Channels(targets)
        self.prefix = prefix
        self.next_revision = start
        self.events: list[WatchEvent] = []
        self.complete = True
        self.progress = asyncio.Event()
        self._endpoint = 0
        self._stop = False

    async def run(self, deadline: float) -> None:
        failures = 0
        try:
            while not self._stop and time.monotonic() < deadline and failures < 20:
                try:
                    await self._stream()
                except (_WatchBroken, grpc.aio.AioRpcError):
                    pass
                if not self._stop:  # the stream broke or ended: resume on the next endpoint
                    failures += 1
                    self._endpoint = (self._endpoint + 1) % len(self.channels.targets)
                    await asyncio.sleep(0.05)
                if not self.complete:
                    return
        finally:
            await self.channels.close()

    async def _stream(self) -> None:
        stream = self.channels.watch(self._endpoint).Watch()
        create = pb.WatchCreateRequest(
            key=self.prefix, range_end=_prefix_end(self.prefix), start_revision=self.next_revision
        )
        await stream.write(pb.WatchRequest(create_request=create))
        try:
            async for resp in stream:
                if resp.compact_revision:
                    self.complete = False  # events we needed are gone
                    return
                if resp.canceled:
                    raise _WatchBroken(f"watch canceled: {resp.cancel_reason}")
                received = time.monotonic_ns()
                for ev in resp.events:
                    kv = ev.kv
                    value = None if ev.type == ev.DELETE else decode_value(kv.value)
                    self.events.append(WatchEvent(int(kv.mod_revision), decode_value(kv.key), value, received))
                    self.next_revision = int(kv.mod_revision) + 1
                self.progress.set()
                if self._stop:
                    return
        finally:
            stream.cancel()

    def stop(self) -> None:
        self._stop = True

    async def wait_through(self, revision: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.next_revision <= revision and self.complete:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.progress.wait(), min(remaining, 0.2))
        return self.complete and self.next_revision > revision


async def _read_prefix(targets: Sequence[str], prefix: bytes, timeout_s: float) -> pb.RangeResponse:
    """One linearizable Range over the prefix, trying each endpoint in turn (bounded)."""
    last: BaseException | None = None
    deadline = time.monotonic() + timeout_s
    channels = _Channels(targets)
    try:
        while time.monotonic() < deadline:
            for index in range(len(targets)):
                try:
                    req = pb.RangeRequest(key=prefix, range_end=_prefix_end(prefix))
                    left = max(deadline - time.monotonic(), 0.1)
                    resp: pb.RangeResponse = await channels.kv(index).Range(req, timeout=min(2.0, left))
                    return resp
                except grpc.aio.AioRpcError as exc:
                    last = exc
            await asyncio.sleep(0.1)
    finally:
        await channels.close()
    raise RuntimeError(f"could not read {prefix!r} from any of {list(targets)}: {last}")


async def record_history(config: RecorderConfig) -> History:
    """Run the workers and return the recorded history (see the module docstring)."""
    if not config.endpoints:
        raise ValueError("no endpoints")
    targets = [_target(e) for e in config.endpoints]
    rng = random.Random(config.seed)
    prefix_text = config.key_prefix if config.key_prefix is not None else f"lin/{uuid.uuid4().hex[:12]}/"
    prefix = prefix_text.encode()
    keys = [f"{prefix_text}k{i}" for i in range(config.keys)]
    setup_timeout = max(config.op_timeout_s * 3, 5.0)
    initial = await _read_prefix(targets, prefix, setup_timeout)
    initial_revision = int(initial.header.revision)
    initial_values = {decode_value(kv.key): (decode_value(kv.value), int(kv.mod_revision)) for kv in initial.kvs}
    deadline = time.monotonic() + config.max_seconds
    watcher: _Watcher | None = None
    watch_task: asyncio.Task[None] | None = None
    if config.watch:
        watcher = _Watcher(targets, prefix, initial_revision + 1)
        watch_deadline = deadline + config.op_timeout_s + config.watch_settle_s + setup_timeout
        watch_task = asyncio.create_task(watcher.run(watch_deadline))
    budget = _Budget(config.max_operations, deadline)
    operations: list[Operation] = []
    workers = [_Worker(c, config, keys, random.Random(rng.getrandbits(64))) for c in range(config.clients)]
    try:
        await asyncio.gather(*(w.run(budget, operations) for w in workers))
        watch_through = 0
        if watcher is not None:
            final = await _read_prefix(targets, prefix, setup_timeout)
            final_revision = int(final.header.revision)
            if await watcher.wait_through(final_revision, config.watch_settle_s):
                watch_through = final_revision
    finally:
        if watcher is not None and watch_task is not None:
            watcher.stop()
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch_task
    operations.sort(key=lambda op: op.id)
    return History(
        operations,
        initial_revision,
        {k: v for k, v in initial_values.items() if k in set(keys)},
        None if watcher is None else list(watcher.events),
        watch_through,
    )


def record_history_sync(config: RecorderConfig) -> History:
    """:func:`record_history` in a fresh event loop."""
    return asyncio.run(record_history(config))
