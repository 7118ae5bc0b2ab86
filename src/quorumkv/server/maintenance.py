"""The maintenance side of a member: status, alarms, snapshots, defragmentation, hashes, leader moves,
auto-compaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from quorumkv import ETCD_COMPAT_VERSION, errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.mvcc import hashing, store
from quorumkv.server import compactor, defrag, snapshot
from quorumkv.server.entries import EntryKind
from quorumkv.server.member import MemberCore
from quorumkv.storage import leases
from quorumkv.storage.backend import read_txn

log = logging.getLogger("quorumkv.server")


class MemberMaintenance(MemberCore):
    """Status/Alarm/Snapshot/Defragment/Hash/HashKV/MoveLeader."""

    def status(self) -> pb.StatusResponse:
        st = self.node.status()
        resp = pb.StatusResponse(
            version=ETCD_COMPAT_VERSION,
            dbSize=self.backend.size_bytes(),
            leader=self.node.lead,
            raftIndex=st.commit_index,
            raftTerm=st.term,
            raftAppliedIndex=st.applied_index,
            dbSizeInUse=self.backend.size_in_use_bytes(self.reader),
            isLearner=self.node.is_learner,
        )
        resp.errors.extend(alarm_text(a) for a in self.applier.alarm_members())
        resp.header.revision = self.current_revision
        return resp

    async def alarm(self, req: pb.AlarmRequest) -> pb.AlarmResponse:
        """GET is answered from the applied state; ACTIVATE/DEACTIVATE go through the log (they persist)."""
        if req.action == pb.AlarmRequest.GET:
            resp = pb.AlarmResponse()
            resp.alarms.extend(self.applier.alarm_members(req.alarm))
        else:
            resp = await self._propose(EntryKind.ALARM, req.SerializeToString())
        resp.header.revision = self.current_revision
        return resp

    async def snapshot(self) -> AsyncIterator[pb.SnapshotResponse]:
        """Stream a point-in-time copy of the whole store in chunks, then its SHA-256 (etcd's framing)."""
        loop = asyncio.get_running_loop()
        tmp = self.datadir.path / f"snapshot-{uuid.uuid4().hex}.tmp"
        try:
            async with self._file_lock:
                size = await loop.run_in_executor(None, snapshot.export_etcd_database, self.datadir.db_path, tmp)
            log.info("sending database snapshot", extra={"size-bytes": size})
            for remaining, blob in snapshot.iter_chunks(tmp):
                yield pb.SnapshotResponse(remaining_bytes=remaining, blob=blob)
        finally:
            tmp.unlink(missing_ok=True)

    async def defragment(self) -> pb.DefragmentResponse:
        """Rebuild the database file compactly while serving (see quorumkv.server.defrag)."""
        loop = asyncio.get_running_loop()
        async with self._file_lock:
            started = time.perf_counter()
            before = self.backend.size_bytes()
            node = self.node
            # the copy catches up from raft_log rows: keep them from before the copy's snapshot on (a sole
            # voter stores rows only while pinned)
            await loop.run_in_executor(None, node.pin_log)
            try:
                rebuild = await loop.run_in_executor(
                    None, defrag.Rebuild, self.datadir.db_path, self.applier.min_lease_ttl_seconds)
                try:
                    for _ in range(defrag.MAX_ROUNDS):
                        if await loop.run_in_executor(None, rebuild.catch_up) < defrag.SMALL_ROUND_ENTRIES:
                            break
                    # checkpoint now, so closing the old file in the pause below has little WAL left to copy
                    await loop.run_in_executor(None, self.backend.checkpoint)
                    await loop.run_in_executor(None, rebuild.catch_up)
                    async with node.pause_writes():
                        paused = time.perf_counter()
                        try:
                            await loop.run_in_executor(None, rebuild.finish, self.applier.applied_index)
                            old_file = self.backend.swap_file(rebuild.path)
                            self.reader = self.backend.new_reader()
                            if self.hub is not None:
                                self.hub.reader = self.reader
                        finally:
                            self.last_defrag_pause_s = time.perf_counter() - paused
                except BaseException:
                    rebuild.abort()
                    raise
            finally:
                node.log_pin = None
            await loop.run_in_executor(None, old_file.unlink)
        log.info("defragmented", extra={"size-before-bytes": before, "size-after-bytes": self.backend.size_bytes(),
                                        "took-s": round(time.perf_counter() - started, 3),
                                        "writer-pause-s": round(self.last_defrag_pause_s, 4)})
        resp = pb.DefragmentResponse()
        resp.header.revision = self.current_revision
        return resp

    async def hash(self) -> pb.HashResponse:
        """etcd's Hash: a hash of the whole replicated content (see quorumkv.mvcc.hashing)."""
        async with self._file_lock:
            return await asyncio.get_running_loop().run_in_executor(None, self._hash_work)

    def _hash_work(self) -> pb.HashResponse:
        with self.backend.temp_reader() as conn, read_txn(conn):
            return pb.HashResponse(header=pb.ResponseHeader(revision=store.current_revision(conn)),
                                   hash=hashing.hash_backend(conn))

    async def hash_kv(self, req: pb.HashKVRequest) -> pb.HashKVResponse:
        """etcd's HashKV: the key revisions up to ``req.revision`` (0: current); compact_revision -1 if none."""
        def work() -> pb.HashKVResponse:
            with self.backend.temp_reader() as conn, read_txn(conn):
                current = store.current_revision(conn)
                compacted = store.compact_revision(conn)
                if req.revision > 0 and req.revision <= compacted:
                    raise errors.COMPACTED
                if req.revision > current:
                    raise errors.FUTURE_REV
                rev = req.revision or current
                return pb.HashKVResponse(header=pb.ResponseHeader(revision=current),
                                         hash=hashing.hash_kv(conn, rev),
                                         compact_revision=compacted if compacted > 0 else -1)
        async with self._file_lock:
            return await asyncio.get_running_loop().run_in_executor(None, work)

    async def move_leader(self, req: pb.MoveLeaderRequest) -> pb.MoveLeaderResponse:
        """etcd's MoveLeader: only the leader can hand over, to a voting member; waits for the new leader."""
        node = self.node
        resp = pb.MoveLeaderResponse()
        if not node.is_leader:
            raise errors.NOT_LEADER
        if req.targetID not in node.conf_state.voters:
            raise errors.BAD_LEADER_TRANSFEREE
        if req.targetID != self.member_id:
            await self._transfer_leadership(req.targetID, self.settings.request_timeout_s)
        resp.header.revision = self.current_revision
        return resp

    def active_alarms(self) -> list[tuple[int, int]]:
        """The raised alarms as (member ID, ``pb.AlarmType`` value), for health checks and metrics."""
        with read_txn(self.reader):
            return sorted(leases.load_alarms(self.reader))

    async def _auto_compaction_loop(self, comp: compactor.Compactor) -> None:
        """Propose Compaction entries when the compactor says so (the decision uses the clock, apply does not)."""
        while True:
            comp.sample(self.current_revision)
            await asyncio.sleep(comp.poll_interval_s)
            rev = comp.due(self.clock.monotonic(), self.current_revision)
            if rev is None:
                continue
            log.info("starting auto-compaction", extra={"revision": rev})
            try:
                await self.compact(pb.CompactionRequest(revision=rev))
            except EtcdError as exc:
                if exc.message != errors.COMPACTED.message:
                    log.warning("auto-compaction at revision %d failed: %s", rev, exc.message)
                    continue
            comp.succeeded(self.clock.monotonic(), rev)
            log.info("finished auto-compaction", extra={"revision": rev})


def alarm_text(a: pb.AlarmMember) -> str:
    """An alarm as etcd's Status ``errors`` shows it (Go's proto text form): ``memberID:N alarm:NOSPACE ``."""
    return f"memberID:{a.memberID} alarm:{pb.AlarmType.Name(a.alarm)} "
