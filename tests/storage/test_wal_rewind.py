"""The WAL is rewound in place under continuous commits: the background checkpointer copies nearly every frame
while commits go on, and the writer copies only a short tail between two transactions
(``Backend.rewind_wal_tail``), after which SQLite starts the WAL over from its beginning. No TRUNCATE, and the
writer's share is bounded. Without the writer's tail the WAL only grows (the control case)."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import pytest

from quorumkv.storage.backend import Backend, read_txn

REWIND_FRAMES = 1500
TAIL_PAGES = 64


def _commit_continuously(backend: Backend, *, with_tail: bool, max_commits: int, stop: threading.Event,
                         observed: list[tuple[int, int]]) -> None:
    """The writer's loop: small commits back to back (each touches a few pages), as the Raft thread's turns do,
    recording the WAL's (frame count, file size) after each; the writer's rewind step between two of them."""
    with backend.write_txn() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rows (k INTEGER PRIMARY KEY, v BLOB)")
    wal = str(backend.db_path) + "-wal"
    for i in range(max_commits):
        if stop.is_set():
            return
        with backend.write_txn() as conn:
            conn.executemany("INSERT OR REPLACE INTO rows(k, v) VALUES (?, ?)",
                             [((i * 7 + j) % 5000, os.urandom(1500)) for j in range(4)])
        frames = backend.wal_frames()
        assert frames is not None
        observed.append((frames[0], os.path.getsize(wal)))
        if with_tail:
            backend.rewind_wal_tail()


def _read_continuously(backend: Backend, stop: threading.Event) -> None:
    """Short read transactions coming and going, as the server's readers do."""
    reader = backend.new_reader()
    k = 0
    while not stop.is_set():
        k += 1
        with read_txn(reader):
            reader.execute("SELECT v FROM rows WHERE k = ?", (k % 5000,)).fetchall()
        time.sleep(0.001)


def _run(tmp_path: Path, *, with_tail: bool, max_commits: int) -> tuple[Backend, list[tuple[int, int]]]:
    backend = Backend(tmp_path / "q.db")
    backend.start_checkpointer(period_s=0.01, growth_pages=200, rewind_frames=REWIND_FRAMES, tail_pages=TAIL_PAGES)
    observed: list[tuple[int, int]] = []
    stop = threading.Event()
    with backend.write_txn() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rows (k INTEGER PRIMARY KEY, v BLOB)")
    reader = threading.Thread(target=_read_continuously, args=(backend, stop), daemon=True)
    reader.start()
    try:
        _commit_continuously(backend, with_tail=with_tail, max_commits=max_commits, stop=stop, observed=observed)
    finally:
        stop.set()
        reader.join(timeout=30)
    return backend, observed


def _rewinds(observed: list[tuple[int, int]]) -> int:
    """How often the WAL's frame count fell back to a few frames after passing the rewind threshold."""
    rewinds, past = 0, False
    for frames, _ in observed:
        if frames >= REWIND_FRAMES:
            past = True
        elif past and frames < REWIND_FRAMES // 4:
            rewinds, past = rewinds + 1, False
    return rewinds


def test_the_wal_is_rewound_under_continuous_commits_with_a_bounded_writer_tail(tmp_path: Path) -> None:
    backend, observed = _run(tmp_path, with_tail=True, max_commits=6000)
    try:
        assert _rewinds(observed) >= 2, max(f for f, _ in observed)
        sizes = [size for _, size in observed]
        # rewound in place, never truncated: the file never shrinks, and it stays near the threshold's size
        assert all(b >= a for a, b in itertools.pairwise(sizes))
        assert max(sizes) < 6 * REWIND_FRAMES * (4096 + 24)
        assert backend.wal_tails, "the writer never copied a tail"
        assert all(copied <= TAIL_PAGES for copied, _ in backend.wal_tails), backend.wal_tails
    finally:
        backend.close()


def test_without_the_writers_tail_the_wal_only_grows(tmp_path: Path) -> None:
    """The control: the checkpointer alone copies back to back, yet a commit always lands while it does."""
    backend, observed = _run(tmp_path, with_tail=False, max_commits=3000)
    try:
        # (a writer starved for longer than a checkpoint takes, as on a busy host, can let one restart through)
        assert max(frames for frames, _ in observed) > 2 * REWIND_FRAMES
        assert _rewinds(observed) <= 1
        assert backend.wal_tails == []
    finally:
        backend.close()


def test_an_idle_writers_tail_is_copied_by_the_checkpointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that stops committing never takes the tail: the checkpointer copies it after a wait."""
    import quorumkv.storage.backend as backend_module

    monkeypatch.setattr(backend_module, "TAIL_WAIT_S", 0.2)
    backend = Backend(tmp_path / "q.db")
    try:
        backend.start_checkpointer(period_s=0.01, growth_pages=10_000, max_age_s=3600,
                                   rewind_frames=REWIND_FRAMES, tail_pages=TAIL_PAGES)
        with backend.write_txn() as conn:
            conn.execute("CREATE TABLE rows (k INTEGER PRIMARY KEY, v BLOB)")
        for i in range(REWIND_FRAMES + 10):
            with backend.write_txn() as conn:  # at least one page a commit
                conn.execute("INSERT OR REPLACE INTO rows(k, v) VALUES (?, ?)", (i % 50, os.urandom(3000)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            frames = backend.wal_frames()
            if frames is not None and frames[0] == frames[1]:
                break
            time.sleep(0.02)
        frames = backend.wal_frames()
        assert frames is not None and frames[0] >= REWIND_FRAMES and frames[1] == frames[0]
        assert backend.wal_tails == []  # the writer never looked
    finally:
        backend.close()
