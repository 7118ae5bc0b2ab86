"""Crash-durability harness: concurrent writers against a live server, a ledger of what was acknowledged, and a
verifier that checks a restarted server against that ledger.

The promise under test: nothing acknowledged is ever lost on ``kill -9``, nothing unacknowledged is
half-there, and revisions continue after a restart.

Ledger rules (see :class:`Ledger`):
- an op is recorded as *maybe* before its RPC is sent, and becomes *acked* (with the response header
  revision) only once its response arrived; an op whose RPC failed stays *maybe* for ever;
- keys are unique per op (``crash/<cycle>/w<writer>/p<seq>`` for a put, ``.../t<seq>/<i>`` for the 2-3 keys
  of a txn), so every key is written exactly once and deleted at most once (only by the writer that wrote
  it, and only after its write was acknowledged);
- a writer stops at its first failed RPC, so it has at most one *maybe* op, and it is its last one.

With that, every revision of a cycle belongs to exactly one ledger op, which lets :func:`verify_restarted`
check the stored history revision by revision (no gaps, no foreign or partial revisions), and not just the
final state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.processes import free_port, quorumkv_env

#: Environment variable fixing the seed of the crash tests (the seed is printed by every run).
SEED_ENV = "QUORUMKV_CRASH_SEED"

ACKED = "acked"
MAYBE = "maybe"
PUT, TXN, DELETE = "put", "txn", "delete"
EV_PUT, EV_DELETE = 0, 1  # mvccpb.Event.EventType

ROOT_PREFIX = b"crash/"
ROOT_END = b"crash0"
#: Every RPC of the harness is bounded; a server that hangs fails the test instead of stalling it.
RPC_TIMEOUT_S = 15.0
FIRST_ACK_TIMEOUT_S = 30.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def seed_from_env() -> int:
    """The seed from ``QUORUMKV_CRASH_SEED``, else a fresh random one (print it)."""
    env = os.environ.get(SEED_ENV, "").strip()
    return int(env) if env else random.SystemRandom().randrange(2**32)


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with ``prefix``" (prefix must not end in 0xff)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def cycle_prefix(cycle: int) -> bytes:
    return b"crash/%03d/" % cycle


def make_value(body: str, padding: int) -> bytes:
    """``body`` + padding + ``#crc=<crc32 of everything before>``: a value that can check itself."""
    head = (body + "/" + "x" * padding).encode()
    return head + b"#crc=%08x" % zlib.crc32(head)


def value_ok(value: bytes) -> bool:
    head, sep, crc = value.rpartition(b"#crc=")
    return bool(sep) and crc == b"%08x" % zlib.crc32(head)


def grpc_target(client_url: str) -> str:
    return client_url.split("://", 1)[-1]


def kv_stub(channel: Any) -> Any:
    return pb_grpc.KVStub(channel)  # type: ignore[no-untyped-call]  # generated code is untyped


def watch_stub(channel: Any) -> Any:
    return pb_grpc.WatchStub(channel)  # type: ignore[no-untyped-call]


@dataclasses.dataclass(eq=False)
class Op:
    """One client request of the load (a put, a txn of puts, or a delete of an earlier op's keys)."""

    op_id: int
    kind: str
    cycle: int
    writer: int
    keys: tuple[bytes, ...]
    values: tuple[bytes, ...] = ()
    #: For a delete: the put/txn op whose keys it deletes.
    target: Op | None = None
    status: str = MAYBE
    #: The response header revision, once acked.
    revision: int = 0
    error: str = ""

    def signature(self) -> frozenset[tuple[int, bytes]]:
        """The (event type, key) pairs this op produces in its revision."""
        ev = EV_DELETE if self.kind == DELETE else EV_PUT
        return frozenset((ev, k) for k in self.keys)

    def describe(self) -> str:
        keys = ",".join(k.decode(errors="replace") for k in self.keys)
        error = f" ({self.error})" if self.error else ""
        return f"{self.status} {self.kind}#{self.op_id} rev={self.revision} [{keys}]{error}"


class Ledger:
    """Every op the load sent, across all kill/restart cycles."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.deleted_by: dict[int, Op] = {}  # op_id of a put/txn -> the delete op targeting it
        self.key_owner: dict[bytes, Op] = {}

    def add(self, op: Op) -> Op:
        self.ops.append(op)
        if op.kind == DELETE:
            assert op.target is not None and op.target.op_id not in self.deleted_by
            self.deleted_by[op.target.op_id] = op
        else:
            for k in op.keys:
                assert k not in self.key_owner, f"key {k!r} written twice"
                self.key_owner[k] = op
        return op

    def new_op(self, kind: str, cycle: int, writer: int, keys: Sequence[bytes], values: Sequence[bytes] = (),
               target: Op | None = None) -> Op:
        return self.add(Op(len(self.ops), kind, cycle, writer, tuple(keys), tuple(values), target))

    def max_acked_revision(self) -> int:
        return max((op.revision for op in self.ops if op.status == ACKED), default=0)

    def counts(self, cycle: int | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            if cycle is None or op.cycle == cycle:
                name = f"{op.status}_{op.kind}"
                out[name] = out.get(name, 0) + 1
        return out


@dataclasses.dataclass
class LoadResult:
    ops_sent: int
    acked: int
    maybe: int
    #: Ops that failed while the server was still supposed to be up (a server bug, not the crash).
    early_failures: list[str]
    anomalies: list[str]
    load_s: float


class _LoadState:
    def __init__(self) -> None:
        self.killed = False
        self.first_ack = asyncio.Event()  # set by the first acknowledged request of the cycle
        self.early_failures: list[str] = []
        self.anomalies: list[str] = []


async def _writer(stub: Any, ledger: Ledger, cycle: int, writer: int, rng: random.Random, state: _LoadState,
                  txn_share: float, delete_share: float) -> None:
    base = cycle_prefix(cycle) + b"w%02d/" % writer
    own: list[Op] = []  # acked puts/txns of this writer not yet targeted by a delete
    seq = 0
    while True:
        seq += 1
        r = rng.random()
        if r < delete_share and own:
            target = own.pop(rng.randrange(len(own)))
            op = ledger.new_op(DELETE, cycle, writer, target.keys, target=target)
            if target.kind == TXN:
                group = target.keys[0].rsplit(b"/", 1)[0] + b"/"
                call = stub.DeleteRange(pb.DeleteRangeRequest(key=group, range_end=prefix_end(group)),
                                        timeout=RPC_TIMEOUT_S)
            else:
                call = stub.DeleteRange(pb.DeleteRangeRequest(key=target.keys[0]), timeout=RPC_TIMEOUT_S)
        elif r < delete_share + txn_share:
            n = rng.choice((2, 3))
            group = base + b"t%06d/" % seq
            keys = [group + b"%d" % i for i in range(n)]
            values = [make_value(f"c{cycle}/w{writer}/s{seq}/{i}", rng.randrange(0, 200)) for i in range(n)]
            op = ledger.new_op(TXN, cycle, writer, keys, values)
            req = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=v))
                                         for k, v in zip(keys, values, strict=True)])
            call = stub.Txn(req, timeout=RPC_TIMEOUT_S)
        else:
            key = base + b"p%06d" % seq
            value = make_value(f"c{cycle}/w{writer}/s{seq}", rng.randrange(0, 200))
            op = ledger.new_op(PUT, cycle, writer, [key], [value])
            call = stub.Put(pb.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT_S)
        try:
            resp = await call
        except grpc.aio.AioRpcError as exc:
            op.error = f"{exc.code().name}: {exc.details()}"
            if not state.killed:
                state.early_failures.append(op.describe())
            return
        op.status = ACKED
        op.revision = int(resp.header.revision)
        state.first_ack.set()
        if op.kind == DELETE and resp.deleted != len(op.keys):
            state.anomalies.append(f"{op.describe()}: deleted={resp.deleted}, expected {len(op.keys)}")
        if op.kind == TXN and not resp.succeeded:
            state.anomalies.append(f"{op.describe()}: txn without compares did not succeed")
        if op.kind != DELETE:
            own.append(op)


async def load_until_kill(client_url: str, ledger: Ledger, *, cycle: int, writers: int, rng: random.Random,
                          kill_after_s: float, kill: Callable[[], object], txn_share: float = 0.15,
                          delete_share: float = 0.12) -> LoadResult:
    """Run ``writers`` concurrent writers; ``kill_after_s`` after the first acknowledgement (waited for up to
    ``FIRST_ACK_TIMEOUT_S``: a slow disk must not turn into a cycle that acknowledged nothing) call ``kill()``
    (kill -9 the server) and wait (bounded) until every writer has seen its in-flight RPC fail."""
    started = time.monotonic()
    first = len(ledger.ops)
    state = _LoadState()
    async with grpc.aio.insecure_channel(grpc_target(client_url), options=CHANNEL_OPTIONS) as channel:
        stub = kv_stub(channel)
        tasks = [
            asyncio.create_task(_writer(stub, ledger, cycle, w, random.Random(rng.randrange(2**32)), state,
                                        txn_share, delete_share))
            for w in range(writers)
        ]
        try:
            try:
                await asyncio.wait_for(state.first_ack.wait(), FIRST_ACK_TIMEOUT_S)
            except TimeoutError:
                pass  # the caller sees acked == 0 and says so
            await asyncio.sleep(kill_after_s)
            state.killed = True  # before the kill: a failure racing with it is the crash's, not a bug
            kill()
            _, pending = await asyncio.wait(tasks, timeout=RPC_TIMEOUT_S + 10)
            if pending:
                raise AssertionError(f"{len(pending)} writers still running after the kill")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    ops = ledger.ops[first:]
    return LoadResult(
        ops_sent=len(ops),
        acked=sum(op.status == ACKED for op in ops),
        maybe=sum(op.status == MAYBE for op in ops),
        early_failures=state.early_failures,
        anomalies=state.anomalies,
        load_s=time.monotonic() - started,
    )


# -- verification --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class VerifyResult:
    problems: list[str]
    revision: int  # the store revision the restarted server reported before the probe
    probe_revision: int  # the revision of the put made after the restart
    keys_served: int
    revisions_checked: int
    maybe_landed: int
    maybe_absent: int
    history_points_checked: int


def _check_present(op: Op, served: dict[bytes, Any], problems: list[str]) -> None:
    """``op``'s keys are all there, with its values, in one revision (the acked one if acked)."""
    revs = set()
    for k, v in zip(op.keys, op.values, strict=True):
        kv = served[k]
        if kv.value != v:
            problems.append(f"{op.describe()}: {k!r} has value {kv.value[:60]!r}, expected {v[:60]!r}")
        if kv.version != 1 or kv.create_revision != kv.mod_revision:
            problems.append(f"{op.describe()}: {k!r} version={kv.version} create={kv.create_revision} "
                            f"mod={kv.mod_revision}; each key is written once")
        revs.add(int(kv.mod_revision))
    if op.status == ACKED and revs != {op.revision}:
        problems.append(f"{op.describe()}: served mod_revisions {sorted(revs)} != acknowledged {op.revision}")
    if len(revs) > 1:
        problems.append(f"{op.describe()}: keys of one request at different revisions {sorted(revs)}")


def check_state(ledger: Ledger, served: dict[bytes, Any], count_cycle: int | None = None
                ) -> tuple[list[str], int, int]:
    """Check the served keys (everything under ``crash/``) against the ledger.

    Returns (problems, maybe ops found applied, maybe ops found absent); the counts cover the ops of cycle
    ``count_cycle`` (all cycles if None).
    """
    problems: list[str] = []
    landed = absent = 0
    for key, kv in served.items():
        if key not in ledger.key_owner:
            problems.append(f"served key {key!r} was never written by the load")
        elif not value_ok(kv.value):
            problems.append(f"served key {key!r} has a value failing its checksum: {kv.value[:80]!r}")
    for op in ledger.ops:
        if op.kind == DELETE:
            continue
        present = [k in served for k in op.keys]
        delete = ledger.deleted_by.get(op.op_id)
        counted = count_cycle is None or op.cycle == count_cycle
        if delete is not None and delete.status == ACKED:
            if any(present):
                problems.append(f"{op.describe()}: keys present after acknowledged {delete.describe()}")
            continue
        if all(present):
            _check_present(op, served, problems)
            if counted and op.status == MAYBE:
                landed += 1
            if counted and delete is not None:
                absent += 1  # the maybe delete did not land
        elif any(present):
            problems.append(f"{op.describe()}: only keys {[k for k, p in zip(op.keys, present, strict=True) if p]}"
                            " are present: a request is half there")
        elif op.status == ACKED and delete is None:
            problems.append(f"{op.describe()}: acknowledged but absent after restart")
        elif delete is not None:
            landed += counted  # the maybe delete landed
        else:
            absent += counted
    return problems, landed, absent


def _replay(groups: list[tuple[int, list[Any]]], upto: int) -> dict[bytes, tuple[bytes, int]]:
    state: dict[bytes, tuple[bytes, int]] = {}
    for rev, events in groups:
        if rev > upto:
            break
        for ev in events:
            if ev.type == EV_DELETE:
                state.pop(ev.kv.key, None)
            else:
                state[ev.kv.key] = (ev.kv.value, rev)
    return state


async def watch_history(watch: Any, key: bytes, range_end: bytes, start_revision: int, until_revision: int,
                         timeout_s: float) -> tuple[list[Any], str]:
    """Events in [key, range_end) from ``start_revision`` through ``until_revision``, and an error ("" if
    the watch got there within ``timeout_s``)."""
    call = watch.Watch(timeout=timeout_s + 5)
    events: list[Any] = []
    error = ""
    try:
        async with asyncio.timeout(timeout_s):
            await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision)))
            async for resp in call:
                if resp.canceled:
                    error = (f"watch from {start_revision} canceled: {resp.cancel_reason!r} "
                             f"(compact_revision={resp.compact_revision})")
                    break
                events.extend(resp.events)
                if events and events[-1].kv.mod_revision >= until_revision:
                    break
            else:
                error = "watch stream ended early"
    except TimeoutError:
        error = f"watch from {start_revision} did not reach revision {until_revision} within {timeout_s}s"
    except grpc.aio.AioRpcError as exc:
        error = f"watch from {start_revision} failed: {exc.code().name}: {exc.details()}"
    finally:
        call.cancel()
    if error:
        last = events[-1].kv.mod_revision if events else None
        error += f" ({len(events)} events received, last at revision {last})"
    return events, error


async def verify_restarted(client_url: str, ledger: Ledger, *, cycle: int, since_revision: int,
                           rng: random.Random, history_samples: int = 6) -> VerifyResult:
    """Check a restarted server against the ledger; then prove revisions continue with a probe put.

    ``since_revision``: the store revision just before cycle ``cycle``'s load began (so every revision
    after it up to the restart belongs to one op of that cycle).
    """
    problems: list[str] = []
    async with grpc.aio.insecure_channel(grpc_target(client_url), options=CHANNEL_OPTIONS) as channel:
        kv = kv_stub(channel)
        resp = await kv.Range(pb.RangeRequest(key=ROOT_PREFIX, range_end=ROOT_END), timeout=RPC_TIMEOUT_S)
        revision = int(resp.header.revision)
        served = {bytes(x.key): x for x in resp.kvs}
        state_problems, landed, absent = check_state(ledger, served, cycle)
        problems += state_problems
        max_acked = ledger.max_acked_revision()
        if revision < max_acked:
            problems.append(f"store revision {revision} after restart < max acknowledged revision {max_acked}")
        max_served = max((int(x.mod_revision) for x in served.values()), default=0)
        if max_served > revision:
            problems.append(f"served mod_revision {max_served} > store revision {revision}")

        # Revisions continue: a new write gets a revision above everything before the crash.
        probe = ledger.new_op(PUT, cycle, -1, [b"crash/probe/%03d" % cycle], [make_value(f"probe/{cycle}", 0)])
        presp = await kv.Put(pb.PutRequest(key=probe.keys[0], value=probe.values[0]), timeout=RPC_TIMEOUT_S)
        probe.status, probe.revision = ACKED, int(presp.header.revision)
        if probe.revision <= max(revision, max_acked):
            problems.append(f"put after restart got revision {probe.revision}, not above {max(revision, max_acked)}")

        # History: every revision since the load began is exactly one op of this cycle, whole.
        events, watch_error = await watch_history(watch_stub(channel), ROOT_PREFIX, ROOT_END,
                                                   since_revision + 1, probe.revision, RPC_TIMEOUT_S)
        if watch_error:
            problems.append(watch_error)
        groups: list[tuple[int, list[Any]]] = []
        for ev in events:
            rev = int(ev.kv.mod_revision)
            if rev == probe.revision:
                continue
            if groups and groups[-1][0] == rev:
                groups[-1][1].append(ev)
            else:
                if groups and rev < groups[-1][0]:
                    problems.append(f"watch delivered revision {rev} after {groups[-1][0]}")
                groups.append((rev, [ev]))
        by_sig = {op.signature(): op for op in ledger.ops if op.cycle == cycle and op.writer >= 0}
        seen: set[int] = set()
        for rev, evs in groups:
            sig = frozenset((int(e.type), bytes(e.kv.key)) for e in evs)
            op = by_sig.get(sig)
            if op is None or len(sig) != len(evs):
                problems.append(f"revision {rev} holds events {sorted(sig)[:4]}... matching no single request "
                                "(partial or foreign)")
                continue
            if op.op_id in seen:
                problems.append(f"{op.describe()} applied twice (again at revision {rev})")
            seen.add(op.op_id)
            if op.status == ACKED and op.revision != rev:
                problems.append(f"{op.describe()} found at revision {rev}")
            if op.kind != DELETE:
                got = {bytes(e.kv.key): bytes(e.kv.value) for e in evs}
                if got != dict(zip(op.keys, op.values, strict=True)):
                    problems.append(f"{op.describe()}: history at revision {rev} has other values")
        for op in ledger.ops:
            if op.cycle == cycle and op.writer >= 0 and op.status == ACKED and op.op_id not in seen:
                problems.append(f"{op.describe()} missing from the history")
        expected_revs = list(range(since_revision + 1, revision + 1))
        if [g[0] for g in groups] != expected_revs:
            got_revs = [g[0] for g in groups]
            problems.append(f"history revisions {got_revs[:3]}..{got_revs[-3:]} ({len(got_revs)}) are not exactly "
                            f"{since_revision + 1}..{revision}")

        # Reads at old revisions agree with the history (and the current state with all of it).
        cp = cycle_prefix(cycle)
        current = {k: (bytes(x.value), int(x.mod_revision)) for k, x in served.items() if k.startswith(cp)}
        if _replay(groups, revision) != current:
            problems.append("replaying the history does not give the current state")
        points = sorted({since_revision, revision, *rng.sample([g[0] for g in groups],
                                                               min(history_samples, len(groups)))})
        for at in points:
            old = await kv.Range(pb.RangeRequest(key=cp, range_end=prefix_end(cp), revision=at),
                                 timeout=RPC_TIMEOUT_S)
            got_old = {bytes(x.key): (bytes(x.value), int(x.mod_revision)) for x in old.kvs}
            if got_old != _replay(groups, at):
                problems.append(f"Range at revision {at} differs from the history replayed to {at}")
    return VerifyResult(
        problems=problems,
        revision=revision,
        probe_revision=probe.revision,
        keys_served=len(served),
        revisions_checked=len(groups),
        maybe_landed=landed,
        maybe_absent=absent,
        history_points_checked=len(points),
    )


# -- one-shot server runs (for startup refusals) -------------------------------------------------------------


def run_quorumkv_once(data_dir: Path, extra_args: Sequence[str] = (), timeout_s: float = 30.0
                      ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m quorumkv`` on ``data_dir`` (loopback, fresh ports) expecting it to exit by itself.

    stdout and stderr are captured separately. A server that does not exit within ``timeout_s`` (i.e. one
    that started serving) is killed (its pid only) and :class:`subprocess.TimeoutExpired` propagates.
    """
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    argv = [
        sys.executable, "-m", "quorumkv",
        "--name", "default",
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"default={peer_url}",
        *extra_args,
    ]  # fmt: skip
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                          timeout=timeout_s, env=quorumkv_env(), check=False)
