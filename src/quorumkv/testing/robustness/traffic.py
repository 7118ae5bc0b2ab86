"""Traffic profiles for robustness runs, against any etcd-compatible loopback endpoints (asyncio, ``grpc.aio``).

``kubernetes`` -- what kube-apiserver sends etcd: creates as ``mod_revision(key) == 0`` txns, updates and
deletes guarded by the ``mod_revision`` last seen (else a get, as the apiserver does to refresh its cache),
gets, paginated lists (``limit`` pages, later pages at the first page's revision), events put under a lease.

``etcd`` -- etcd's own mix: put, get, delete, txns (value / mod_revision compares; some write two keys at one
revision), lease grant / keepalive / revoke, compaction (behind every watcher) and defragmentation.

``lease-heavy`` -- mostly leases: grants, keepalives, revokes, lease-attached puts, gets.

Every profile runs ``clients`` concurrent clients and ``watchers`` watchers (``prev_kv``, progress requests
every half second, each resumed from its last event or progress notification when its stream breaks). Every
single-key KV request goes into the history (an RPC that fails in any way is recorded as failed: a write is then
*maybe applied*). Leases attached to keys outlive the run (TTL far above the duration), so no key expires behind
the history's back; revoked leases never carry keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
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
    decode_value,
    output_from_pb,
    request_to_pb,
)
from quorumkv.testing.recorder import _call, _Channels, _error_text, _prefix_end, _read_prefix, _target
from quorumkv.testing.robustness.record import ListRec, Recording, WatchEventRec, WatchResponseRec, WatchStreamRec

PROFILES = ("kubernetes", "etcd", "lease-heavy")
#: TTL of leases that carry keys: far beyond any run, so nothing expires behind the history's back.
_LONG_TTL = 3600


#: A client's pause after a step with a failed call, doubled per failed step in a row up to the maximum.
FAILURE_BACKOFF_S = 0.02
FAILURE_BACKOFF_MAX_S = 0.5


@dataclass(frozen=True)
class TrafficConfig:
    endpoints: Sequence[str]
    profile: str = "kubernetes"
    clients: int = 8
    watchers: int = 3
    duration_s: float = 10.0
    seed: int = 0
    op_timeout_s: float = 2.0
    keys: int = 8
    list_limit: int = 3
    #: How long, after the clients stop, the watchers get to deliver the final revision.
    settle_s: float = 20.0
    prefix: str | None = None
    #: When set: the ``time.monotonic()`` at which the clients stop (instead of ``duration_s`` after the
    #: initial read), so that a caller with a deadline for the whole run can place the traffic's end exactly.
    end_at: float | None = None
    #: Bound of the initial and final reads of the prefix (None: ``max(5 * op_timeout_s, 20 s)``).
    read_timeout_s: float | None = None
    #: Called (from the traffic's thread) once the initial read is done and the clients and watchers start.
    on_started: Callable[[], None] | None = None
    #: Called (in a worker thread) after the clients stop and before the final read: blocks until the caller has
    #: healed its faults (or its own deadline passed), so that the final read sees the healed cluster.
    wait_healed: Callable[[], object] | None = None
    #: When set: the ``time.monotonic()`` by which the final read must be done (instead of ``read_timeout_s``).
    final_read_by: float | None = None


class _Shared:
    def __init__(self, config: TrafficConfig, prefix: str) -> None:
        self.config = config
        self.prefix = prefix
        self.targets = [_target(e) for e in config.endpoints]
        self.operations: list[Operation] = []
        self.lists: list[ListRec] = []
        self.counters: Counter[str] = Counter()
        self.next_id = 0
        self.watchers: list[_Watcher] = []

    def op_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def compact_floor(self) -> int:
        """The lowest revision a watcher may still resume from (compaction must stay below it)."""
        floors = [w.resume_from for w in self.watchers if not w.dead]
        return min(floors) if floors else 0


def _put_pb(key: str, value: str, lease: int) -> pb.PutRequest:
    req = request_to_pb(Put(key, value))
    assert isinstance(req, pb.PutRequest)
    req.lease = lease
    return req


class _Client:
    def __init__(self, n: int, shared: _Shared, rng: random.Random, deadline: float) -> None:
        self.n = n
        self.shared = shared
        self.rng = rng
        self.deadline = deadline
        self.endpoint = n % len(shared.targets)
        self.channels = _RobustChannels(shared.targets)
        self.seq = 0
        self.known: dict[str, tuple[str, int]] = {}
        self.keys = [f"{shared.prefix}obj/{i}" for i in range(shared.config.keys)]
        self.lease = 0
        self.timeout = shared.config.op_timeout_s
        self.next_compact = time.monotonic() + 2.0
        self.next_defrag = time.monotonic() + 5.0
        #: steps in a row that had a failed call; the client backs off (bounded) before the next step
        self.failed_steps = 0
        self.step_failed = False

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _value(self) -> str:
        self.seq += 1
        return f"c{self.n}.{self.seq}"

    def _rotate(self) -> None:
        self.endpoint = (self.endpoint + 1) % len(self.shared.targets)

    async def kv_op(self, request: Request, lease: int = 0) -> Response | None:
        call = time.monotonic_ns()
        output: Response | None = None
        error: str | None = None
        try:
            kv = self.channels.kv(self.endpoint)
            if lease and isinstance(request, Put):
                response: Any = await kv.Put(_put_pb(request.key, request.value, lease), timeout=self.timeout)
            else:
                response = await _call(kv, request, self.timeout)
            output = output_from_pb(request, response)
        except (TimeoutError, grpc.aio.AioRpcError, ValueError) as exc:
            error = _error_text(exc)
        self.shared.operations.append(
            Operation(self.shared.op_id(), self.n, call, time.monotonic_ns(), request, output, error))
        if output is None:
            self.step_failed = True
            self._rotate()
        else:
            self._learn(request, output)
        return output

    def _learn(self, request: Request, output: Response) -> None:
        ops: Sequence[TxnOp]
        results: Sequence[Response]
        if isinstance(request, Txn) and isinstance(output, TxnResult):
            ops = request.success if output.succeeded else request.failure
            results = output.results
        else:
            ops, results = (request,), (output,)  # type: ignore[assignment]
        for op, result in zip(ops, results, strict=False):
            if isinstance(op, Put):
                self.known[op.key] = (op.value, result.revision)
            elif isinstance(op, Delete):
                self.known.pop(op.key, None)
            elif isinstance(op, Get) and isinstance(result, GetResult):
                if result.value is None:
                    self.known.pop(op.key, None)
                else:
                    self.known[op.key] = (result.value, result.mod_revision)

    async def other(self, name: str, coro: Any) -> Any:
        """A call outside the history (lease, maintenance): counted, failures counted."""
        try:
            result = await coro
            self.shared.counters[name] += 1
            return result
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            self.shared.counters[f"{name}_failed"] += 1
            del exc
            self.step_failed = True
            self._rotate()
            return None

    async def grant(self, ttl: int) -> int:
        resp = await self.other("lease_grant", self.channels.lease(self.endpoint).LeaseGrant(
            pb.LeaseGrantRequest(TTL=ttl), timeout=self.timeout))
        return int(resp.ID) if resp is not None else 0

    async def keepalive(self, lease: int) -> None:
        async def once() -> None:
            stream = self.channels.lease(self.endpoint).LeaseKeepAlive(timeout=self.timeout)
            try:
                await stream.write(pb.LeaseKeepAliveRequest(ID=lease))
                await stream.read()
            finally:
                stream.cancel()
        await self.other("lease_keepalive", once())

    async def revoke(self, lease: int) -> None:
        await self.other("lease_revoke", self.channels.lease(self.endpoint).LeaseRevoke(
            pb.LeaseRevokeRequest(ID=lease), timeout=self.timeout))

    async def paginated_list(self) -> None:
        prefix = self.shared.prefix.encode()
        end = _prefix_end(prefix)
        limit = self.shared.config.list_limit
        items: dict[str, tuple[str, int]] = {}
        revision = 0
        pages = 0
        key = prefix
        kv = self.channels.kv(self.endpoint)
        try:
            for _ in range(1000):
                resp = await kv.Range(pb.RangeRequest(key=key, range_end=end, limit=limit, revision=revision),
                                      timeout=self.timeout)
                pages += 1
                if not revision:
                    revision = int(resp.header.revision)
                for item in resp.kvs:
                    items[decode_value(item.key)] = (decode_value(item.value), int(item.mod_revision))
                if not resp.more or not resp.kvs:
                    break
                key = bytes(resp.kvs[-1].key) + b"\0"
        except (TimeoutError, grpc.aio.AioRpcError):
            self.shared.counters["list_failed"] += 1
            self.step_failed = True
            self._rotate()
            return
        self.shared.counters["list"] += 1
        self.shared.lists.append(ListRec(self.n, revision, limit, pages, items))

    # -- profiles ---------------------------------------------------------------------------------------------

    async def kubernetes_step(self) -> None:
        kind = self.rng.choices(("create", "update", "delete", "get", "list", "event"), (3, 4, 1, 3, 1, 2))[0]
        key = self.rng.choice(self.keys)
        seen = self.known.get(key)
        if kind == "create" or (kind in ("update", "delete") and seen is None):
            await self.kv_op(Txn((Compare(key, "mod_revision", 0),), (Put(key, self._value()),), (Get(key),)))
        elif kind == "update":
            assert seen is not None
            await self.kv_op(Txn((Compare(key, "mod_revision", seen[1]),), (Put(key, self._value()),), (Get(key),)))
        elif kind == "delete":
            assert seen is not None
            await self.kv_op(Txn((Compare(key, "mod_revision", seen[1]),), (Delete(key),), (Get(key),)))
        elif kind == "get":
            await self.kv_op(Get(key))
        elif kind == "list":
            await self.paginated_list()
        else:
            if not self.lease:
                self.lease = await self.grant(_LONG_TTL)
            if self.lease:
                await self.kv_op(Put(f"{self.shared.prefix}events/c{self.n}.{self.seq}", self._value()), self.lease)

    async def etcd_step(self) -> None:
        kind = self.rng.choices(("put", "get", "delete", "txn", "txn2", "lease"), (4, 4, 1, 2, 1, 1))[0]
        now = time.monotonic()
        if self.n == 0 and now >= self.next_compact:  # client 0 also compacts every ~2 s and defrags every ~5 s
            self.next_compact = now + 2.0
            kind = "compact"
        elif self.n == 0 and now >= self.next_defrag:
            self.next_defrag = now + 5.0
            kind = "defrag"
        key = self.rng.choice(self.keys)
        if kind == "put":
            await self.kv_op(Put(key, self._value()))
        elif kind == "get":
            await self.kv_op(Get(key))
        elif kind == "delete":
            await self.kv_op(Delete(key))
        elif kind == "txn":
            seen = self.known.get(key)
            cmp = (Compare(key, "value", seen[0]) if seen and self.rng.random() < 0.5
                   else Compare(key, "mod_revision", seen[1] if seen else 0))
            await self.kv_op(Txn((cmp,), (Put(key, self._value()),), (Get(key),)))
        elif kind == "txn2":  # two keys at one revision: the watch must never split it
            other = self.rng.choice([k for k in self.keys if k != key] or [key])
            await self.kv_op(Txn((), (Put(key, self._value()), Put(other, self._value()))))
        elif kind == "lease":
            await self.lease_cycle()
        elif kind == "compact":
            floor = self.shared.compact_floor() - 5
            if floor > 1:
                await self.other("compact", self.channels.kv(self.endpoint).Compact(
                    pb.CompactionRequest(revision=floor), timeout=self.timeout))
        else:
            endpoint = self.rng.randrange(len(self.shared.targets))
            await self.other("defrag", self.channels.maintenance(endpoint).Defragment(
                pb.DefragmentRequest(), timeout=max(self.timeout, 10.0)))

    async def lease_cycle(self) -> None:
        lease = await self.grant(self.rng.choice((5, 30, 60)))
        if lease:
            await self.keepalive(lease)
            await self.revoke(lease)

    async def lease_heavy_step(self) -> None:
        kind = self.rng.choices(("cycle", "attach", "keepalive", "get", "put"), (4, 3, 3, 2, 1))[0]
        key = self.rng.choice(self.keys)
        if kind == "cycle":
            await self.lease_cycle()
        elif kind == "attach":
            if not self.lease:
                self.lease = await self.grant(_LONG_TTL)
            if self.lease:
                await self.kv_op(Put(f"{self.shared.prefix}leased/c{self.n}.{self.seq}", self._value()), self.lease)
        elif kind == "keepalive":
            if self.lease:
                await self.keepalive(self.lease)
        elif kind == "get":
            await self.kv_op(Get(key))
        else:
            await self.kv_op(Put(key, self._value()), self.lease)

    async def run(self) -> None:
        step = {"kubernetes": self.kubernetes_step, "etcd": self.etcd_step,
                "lease-heavy": self.lease_heavy_step}[self.shared.config.profile]
        try:
            while time.monotonic() < self.deadline:
                self.step_failed = False
                await step()
                if self.step_failed:
                    # a member that is down refuses at once: without a pause the client would spin (100,000+
                    # failed calls in 40 s of a one-member run); 20 ms doubling to 500 ms, as clients back off
                    self.failed_steps += 1
                    pause = min(FAILURE_BACKOFF_MAX_S, FAILURE_BACKOFF_S * 2 ** min(self.failed_steps - 1, 10))
                    await asyncio.sleep(max(0.0, min(pause, self.deadline - time.monotonic())))
                else:
                    self.failed_steps = 0
        finally:
            await self.channels.close()


class _RobustChannels(_Channels):
    def lease(self, index: int) -> Any:
        from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc

        return pb_grpc.LeaseStub(self._channel(index))  # type: ignore[no-untyped-call]

    def maintenance(self, index: int) -> Any:
        from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc

        return pb_grpc.MaintenanceStub(self._channel(index))  # type: ignore[no-untyped-call]


class _Watcher:
    """One watcher: a prev_kv watch of the prefix, progress requests, resumed after every break."""

    def __init__(self, n: int, shared: _Shared, start: int) -> None:
        self.n = n
        self.shared = shared
        self.channels = _RobustChannels(shared.targets)
        self.endpoint = n % len(shared.targets)
        self.resume_from = start
        self.streams: list[WatchStreamRec] = []
        self.dead = False
        self.stopping = False
        self.progress = asyncio.Event()

    @property
    def through(self) -> int:
        return self.resume_from - 1

    async def run(self, deadline: float) -> None:
        try:
            for _ in range(10_000):
                if self.stopping or self.dead or time.monotonic() >= deadline:
                    return
                rec = WatchStreamRec(self.n, len(self.streams), self.resume_from, self.shared.targets[self.endpoint])
                self.streams.append(rec)
                try:
                    await self._stream(rec)
                except (grpc.aio.AioRpcError, TimeoutError) as exc:
                    rec.ended = _error_text(exc)
                if self.stopping:
                    if rec.ended.startswith("stopped"):
                        rec.ended = ""
                    return
                if not rec.ended:
                    rec.ended = "stream ended"
                self.endpoint = (self.endpoint + 1) % len(self.shared.targets)
                await asyncio.sleep(0.1)
        finally:
            await self.channels.close()

    async def _stream(self, rec: WatchStreamRec) -> None:
        prefix = self.shared.prefix.encode()
        stream = self.channels.watch(self.endpoint).Watch()
        await stream.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=prefix, range_end=_prefix_end(prefix), start_revision=self.resume_from, prev_kv=True)))

        async def ask_progress() -> None:
            while True:
                await asyncio.sleep(0.5)
                await stream.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                self.shared.counters["progress_request"] += 1

        asker = asyncio.create_task(ask_progress())
        try:
            async for resp in stream:
                received = time.monotonic_ns()
                if resp.compact_revision:
                    rec.ended = f"compacted at {resp.compact_revision}"
                    self.dead = True
                    return
                if resp.canceled:
                    rec.ended = f"canceled: {resp.cancel_reason}"
                    return
                if resp.created and not resp.events:
                    continue
                events = tuple(
                    WatchEventRec(int(ev.kv.mod_revision),
                                  decode_value(ev.kv.key),
                                  None if ev.type == ev.DELETE else decode_value(ev.kv.value),
                                  decode_value(ev.prev_kv.value) if ev.HasField("prev_kv") else None)
                    for ev in resp.events)
                progress = not events
                header = int(resp.header.revision)
                rec.responses.append(WatchResponseRec(received, header, events, progress))
                if events:
                    self.resume_from = max(self.resume_from, events[-1].revision + 1)
                else:
                    self.resume_from = max(self.resume_from, header + 1)
                self.progress.set()
                if self.stopping:
                    rec.ended = "stopped"
                    return
        finally:
            asker.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, Exception):
                await asker
            stream.cancel()

    async def wait_through(self, revision: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.through < revision and not self.dead:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.progress.wait(), min(left, 0.5))
        return self.through >= revision


class PrefixReadTimeout(RuntimeError):
    """The initial or final read of the prefix got no answer from any endpoint within ``timeout_s``."""

    def __init__(self, text: str, timeout_s: float) -> None:
        super().__init__(text)
        self.timeout_s = timeout_s


async def record_traffic(config: TrafficConfig, stop: asyncio.Event | None = None) -> Recording:
    """Drive ``config.profile`` for ``config.duration_s`` (or until ``stop``) and return the recording."""
    if config.profile not in PROFILES:
        raise ValueError(f"unknown profile {config.profile!r} (one of {', '.join(PROFILES)})")
    if not config.endpoints:
        raise ValueError("no endpoints")
    prefix = config.prefix if config.prefix is not None else f"/robustness/{uuid.uuid4().hex[:10]}/"
    shared = _Shared(config, prefix)
    rng = random.Random(config.seed)
    setup_timeout = (config.read_timeout_s if config.read_timeout_s is not None
                     else max(config.op_timeout_s * 5, 20.0))
    first_read_timeout = setup_timeout
    if config.end_at is not None:  # the initial read comes out of the traffic's time
        first_read_timeout = max(0.5, min(setup_timeout, config.end_at - time.monotonic()))
    try:
        initial = await _read_prefix(shared.targets, prefix.encode(), first_read_timeout)
    except RuntimeError as exc:
        raise PrefixReadTimeout(f"initial read, {first_read_timeout:.1f}s: {exc}", first_read_timeout) from exc
    initial_revision = int(initial.header.revision)
    initial_values = {decode_value(kv.key): (decode_value(kv.value), int(kv.mod_revision)) for kv in initial.kvs}
    deadline = config.end_at if config.end_at is not None else time.monotonic() + config.duration_s
    watch_deadline = deadline + config.settle_s + setup_timeout
    shared.watchers = [_Watcher(w, shared, initial_revision + 1) for w in range(config.watchers)]
    watch_tasks = [asyncio.create_task(w.run(watch_deadline)) for w in shared.watchers]
    clients = [_Client(c, shared, random.Random(rng.getrandbits(64)), deadline) for c in range(config.clients)]
    client_tasks = [asyncio.create_task(c.run()) for c in clients]
    if config.on_started is not None:
        config.on_started()
    final_revision = 0
    try:
        if stop is not None:
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*client_tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                for c in clients:
                    c.deadline = 0.0
            stopper.cancel()
        await asyncio.gather(*client_tasks)
        if config.wait_healed is not None:
            await asyncio.to_thread(config.wait_healed)
        final_timeout = (setup_timeout if config.final_read_by is None
                         else max(0.5, config.final_read_by - time.monotonic()))
        try:
            final = await _read_prefix(shared.targets, prefix.encode(), final_timeout)
        except RuntimeError as exc:
            raise PrefixReadTimeout(f"final read, {final_timeout:.1f}s: {exc}", final_timeout) from exc
        final_revision = int(final.header.revision)
        await asyncio.gather(*(w.wait_through(final_revision, config.settle_s) for w in shared.watchers))
    finally:
        for w in shared.watchers:
            w.stopping = True
        for t in watch_tasks:
            t.cancel()
        for t in watch_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for w in shared.watchers:
            if w.streams and w.streams[-1].ended.startswith(("stopped", "CANCELLED")):
                w.streams[-1].ended = ""
    operations = sorted(shared.operations, key=lambda op: op.id)
    history = History(operations, initial_revision, initial_values)
    return Recording(history, prefix, config.profile,
                     watches=[s for w in shared.watchers for s in w.streams],
                     lists=shared.lists, counters=dict(shared.counters), final_revision=final_revision)


def record_traffic_sync(config: TrafficConfig) -> Recording:
    return asyncio.run(record_traffic(config))


__all__ = ["PROFILES", "DeleteResult", "PrefixReadTimeout", "PutResult", "TrafficConfig", "record_traffic",
           "record_traffic_sync"]
