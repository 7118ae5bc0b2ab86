"""Backend.start_checkpointer: WAL frames reach the database file from a background thread, not inside the
writer's COMMITs; a file swap (defrag) pauses and resumes it; close stops it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from quorumkv.storage.backend import Backend


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
        backend.start_checkpointer(period_s=0.05)
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
        backend.start_checkpointer(period_s=0.01)
        _fill(backend, 50)
        assert _wait_for(lambda: backend.checkpointer_runs > 2)
        copy = Backend(tmp_path / "copy.db")
        copy.close()
        backend.swap_file(tmp_path / "copy.db")
        assert backend.writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        before = os.path.getsize(tmp_path / "q.db")
        _fill(backend, 300)
        assert _wait_for(lambda: os.path.getsize(tmp_path / "q.db") > before + 500_000)
    finally:
        backend.close()
