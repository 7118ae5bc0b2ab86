"""Backend.allocation_after_commit: the writer's view of the store's size for the quota check, measured every
few batches and estimated in between; the estimate must never lag behind what was written, and a replaced file
is measured again."""

from __future__ import annotations

import os
from pathlib import Path

from quorumkv.storage import backend as be
from quorumkv.storage.backend import Backend


def _write(backend: Backend, n_rows: int, size: int) -> int:
    with backend.write_txn() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS blob_rows (v BLOB)")
        for _ in range(n_rows):
            conn.execute("INSERT INTO blob_rows(v) VALUES (?)", (os.urandom(size),))
    return n_rows * size


def test_measures_every_few_batches_and_estimates_growth_in_between(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "q.db")
    try:
        first = backend.allocation_after_commit(_write(backend, 1, 100))
        assert first == backend.allocated_bytes()
        # small batches: the estimate is the last measurement plus the bytes written since, never below the truth
        reported = []
        for _ in range(be.ALLOCATION_MEASURE_EVERY_BATCHES - 1):
            reported.append(backend.allocation_after_commit(_write(backend, 1, 1000)))
        assert reported == [first + 1000 * (i + 1) for i in range(len(reported))]
        # the next batch completes the interval: measured again
        measured = backend.allocation_after_commit(_write(backend, 1, 1000))
        assert measured == backend.allocated_bytes() and measured > first
        # a batch past the byte bound is measured at once
        big = backend.allocation_after_commit(_write(backend, 8, 64 * 1024))
        assert big == backend.allocated_bytes() >= measured + 8 * 64 * 1024
    finally:
        backend.close()


def test_a_swapped_file_is_measured_again(tmp_path: Path) -> None:
    """After a defrag's swap the store is smaller; a stale estimate would refuse writes (false NOSPACE)."""
    backend = Backend(tmp_path / "q.db")
    try:
        backend.allocation_after_commit(_write(backend, 64, 16 * 1024))
        with backend.write_txn() as conn:
            conn.execute("DELETE FROM blob_rows")
        stale = backend.allocation_after_commit(0)
        small = Backend(tmp_path / "small.db")
        _write(small, 1, 10)
        small.close()
        backend.swap_file(tmp_path / "small.db")
        after = backend.allocation_after_commit(0)
        assert after == backend.allocated_bytes() < stale
        # forget_allocation (a Raft snapshot restored into the store) does the same
        _write(backend, 64, 16 * 1024)
        backend.forget_allocation()
        assert backend.allocation_after_commit(0) == backend.allocated_bytes() > after
    finally:
        backend.close()
