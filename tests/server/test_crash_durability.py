"""kill -9 durability: nothing acknowledged is lost, nothing unacknowledged is half there, revisions continue.

Each cycle: concurrent writers (puts of unique keys, txns putting 2-3 keys, deletes of earlier acknowledged
keys, single and ranged) run against a real ``python -m quorumkv`` process; after a seeded random delay the
server is SIGKILLed mid-load; a new process is started on the same data dir and checked against the ledger of
what was acknowledged (see ``quorumkv.testing.crash`` for the rules and the checks). The next cycle loads the
restarted server, so later cycles also prove that earlier cycles' data survives further crashes.

The seed is printed (``-s`` or the failure report shows it); rerun a failure with ``QUORUMKV_CRASH_SEED=<seed>``.
The seed fixes the op mix, the values and the kill delays, not the exact point the kill lands at.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.crash import (
    CHANNEL_OPTIONS,
    ROOT_END,
    ROOT_PREFIX,
    RPC_TIMEOUT_S,
    SEED_ENV,
    Ledger,
    check_state,
    grpc_target,
    load_until_kill,
    seed_from_env,
    verify_restarted,
)
from quorumkv.testing.processes import ServerProcess, start_quorumkv


async def _current_revision(client_url: str) -> int:
    async with grpc.aio.insecure_channel(grpc_target(client_url)) as channel:
        resp = await pb_grpc.KVStub(channel).Range(pb.RangeRequest(key=b"\0", count_only=True),
                                                    timeout=RPC_TIMEOUT_S)
        return int(resp.header.revision)


def run_kill_cycles(tmp_path: Path, *, cycles: int, writers: int, seed: int, max_kill_delay_s: float,
                    extra_args: tuple[str, ...] = ()) -> list[str]:
    """Run ``cycles`` load/kill -9/restart/verify cycles on one data dir; returns a summary line per cycle.
    ``extra_args``: server flags (e.g. ``--snapshot-count 100``)."""
    print(f"\ncrash durability: seed={seed} cycles={cycles} writers={writers} {' '.join(extra_args)} "
          f"(rerun with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    ledger = Ledger()
    servers: list[ServerProcess] = []
    summary: list[str] = []

    def start(data_dir: Path | None = None) -> ServerProcess:
        s = start_quorumkv(tmp_path, data_dir=data_dir, extra_args=extra_args)
        servers.append(s)
        return s

    try:
        server = start()
        data_dir = server.data_dir
        since = asyncio.run(_current_revision(server.client_url))
        for cycle in range(cycles):
            started = time.monotonic()
            delay = rng.uniform(0.3, max_kill_delay_s)
            load = asyncio.run(load_until_kill(server.client_url, ledger, cycle=cycle, writers=writers, rng=rng,
                                               kill_after_s=delay, kill=server.kill9))
            assert server.returncode == -signal.SIGKILL, f"seed={seed}: server exited {server.returncode}"
            assert not load.early_failures, f"seed={seed}: requests failed before the kill: {load.early_failures}"
            assert not load.anomalies, f"seed={seed}: {load.anomalies}"
            assert load.acked > 0, f"seed={seed}: nothing acknowledged in {load.load_s:.1f}s of load"
            server = start(data_dir)
            res = asyncio.run(verify_restarted(server.client_url, ledger, cycle=cycle, since_revision=since, rng=rng))
            assert not res.problems, (
                f"seed={seed} cycle={cycle}: {len(res.problems)} problems after kill -9 and restart:\n"
                + "\n".join(res.problems[:40])
            )
            line = (
                f"cycle {cycle}: kill {delay:.2f}s after the first ack, {load.ops_sent} ops sent, {load.acked} acked, "
                f"{load.maybe} in flight ({res.maybe_landed} landed / {res.maybe_absent} absent), "
                f"revisions {since + 1}..{res.revision} checked one by one, {res.history_points_checked} old "
                f"revisions read back, probe put at {res.probe_revision}, {res.keys_served} keys served, "
                f"{time.monotonic() - started:.1f}s"
            )
            print(line)
            summary.append(line)
            since = res.probe_revision
        # A clean stop and start changes nothing either.
        assert server.stop() == 0, server.log_tail()
        server = start(data_dir)

        async def final_state() -> tuple[int, dict[bytes, Any]]:
            async with grpc.aio.insecure_channel(grpc_target(server.client_url), options=CHANNEL_OPTIONS) as ch:
                resp = await pb_grpc.KVStub(ch).Range(pb.RangeRequest(key=ROOT_PREFIX, range_end=ROOT_END),
                                                      timeout=RPC_TIMEOUT_S)
                return int(resp.header.revision), {bytes(kv.key): kv for kv in resp.kvs}

        revision, served = asyncio.run(final_state())
        problems, _, _ = check_state(ledger, served)
        assert not problems, f"seed={seed}: after a clean restart:\n" + "\n".join(problems[:40])
        assert revision == since, f"seed={seed}: clean restart moved the revision {since} -> {revision}"
        print(f"totals: {ledger.counts()}")
    finally:
        for s in servers:
            s.stop()
    return summary


@pytest.mark.timeout(120)
def test_kill9_under_load_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    started = time.monotonic()
    run_kill_cycles(tmp_path, cycles=5, writers=24, seed=seed_from_env(), max_kill_delay_s=1.2)
    print(f"5 kill/restart cycles in {time.monotonic() - started:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill9_under_load_many_cycles(tmp_path: Path) -> None:
    started = time.monotonic()
    run_kill_cycles(tmp_path, cycles=50, writers=32, seed=seed_from_env(), max_kill_delay_s=2.5)
    print(f"50 kill/restart cycles in {time.monotonic() - started:.1f}s")


# -- leases and watches across a kill -9 ---------------------------------------------------------------------


async def _before_kill(server: ServerProcess) -> dict[str, Any]:
    """Grant leases, attach keys, revoke one, with a watch open; kill -9 with the watch stream still open."""
    out: dict[str, Any] = {"acked": []}  # (revision, event type, key) of every acknowledged change
    async with grpc.aio.insecure_channel(grpc_target(server.client_url)) as channel:
        kv, lease, watch = pb_grpc.KVStub(channel), pb_grpc.LeaseStub(channel), pb_grpc.WatchStub(channel)
        call = watch.Watch()
        await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"lw/", range_end=b"lw0")))
        created = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
        assert created.created

        async def put(key: bytes, lease_id: int = 0) -> int:
            resp = await kv.Put(pb.PutRequest(key=key, value=b"v:" + key, lease=lease_id), timeout=RPC_TIMEOUT_S)
            out["acked"].append((int(resp.header.revision), 0, key))
            return int(resp.header.revision)

        kept = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=300), timeout=RPC_TIMEOUT_S)
        revoked = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=300), timeout=RPC_TIMEOUT_S)
        # short enough to expire during the test, long enough to outlive a slow restart (its clock restarts)
        short = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=8), timeout=RPC_TIMEOUT_S)
        out.update(kept=kept.ID, revoked=revoked.ID, short=short.ID, short_ttl=short.TTL)
        await put(b"lw/kept/1", kept.ID)
        await put(b"lw/kept/2", kept.ID)
        # Read the watch up to here: these events were delivered before the crash.
        seen: list[tuple[int, int, bytes]] = []
        while len(seen) < 2:
            resp = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
            seen.extend((int(e.kv.mod_revision), int(e.type), bytes(e.kv.key)) for e in resp.events)
        out["seen_before_kill"] = seen
        await put(b"lw/revoked/1", revoked.ID)
        await put(b"lw/short/1", short.ID)
        await put(b"lw/plain")
        resp = await lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=revoked.ID), timeout=RPC_TIMEOUT_S)
        out["acked"].append((int(resp.header.revision), 1, b"lw/revoked/1"))
        # The revocation is acknowledged; crash now, with the watch stream still open.
        server.kill9()
        with pytest.raises(grpc.aio.AioRpcError):
            while True:
                got = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
                if got is grpc.aio.EOF:
                    raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None)  # type: ignore[arg-type]
    return out


async def _after_restart(server: ServerProcess, before: dict[str, Any]) -> None:
    async with grpc.aio.insecure_channel(grpc_target(server.client_url)) as channel:
        kv, lease, watch = pb_grpc.KVStub(channel), pb_grpc.LeaseStub(channel), pb_grpc.WatchStub(channel)
        # Leases granted before the kill exist, with their keys; the revoked one stays revoked.
        ttl = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=before["kept"], keys=True),
                                          timeout=RPC_TIMEOUT_S)
        assert ttl.grantedTTL == 300 and 0 < ttl.TTL <= 300, ttl
        assert sorted(ttl.keys) == [b"lw/kept/1", b"lw/kept/2"]
        gone = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=before["revoked"], keys=True),
                                           timeout=RPC_TIMEOUT_S)
        assert gone.TTL == -1, gone
        leases = await lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=RPC_TIMEOUT_S)
        ids = {x.ID for x in leases.leases}
        assert before["kept"] in ids and before["short"] in ids and before["revoked"] not in ids
        rng = await kv.Range(pb.RangeRequest(key=b"lw/", range_end=b"lw0"), timeout=RPC_TIMEOUT_S)
        assert {bytes(x.key): x.lease for x in rng.kvs} == {
            b"lw/kept/1": before["kept"], b"lw/kept/2": before["kept"], b"lw/plain": 0,
            b"lw/short/1": before["short"],
        }

        # A watcher resumes after the restart from the last revision it saw: exactly the acknowledged
        # changes it missed, in order, none twice.
        last_seen = before["seen_before_kill"][-1][0]
        missed = [a for a in before["acked"] if a[0] > last_seen]
        call = watch.Watch()
        await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"lw/", range_end=b"lw0", start_revision=last_seen + 1)))
        got: list[tuple[int, int, bytes]] = []
        while len(got) < len(missed):
            resp = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
            got.extend((int(e.kv.mod_revision), int(e.type), bytes(e.kv.key)) for e in resp.events)
        assert got == missed
        assert before["seen_before_kill"] + got == before["acked"]

        # The short lease's clock restarted with the server; it still expires and takes its key with it.
        deadline = time.monotonic() + before["short_ttl"] + 8
        while True:
            t = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=before["short"]), timeout=RPC_TIMEOUT_S)
            if t.TTL == -1:
                break
            assert time.monotonic() < deadline, f"lease with TTL {before['short_ttl']}s still alive: {t}"
            await asyncio.sleep(0.2)
        resp = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
        assert [(int(e.type), bytes(e.kv.key)) for e in resp.events] == [(1, b"lw/short/1")]

        # The surviving lease is fully usable: keep-alive, then revoke deletes its keys.
        ka = lease.LeaseKeepAlive()
        await ka.write(pb.LeaseKeepAliveRequest(ID=before["kept"]))
        ka_resp = await asyncio.wait_for(ka.read(), RPC_TIMEOUT_S)
        assert ka_resp.ID == before["kept"] and ka_resp.TTL == 300
        ka.cancel()
        await lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=before["kept"]), timeout=RPC_TIMEOUT_S)
        rng = await kv.Range(pb.RangeRequest(key=b"lw/", range_end=b"lw0"), timeout=RPC_TIMEOUT_S)
        assert [bytes(x.key) for x in rng.kvs] == [b"lw/plain"]
        call.cancel()


@pytest.mark.timeout(120)
def test_leases_and_watch_resume_survive_kill9(tmp_path: Path) -> None:
    first = start_quorumkv(tmp_path)
    servers = [first]
    try:
        before = asyncio.run(_before_kill(first))
        assert first.returncode == -signal.SIGKILL
        second = start_quorumkv(tmp_path, data_dir=first.data_dir)
        servers.append(second)
        asyncio.run(_after_restart(second, before))
    finally:
        for s in servers:
            s.stop()
