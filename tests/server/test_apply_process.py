"""The apply process (``--experimental-apply-process``): the writer in a child process behaves as the writer
thread does, and losing either process loses nothing acknowledged and never hangs a request.

- a seeded random mix of every write kind (puts with leases/prev_kv/ignore_*, ranged deletes, nested txns,
  compactions, lease grants/revokes, alarms, etcd errors) gives byte-identical responses, the same final
  store and the same mirrored applier state (revision, compact revision, applied index, leases, alarms) on
  both engines;
- watchers get every event, online defrag pauses the child and swaps the file under concurrent writes;
- kill -9 of the child under load: pending requests fail with UNAVAILABLE, a new child takes over, every
  acknowledged write is stored, a watcher sees every revision once and in order (what the dead child
  committed without reporting it is read back from the database);
- the child can no longer be restarted: writes fail at once and ``on_fatal`` is called;
- kill -9 of the serving process: the child dies with it and the data dir can be reopened at once;
- startup errors of the child (a corrupt log) surface as the same StorageError; the child's log records and
  slow-apply reports reach the parent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.server import applyproc
from quorumkv.server.applyproc import ProcessNode
from quorumkv.server.entries import EntryKind, decode_entry, encode_entry
from quorumkv.server.errors import EtcdError
from quorumkv.server.server import QuorumServer, ServerSettings
from quorumkv.storage.backend import StorageError
from quorumkv.storage.datadir import DB_FILE
from quorumkv.testing.processes import start_quorumkv

LEASE_IDS = [101, 202, 303, 404]


def _settings(data_dir: Path, apply_process: bool = True) -> ServerSettings:
    return ServerSettings(data_dir=str(data_dir), apply_process=apply_process)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _random_ops(seed: int, n: int) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    keys = [f"k{i}".encode() for i in range(12)]
    ops: list[tuple[str, Any]] = []

    def put_req() -> pb.PutRequest:
        r = pb.PutRequest(key=rng.choice(keys), value=rng.randbytes(rng.randrange(0, 40)))
        roll = rng.random()
        if roll < 0.15:
            r.lease = rng.choice(LEASE_IDS)
        elif roll < 0.2:
            r.ignore_value = True
            r.value = b""
        elif roll < 0.25:
            r.ignore_lease = True
        r.prev_kv = rng.random() < 0.3
        return r

    for _ in range(n):
        roll = rng.random()
        if roll < 0.45:
            ops.append(("put", put_req()))
        elif roll < 0.55:
            lo = rng.choice(keys)
            ops.append(("delete", pb.DeleteRangeRequest(key=lo, range_end=lo + b"\xff" if rng.random() < 0.5 else b"",
                                                        prev_kv=rng.random() < 0.5)))
        elif roll < 0.7:
            k = rng.choice(keys)
            cmp = pb.Compare(key=k, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=rng.randrange(3))
            inner = pb.TxnRequest(compare=[pb.Compare(key=rng.choice(keys), target=pb.Compare.CREATE,
                                                      result=pb.Compare.EQUAL, create_revision=0)],
                                  success=[pb.RequestOp(request_put=pb.PutRequest(key=b"nested", value=b"n"))])
            ops.append(("txn", pb.TxnRequest(
                compare=[cmp],
                success=[pb.RequestOp(request_put=put_req()), pb.RequestOp(request_txn=inner)],
                failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=rng.choice(keys))),
                         pb.RequestOp(request_range=pb.RangeRequest(key=b"k", range_end=b"l"))])))
        elif roll < 0.78:
            ops.append(("grant", pb.LeaseGrantRequest(ID=rng.choice(LEASE_IDS), TTL=rng.choice([5, 100, 10**10]))))
        elif roll < 0.85:
            ops.append(("revoke", pb.LeaseRevokeRequest(ID=rng.choice(LEASE_IDS))))
        elif roll < 0.9:
            ops.append(("compact", rng.randrange(-3, 3)))  # relative to the current revision
        else:
            action = rng.choice([pb.AlarmRequest.ACTIVATE, pb.AlarmRequest.DEACTIVATE, pb.AlarmRequest.GET])
            ops.append(("alarm", pb.AlarmRequest(action=action, memberID=7, alarm=pb.AlarmType.NOSPACE)))
    return ops


async def _run_ops(srv: QuorumServer, ops: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Each op's outcome (serialized response or error), issued in rounds of concurrent proposals."""
    out: list[tuple[str, Any]] = []

    async def one(kind: str, req: Any) -> tuple[str, Any]:
        try:
            if kind == "put":
                resp: Any = await srv.put(req)
            elif kind == "delete":
                resp = await srv.delete_range(req)
            elif kind == "txn":
                resp = await srv.txn(req)
            elif kind == "grant":
                resp = await srv.lease_grant(req)
            elif kind == "revoke":
                resp = await srv.lease_revoke(req)
            elif kind == "compact":
                resp = await srv.compact(pb.CompactionRequest(revision=max(1, srv.current_revision + req)))
            else:
                resp = await srv.alarm(req)
                # the server stamps the revision current when the answer arrives, which depends on where the
                # batch boundaries fell (timing), not on the engine
                resp.header.revision = 0
        except EtcdError as exc:
            return ("error", (exc.code, exc.message))
        return ("ok", resp.SerializeToString(deterministic=True))

    for at in range(0, len(ops), 8):  # a few proposals in flight at once: batches of several entries
        out.extend(await asyncio.gather(*(one(k, r) for k, r in ops[at:at + 8])))
    return out


def _observe(srv: QuorumServer) -> dict[str, Any]:
    a = srv.applier
    rng = srv.range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
    return {
        "kvs": [kv.SerializeToString(deterministic=True) for kv in rng.kvs],
        "revision": a.revision, "compact_revision": a.compact_revision, "applied_index": a.applied_index,
        "leases": dict(a.leases), "alarms": sorted(a.alarms), "current_revision": srv.current_revision,
        "last_index": srv.node.last_index, "lessor": sorted(srv.lessor.leases),
    }


def test_process_engine_answers_exactly_as_the_thread_engine(tmp_path: Path) -> None:
    ops = _random_ops(seed=20261122, n=400)

    async def run(apply_process: bool) -> tuple[list[tuple[str, Any]], dict[str, Any], dict[str, Any]]:
        srv = QuorumServer(_settings(tmp_path / f"d{apply_process}", apply_process))
        assert isinstance(srv.node, ProcessNode) == apply_process
        await srv.start()
        try:
            outcomes = await _run_ops(srv, ops)
            seen = _observe(srv)
            hashed = (await srv.hash_kv(pb.HashKVRequest())).hash
        finally:
            await srv.stop()
        # what the serving process mirrored is what a fresh open of the store reads
        again = QuorumServer(_settings(tmp_path / f"d{apply_process}", False))
        try:
            fresh = {"revision": again.applier.revision, "compact_revision": again.applier.compact_revision,
                     "leases": dict(again.applier.leases), "alarms": sorted(again.applier.alarms)}
        finally:
            again.node.stop()
            again.backend.close()
            again.datadir.close()
        return outcomes, {**seen, "hash": hashed}, fresh

    thread_out, thread_state, thread_fresh = asyncio.run(run(False))
    proc_out, proc_state, proc_fresh = asyncio.run(run(True))
    kinds = {k for k, _ in thread_out}
    assert kinds == {"ok", "error"}, "the op mix must exercise etcd errors too"
    assert len({msg for k, msg in thread_out if k == "error"}) >= 3
    assert proc_out == thread_out
    assert proc_state == thread_state
    assert proc_fresh == thread_fresh
    for key in ("revision", "compact_revision", "leases", "alarms"):
        assert proc_state[key] == proc_fresh[key], key


def test_watchers_see_every_event_and_defrag_pauses_the_child(tmp_path: Path) -> None:
    async def main() -> None:
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        try:
            assert srv.hub is not None
            stream = srv.hub.new_stream()
            stream.create(pb.WatchCreateRequest(key=b"w/", range_end=b"w0", prev_kv=True))
            created = await stream.queue.get()
            assert created is not None and created.created
            for i in range(300):
                await srv.put(pb.PutRequest(key=b"big%d" % (i % 10), value=b"x" * 3000))
            await srv.compact(pb.CompactionRequest(revision=srv.current_revision))
            stop = asyncio.Event()
            acked: list[tuple[int, bytes]] = []

            async def writer(n: int) -> None:
                i = 0
                while not stop.is_set():
                    key = b"w/%d/%d" % (n, i % 5)
                    resp = await srv.put(pb.PutRequest(key=key, value=b"%d" % i))
                    acked.append((resp.header.revision, key))
                    i += 1

            tasks = [asyncio.create_task(writer(n)) for n in range(4)]
            await asyncio.sleep(0.1)
            before = len(acked)
            await srv.defragment()
            during = len(acked) - before
            await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)
            assert during > 0, "writes must go on while the child is paused and the file swapped"
            assert srv.last_defrag_pause_s < 2.0
            got: list[tuple[int, bytes, bool]] = []
            while len(got) < len(acked):
                resp = await asyncio.wait_for(stream.queue.get(), 5)
                assert resp is not None
                got.extend((e.kv.mod_revision, e.kv.key, e.HasField("prev_kv")) for e in resp.events)
            assert [(r, k) for r, k, _ in got] == sorted(acked)
            # the second put of a key carries the previous value (read in the serving process)
            assert sum(1 for _, _, has_prev in got if has_prev) == len(acked) - len({k for _, k in acked})
            after = await srv.put(pb.PutRequest(key=b"after", value=b"1"))
            assert after.header.revision == max(r for r, _ in acked) + 1
        finally:
            await srv.stop()

    asyncio.run(main())


def test_killed_child_fails_pending_restarts_and_loses_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        node = srv.node
        assert isinstance(node, ProcessNode)
        first_pid, first_term = node.child_pid, node.term
        assert first_pid is not None and _pid_alive(first_pid)
        assert srv.hub is not None
        stream = srv.hub.new_stream()
        stream.create(pb.WatchCreateRequest(key=b"c/", range_end=b"c0"))
        start_rev = srv.current_revision
        await stream.queue.get()
        acked: dict[bytes, int] = {}
        failures: list[EtcdError] = []
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                key = b"c/%d/%d" % (n, i)
                i += 1
                try:
                    resp = await asyncio.wait_for(srv.put(pb.PutRequest(key=key, value=key)), 10)
                except EtcdError as exc:
                    failures.append(exc)
                    await asyncio.sleep(0.01)
                    continue
                acked[key] = resp.header.revision

        tasks = [asyncio.create_task(writer(n)) for n in range(16)]
        try:
            await asyncio.sleep(0.3)
            assert acked, "no write acknowledged before the kill"
            # Freeze the child first, so that requests are surely in flight at the kill: the parent keeps
            # sending the writers' puts, and none of those can be answered any more.
            os.kill(first_pid, signal.SIGSTOP)
            await asyncio.sleep(0.2)  # results the child wrote before it stopped are read meanwhile
            deadline = time.monotonic() + 10
            while node.pending_proposals == 0 or node._out:
                assert time.monotonic() < deadline, "no request in flight to the stopped child"
                await asyncio.sleep(0.01)
            os.kill(first_pid, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while node.child_pid == first_pid or node.term == first_term:
                assert time.monotonic() < deadline, "no new apply process"
                await asyncio.sleep(0.05)
            n_at_restart = len(acked)
            await asyncio.sleep(0.3)
            assert len(acked) > n_at_restart, "writes must succeed again after the restart"
        finally:
            stop.set()
            await asyncio.gather(*tasks)  # wait_for bounds every request: nothing hangs
        try:
            assert not _pid_alive(first_pid)
            assert node.term == first_term + 1
            assert failures, "requests in flight at the kill must fail, not hang"
            assert all(f.code == "UNAVAILABLE" for f in failures), failures[:3]
            # every acknowledged write is stored at its revision
            for key, rev in acked.items():
                kvs = srv.range(pb.RangeRequest(key=key)).kvs
                assert len(kvs) == 1 and kvs[0].mod_revision == rev and kvs[0].value == key
            # the watcher saw every revision once, in order: including those the dead child never reported
            end_rev = srv.current_revision
            seen: list[int] = []
            while len(seen) < end_rev - start_rev:
                resp = await asyncio.wait_for(stream.queue.get(), 5)
                assert resp is not None
                seen.extend(e.kv.mod_revision for e in resp.events)
            assert seen == list(range(start_rev + 1, end_rev + 1))
            assert srv.applier.revision == end_rev
        finally:
            await srv.stop()
        assert node.child_pid is not None and not _pid_alive(node.child_pid)

    asyncio.run(main())


def test_child_that_cannot_be_restarted_makes_writes_fail_fast(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applyproc, "MAX_RESTARTS", 0)

    async def main() -> None:
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        node = srv.node
        assert isinstance(node, ProcessNode)
        reasons: list[str] = []
        node.on_fatal = reasons.append
        try:
            await srv.put(pb.PutRequest(key=b"a", value=b"1"))
            assert node.child_pid is not None
            os.kill(node.child_pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not reasons:
                assert time.monotonic() < deadline, "the node did not give up"
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            with pytest.raises(EtcdError) as err:
                await srv.put(pb.PutRequest(key=b"b", value=b"2"))
            assert err.value.code == "UNAVAILABLE" and "apply process" in err.value.message
            assert time.monotonic() - t0 < 1.0
            assert srv.range(pb.RangeRequest(key=b"a")).kvs[0].value == b"1"  # reads still work
        finally:
            t0 = time.monotonic()
            await srv.stop()
            assert time.monotonic() - t0 < 5.0

    asyncio.run(main())


def test_corrupt_log_fails_startup_with_the_storage_error(tmp_path: Path) -> None:
    async def fill() -> None:
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        for i in range(4):
            await srv.put(pb.PutRequest(key=b"k%d" % i, value=b"v"))
        await srv.stop()

    asyncio.run(fill())
    with sqlite3.connect(tmp_path / "d" / DB_FILE) as conn:
        (last,) = conn.execute("SELECT max(idx) FROM raft_log").fetchone()
        conn.execute("UPDATE raft_log SET crc = crc + 1 WHERE idx = ?", (last,))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'applied_index'", (last - 1,))
    with pytest.raises(StorageError, match=f"log entry {last} fails its checksum"):
        QuorumServer(_settings(tmp_path / "d"))
    # the data dir was released: the thread engine opens it (and refuses it for the same reason)
    with pytest.raises(StorageError, match="checksum"):
        QuorumServer(_settings(tmp_path / "d", apply_process=False))


def test_child_log_records_and_slow_applies_reach_the_parent(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async def fill() -> int:
        srv = QuorumServer(_settings(tmp_path / "d", apply_process=False))
        await srv.start()
        await srv.put(pb.PutRequest(key=b"a", value=b"1"))
        rev = srv.current_revision
        await srv.stop()
        return rev

    revision = asyncio.run(fill())
    with sqlite3.connect(tmp_path / "d" / DB_FILE) as conn:  # a durable but unapplied entry: replayed
        # (the thread engine stores no log rows: the applied index is where its log ends)
        last, term = (int(conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])
                      for name in ("applied_index", "term"))
        data = encode_entry(EntryKind.PUT, 0, pb.PutRequest(key=b"replayed", value=b"r").SerializeToString())
        conn.execute("INSERT INTO raft_log(idx, term, kind, data, crc) VALUES (?,?,?,?,?)",
                     (last + 1, term, int(EntryKind.PUT), data,
                      zlib.crc32(data, (term << 8) ^ EntryKind.PUT) & 0xFFFFFFFF))

    async def main() -> None:
        with caplog.at_level(logging.INFO, logger="quorumkv.node"):
            srv = QuorumServer(_settings(tmp_path / "d"))
        assert any(r.name == "quorumkv.node" and r.getMessage() == "replayed 1 log entries"
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        slow: list[tuple[int, bytes, float]] = []
        commits: list[float] = []
        srv.node._fsync_observer = commits.append
        srv.node.slow_apply_s = 0.0
        srv.node.slow_apply_observer = lambda index, data, took: slow.append((index, data, took))
        await srv.start()
        try:
            assert srv.range(pb.RangeRequest(key=b"replayed")).kvs[0].mod_revision == revision + 1
            resp = await srv.put(pb.PutRequest(key=b"slow", value=b"s"))
            assert resp.header.revision == revision + 2
            assert slow, "with a 0 s threshold every apply is slow"
            index, data, took = slow[-1]
            assert index == srv.node.last_index and took >= 0.0
            assert pb.PutRequest.FromString(decode_entry(data).payload).key == b"slow"
            assert commits and all(c > 0 for c in commits)
        finally:
            await srv.stop()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_killing_the_serving_process_takes_the_child_along(tmp_path: Path) -> None:
    server = start_quorumkv(tmp_path, extra_args=["--experimental-apply-process"])
    restarted = None
    try:
        assert server.etcdctl("put", "k", "v").returncode == 0
        kids = [int(x) for t in Path(f"/proc/{server.pid}/task").iterdir()
                for x in (t / "children").read_text().split()]
        assert len(kids) == 1, kids
        child = kids[0]
        assert "quorumkv.server.applyproc" in Path(f"/proc/{child}/cmdline").read_text()
        server.kill9()
        deadline = time.monotonic() + 5
        while _pid_alive(child):
            assert time.monotonic() < deadline, "the apply process outlived its parent"
            time.sleep(0.02)
        restarted = start_quorumkv(tmp_path, data_dir=server.data_dir, extra_args=["--experimental-apply-process"])
        got = restarted.etcdctl("get", "k", "--print-value-only")
        assert got.returncode == 0 and got.stdout.strip() == "v", got
    finally:
        server.stop()
        if restarted is not None:
            assert restarted.stop() == 0


def test_commits_the_dead_child_never_reported_reach_watchers_and_leases(tmp_path: Path) -> None:
    """Deterministic version of the kill race: while the child is paused (writer connection closed), entries
    are committed behind its back, as if by a child that died after COMMIT and before its RESULT; then the
    child is killed. The restarted child's state is ahead of the mirror: the gap is read from the database."""
    from quorumkv.server.apply import Applier
    from quorumkv.server.node import LogWriter
    from quorumkv.storage.backend import Backend

    async def main() -> None:
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        node = srv.node
        assert isinstance(node, ProcessNode) and srv.hub is not None
        try:
            stream = srv.hub.new_stream()
            stream.create(pb.WatchCreateRequest(key=b"g/", range_end=b"g0"))
            await stream.queue.get()
            first = await srv.put(pb.PutRequest(key=b"g/0", value=b"before"))
            old_pid, old_term = node.child_pid, node.term
            assert old_pid is not None
            await asyncio.get_running_loop().run_in_executor(None, node.write_lock.acquire)
            backend = Backend(srv.backend.db_path)
            try:
                behind = LogWriter(backend, Applier(backend.writer))
                entries = [(int(EntryKind.LEASE_GRANT), encode_entry(EntryKind.LEASE_GRANT, 0, pb.LeaseGrantRequest(
                    ID=777, TTL=60).SerializeToString()))]
                entries += [(int(EntryKind.PUT), encode_entry(EntryKind.PUT, 0, pb.PutRequest(
                    key=b"g/%d" % i, value=b"unreported", lease=777 if i == 2 else 0).SerializeToString()))
                    for i in range(1, 4)]
                behind.commit(entries)
            finally:
                backend.close()
            os.kill(old_pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
            # no successor while the lock is held (a defrag could be swapping the file under it) ...
            assert node.child_pid == old_pid and not _pid_alive(old_pid)
            node.write_lock.release()  # ... it starts on release
            deadline = time.monotonic() + 20
            while node.child_pid == old_pid or node.term == old_term:
                assert time.monotonic() < deadline, "no new apply process"
                await asyncio.sleep(0.05)
            rev0 = first.header.revision
            assert srv.applier.revision == srv.current_revision == rev0 + 3
            assert srv.applier.leases.get(777) == 60 and srv.lessor.remaining_s(777) is not None
            seen: list[tuple[int, bytes, bytes]] = []
            while len(seen) < 4:
                resp = await asyncio.wait_for(stream.queue.get(), 5)
                assert resp is not None
                seen.extend((e.kv.mod_revision, e.kv.key, e.kv.value) for e in resp.events)
            assert seen == [(rev0, b"g/0", b"before")] + [(rev0 + i, b"g/%d" % i, b"unreported") for i in range(1, 4)]
            nxt = await srv.put(pb.PutRequest(key=b"g/next", value=b"after"))
            assert nxt.header.revision == rev0 + 4
        finally:
            await srv.stop()

    asyncio.run(main())


def test_a_stalled_child_makes_the_parent_buffer_not_block(tmp_path: Path) -> None:
    """SIGSTOP the child while ~12 MiB of proposals are sent (more than the socket buffers hold): the event
    loop keeps running (the rest waits in the node's write buffer), and after SIGCONT every put is answered."""

    async def main() -> None:
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        node = srv.node
        assert isinstance(node, ProcessNode) and node.child_pid is not None
        try:
            os.kill(node.child_pid, signal.SIGSTOP)
            value = b"v" * 12_000
            futs = [asyncio.ensure_future(srv.put(pb.PutRequest(key=b"s%d" % i, value=value))) for i in range(1000)]
            ticks = 0
            for _ in range(20):  # the loop is not blocked by the full socket
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 20 and not any(f.done() for f in futs)
            assert len(node._wbuf) > 0, "expected the socket to be full and the rest buffered"
            os.kill(node.child_pid, signal.SIGCONT)
            resps = await asyncio.wait_for(asyncio.gather(*futs), 30)
            assert sorted(r.header.revision for r in resps) == list(range(2, 1002))
            assert not node._wbuf
        finally:
            if node.child_pid is not None:
                os.kill(node.child_pid, signal.SIGCONT)
            await srv.stop()

    asyncio.run(main())


def test_events_left_out_while_unwatched_are_read_back_for_a_new_watcher(tmp_path: Path) -> None:
    """Without synced watchers batches go out as BATCH_QUIET (no events back). A watcher created while such a
    batch is in flight (child stopped) still gets its events: they are read back from the database."""

    async def main() -> None:
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        node = srv.node
        assert isinstance(node, ProcessNode) and node.child_pid is not None and srv.hub is not None
        try:
            first = await srv.put(pb.PutRequest(key=b"q/0", value=b"unwatched"))
            assert not srv.hub.has_synced_watchers
            os.kill(node.child_pid, signal.SIGSTOP)
            futs = [asyncio.ensure_future(srv.put(pb.PutRequest(key=b"q/%d" % i, value=b"v%d" % i)))
                    for i in range(1, 6)]
            await asyncio.sleep(0.05)  # sent (quietly) before anyone watches
            stream = srv.hub.new_stream()
            stream.create(pb.WatchCreateRequest(key=b"q/", range_end=b"q0"))
            await stream.queue.get()
            os.kill(node.child_pid, signal.SIGCONT)
            resps = await asyncio.wait_for(asyncio.gather(*futs), 10)
            rev0 = first.header.revision
            assert [r.header.revision for r in resps] == [rev0 + i for i in range(1, 6)]
            seen: list[tuple[int, bytes]] = []
            while len(seen) < 5:
                resp = await asyncio.wait_for(stream.queue.get(), 5)
                assert resp is not None
                seen.extend((e.kv.mod_revision, e.kv.value) for e in resp.events)
            assert seen == [(rev0 + i, b"v%d" % i) for i in range(1, 6)]
            assert srv.current_revision == rev0 + 5
            # and while watched, events come with the results (a put right after is seen at once)
            nxt = await srv.put(pb.PutRequest(key=b"q/next", value=b"n"))
            resp = await asyncio.wait_for(stream.queue.get(), 5)
            assert resp is not None and [e.kv.mod_revision for e in resp.events] == [nxt.header.revision]
        finally:
            if node.child_pid is not None:
                os.kill(node.child_pid, signal.SIGCONT)
            await srv.stop()

    asyncio.run(main())
