"""``store.revision_within_bytes``: where a compaction step's window ends when it is sized by bytes."""

from __future__ import annotations

from pathlib import Path

from quorumkv.mvcc import store
from quorumkv.storage.backend import Backend


def test_a_window_ends_before_the_revision_that_passes_the_budget(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "db.sqlite")
    # revisions 2-11: key "k<i>" (2 bytes) with 98-byte values (100 bytes a revision), then 12-13: 1,000 bytes each
    rows = [(rev, b"k%d" % (rev % 10), bytes(98), rev, 1, 0) for rev in range(2, 12)]
    rows += [(rev, b"b%d" % (rev % 10), bytes(998), rev, 1, 0) for rev in (12, 13)]
    with backend.write_txn() as conn:
        store.insert_put_rows(conn, rows)
    conn = backend.writer
    assert store.revision_within_bytes(conn, 1, 11, 1_000) == 11  # all ten fit exactly
    assert store.revision_within_bytes(conn, 1, 11, 999) == 10
    assert store.revision_within_bytes(conn, 1, 11, 250) == 3  # 2 and 3: 200 bytes; 4 would make 300
    assert store.revision_within_bytes(conn, 5, 20, 10_000) == 20  # past the last revision: the bound as asked
    assert store.revision_within_bytes(conn, 11, 13, 500) == 12  # one revision over the budget: still one step
    assert store.revision_within_bytes(conn, 9, 13, 1_200) == 12  # 10, 11, 12: 1,200 bytes
    backend.close()
