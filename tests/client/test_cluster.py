"""Failover against a 3-member cluster of real processes, quorumkv and real etcd 3.4 alike: a member is killed
(SIGKILL) under load.

One cluster of each kind serves the module; each test restarts the member it killed.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_kv import check_membership_calls

from quorumkv.client import AsyncClient, Client, EtcdError, Event, UnavailableError, create_revision, put
from quorumkv.testing.cluster import Cluster, start_etcd_cluster, start_quorumkv_cluster
from quorumkv.testing.processes import ETCD_BIN

pytestmark = [pytest.mark.timeout(240)]

FAST = {"heartbeat_ms": 50, "election_ms": 500}
WRITES = 200
KILL_AT = 60
WAIT_S = 30.0


@pytest.fixture(scope="module", params=("etcd", "quorumkv"))
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    kind: str = request.param
    if kind == "etcd" and shutil.which(ETCD_BIN) is None:
        pytest.skip("etcd 3.4 not on PATH (scripts/test.sh installs it)")
    base = Path(tmp_path_factory.mktemp(f"client-cluster-{kind}"))
    if kind == "etcd":
        c = start_etcd_cluster(3, base, heartbeat_ms=FAST["heartbeat_ms"], election_ms=FAST["election_ms"])
    else:
        c = start_quorumkv_cluster(3, base, heartbeat_ms=FAST["heartbeat_ms"], election_ms=FAST["election_ms"])
    with c:
        yield c


def endpoints_starting_with(cluster: Cluster, name: str) -> list[str]:
    first = cluster.member(name)
    return [first.grpc_target] + [m.grpc_target for m in cluster.members if m.name != name]


def name_of(cluster: Cluster, target: str) -> str:
    return next(m.name for m in cluster.members if m.grpc_target == target)


def test_watch_resumes_exactly_once_when_the_connected_member_is_killed(cluster: Cluster) -> None:
    victim = cluster.members[0].name
    with Client(endpoints_starting_with(cluster, victim), timeout=20.0) as client:
        assert name_of(cluster, client.endpoint) == victim
        start = client.put("fo/start", "x").header.revision
        watch = client.watch_prefix("fo/k/", start_revision=start + 1)
        failures: list[BaseException] = []
        retried: list[int] = []

        def write_all() -> None:
            try:
                for i in range(WRITES):
                    if i == KILL_AT:
                        cluster.kill(victim)
                    key = f"fo/k/{i:04d}"
                    for attempt in range(60):
                        # Creating only when absent makes a resend after an ambiguous failure harmless.
                        try:
                            client.txn().if_(create_revision(key) == 0).then(put(key, str(i))).commit()
                            break
                        except EtcdError:
                            retried.append(i)
                            time.sleep(0.1 * min(attempt + 1, 5))
                    else:
                        raise AssertionError(f"write {i} did not succeed in 60 attempts")
            except BaseException as err:
                failures.append(err)

        writer = threading.Thread(target=write_all)
        writer.start()
        events: list[Event] = []
        deadline = time.monotonic() + 120
        while len(events) < WRITES and time.monotonic() < deadline:
            response = watch.get(timeout=1.0)
            if response is not None:
                events.extend(response.events)
        writer.join(60)
        watch_reconnects = watch.reconnects
        watch.close()
        assert not failures, failures
        assert name_of(cluster, client.endpoint) != victim
    keys = [e.kv.key.decode() for e in events]
    assert keys == [f"fo/k/{i:04d}" for i in range(WRITES)], f"missing/duplicated: {len(keys)} events"
    assert all(e.type == "PUT" and e.kv.version == 1 for e in events)
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(set(revisions))
    assert watch_reconnects >= 1
    cluster.restart(victim)


def test_membership_calls_on_a_cluster(cluster: Cluster) -> None:
    cluster.wait_ready(timeout_s=WAIT_S)
    with Client([m.grpc_target for m in cluster.members], timeout=20.0) as client:
        # etcd refuses `member add` with "unhealthy cluster" until every member has been connected for 5 s
        # (a member was just restarted by the test before); the refusal changes nothing, so retry it
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                check_membership_calls(client)
                break
            except UnavailableError as err:
                if "unhealthy cluster" not in err.message or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert len(client.members()) == 3


def test_lease_keepalive_survives_a_leader_change(cluster: Cluster) -> None:
    cluster.wait_ready(timeout_s=WAIT_S)
    old = cluster.leader(timeout_s=WAIT_S)
    errors: list[EtcdError] = []
    with Client(endpoints_starting_with(cluster, old), timeout=20.0) as client:
        with client.lease(ttl=3, on_error=errors.append) as managed:
            client.put("lease-lc/k", "v", lease=managed.id)
            cluster.kill(old)
            new = cluster.leader(timeout_s=WAIT_S, exclude=old)
            assert new != old
            before = managed.keepalives
            deadline = time.monotonic() + WAIT_S
            while managed.keepalives < before + 6 and time.monotonic() < deadline and managed.alive:
                time.sleep(0.1)
            assert managed.alive and managed.error is None and not errors, errors
            assert managed.keepalives >= before + 6  # renewed for > 2 TTLs after the election
            assert client.get("lease-lc/k") is not None
            assert client.lease_time_to_live(managed.id).ttl > 0
    cluster.restart(old)


async def test_async_watch_resumes_when_the_connected_member_is_killed(cluster: Cluster) -> None:
    cluster.wait_ready(timeout_s=WAIT_S)
    victim = cluster.members[1].name
    writes, kill_at = 100, 30
    async with AsyncClient(endpoints_starting_with(cluster, victim), timeout=20.0) as client:
        start = (await client.put("afo/start", "x")).header.revision
        watch = client.watch_prefix("afo/k/", start_revision=start + 1)

        async def write_all() -> None:
            for i in range(writes):
                if i == kill_at:
                    await asyncio.to_thread(cluster.kill, victim)
                key = f"afo/k/{i:04d}"
                for attempt in range(60):
                    try:
                        await client.txn().if_(create_revision(key) == 0).then(put(key, str(i))).commit()
                        break
                    except EtcdError:
                        await asyncio.sleep(0.1 * min(attempt + 1, 5))
                else:
                    raise AssertionError(f"write {i} did not succeed in 60 attempts")

        async def collect() -> list[Event]:
            out: list[Event] = []
            async for event in watch:
                out.append(event)
                if len(out) == writes:
                    break
            return out

        collector = asyncio.ensure_future(collect())
        await asyncio.wait_for(write_all(), 120)
        events = await asyncio.wait_for(collector, 60)
        assert watch.reconnects >= 1
    assert [e.kv.key.decode() for e in events] == [f"afo/k/{i:04d}" for i in range(writes)]
    cluster.restart(victim)
