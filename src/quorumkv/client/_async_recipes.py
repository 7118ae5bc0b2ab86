"""Lock and leader election for the asyncio client: the same recipe and keys as ``_recipes`` (see there)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from quorumkv.client._conn import Deadline
from quorumkv.client._errors import DeadlineExceededError, EtcdError
from quorumkv.client._txn import KeyLike, create_revision, delete, get, put, to_bytes
from quorumkv.client._types import KeyValue

if TYPE_CHECKING:
    from quorumkv.client._async import AsyncClient, AsyncLease

__all__ = ["AsyncElection", "AsyncLock"]


async def _first_delete(client: AsyncClient, key: bytes, start_revision: int) -> None:
    async with client.watch(key, start_revision=start_revision, filters=("NOPUT",)) as w:
        async for event in w:
            if event.type == "DELETE":
                return


async def wait_deletes(client: AsyncClient, prefix: bytes, my_rev: int, deadline: Deadline,
                       lease: AsyncLease) -> None:  # fmt: skip
    """Return once no key under ``prefix`` has a create revision below ``my_rev``; bounded by ``deadline``."""
    while True:
        res = await client.get_range(prefix, prefix=True, max_create_revision=my_rev - 1, sort_order="descend",
                                     sort_target="create", limit=1)
        if not res.kvs:
            return
        task = asyncio.ensure_future(_first_delete(client, res.kvs[0].key, res.header.revision + 1))
        try:
            while not task.done():
                if lease.error is not None:
                    raise lease.error
                if deadline.expired:
                    raise DeadlineExceededError("timed out waiting for the lock/leadership", "DEADLINE_EXCEEDED")
                left = deadline.remaining()
                await asyncio.wait({task}, timeout=1.0 if left is None else min(max(left, 0.01), 1.0))
            task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _create_or_get(client: AsyncClient, key: bytes, val: bytes, lease_id: int) -> tuple[int, KeyValue | None]:
    """Create ``key`` with the lease unless it exists; (its create revision, the existing kv or None)."""
    r = await client.txn().if_(create_revision(key) == 0).then(put(key, val, lease=lease_id)).else_(get(key)).commit()
    if r.succeeded:
        return r.header.revision, None
    got = r.responses[0]
    assert hasattr(got, "kvs") and got.kvs
    return got.kvs[0].create_revision, got.kvs[0]


class AsyncLock:
    """``async with client.lock("name", ttl=30): ...`` — see :class:`quorumkv.client.Lock`."""

    def __init__(self, client: AsyncClient, name: KeyLike, *, ttl: int = 60, timeout: float | None = None) -> None:
        self._client = client
        self.prefix = to_bytes(name) + b"/"
        self.ttl = ttl
        self.timeout = timeout
        self.lease: AsyncLease | None = None
        self.key: bytes | None = None
        self.revision = 0

    async def acquire(self) -> None:
        deadline = Deadline(self.timeout)
        lease = self.lease = await self._client.lease(self.ttl).grant()
        key = self.prefix + f"{lease.id:x}".encode()
        try:
            self.revision, _ = await _create_or_get(self._client, key, b"", lease.id)
            self.key = key
            await wait_deletes(self._client, self.prefix, self.revision, deadline, lease)
        except BaseException:
            await self.release()
            raise

    async def release(self) -> None:
        if self.key is not None:
            with contextlib.suppress(EtcdError):
                await self._client.delete(self.key)
            self.key = None
        if self.lease is not None:
            await self.lease.close()
            self.lease = None

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class AsyncElection:
    """Leader election for the asyncio client — see :class:`quorumkv.client.Election`."""

    def __init__(self, client: AsyncClient, name: KeyLike, *, ttl: int = 60) -> None:
        self._client = client
        self.prefix = to_bytes(name) + b"/"
        self.ttl = ttl
        self.lease: AsyncLease | None = None
        self.key: bytes | None = None
        self.revision = 0

    @property
    def is_leader(self) -> bool:
        return self.key is not None

    async def campaign(self, value: KeyLike, timeout: float | None = None) -> None:
        deadline = Deadline(timeout)
        if self.lease is None or not self.lease.alive:
            self.lease = await self._client.lease(self.ttl).grant()
        lease = self.lease
        key = self.prefix + f"{lease.id:x}".encode()
        val = to_bytes(value)
        try:
            self.revision, existing = await _create_or_get(self._client, key, val, lease.id)
            if existing is not None and existing.value != val:
                await self._client.put(key, val, lease=lease.id)
            await wait_deletes(self._client, self.prefix, self.revision, deadline, lease)
            self.key = key
        except BaseException:
            with contextlib.suppress(EtcdError):
                await self._client.delete(key)
            await self.resign()
            raise

    async def proclaim(self, value: KeyLike) -> None:
        if self.key is None or self.lease is None:
            raise EtcdError("election: not leader")
        r = await (self._client.txn().if_(create_revision(self.key) == self.revision)
                   .then(put(self.key, value, lease=self.lease.id)).commit())  # fmt: skip
        if not r.succeeded:
            self.key = None
            raise EtcdError("election: session expired, no longer leader")

    async def leader(self) -> KeyValue | None:
        res = await self._client.get_range(self.prefix, prefix=True, sort_order="ascend", sort_target="create",
                                           limit=1)
        return res.kvs[0] if res.kvs else None

    async def observe(self) -> AsyncIterator[KeyValue]:
        """Yield the leader now and at every change; stop by breaking out of ``async for``."""
        while True:
            res = await self._client.get_range(self.prefix, prefix=True, sort_order="ascend", sort_target="create",
                                               limit=1)
            current: KeyValue | None = res.kvs[0] if res.kvs else None
            if current is None:
                async with self._client.watch_prefix(self.prefix, start_revision=res.header.revision + 1) as w:
                    async for event in w:
                        if event.type == "PUT":
                            current = event.kv
                            break
                if current is None:
                    return
            yield current
            async with self._client.watch(current.key, start_revision=current.mod_revision + 1) as w:
                async for event in w:
                    if event.type == "DELETE":
                        break
                    if event.kv.create_revision == current.create_revision:
                        yield event.kv

    async def resign(self) -> None:
        if self.key is not None:
            with contextlib.suppress(EtcdError):
                await (self._client.txn().if_(create_revision(self.key) == self.revision)
                       .then(delete(self.key)).commit())  # fmt: skip
            self.key = None
        if self.lease is not None:
            await self.lease.close()
            self.lease = None
