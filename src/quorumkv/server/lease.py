"""The lease side of a member (etcd's ``Lessor`` front): grants and revokes through the log, clocks on the leader.
"""

from __future__ import annotations

import asyncio
import logging

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.mvcc import store
from quorumkv.server.apply import LEASE_OVERHEAD_BYTES
from quorumkv.server.cluster import wrap_error
from quorumkv.server.entries import EntryKind
from quorumkv.server.member import MemberCore
from quorumkv.storage.backend import read_txn

log = logging.getLogger("quorumkv.server")

#: How often the leader looks for expired leases (etcd checks every 500 ms as well).
LEASE_EXPIRY_CHECK_S = 0.5
#: Most lease checkpoints proposed in one entry (etcd's maxLeaseCheckpointBatchSize).
LEASE_CHECKPOINT_BATCH = 1000
#: A follower asks its leader again this soon when the leader does not know a lease the follower has applied.
LEASE_RENEW_RETRY_S = 0.02


class MemberLeases(MemberCore):
    """LeaseGrant/Revoke/KeepAlive/TimeToLive/Leases, and expiry."""

    async def lease_grant(self, req: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        await self._check_quota(LEASE_OVERHEAD_BYTES)
        lease_id = req.ID or (self.ids.next() & ((1 << 63) - 1))
        r = pb.LeaseGrantRequest(TTL=req.TTL, ID=lease_id)
        resp: pb.LeaseGrantResponse = await self._propose(EntryKind.LEASE_GRANT, r.SerializeToString())
        return resp

    async def lease_revoke(self, req: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        resp: pb.LeaseRevokeResponse = await self._propose(EntryKind.LEASE_REVOKE, req.SerializeToString())
        return resp

    async def lease_renew(self, lease_id: int) -> int:
        """KeepAlive: the lease's TTL after renewal, or 0 if it does not exist (etcd answers TTL 0).
        Only the leader keeps lease clocks: a follower forwards the renewal to it."""
        if not self._is_leader:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.request_timeout_s
            while True:
                data = await self._call_leader("lease_renew", lease_id.to_bytes(8, "big", signed=True))
                ttl = int.from_bytes(data, "big", signed=True)
                # The leader sends the commit index before it applies the entry itself, so this member can know a
                # lease its leader has not recorded yet: ask again (bounded) while the lease exists here.
                if ttl != 0 or lease_id not in self.applier.leases or loop.time() >= deadline:
                    return ttl
                await asyncio.sleep(LEASE_RENEW_RETRY_S)
        return await self._renew_here(lease_id)

    async def _renew_here(self, lease_id: int) -> int:
        """The leader's renewal. With checkpointing, a lease that has a checkpointed remaining TTL has it cleared
        through the log first (as etcd's Renew), so a later leader starts it from its full TTL again."""
        if (self.settings.lease_checkpoint and self.applier.lease_remaining.get(lease_id, 0) > 0
                and lease_id in self.lessor.leases):
            clear = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=lease_id, remaining_TTL=0)])
            try:
                await self._propose(EntryKind.LEASE_CHECKPOINT, clear.SerializeToString())
            except EtcdError as exc:  # etcd ignores this error too: the renewal itself still happens
                log.warning("clearing a lease checkpoint failed", extra={"lease-id": f"{lease_id:x}",
                                                                         "error": exc.message})
        renewed = self.lessor.renew(lease_id)
        return 0 if renewed is None else renewed

    def _lease_remaining(self) -> dict[int, int] | None:
        """Checkpointed remaining TTLs a new leader starts from (None without checkpointing: full TTLs, as etcd
        3.4 without the flag, even if an earlier run with the flag stored some)."""
        return dict(self.applier.lease_remaining) if self.settings.lease_checkpoint else None

    async def lease_time_to_live(self, req: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        if not self._is_leader:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.request_timeout_s
            while True:  # as lease_renew: the leader may not have recorded a lease this member has applied
                data = await self._call_leader("lease_ttl", req.SerializeToString())
                resp = pb.LeaseTimeToLiveResponse.FromString(data)
                if resp.TTL != -1 or req.ID not in self.applier.leases or loop.time() >= deadline:
                    break
                await asyncio.sleep(LEASE_RENEW_RETRY_S)
            resp.header.revision = max(resp.header.revision, self.current_revision)
            return resp
        return self._lease_time_to_live_here(req)

    def _lease_time_to_live_here(self, req: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        ttl = self.applier.leases.get(req.ID)
        remaining = self.lessor.remaining_s(req.ID)
        if ttl is None or remaining is None:
            return pb.LeaseTimeToLiveResponse(header=pb.ResponseHeader(revision=self.current_revision),
                                              ID=req.ID, TTL=-1)
        resp = pb.LeaseTimeToLiveResponse(ID=req.ID, TTL=remaining, grantedTTL=ttl)
        if req.keys:
            with read_txn(self.reader):
                resp.keys.extend(store.keys_with_lease(self.reader, req.ID))
        resp.header.revision = self.current_revision
        return resp

    def lease_leases(self) -> pb.LeaseLeasesResponse:
        resp = pb.LeaseLeasesResponse()
        for lid in sorted(self.applier.leases):
            resp.leases.add(ID=lid)
        resp.header.revision = self.current_revision
        return resp

    async def _lease_expiry_loop(self) -> None:
        """Revoke expired leases through the log (the decision uses the clock; the deletion does not)."""
        while True:
            await asyncio.sleep(LEASE_EXPIRY_CHECK_S)
            if not self._is_leader:
                continue
            for lid in self.lessor.expired():
                asyncio.get_running_loop().create_task(self._revoke_expired(lid))
            due = self.lessor.due_checkpoints(LEASE_CHECKPOINT_BATCH)
            if due:
                asyncio.get_running_loop().create_task(self._propose_checkpoints(due))

    async def _propose_checkpoints(self, due: list[tuple[int, int]]) -> None:
        """One LeaseCheckpoint entry for ``due`` (lease id, remaining TTL); the applied checkpoints schedule the
        next ones. A failed proposal (leadership lost, timeout) schedules them again from now."""
        req = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=lid, remaining_TTL=rem)
                                                     for lid, rem in due])
        try:
            await self._propose(EntryKind.LEASE_CHECKPOINT, req.SerializeToString())
        except EtcdError as exc:
            log.debug("lease checkpoint not committed", extra={"leases": len(due), "error": exc.message})
            for lid, _rem in due:
                self.lessor.checkpointed(lid)

    async def _revoke_expired(self, lease_id: int) -> None:
        try:
            await self._propose(EntryKind.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id).SerializeToString())
        except EtcdError as exc:
            if exc.message != errors.LEASE_NOT_FOUND.message:
                self.lessor.revoke_failed(lease_id)

    async def _handle_lease_renew(self, payload: bytes) -> bytes:
        if not self._is_leader:
            return wrap_error(errors.NOT_LEADER)
        lease_id = int.from_bytes(payload, "big", signed=True)
        ttl = await self._renew_here(lease_id)
        return b"\x00" + ttl.to_bytes(8, "big", signed=True)

    async def _handle_lease_ttl(self, payload: bytes) -> bytes:
        if not self._is_leader:
            return wrap_error(errors.NOT_LEADER)
        resp = self._lease_time_to_live_here(pb.LeaseTimeToLiveRequest.FromString(payload))
        return b"\x00" + resp.SerializeToString()
