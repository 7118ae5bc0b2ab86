"""Batches applied while nobody watches leave their events out (less work per put on the writer thread and the
event loop); a watcher that appears between such a batch's apply and its delivery still gets every event."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings
from quorumkv.storage.backend import Backend


def _put(index: int, key: bytes, value: bytes) -> tuple[int, bytes]:
    return index, encode_entry(EntryKind.PUT, index, pb.PutRequest(key=key, value=value).SerializeToString())


def test_applier_leaves_events_out_only_when_nobody_wants_them(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "q.db")
    applier = Applier(backend.writer)
    wanted = [True]
    applier.events_wanted = lambda: wanted[0]
    delete = pb.DeleteRangeRequest(key=b"a").SerializeToString()
    batch = [_put(1, b"a", b"1"), _put(2, b"b", b"2"), (3, encode_entry(EntryKind.DELETE_RANGE, 3, delete))]

    watched = applier.new_result()
    with backend.write_txn() as conn:
        applier.apply_many(conn, batch, watched)
        applier.finish(conn, watched)
    assert [rev for rev, _ in watched.events] == [2, 3, 4]
    assert watched.revision == 0 and watched.events_from == 0

    wanted[0] = False
    quiet = applier.new_result()
    more = [_put(4, b"a", b"3"), (5, encode_entry(EntryKind.DELETE_RANGE, 5, delete)), _put(6, b"c", b"4")]
    with backend.write_txn() as conn:
        applier.apply_many(conn, more, quiet)
        applier.finish(conn, quiet)
    assert quiet.events == []
    assert (quiet.events_from, quiet.revision) == (5, 7)
    # the responses are unchanged: each put still answers with its own revision
    assert [quiet.responses[i].header.revision for i in (4, 6)] == [5, 7]  # type: ignore[attr-defined]
    backend.close()


def test_a_watcher_that_appears_while_a_quiet_batch_is_applied_gets_its_events(tmp_path: Path) -> None:
    """The writer thread is told nobody watches, but a watcher is created (on the event loop) before the batch
    is delivered: the events are read back from the database, none is lost."""

    async def main() -> None:
        srv = QuorumServer(ServerSettings(data_dir=str(tmp_path / "d")))
        await srv.start()
        loop = asyncio.get_running_loop()
        hub = srv.hub
        assert hub is not None
        streams = []

        async def watch() -> None:
            stream = hub.new_stream()
            stream.create(pb.WatchCreateRequest(key=b"q/", range_end=b"q0"))
            await stream.queue.get()  # the "created" response
            streams.append(stream)

        def events_wanted() -> bool:  # on the writer thread, before the batch
            if not streams:
                asyncio.run_coroutine_threadsafe(watch(), loop).result(5)
            return False  # what the writer saw before the watcher existed

        try:
            first = await srv.put(pb.PutRequest(key=b"q/0", value=b"before"))
            assert not hub.has_synced_watchers
            srv.applier.events_wanted = events_wanted
            resp = await srv.put(pb.PutRequest(key=b"q/1", value=b"v1"))
            assert resp.header.revision == first.header.revision + 1
            (stream,) = streams
            got = await asyncio.wait_for(stream.queue.get(), 5)
            assert got is not None
            assert [(e.kv.mod_revision, e.kv.value) for e in got.events] == [(resp.header.revision, b"v1")]
        finally:
            await srv.stop()

    asyncio.run(main())


def test_events_come_with_the_batch_while_watched(tmp_path: Path) -> None:
    async def main() -> None:
        srv = QuorumServer(ServerSettings(data_dir=str(tmp_path / "d")))
        await srv.start()
        try:
            assert srv.hub is not None
            stream = srv.hub.new_stream()
            stream.create(pb.WatchCreateRequest(key=b"k"))
            await stream.queue.get()
            results: list[ApplyResult] = []
            srv._hooks.append(results.append)
            resp = await srv.put(pb.PutRequest(key=b"k", value=b"v"))
            got = await asyncio.wait_for(stream.queue.get(), 5)
            assert got is not None and [e.kv.mod_revision for e in got.events] == [resp.header.revision]
            assert results and results[-1].events and not results[-1].events_from
        finally:
            await srv.stop()

    asyncio.run(main())
