"""The history recorder against real servers: a history recorded against real etcd 3.4 (and against quorumkv)
checks as linearizable, and the same history with one planted stale read does not ("the checker can fail")."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quorumkv.testing.anomalies import plant_stale_read
from quorumkv.testing.history import Delete, Get, History, Put, Txn, TxnResult
from quorumkv.testing.linearizability import check
from quorumkv.testing.processes import (
    ETCD_BIN,
    ETCDCTL_BIN,
    ServerProcess,
    free_port,
    spawn_server,
    start_etcd,
    start_quorumkv,
)
from quorumkv.testing.recorder import RecorderConfig, record_history, record_history_sync

#: For tests that expect every operation to complete: the operation count, not the clock, ends the run, and no
#: operation times out on a slow disk (the recorder's defaults are 10 s and 2 s).
PATIENT: dict[str, Any] = {"max_seconds": 120.0, "op_timeout_s": 15.0}


def _need_etcd() -> None:
    missing = [b for b in (ETCD_BIN, ETCDCTL_BIN) if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH (apt-get install etcd-server etcd-client)")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    _need_etcd()
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield server
    finally:
        server.stop()


def _overlapping_pairs(history: History) -> int:
    ops = sorted(history, key=lambda o: o.call)
    return sum(
        1 for i, a in enumerate(ops) for b in ops[i + 1 : i + 20] if b.client != a.client and b.call < a.ret
    )


def _assert_complete_watch(history: History) -> None:
    """Every revision the workers created arrived on the watch, in order, and the watch is marked complete."""
    assert history.watch is not None
    top = max(op.output.revision for op in history if op.output is not None)
    assert history.watch_through == top
    assert sorted({e.revision for e in history.watch}) == list(range(history.initial_revision + 1, top + 1))


@pytest.mark.interop
def test_etcd_history_is_linearizable_and_a_planted_stale_read_is_not(etcd: ServerProcess) -> None:
    history = record_history_sync(
        RecorderConfig([etcd.client_url], clients=10, keys=4, max_operations=1000, seed=1, **PATIENT)
    )
    assert len(history) == 1000
    assert {op.client for op in history} == set(range(10))
    kinds = {type(op.input) for op in history}
    assert kinds == {Put, Get, Txn, Delete}
    txn_outcomes = {op.output.succeeded for op in history if isinstance(op.output, TxnResult)}
    assert txn_outcomes == {True, False}
    assert _overlapping_pairs(history) > 100, "workers did not run concurrently"
    assert all(not op.failed for op in history), [op.describe() for op in history if op.failed][:5]
    _assert_complete_watch(history)

    result = check(history)
    assert result.ok, str(result)
    assert set(result.linearization) == {op.id for op in history}

    planted = plant_stale_read(history, random.Random(0))
    assert planted is not None
    for precheck in (True, False):
        bad = check(planted.history, precheck=precheck)
        assert bad.outcome == "violation", f"{planted.description}: {bad}"
        assert planted.culprits & {op.id for op in bad.operations}, str(bad)


@pytest.mark.interop
def test_unreachable_endpoint_yields_failed_operations_and_the_history_still_checks(etcd: ServerProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    history = record_history_sync(
        # patient: only the dead endpoint's operations may fail (refused at once), none on a slow live one
        RecorderConfig([etcd.client_url, dead], clients=4, keys=3, max_operations=200, seed=2, **PATIENT)
    )
    failed = [op for op in history if op.failed]
    assert failed, "no operation went to the dead endpoint"
    assert all(op.error and op.error.startswith("UNAVAILABLE") for op in failed), {op.error for op in failed}
    assert any(op.output is not None for op in history)
    result = check(history)
    assert result.ok, str(result)
    # the failed writes never reached a server: the watch shows they never took effect
    failed_writes = sum(1 for op in failed if not isinstance(op.input, Get))
    if failed_writes:
        assert f"{failed_writes} never did" in result.explanation, result.explanation


def test_quorumkv_history_is_linearizable(tmp_path: Path) -> None:
    _need_etcd()  # the process harness probes readiness with etcdctl
    server = start_quorumkv(tmp_path / "qkv")
    try:
        history = record_history_sync(
            RecorderConfig([server.client_url], clients=10, keys=4, max_operations=600, seed=3, **PATIENT)
        )
    finally:
        server.stop()
    assert len(history) == 600 and not any(op.failed for op in history)
    assert _overlapping_pairs(history) > 50
    _assert_complete_watch(history)
    result = check(history)
    assert result.ok, str(result)
    planted = plant_stale_read(history, random.Random(1))
    assert planted is not None and check(planted.history).outcome == "violation"


def test_history_survives_json(tmp_path: Path) -> None:
    _need_etcd()
    server = start_etcd(tmp_path / "etcd")
    try:
        history = record_history_sync(RecorderConfig([server.client_url], clients=3, max_operations=60, seed=4))
    finally:
        server.stop()
    assert History.from_json(history.to_json()) == history


def test_only_loopback_endpoints_are_accepted() -> None:
    with pytest.raises(ValueError, match="only loopback"):
        record_history_sync(RecorderConfig(["10.1.2.3:2379"], max_operations=1))
    with pytest.raises(ValueError, match="only loopback"):
        record_history_sync(RecorderConfig(["http://example.com:2379"], max_operations=1))


@pytest.mark.slow
@pytest.mark.interop
def test_paused_server_leaves_maybe_applied_writes_and_the_history_still_checks(tmp_path: Path) -> None:
    """SIGSTOP the etcd we started for 1.5s mid-run: RPCs in flight time out on the client, and some of them are
    applied once it resumes — real maybe-applied writes."""
    _need_etcd()
    server = start_etcd(tmp_path / "etcd")

    async def run() -> History:
        config = RecorderConfig([server.client_url], clients=10, keys=3, max_operations=3000, max_seconds=5,
                                op_timeout_s=0.5, seed=5)
        recording = asyncio.create_task(record_history(config))
        await asyncio.sleep(1.0)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        return await recording

    try:
        history = asyncio.run(run())
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.stop()
    failed_writes = [op for op in history if op.failed and not isinstance(op.input, Get)]
    assert failed_writes, "the pause produced no failed write"
    result = check(history)
    assert result.ok, str(result)
    print(result.explanation)



@pytest.mark.slow
@pytest.mark.interop
def test_three_member_etcd_with_a_member_killed_checks_as_linearizable(tmp_path: Path) -> None:
    """Real etcd 3.4, three members; the recorder spreads clients over all endpoints and one member is
    kill -9'd mid-run: its clients fail over, the watch resumes on another member, the history checks."""
    _need_etcd()
    etcd_bin = shutil.which(ETCD_BIN) or ETCD_BIN
    names = ["m0", "m1", "m2"]
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    urls = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    cluster = ",".join(f"{n}={peers[n]}" for n in names)
    members: list[ServerProcess] = []
    try:
        for n in names:
            argv = [
                etcd_bin, "--name", n, "--data-dir", str(tmp_path / n),
                "--listen-client-urls", urls[n], "--advertise-client-urls", urls[n],
                "--listen-peer-urls", peers[n], "--initial-advertise-peer-urls", peers[n],
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
            ]  # fmt: skip
            members.append(spawn_server("etcd", argv, client_url=urls[n], peer_url=peers[n],
                                        data_dir=tmp_path / n, log_path=tmp_path / f"{n}.log", name=n))
        for member in members:
            member.wait_ready(30)

        async def run() -> History:
            config = RecorderConfig([urls[n] for n in names], clients=10, keys=4, max_operations=4000,
                                    max_seconds=6, op_timeout_s=1.0, seed=6)
            recording = asyncio.create_task(record_history(config))
            await asyncio.sleep(2.0)
            members[0].kill9()
            return await recording

        history = asyncio.run(run())
    finally:
        for member in members:
            member.stop()
    assert any(op.failed for op in history), "killing a member failed no request"
    assert history.watch_through > 0
    result = check(history)
    assert result.ok, str(result)
    planted = plant_stale_read(history, random.Random(2))
    assert planted is not None and check(planted.history).outcome == "violation"
