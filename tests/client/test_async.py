"""The asyncio client against etcd 3.4 and quorumkv (watches are in test_watch.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quorumkv.client import (
    AsyncClient,
    DeadlineExceededError,
    FutureRevisionError,
    GetResult,
    LeaseExpiredError,
    LeaseNotFoundError,
    PutResult,
    create_revision,
    get,
    put,
    value,
)
from quorumkv.testing.processes import ServerProcess


async def test_async_kv_txn_and_maintenance(server: ServerProcess, ns: str) -> None:
    async with AsyncClient([server.client_url]) as c:
        put_result = await c.put(ns + "a", b"1")
        assert isinstance(put_result, PutResult)
        kv = await c.get(ns + "a")
        assert kv is not None and kv.value == b"1"
        await c.put(ns + "b", "2")
        assert (await c.get_prefix(ns)).count == 2
        assert [x.key for x in (await c.get_range(ns + "a", ns + "b")).kvs] == [(ns + "a").encode()]
        r = await c.txn().if_(value(ns + "a") == "1").then(put(ns + "a", "x"), get(ns + "a")).commit()
        assert r.succeeded and isinstance(r.responses[1], GetResult) and r.responses[1].kvs[0].value == b"x"
        r2 = await c.txn().if_(create_revision(ns + "a") == 0).then(put(ns + "a", "y")).commit()
        assert not r2.succeeded
        with pytest.raises(FutureRevisionError):
            await c.get(ns + "a", revision=put_result.header.revision + 10_000)
        assert (await c.delete_prefix(ns)).deleted == 2
        status = await c.status()
        assert status.leader == status.header.member_id
        assert len(await c.members()) == 1
        assert await c.alarms() == ()


async def test_async_managed_lease(server: ServerProcess, ns: str) -> None:
    async with AsyncClient(server.client_url) as c:
        async with c.lease(ttl=2) as managed:
            await c.put(ns + "k", "v", lease=managed.id)
            for _ in range(100):
                if managed.keepalives >= 3:
                    break
                await asyncio.sleep(0.1)
            assert managed.keepalives >= 3 and managed.alive
            assert await c.get(ns + "k") is not None
        assert await c.get(ns + "k") is None
        assert (await c.lease_time_to_live(managed.id)).ttl == -1

        errors: list[object] = []
        lost = await c.lease(ttl=2, on_error=errors.append).grant()
        await c.lease_revoke(lost.id)
        for _ in range(100):
            if lost.error is not None:
                break
            await asyncio.sleep(0.1)
        assert isinstance(lost.error, LeaseExpiredError) and errors == [lost.error] and not lost.alive
        await lost.close()


async def test_async_lock_excludes_and_times_out(server: ServerProcess, ns: str) -> None:
    inside = 0
    peak = 0

    async def worker(client: AsyncClient) -> None:
        nonlocal inside, peak
        async with client.lock(ns + "mutex", ttl=10, timeout=30):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    clients = [AsyncClient(server.client_url) for _ in range(3)]
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in clients)), 60)
        assert peak == 1
        holder = clients[0].lock(ns + "m", ttl=10)
        await holder.acquire()
        with pytest.raises(DeadlineExceededError):
            await clients[1].lock(ns + "m", ttl=10, timeout=0.5).acquire()
        await holder.release()
        async with clients[1].lock(ns + "m", ttl=10, timeout=10) as got:
            assert got.key is not None
        assert (await clients[2].get_prefix(ns)).count == 0
    finally:
        for c in clients:
            await c.close()


async def test_async_election(server: ServerProcess, ns: str) -> None:
    async with AsyncClient(server.client_url) as a, AsyncClient(server.client_url) as b:
        first, second = a.election(ns + "e", ttl=10), b.election(ns + "e", ttl=10)
        await first.campaign("one", timeout=10)
        seen: list[bytes] = []

        async def observe() -> None:
            async for kv in b.election(ns + "e").observe():
                seen.append(kv.value)
                if kv.value == b"two":
                    return

        observer = asyncio.ensure_future(observe())
        contender = asyncio.ensure_future(second.campaign("two", timeout=30))
        await asyncio.sleep(0.5)
        assert not contender.done() and first.is_leader
        await first.resign()
        await asyncio.wait_for(contender, 15)
        await asyncio.wait_for(observer, 15)
        assert second.is_leader and seen == [b"one", b"two"]
        leader = await second.leader()
        assert leader is not None and leader.value == b"two"
        await second.resign()
        assert await second.leader() is None


async def test_async_leases_and_maintenance(server: ServerProcess, ns: str, tmp_path: Path) -> None:
    async with AsyncClient(server.client_url) as c:
        granted = await c.lease_grant(30)
        await c.put(ns + "k", "v", lease=granted.id)
        assert granted.id in await c.leases()
        info = await c.lease_time_to_live(granted.id, keys=True)
        assert info.granted_ttl == 30 and info.keys == ((ns + "k").encode(),)
        assert await c.lease_keep_alive_once(granted.id) == 30
        await c.lease_revoke(granted.id)
        with pytest.raises(LeaseNotFoundError):
            await c.lease_revoke(granted.id)
        assert (await c.hash_kv()).hash != 0
        await c.defragment()
        size = await c.snapshot(tmp_path / "snap.db")
        assert size > 0 and (tmp_path / "snap.db").stat().st_size == size
        assert (await c.status(endpoint=c.endpoint)).version.startswith("3.")
