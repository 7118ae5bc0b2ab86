"""Online defragmentation: rebuild the database file compactly while the member keeps serving.

1. ``VACUUM INTO`` a new file from a private connection: one read transaction, so the copy is the store as of
   some applied index A, and writers go on meanwhile (WAL mode).
2. Catch-up rounds: the log entries committed after A (the ``raft_log`` table keeps the last 10,000) are
   appended to the copy and applied to it by a private ``Applier``, exactly as the node applied them.
3. The node is paused between two turns (``Node.pause_writes``), the last few entries are caught up, the copy is
   fsynced and renamed over the database file (``Backend.swap_file``), connections reopen, the writer resumes.

Invariants: apply is deterministic, so the copy after catch-up holds the same content as the live file at
the same applied index (checked before the swap); the swap happens only while the writer is paused and no
transaction is open; a crash at any point leaves either the old or the new complete file under the name.
"""

from __future__ import annotations

import os
from pathlib import Path

from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.storage.backend import StorageError, immediate_txn, open_query_only, open_unsynced, vacuum_into
from quorumkv.storage.raftlog import RaftLogTable

#: The copy being built, in the data dir (removed at startup if a crash left it behind).
DEFRAG_FILE_SUFFIX = ".defrag"
#: Stop the catch-up rounds (and pause the writer) once a round had fewer entries than this.
SMALL_ROUND_ENTRIES = 200
MAX_ROUNDS = 20


class DefragError(StorageError):
    """The defragmentation could not finish; the live database is untouched."""


class Rebuild:
    """A compact copy of the database being brought up to date with the live log."""

    def __init__(self, db_path: Path, min_lease_ttl_seconds: int) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + DEFRAG_FILE_SUFFIX)
        discard(self.path)
        vacuum_into(db_path, self.path)
        self.conn = open_unsynced(self.path)  # made durable by one fsync in finish()
        self.applier = Applier(self.conn, min_lease_ttl_seconds=min_lease_ttl_seconds)

    @property
    def applied_index(self) -> int:
        return self.applier.applied_index

    def catch_up(self) -> int:
        """Apply the live log's entries after the copy's applied index; returns how many were applied."""
        src = open_query_only(self.db_path)
        try:
            rows = RaftLogTable().read_rows(src, self.applier.applied_index + 1, start_at_lo=False)
        finally:
            src.close()
        if not rows:
            return 0
        if rows[0][0] != self.applier.applied_index + 1:
            raise DefragError(f"defrag fell behind: the log was trimmed past entry {self.applier.applied_index + 1} "
                              "while the copy was built; retry the defragmentation")
        with immediate_txn(self.conn) as conn:
            RaftLogTable().append_rows(conn, rows)
            result = ApplyResult()
            for row in rows:
                self.applier.apply(conn, row[0], row[3], result)
            self.applier.finish(conn)
        return len(rows)

    def finish(self, live_applied_index: int) -> None:
        """Last catch-up (writer paused), check the copy is at ``live_applied_index``, close and fsync it."""
        self.catch_up()
        if self.applier.applied_index != live_applied_index:
            raise DefragError(f"defrag copy is at applied index {self.applier.applied_index}, the member at "
                              f"{live_applied_index}; the live database is untouched")
        self.conn.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        try:
            self.conn.close()
        finally:
            discard(self.path)


def discard(path: Path) -> None:
    """Remove a defrag copy and its rollback journal, if present."""
    for p in (path, path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)
