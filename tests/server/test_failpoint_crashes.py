"""A crash at every durability boundary of the node shell loses no acknowledged write.

Each test enables named failpoints (``QUORUMKV_FAILPOINTS``, see ``quorumkv.server.failpoints``) in a real
``python -m quorumkv`` process, drives writes until the failpoint fires and the process dies with
``CRASH_EXIT_CODE`` (``os._exit``, no cleanup), restarts it without the failpoint and checks that every
acknowledged write is there and the store is consistent.

- single member: ``before_log_save``, ``before_apply``, ``after_apply``, ``after_log_save``, ``after_compact``
  (checked with ``quorumkv.testing.crash.verify_restarted``: every acknowledged op present, every revision one
  op, revisions continue);
- three members: ``before_snapshot_install`` and ``after_snapshot_install`` on a follower that restarts behind
  the leader's compacted log (``--snapshot-count 20``), ``before_leader_send`` on a member made leader with
  ``move-leader``.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.server.failpoints import CRASH_EXIT_CODE, ENV_VAR
from quorumkv.testing.cluster import Cluster, start_quorumkv_cluster
from quorumkv.testing.crash import (
    ACKED,
    CHANNEL_OPTIONS,
    PUT,
    ROOT_END,
    ROOT_PREFIX,
    RPC_TIMEOUT_S,
    Ledger,
    cycle_prefix,
    grpc_target,
    kv_stub,
    make_value,
    verify_restarted,
)
from quorumkv.testing.processes import ServerProcess, start_quorumkv

#: Bound on waiting for a failpoint to fire (writes keep flowing meanwhile).
FIRE_TIMEOUT_S = 60.0


async def _revision(client_url: str) -> int:
    async with grpc.aio.insecure_channel(grpc_target(client_url)) as ch:
        resp = await kv_stub(ch).Range(pb.RangeRequest(key=b"\0", count_only=True), timeout=RPC_TIMEOUT_S)
        return int(resp.header.revision)


async def _write_until(client_url: str, ledger: Ledger, *, cycle: int, writers: int, done: Any,
                       max_puts: int | None = None) -> int:
    """Concurrent unique-key puts until one fails (the member died), ``done()`` is true, or ``max_puts`` were
    acknowledged; bounded by ``FIRE_TIMEOUT_S``. Returns how many were acknowledged."""
    stop = asyncio.Event()
    acked = 0

    async def writer(w: int) -> None:
        nonlocal acked
        seq = 0
        async with grpc.aio.insecure_channel(grpc_target(client_url), options=CHANNEL_OPTIONS) as ch:
            stub = kv_stub(ch)
            while not stop.is_set():
                seq += 1
                key = cycle_prefix(cycle) + b"w%02d/p%06d" % (w, seq)
                op = ledger.new_op(PUT, cycle, w, [key], [make_value(f"c{cycle}/w{w}/s{seq}", seq % 50)])
                try:
                    resp = await stub.Put(pb.PutRequest(key=key, value=op.values[0]), timeout=RPC_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    op.error = f"{exc.code().name}: {exc.details()}"
                    stop.set()
                    return
                op.status, op.revision = ACKED, int(resp.header.revision)
                acked += 1
                if done() or (max_puts is not None and acked >= max_puts):
                    stop.set()

    tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
    _, pending = await asyncio.wait(tasks, timeout=FIRE_TIMEOUT_S)
    stop.set()
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return acked


def _wait_exit(alive: Any, returncode: Any, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    code: int | None = returncode()
    return code


# -- one member ------------------------------------------------------------------------------------------------

SINGLE_MEMBER_CASES = {
    "before_log_save": ("before_log_save=40*off->crash", ()),
    "before_apply": ("before_apply=40*off->crash", ()),
    "after_apply": ("after_apply=40*off->crash", ()),
    "after_log_save": ("after_log_save=40*off->crash", ()),
    "after_compact": ("after_compact=3*off->crash", ("--snapshot-count", "30")),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("failpoint", sorted(SINGLE_MEMBER_CASES))
def test_single_member_crash_at_failpoint_keeps_acknowledged_writes(tmp_path: Path, failpoint: str) -> None:
    spec, extra_args = SINGLE_MEMBER_CASES[failpoint]
    server = start_quorumkv(tmp_path, extra_args=extra_args, env={ENV_VAR: spec})
    servers = [server]
    try:
        since = asyncio.run(_revision(server.client_url))
        ledger = Ledger()
        acked = asyncio.run(_write_until(server.client_url, ledger, cycle=0, writers=8,
                                         done=lambda: not server.alive()))
        code = _wait_exit(server.alive, lambda: server.returncode, 15.0)
        assert code == CRASH_EXIT_CODE, f"{failpoint} did not crash the member (exit {code}):\n{server.log_tail()}"
        assert f"failpoint {failpoint}: crash" in server.log_tail(), server.log_tail()
        assert acked > 0, "nothing was acknowledged before the crash"
        restarted = start_quorumkv(tmp_path, data_dir=server.data_dir, extra_args=extra_args)
        servers.append(restarted)
        res = asyncio.run(verify_restarted(restarted.client_url, ledger, cycle=0, since_revision=since,
                                           rng=random.Random(0)))
        assert not res.problems, "\n".join(res.problems[:40])
        print(f"{failpoint}: {acked} acknowledged before the crash, store at revision {res.revision} after it")
    finally:
        for s in servers:
            s.stop()


# -- three members ---------------------------------------------------------------------------------------------


def _served(client_url: str, keys: list[bytes]) -> dict[bytes, bytes]:
    """The values this member itself holds (serializable reads: no leader involved)."""

    async def go() -> dict[bytes, bytes]:
        async with grpc.aio.insecure_channel(grpc_target(client_url), options=CHANNEL_OPTIONS) as ch:
            resp = await kv_stub(ch).Range(
                pb.RangeRequest(key=ROOT_PREFIX, range_end=ROOT_END, serializable=True),
                timeout=RPC_TIMEOUT_S)
            return {bytes(kv.key): bytes(kv.value) for kv in resp.kvs}

    return asyncio.run(go())


def _wait_holds_acked(client_url: str, ledger: Ledger, timeout_s: float = 30.0) -> None:
    """Wait (bounded) until the member holds every acknowledged put with its value."""
    want = {op.keys[0]: op.values[0] for op in ledger.ops if op.status == ACKED}
    deadline = time.monotonic() + timeout_s
    missing: list[bytes] = list(want)
    while time.monotonic() < deadline:
        served = _served(client_url, list(want))
        missing = [k for k, v in want.items() if served.get(k) != v]
        if not missing:
            return
        time.sleep(0.2)
    raise AssertionError(f"{len(missing)} acknowledged writes missing on {client_url}, e.g. {missing[:5]}")


def _restart_with(cluster: Cluster, name: str, spec: str | None, *, wait_ready: bool) -> ServerProcess:
    member = cluster.member(name)
    env = dict(member.env or {})
    env.pop(ENV_VAR, None)
    if spec is not None:
        env[ENV_VAR] = spec
    member.env = env
    cluster.restart(name, wait_ready=wait_ready)
    assert member.process is not None
    return member.process


@pytest.mark.timeout(120)
def test_follower_crash_while_installing_a_snapshot_keeps_acknowledged_writes(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path, extra_args=("--snapshot-count", "20")) as cluster:
        leader = cluster.leader()
        victim = next(n for n in cluster.names if n != leader)
        cluster.kill(victim)
        ledger = Ledger()
        acked = asyncio.run(_write_until(cluster.member(leader).client_url, ledger, cycle=0, writers=4,
                                         done=lambda: False, max_puts=120))
        assert acked >= 120
        for failpoint in ("before_snapshot_install", "after_snapshot_install"):
            process = _restart_with(cluster, victim, f"{failpoint}=crash", wait_ready=False)
            code = _wait_exit(process.alive, lambda p=process: p.returncode, FIRE_TIMEOUT_S)  # type: ignore[misc]
            assert code == CRASH_EXIT_CODE, f"{failpoint} did not fire (exit {code}):\n{process.log_tail()}"
            assert f"failpoint {failpoint}: crash" in process.log_tail(), process.log_tail()
        _restart_with(cluster, victim, None, wait_ready=True)
        _wait_holds_acked(cluster.member(victim).client_url, ledger)
        more = asyncio.run(_write_until(cluster.member(victim).client_url, ledger, cycle=1, writers=2,
                                        done=lambda: False, max_puts=10))
        assert more >= 10
        for name in cluster.names:
            _wait_holds_acked(cluster.member(name).client_url, ledger)


@pytest.mark.timeout(120)
def test_leader_crash_before_it_sends_keeps_acknowledged_writes(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path) as cluster:
        leader = cluster.leader()
        target = next(n for n in cluster.names if n != leader)
        process = _restart_with(cluster, target, "before_leader_send=40*off->crash", wait_ready=True)
        target_id = cluster.member(target).member_id
        assert target_id is not None
        leader = cluster.leader()
        if leader != target:
            moved = cluster.member(leader).process.etcdctl("move-leader", f"{target_id:x}")  # type: ignore[union-attr]
            assert moved.returncode == 0, moved.stderr
        ledger = Ledger()
        acked = asyncio.run(_write_until(cluster.member(target).client_url, ledger, cycle=0, writers=4,
                                         done=lambda: not process.alive()))
        assert acked > 0, "nothing was acknowledged before the crash"
        code = _wait_exit(process.alive, lambda: process.returncode, FIRE_TIMEOUT_S)
        assert code == CRASH_EXIT_CODE, f"before_leader_send did not fire (exit {code}):\n{process.log_tail()}"
        assert "failpoint before_leader_send: crash" in process.log_tail(), process.log_tail()
        _restart_with(cluster, target, None, wait_ready=True)
        for name in cluster.names:
            _wait_holds_acked(cluster.member(name).client_url, ledger)
