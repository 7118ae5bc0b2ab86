"""gRPC servicers for etcd's Lock (``v3lockpb.Lock``) and Election (``v3electionpb.Election``) services.

Thin: they name the caller, call ``server/concurrency.py`` and shape the answer. As etcd (whose servers for
these run its client library against itself), every error reaches the client with gRPC code Unknown and the
error's text (``etcdserver: requested lease not found``, ``election: not leader`` ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from quorumkv import errors
from quorumkv.api.servicers import abort, auth_info
from quorumkv.api.v3electionpb import v3election_pb2 as epb
from quorumkv.api.v3electionpb import v3election_pb2_grpc as epb_grpc
from quorumkv.api.v3lockpb import v3lock_pb2 as lpb
from quorumkv.api.v3lockpb import v3lock_pb2_grpc as lpb_grpc
from quorumkv.errors import EtcdError
from quorumkv.server.concurrency import Concurrency, Leadership
from quorumkv.server.interfaces import ConcurrencyBackend


def _unknown(err: EtcdError) -> EtcdError:
    return EtcdError("UNKNOWN", err.message)


def _leadership(msg: epb.ProclaimRequest | epb.ResignRequest) -> Leadership | None:
    if not msg.HasField("leader"):
        return None
    lk = msg.leader
    if not lk.key:  # the txn's put / delete of the leader key is checked as any request's
        raise errors.EMPTY_KEY
    return Leadership(lk.name, lk.key, lk.rev, lk.lease)


class LockServicer(lpb_grpc.LockServicer):
    def __init__(self, server: ConcurrencyBackend) -> None:
        self.s = server
        self.c = Concurrency(server)

    async def Lock(self, request: lpb.LockRequest, context: Any) -> lpb.LockResponse:
        try:
            header, key = await self.c.lock(auth_info(self.s, context), request.name, request.lease)
        except EtcdError as err:
            await abort(context, _unknown(err))
        resp = lpb.LockResponse(header=header, key=key)
        self.s.fill_header(resp.header)
        return resp

    async def Unlock(self, request: lpb.UnlockRequest, context: Any) -> lpb.UnlockResponse:
        try:
            if not request.key:
                raise errors.EMPTY_KEY
            header = await self.c.unlock(auth_info(self.s, context), request.key)
        except EtcdError as err:
            await abort(context, _unknown(err))
        resp = lpb.UnlockResponse(header=header)
        self.s.fill_header(resp.header)
        return resp


class ElectionServicer(epb_grpc.ElectionServicer):
    def __init__(self, server: ConcurrencyBackend) -> None:
        self.s = server
        self.c = Concurrency(server)

    async def Campaign(self, request: epb.CampaignRequest, context: Any) -> epb.CampaignResponse:
        try:
            header, leader = await self.c.campaign(auth_info(self.s, context), request.name, request.lease,
                                                   request.value)
        except EtcdError as err:
            await abort(context, _unknown(err))
        resp = epb.CampaignResponse(header=header, leader=epb.LeaderKey(
            name=leader.name, key=leader.key, rev=leader.rev, lease=leader.lease))
        self.s.fill_header(resp.header)
        return resp

    async def Proclaim(self, request: epb.ProclaimRequest, context: Any) -> epb.ProclaimResponse:
        try:
            header = await self.c.proclaim(auth_info(self.s, context), _leadership(request), request.value)
        except EtcdError as err:
            await abort(context, _unknown(err))
        resp = epb.ProclaimResponse(header=header)
        self.s.fill_header(resp.header)
        return resp

    async def Resign(self, request: epb.ResignRequest, context: Any) -> epb.ResignResponse:
        try:
            header = await self.c.resign(auth_info(self.s, context), _leadership(request))
        except EtcdError as err:
            await abort(context, _unknown(err))
        resp = epb.ResignResponse(header=header)
        self.s.fill_header(resp.header)
        return resp

    async def Leader(self, request: epb.LeaderRequest, context: Any) -> epb.LeaderResponse:
        try:
            header, kv = await self.c.leader(auth_info(self.s, context), request.name)
        except EtcdError as err:
            await abort(context, _unknown(err))
        resp = epb.LeaderResponse(header=header, kv=kv)
        self.s.fill_header(resp.header)
        return resp

    async def Observe(self, request: epb.LeaderRequest, context: Any) -> AsyncIterator[epb.LeaderResponse]:
        changes = None
        try:
            changes = self.c.observe(auth_info(self.s, context), request.name)
            async for header, kv in changes:
                resp = epb.LeaderResponse(header=header, kv=kv)
                self.s.fill_header(resp.header)
                yield resp
        except EtcdError as err:
            await abort(context, _unknown(err))
        finally:
            if changes is not None:
                await changes.aclose()
