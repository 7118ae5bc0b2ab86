"""The log rows a single member stores: none while nothing needs them (a cluster of one applies each entry in the
transaction that makes it durable), every entry while an online defrag pins the log; the apply process keeps a
tail bounded by entry count and by bytes, and respects the pin too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.server import node as node_module
from quorumkv.server.apply import Applier
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.server.node import LogWriter
from quorumkv.server.server import QuorumServer, ServerSettings
from quorumkv.storage.backend import Backend


def _log_stats(srv: QuorumServer) -> tuple[int, int, int]:
    count, total, low = srv.backend.writer.execute(
        "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(min(idx), 0) FROM raft_log").fetchone()
    return int(count), int(total), int(low)


async def _fill(srv: QuorumServer, n: int, value: bytes) -> None:
    await asyncio.gather(*(srv.put(pb.PutRequest(key=b"k%05d" % i, value=value)) for i in range(n)))


def _settings(data_dir: Path, apply_process: bool) -> ServerSettings:
    return ServerSettings(data_dir=str(data_dir), apply_process=apply_process)


def test_single_member_stores_log_rows_only_while_pinned(tmp_path: Path) -> None:
    async def main() -> int:
        srv = QuorumServer(_settings(tmp_path / "d", apply_process=False))
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
        srv = QuorumServer(_settings(tmp_path / "d", apply_process=False))
        await srv.start()
        try:
            assert srv.node.last_index == last + 1  # the new term's no-op
            await srv.put(pb.PutRequest(key=b"again", value=b"d"))
            assert srv.node.last_index == last + 2
            assert srv.node.applier.applied_index == last + 2
        finally:
            await srv.stop()

    asyncio.run(restart())


def _writer(tmp_path: Path, keep_log: bool) -> tuple[Backend, LogWriter]:
    backend = Backend(tmp_path / "db")
    writer = LogWriter(backend, Applier(backend.writer), keep_log=keep_log)
    writer.begin_term()
    return backend, writer


def _commit_puts(writer: LogWriter, n: int, value: bytes, at: int = 0) -> None:
    batch = []
    for i in range(n):
        payload = pb.PutRequest(key=b"k%05d" % (at + i), value=value).SerializeToString()
        batch.append((int(EntryKind.PUT), encode_entry(EntryKind.PUT, at + i + 1, payload)))
    for chunk in range(0, n, 50):  # several batches, as under load
        writer.commit(batch[chunk:chunk + 50])


def _writer_log_stats(backend: Backend) -> tuple[int, int, int]:
    count, total, low = backend.writer.execute(
        "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(min(idx), 0) FROM raft_log").fetchone()
    return int(count), int(total), int(low)


def test_kept_log_is_trimmed_by_bytes_and_by_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The apply process's writer (``keep_log``) keeps the newest entries within both bounds."""
    monkeypatch.setattr(node_module, "LOG_RETAIN_BYTES", 64 * 1024)
    monkeypatch.setattr(node_module, "LOG_RETAIN_ENTRIES", 1000)
    backend, writer = _writer(tmp_path, keep_log=True)
    try:
        _commit_puts(writer, 300, b"x" * 2048)  # ~600 KiB of payloads: the byte bound must bite
        count, total, _ = _writer_log_stats(backend)
        assert total <= 64 * 1024 + 2100, total
        assert 0 < count < 300
        _commit_puts(writer, 1500, b"", at=300)  # tiny entries: the count bound must bite
        count, _, low = _writer_log_stats(backend)
        assert count == 1000
        # what is kept is the newest, contiguous tail of the log
        assert low + count - 1 == writer.last_index
    finally:
        backend.close()


@pytest.mark.parametrize("keep_log", [True, False])
def test_pinned_entries_are_not_trimmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_log: bool) -> None:
    monkeypatch.setattr(node_module, "LOG_RETAIN_BYTES", 16 * 1024)
    backend, writer = _writer(tmp_path, keep_log=keep_log)
    try:
        _commit_puts(writer, 20, b"y" * 1024)
        pin = writer.last_index - 5 if keep_log else writer.last_index + 1
        writer.log_pin = pin
        _commit_puts(writer, 200, b"z" * 1024, at=20)
        count, _, low = _writer_log_stats(backend)
        assert low == pin, "an entry at or above the pin was trimmed (or never stored)"
        assert low + count - 1 == writer.last_index
        writer.log_pin = None
        _commit_puts(writer, 5, b"w" * 1024, at=220)
        count, total, low = _writer_log_stats(backend)
        if keep_log:
            assert low > pin and total <= 16 * 1024 + 1100
        else:
            assert count == 0
    finally:
        backend.close()


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
