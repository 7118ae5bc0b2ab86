"""The log rows a single member stores: none while nothing needs them (a sole voter applies each entry in the
transaction that makes it durable), every entry while an online defrag pins the log; and the WAL is reset when it
grows too large."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.server import raft_node as node_module
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings


def _log_stats(srv: QuorumServer) -> tuple[int, int, int]:
    count, total, low = srv.backend.writer.execute(
        "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(min(idx), 0) FROM raft_log").fetchone()
    return int(count), int(total), int(low)


async def _fill(srv: QuorumServer, n: int, value: bytes) -> None:
    await asyncio.gather(*(srv.put(pb.PutRequest(key=b"k%05d" % i, value=value)) for i in range(n)))


def _settings(data_dir: Path) -> ServerSettings:
    return ServerSettings(data_dir=str(data_dir))


def test_single_member_stores_log_rows_only_while_pinned(tmp_path: Path) -> None:
    async def main() -> int:
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        try:
            await _fill(srv, 50, b"a" * 100)
            assert _log_stats(srv)[0] == 0, "log rows stored while nothing needed them"
            pin = await asyncio.get_running_loop().run_in_executor(None, srv.node.pin_log)
            assert pin == srv.node.last_index + 1
            await _fill(srv, 40, b"b" * 100)
            count, _, low = _log_stats(srv)
            # every entry from the pin on, contiguous up to the last one
            assert (low, low + count - 1) == (pin, srv.node.last_index)
            srv.node.log_pin = None
            await srv.put(pb.PutRequest(key=b"after", value=b"c"))
            assert _log_stats(srv)[0] == 0, "rows left from the pin were not removed"
            return srv.node.last_index
        finally:
            await srv.stop()

    last = asyncio.run(main())

    async def restart() -> None:  # the log's end is known from the applied state alone
        srv = QuorumServer(_settings(tmp_path / "d"))
        await srv.start()
        try:
            await srv.put(pb.PutRequest(key=b"again", value=b"d"))
            # the log goes on after the last entry before the restart (a new term's no-op, the member's
            # published attributes, the put), and every entry is applied
            assert srv.node.last_index >= last + 2
            # the published-attributes entry may be appended while we read: read the pair until it settles
            # (a sole voter appends and applies each entry in one transaction, so it always settles)
            for _ in range(200):
                last_now = srv.node.last_index
                if srv.node.applier.applied_index == last_now == srv.node.last_index:
                    break
                await asyncio.sleep(0.05)
            assert srv.node.applier.applied_index == srv.node.last_index
        finally:
            await srv.stop()

    asyncio.run(restart())


def test_oversized_wal_is_reset_between_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    async def main(truncate: bool) -> int:
        srv = QuorumServer(ServerSettings(data_dir=str(tmp_path / f"d{truncate}")))
        await srv.start()
        try:
            for _ in range(10):  # sequential batches, so the check runs between them
                await _fill(srv, 20, b"v" * 4096)
            return os.path.getsize(str(srv.backend.db_path) + "-wal")
        finally:
            await srv.stop()

    monkeypatch.setattr(node_module, "WAL_CHECK_EVERY_COMMITS", 1)
    monkeypatch.setattr(node_module, "WAL_TRUNCATE_BYTES", 1 << 40)
    untouched = asyncio.run(main(False))
    monkeypatch.setattr(node_module, "WAL_TRUNCATE_BYTES", 256 * 1024)
    truncated = asyncio.run(main(True))
    assert untouched > 512 * 1024, untouched  # without the reset the WAL holds everything written
    assert truncated < untouched / 2, (truncated, untouched)


def test_an_oversized_wal_is_rewound_in_place_without_a_truncate(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The Raft thread takes the rewind's short tail between two turns (Backend.rewind_wal_tail): the WAL
    restarts from its beginning while the file keeps its size, and no TRUNCATE runs."""
    import os

    from quorumkv.storage import backend as backend_module

    truncates: list[object] = []
    monkeypatch.setattr(node_module, "truncate_wal", lambda conn: truncates.append(conn))
    monkeypatch.setattr(backend_module, "WAL_REWIND_FRAMES", 200)
    # a tail limit above anything pending here: the checkpointer hands the tail over at once, so the test shows
    # the Raft thread's part whatever the host's speed (whether the background copies converge under continuous
    # commits is tests/storage/test_wal_rewind.py's; on a saturated CI host they did not within 60 s)
    monkeypatch.setattr(backend_module, "WAL_REWIND_TAIL_PAGES", 100_000)

    async def main() -> tuple[int, int]:
        srv = QuorumServer(ServerSettings(data_dir=str(tmp_path / "d")))
        await srv.start()
        try:
            previous, restarts = 0, 0
            deadline = asyncio.get_running_loop().time() + 60
            for _ in range(5000):  # batches back to back: the WAL passes 200 frames every few of them
                if asyncio.get_running_loop().time() > deadline:
                    break
                await _fill(srv, 20, b"v" * 4096)
                frames = srv.backend.wal_frames()
                assert frames is not None
                if previous >= 200 and frames[0] < previous // 2 and srv.backend.wal_tails:
                    restarts += 1  # the frame count fell back after the writer took a tail: the WAL started over
                previous = frames[0]
                if restarts >= 2:
                    break
            return restarts, os.path.getsize(str(srv.backend.db_path) + "-wal")
        finally:
            await srv.stop()

    restarts, size = asyncio.run(main())
    assert restarts >= 2
    assert size > 0  # rewound in place, never truncated
    assert truncates == []
