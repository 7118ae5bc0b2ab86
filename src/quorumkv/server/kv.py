"""The KV side of a member (etcd's ``RaftKV``): ranges, puts, deletes, txns, compaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.mvcc import store
from quorumkv.server.apply import (
    execute_range,
    execute_read_only_txn,
    put_cost_bytes,
    txn_cost_bytes,
)
from quorumkv.server.auth_state import AuthInfo
from quorumkv.server.entries import EntryKind, wrap_authed
from quorumkv.server.member import MemberCore
from quorumkv.storage.backend import read_txn

#: Revisions compacted by the first log entry of a compaction, and the pause between two entries (see
#: ``MemberKV.compact``). etcd 3.4 deletes 1,000 keys per batch with 10 ms between batches; a step here also
#: writes the kv indexes in the same transaction as the writes it shares a turn with, and its commit syncs every
#: page it freed: on the shared test host a step of 500 revisions of 2-8 KiB values took 74 ms (median; spikes
#: to 500 ms), one of 100 took 13 ms (bench/datascale.py, docs/performance.md). Later steps grow on a faster disk.
COMPACTION_STEP_REVISIONS = 100
COMPACTION_PAUSE_S = 0.01
#: The steps that follow adapt to what a step costs on this store and host: a step whose entry took longer than
#: the target (from proposal to applied: what a write queued behind it waited too) halves the next one, a step
#: under a quarter of it doubles it, between these bounds.
COMPACTION_STEP_TARGET_S = 0.04
COMPACTION_STEP_MIN_REVISIONS = 50
COMPACTION_STEP_MAX_REVISIONS = 2000
#: A step also ends where its revisions' keys and values pass this many bytes (``store.revision_within_bytes``):
#: what a step frees, and so what its commit syncs, follows the bytes, and a store's history is not uniform (on
#: the benchmark's store, steps grown to 2,000 revisions over 1 KiB values then met 2-8 KiB ones: 500 revisions
#: of those took 74 ms, 2,000 several times that, before the next step could shrink).
COMPACTION_STEP_MAX_BYTES = 512 * 1024


def next_compaction_step(size: int, took_s: float) -> int:
    """The next step's size in revisions after a step of ``size`` took ``took_s`` seconds."""
    if took_s > COMPACTION_STEP_TARGET_S:
        return max(COMPACTION_STEP_MIN_REVISIONS, size // 2)
    if took_s < COMPACTION_STEP_TARGET_S / 4:
        return min(COMPACTION_STEP_MAX_REVISIONS, size * 2)
    return size

log = logging.getLogger("quorumkv.server")


class MemberKV(MemberCore):
    """Range/Put/DeleteRange/Txn/Compact."""

    @property
    def max_txn_ops(self) -> int:
        """``--max-txn-ops``: the most operations a txn may hold (validated before it is proposed)."""
        return self.settings.max_txn_ops

    def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        if self.alarms and any(a == pb.AlarmType.CORRUPT for _, a in self.alarms):
            raise errors.CORRUPT
        reader = self.reader
        counts = self.page_counts
        try:
            with read_txn(reader):
                return execute_range(
                    lambda rev, limit, count_only: store.range_at(
                        reader, req.key, req.range_end, rev, limit=limit, count_only=count_only, counts=counts),
                    req,
                )
        except store.CompactedError as exc:
            raise errors.COMPACTED from exc
        except store.FutureRevisionError as exc:
            raise errors.FUTURE_REV from exc

    async def put(self, req: pb.PutRequest, auth: AuthInfo | None = None) -> pb.PutResponse:
        await self._check_quota(put_cost_bytes(req))
        resp: pb.PutResponse = await self._propose_write(EntryKind.PUT, req.SerializeToString(), auth)
        return resp

    async def delete_range(self, req: pb.DeleteRangeRequest, auth: AuthInfo | None = None
                           ) -> pb.DeleteRangeResponse:
        resp: pb.DeleteRangeResponse = await self._propose_write(EntryKind.DELETE_RANGE, req.SerializeToString(),
                                                                 auth)
        return resp

    async def txn(self, req: pb.TxnRequest, auth: AuthInfo | None = None) -> pb.TxnResponse:
        if is_txn_read_only(req):
            await self.read_barrier()
            with read_txn(self.reader):
                return execute_read_only_txn(self.reader, req)
        await self._check_quota(txn_cost_bytes(req))
        resp: pb.TxnResponse = await self._propose_write(EntryKind.TXN, req.SerializeToString(), auth)
        return resp

    async def _propose_write(self, kind: int, payload: bytes, auth: AuthInfo | None) -> Any:
        """Propose a write; one made for a user (``auth``, already checked by the caller) carries the user and
        the auth revision so the applier checks it again (``EntryKind.AUTHED``), as etcd's request header does."""
        if auth is None:
            return await self._propose(kind, payload)
        return await self._propose(EntryKind.AUTHED, wrap_authed(auth.username, auth.revision, kind, payload))

    async def compact(self, req: pb.CompactionRequest) -> pb.CompactionResponse:
        """Compact in steps (:data:`COMPACTION_STEP_REVISIONS` first, then sized by
        :func:`next_compaction_step`): one log entry per step, each proposed :data:`COMPACTION_PAUSE_S` after the
        previous one is applied, so the writes queued meanwhile commit between two steps (etcd deletes its keys
        in batches for the same reason). The last entry is the request itself and gives the answer; a step that
        someone else's compaction overtook is skipped. The step sizes are chosen here, by the proposer; each
        entry names its revision, so applying stays deterministic."""
        target = req.revision
        if target <= self.applier.revision:  # a future revision fails in the request's own entry, at once
            size = COMPACTION_STEP_REVISIONS
            step = self._step_end(max(self.applier.compact_revision, 0), size)
            while step < target:
                started = time.perf_counter()
                try:
                    await self._propose(EntryKind.COMPACTION,
                                        pb.CompactionRequest(revision=step).SerializeToString())
                except errors.EtcdError as exc:
                    if exc.message != errors.COMPACTED.message:
                        raise
                size = next_compaction_step(size, time.perf_counter() - started)
                step = self._step_end(max(step, self.applier.compact_revision), size)
                await asyncio.sleep(COMPACTION_PAUSE_S)  # the writes queued meanwhile get turns of their own
        resp: pb.CompactionResponse = await self._propose(EntryKind.COMPACTION, req.SerializeToString())
        return resp

    def _step_end(self, after: int, size: int) -> int:
        """The revision a compaction step from ``after`` ends at: ``size`` revisions on, or earlier where they pass
        :data:`COMPACTION_STEP_MAX_BYTES`."""
        with read_txn(self.reader):
            return store.revision_within_bytes(self.reader, after, after + size, COMPACTION_STEP_MAX_BYTES)


def is_txn_read_only(req: pb.TxnRequest) -> bool:
    for ops in (req.success, req.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which in ("request_put", "request_delete_range"):
                return False
            if which == "request_txn" and not is_txn_read_only(op.request_txn):
                return False
    return True
