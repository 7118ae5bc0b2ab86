"""Backend.start_checkpointer: WAL frames reach the database file from a background thread, not inside the
writer's COMMITs; paced by the WAL's growth (pages since the last checkpoint) or its age; a file swap (defrag)
pauses and resumes it; close stops it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from quorumkv.storage.backend import Backend, checkpoint_due, pending_wal_pages


def _fill(backend: Backend, rows: int) -> None:
    with backend.write_txn() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS blob_rows (v BLOB)")
        conn.executemany("INSERT INTO blob_rows(v) VALUES (?)", [(os.urandom(4000),) for _ in range(rows)])


def _wait_for(check: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_frames_are_checkpointed_in_the_background_not_by_the_writer(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "q.db")
    try:
        # First a checkpointer that will not run for an hour: whatever reaches the file now, the writer put there
        # (a short period would race with a slow COMMIT).
        backend.start_checkpointer(period_s=3600)
        assert backend.writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        before = os.path.getsize(tmp_path / "q.db")
        _fill(backend, 500)  # ~2 MB of frames, far below any auto-checkpoint threshold
        assert os.path.getsize(tmp_path / "q.db") == before  # the COMMIT did not checkpoint
        assert backend.checkpointer_runs == 0
        backend._stop_checkpointer()
        backend.start_checkpointer(period_s=0.05, growth_pages=100)
        assert _wait_for(lambda: os.path.getsize(tmp_path / "q.db") > before + 1_000_000)
        # the file grows while the checkpoint runs; its count goes up when the statement has returned
        assert _wait_for(lambda: backend.checkpointer_runs > 0)
    finally:
        backend.close()
    assert backend.checkpointer_runs == 0  # stopped


def test_a_swap_pauses_the_checkpointer_and_resumes_it(tmp_path: Path) -> None:
    """swap_file refuses while another connection uses the WAL: the checkpointer's must be closed first."""
    backend = Backend(tmp_path / "q.db")
    try:
        backend.start_checkpointer(period_s=0.01, growth_pages=20)
        _fill(backend, 50)
        assert _wait_for(lambda: backend.checkpointer_runs > 0)
        copy = Backend(tmp_path / "copy.db")
        copy.close()
        backend.swap_file(tmp_path / "copy.db")
        assert backend.writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        before = os.path.getsize(tmp_path / "q.db")
        _fill(backend, 300)
        assert _wait_for(lambda: os.path.getsize(tmp_path / "q.db") > before + 500_000)
    finally:
        backend.close()


def _shm_header(mx_frame: int, backfill: int) -> bytes:
    head = bytearray(136)
    head[16:20] = mx_frame.to_bytes(4, sys.byteorder)
    head[96:100] = backfill.to_bytes(4, sys.byteorder)
    return bytes(head)


def test_pending_pages_are_read_from_the_wal_index_header() -> None:
    assert pending_wal_pages(_shm_header(9000, 1000)) == 8000
    assert pending_wal_pages(_shm_header(0, 0)) == 0
    assert pending_wal_pages(_shm_header(5, 7)) == 0  # a torn read never gives a negative count
    assert pending_wal_pages(b"") is None  # no wal-index yet


def test_checkpoints_are_paced_by_growth_then_by_age() -> None:
    assert not checkpoint_due(100, 1.0, growth_pages=1000, max_age_s=30.0)
    assert checkpoint_due(1000, 0.0, growth_pages=1000, max_age_s=30.0)
    assert checkpoint_due(1, 30.0, growth_pages=1000, max_age_s=30.0)
    assert not checkpoint_due(0, 3600.0, growth_pages=1000, max_age_s=30.0)  # nothing to copy
    assert checkpoint_due(None, 30.0, growth_pages=1000, max_age_s=30.0)  # growth unknown: the age decides
    assert not checkpoint_due(None, 1.0, growth_pages=1000, max_age_s=30.0)


def test_the_real_wal_index_shows_the_pages_written_since_the_checkpoint(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "q.db")
    try:
        backend.start_checkpointer(period_s=3600)  # never runs: only the writer touches the WAL
        backend.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pending0 = _pending(tmp_path)
        _fill(backend, 300)  # 300 rows of 4000 bytes: one page each, plus the B-tree's interior pages
        grown = _pending(tmp_path) - pending0
        assert 300 <= grown <= 400, grown
        backend.writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        assert _pending(tmp_path) == 0
    finally:
        backend.close()


def _pending(tmp_path: Path) -> int:
    pending = pending_wal_pages((tmp_path / "q.db-shm").read_bytes()[:200])
    assert pending is not None
    return pending


def test_the_checkpointer_waits_for_growth(tmp_path: Path) -> None:
    """Looking every 10 ms, it copies nothing while the WAL holds fewer pages than the growth threshold (the
    database file does not grow), and checkpoints once the threshold is passed."""
    backend = Backend(tmp_path / "q.db")
    try:
        backend.start_checkpointer(period_s=0.01, growth_pages=600, max_age_s=3600)
        _fill(backend, 10)
        before = os.path.getsize(tmp_path / "q.db")
        for _ in range(20):  # 20 small commits, ~60 pages in all: below the threshold
            _fill(backend, 2)
        time.sleep(0.5)  # 50 looks
        assert backend.checkpointer_runs == 0
        assert os.path.getsize(tmp_path / "q.db") == before
        _fill(backend, 700)
        assert _wait_for(lambda: backend.checkpointer_runs > 0)
        assert _wait_for(lambda: os.path.getsize(tmp_path / "q.db") > before + 2_000_000)
    finally:
        backend.close()


def test_a_small_wal_is_checkpointed_when_old(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "q.db")
    try:
        backend.start_checkpointer(period_s=0.01, growth_pages=1_000_000, max_age_s=0.3)
        _fill(backend, 5)
        assert _wait_for(lambda: backend.checkpointer_runs > 0)
        assert _wait_for(lambda: _pending(tmp_path) == 0)
    finally:
        backend.close()
