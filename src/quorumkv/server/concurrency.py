"""Locks and elections served by the member (etcd's v3lock and v3election services).

etcd serves these with its client-side recipes (``clientv3/concurrency``) run against itself; this module
follows the same algorithm on the member's KV, watch and lease façade, in process:

- a *session* is a lease: the caller's, or (lease 0) a fresh one of 60 s that nobody renews, as etcd's
  server-side session grants and orphans;
- a contender's key is ``<name>/<lease ID in lower-case hex>``, created in a txn only if absent (a lease that
  already has a key under the name resumes its place), attached to the lease;
- the contender with the lowest create revision under ``<name>/`` holds the lock / leads; the others wait
  until every key with a lower create revision is deleted (unlocked, resigned, or its lease ended);
- a wait abandoned by its caller deletes the contender's key (etcd unlocks / resigns then).

Errors are raised as ``EtcdError``; etcd answers all of them (its own ``election: ...`` errors as well as the
KV's) with gRPC code Unknown, which the servicers do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.errors import EtcdError
from quorumkv.server.auth_state import AuthInfo
from quorumkv.server.interfaces import ConcurrencyBackend

log = logging.getLogger("quorumkv.server")

#: The TTL of the lease a lock or campaign without a lease gets (clientv3/concurrency's default session TTL).
DEFAULT_SESSION_TTL = 60

NOT_LEADER = EtcdError("UNKNOWN", "election: not leader")
NO_LEADER = EtcdError("UNKNOWN", "election: no leader")
MISSING_LEADER_KEY = EtcdError("UNKNOWN", '"leader" field must be provided')
LOST_WATCHER = EtcdError("UNKNOWN", "lost watcher waiting for delete")


@dataclass(frozen=True)
class Leadership:
    """etcd's ``LeaderKey``: what identifies one leadership for Proclaim and Resign."""

    name: bytes
    key: bytes
    rev: int
    lease: int


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def contender_key(name: bytes, lease: int) -> bytes:
    """``<name>/<lease hex>`` (Go's ``%x`` of the lease ID)."""
    return name + b"/" + format(lease, "x").encode()


def _first_created(prefix: bytes) -> pb.RangeRequest:
    """The oldest key under ``prefix`` (clientv3's WithFirstCreate)."""
    return pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), sort_order=pb.RangeRequest.ASCEND,
                           sort_target=pb.RangeRequest.CREATE, limit=1)


def _create_rev_is(key: bytes, rev: int) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=rev)


class Concurrency:
    """Lock, Unlock, Campaign, Proclaim, Leader, Observe and Resign over one member."""

    def __init__(self, member: ConcurrencyBackend) -> None:
        self.m = member
        #: Clean-ups (deleting an abandoned contender's key) that must outlive the cancelled call.
        self._cleanups: set[asyncio.Task[None]] = set()

    # -- building blocks ------------------------------------------------------------------------------------

    async def _session(self, lease: int) -> int:
        """The caller's lease, or a new one of DEFAULT_SESSION_TTL when it names none (0)."""
        if lease != 0:
            return lease
        resp = await self.m.lease_grant(pb.LeaseGrantRequest(TTL=DEFAULT_SESSION_TTL))
        return int(resp.ID)

    async def _txn(self, info: AuthInfo | None, req: pb.TxnRequest) -> pb.TxnResponse:
        if self.m.auth_enabled:
            self.m.authorize_txn(info, req)
        return await self.m.txn(req)

    async def _get(self, info: AuthInfo | None, req: pb.RangeRequest) -> pb.RangeResponse:
        await self.m.read_barrier()
        if self.m.auth_enabled:
            self.m.authorize_range(info, req)
        return self.m.range(req)

    async def _delete(self, info: AuthInfo | None, key: bytes) -> pb.DeleteRangeResponse:
        req = pb.DeleteRangeRequest(key=key)
        if self.m.auth_enabled:
            self.m.authorize_delete(info, req)
        return await self.m.delete_range(req)

    def _in_background(self, work: Awaitable[object], what: str) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # the caller is gone: nobody to tell but the log
                log.warning("%s failed: %s", what, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _watch(self, key: bytes, range_end: bytes, start_rev: int) -> AsyncGenerator[pb.WatchResponse, None]:
        """Watch responses for ``key`` (and ``range_end``) from ``start_rev`` until the caller stops."""
        hub = self.m.hub
        if hub is None:
            raise LOST_WATCHER
        stream = hub.new_stream()
        try:
            stream.create(pb.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_rev))
            while True:
                resp = await stream.queue.get()
                if resp is None:
                    raise LOST_WATCHER
                if resp.canceled:
                    if resp.compact_revision:
                        raise errors.COMPACTED
                    raise EtcdError("UNKNOWN", resp.cancel_reason or LOST_WATCHER.message)
                if resp.created and not resp.events:
                    continue
                yield resp
        finally:
            stream.close()

    async def _wait_delete(self, key: bytes, rev: int) -> None:
        watch = self._watch(key, b"", rev)
        try:
            async for resp in watch:
                if any(ev.type == kv_pb2.Event.DELETE for ev in resp.events):
                    return
        finally:
            await watch.aclose()

    async def _wait_deletes(self, info: AuthInfo | None, prefix: bytes, max_create_rev: int
                            ) -> pb.ResponseHeader:
        """Until no key under ``prefix`` has a create revision up to ``max_create_rev``: waits for the
        newest of them to go, then looks again (clientv3/concurrency's waitDeletes)."""
        while True:
            req = pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), sort_order=pb.RangeRequest.DESCEND,
                                  sort_target=pb.RangeRequest.CREATE, limit=1, max_create_revision=max_create_rev)
            resp = await self._get(info, req)
            if not resp.kvs:
                return resp.header
            await self._wait_delete(resp.kvs[0].key, resp.header.revision)

    # -- Lock -----------------------------------------------------------------------------------------------

    async def lock(self, info: AuthInfo | None, name: bytes, lease: int) -> tuple[pb.ResponseHeader, bytes]:
        """Waits until the caller holds the lock ``name``; its header and key."""
        lease = await self._session(lease)
        prefix = name + b"/"
        key = contender_key(name, lease)
        txn = pb.TxnRequest(
            compare=[_create_rev_is(key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, lease=lease)),
                     pb.RequestOp(request_range=_first_created(prefix))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key)),
                     pb.RequestOp(request_range=_first_created(prefix))])
        resp = await self._txn(info, txn)
        my_rev = resp.header.revision
        if not resp.succeeded:
            my_rev = resp.responses[0].response_range.kvs[0].create_revision
        owner = resp.responses[1].response_range.kvs
        if not owner or owner[0].create_revision == my_rev:
            return resp.header, key
        try:
            header = await self._wait_deletes(info, prefix, my_rev - 1)
        except BaseException:
            self._in_background(self._delete(info, key), f"unlocking {key!r}")
            raise
        return header, key

    async def unlock(self, info: AuthInfo | None, key: bytes) -> pb.ResponseHeader:
        resp = await self._delete(info, key)
        return resp.header

    # -- Election -------------------------------------------------------------------------------------------

    async def campaign(self, info: AuthInfo | None, name: bytes, lease: int, value: bytes
                       ) -> tuple[pb.ResponseHeader, Leadership]:
        """Waits until the caller leads the election ``name``; the header of its candidacy and its leader key."""
        lease = await self._session(lease)
        prefix = name + b"/"
        key = contender_key(name, lease)
        txn = pb.TxnRequest(compare=[_create_rev_is(key, 0)],
                            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
                            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))])
        resp = await self._txn(info, txn)
        leadership = Leadership(name, key, resp.header.revision, lease)
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            leadership = Leadership(name, key, kv.create_revision, lease)
            if kv.value != value:
                try:
                    await self._proclaim(info, leadership, value)
                except BaseException:
                    self._in_background(self._resign(info, leadership), f"resigning {key!r}")
                    raise
        try:
            await self._wait_deletes(info, prefix, leadership.rev - 1)
        except asyncio.CancelledError:
            self._in_background(self._resign(info, leadership), f"resigning {key!r}")
            raise
        return resp.header, leadership

    async def _proclaim(self, info: AuthInfo | None, leader: Leadership, value: bytes) -> pb.ResponseHeader:
        txn = pb.TxnRequest(compare=[_create_rev_is(leader.key, leader.rev)],
                            success=[pb.RequestOp(request_put=pb.PutRequest(key=leader.key, value=value,
                                                                            lease=leader.lease))])
        resp = await self._txn(info, txn)
        if not resp.succeeded:
            raise NOT_LEADER
        return resp.header

    async def proclaim(self, info: AuthInfo | None, leader: Leadership | None, value: bytes) -> pb.ResponseHeader:
        """Sets the leader's value while ``leader`` still holds its key ("election: not leader" otherwise)."""
        if leader is None:
            raise MISSING_LEADER_KEY
        lease = await self._session(leader.lease)
        return await self._proclaim(info, Leadership(leader.name, leader.key, leader.rev, lease), value)

    async def _resign(self, info: AuthInfo | None, leader: Leadership) -> pb.ResponseHeader:
        txn = pb.TxnRequest(compare=[_create_rev_is(leader.key, leader.rev)],
                            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=leader.key))])
        resp = await self._txn(info, txn)
        return resp.header

    async def resign(self, info: AuthInfo | None, leader: Leadership | None) -> pb.ResponseHeader:
        """Deletes the leader key if it is still ``leader``'s; no error when it is not."""
        if leader is None:
            raise MISSING_LEADER_KEY
        await self._session(leader.lease)
        return await self._resign(info, leader)

    async def leader(self, info: AuthInfo | None, name: bytes) -> tuple[pb.ResponseHeader, kv_pb2.KeyValue]:
        resp = await self._get(info, _first_created(name + b"/"))
        if not resp.kvs:
            raise NO_LEADER
        return resp.header, resp.kvs[0]

    async def observe(self, info: AuthInfo | None, name: bytes
                      ) -> AsyncGenerator[tuple[pb.ResponseHeader, kv_pb2.KeyValue], None]:
        """The leader, then every change of it: its value proclaimed, or a new leader once it is gone."""
        prefix = name + b"/"
        while True:
            resp = await self._get(info, _first_created(prefix))
            if resp.kvs:
                header, kv = resp.header, resp.kvs[0]
            else:  # no leader yet: the first key put under the prefix leads
                header, kv = await self._first_put(prefix, resp.header.revision)
            yield header, kv
            watch = self._watch(kv.key, b"", header.revision + 1)
            try:
                async for wresp in watch:
                    deleted = False
                    for ev in wresp.events:
                        if ev.type == kv_pb2.Event.DELETE:
                            deleted = True
                            break
                        yield wresp.header, ev.kv
                    if deleted:
                        break
            finally:
                await watch.aclose()

    async def _first_put(self, prefix: bytes, rev: int) -> tuple[pb.ResponseHeader, kv_pb2.KeyValue]:
        watch = self._watch(prefix, prefix_end(prefix), rev)
        try:
            async for wresp in watch:
                for ev in wresp.events:
                    if ev.type == kv_pb2.Event.PUT:
                        header = pb.ResponseHeader()
                        header.CopyFrom(wresp.header)
                        header.revision = ev.kv.mod_revision
                        return header, ev.kv
        finally:
            await watch.aclose()
        raise LOST_WATCHER
