"""The single member's log is bounded by entry count and by bytes, and an online defrag's pin is respected."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.server import node as node_module
from quorumkv.server.server import QuorumServer, ServerSettings


def _log_stats(srv: QuorumServer) -> tuple[int, int, int]:
    count, total, low = srv.backend.writer.execute(
        "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(min(idx), 0) FROM raft_log").fetchone()
    return int(count), int(total), int(low)


async def _fill(srv: QuorumServer, n: int, value: bytes) -> None:
    await asyncio.gather(*(srv.put(pb.PutRequest(key=b"k%05d" % i, value=value)) for i in range(n)))


def test_log_is_trimmed_by_bytes_and_by_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "LOG_RETAIN_BYTES", 64 * 1024)
    monkeypatch.setattr(node_module, "LOG_RETAIN_ENTRIES", 1000)

    async def main() -> None:
        srv = QuorumServer(ServerSettings(data_dir=str(tmp_path / "d")))
        await srv.start()
        try:
            await _fill(srv, 300, b"x" * 2048)  # ~600 KiB of payloads: the byte bound must bite
            count, total, _ = _log_stats(srv)
            assert total <= 64 * 1024 + 2100, total
            assert count < 300
            await _fill(srv, 1500, b"")  # tiny entries: the count bound must bite
            count, _, _ = _log_stats(srv)
            assert count <= 1000
            # what is kept is the newest, contiguous tail of the log
            count, _, low = _log_stats(srv)
            assert low + count - 1 == srv.node.last_index
        finally:
            await srv.stop()

    asyncio.run(main())


def test_pinned_entries_are_not_trimmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "LOG_RETAIN_BYTES", 16 * 1024)

    async def main() -> None:
        srv = QuorumServer(ServerSettings(data_dir=str(tmp_path / "d")))
        await srv.start()
        try:
            await _fill(srv, 20, b"y" * 1024)
            pin = srv.node.last_index - 5
            srv.node.log_pin = pin
            await _fill(srv, 200, b"z" * 1024)
            _, _, low = _log_stats(srv)
            assert low <= pin, "an entry at or above the pin was trimmed"
            srv.node.log_pin = None
            await _fill(srv, 5, b"w" * 1024)
            _, total, low = _log_stats(srv)
            assert low > pin and total <= 16 * 1024 + 1100
        finally:
            await srv.stop()

    asyncio.run(main())


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

    monkeypatch.setattr(node_module, "WAL_CHECK_EVERY_BATCHES", 1)
    monkeypatch.setattr(node_module, "WAL_TRUNCATE_BYTES", 1 << 40)
    untouched = asyncio.run(main(False))
    monkeypatch.setattr(node_module, "WAL_TRUNCATE_BYTES", 256 * 1024)
    truncated = asyncio.run(main(True))
    assert untouched > 512 * 1024, untouched  # without the reset the WAL holds everything written
    assert truncated < untouched / 2, (truncated, untouched)
