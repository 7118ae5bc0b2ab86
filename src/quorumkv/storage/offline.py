"""Offline maintenance of a stopped member's data directory (``quorumkvctl defrag --data-dir``).

Offline defragmentation rewrites the database file compactly, as etcdctl 3.4's ``defrag --data-dir`` rewrites a
stopped member's bbolt file:

1. the data dir is checked (a quorumkv ``FORMAT`` marker) and locked (the same ``flock`` a running member
   holds, so a running member's directory is refused, never rewritten under it);
2. committed WAL frames are checkpointed into the database file and the WAL is reset;
3. ``VACUUM INTO`` writes a compact copy beside the file, which is fsynced and renamed over it (the directory
   is fsynced too). A crash at any point leaves either the old or the new complete file under the name; a copy
   left behind by a crash is removed at the next run (and by the member's start-up, see ``server/defrag.py``).

The content (every table row, ``PRAGMA user_version``) is unchanged: only free pages go away, so the member
restarts with the same revision, hashes and applied index.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from quorumkv.storage.datadir import DATA_FORMAT, DB_FILE, FORMAT_FILE, LOCK_FILE, DataDirError, fsync_dir

__all__ = ["OfflineDefragResult", "defragment_data_dir"]

#: The compact copy being written (beside the database file).
OFFLINE_COPY_SUFFIX = ".offline-defrag"


@dataclass(frozen=True)
class OfflineDefragResult:
    """Sizes in bytes of the database (file plus WAL) before and after."""

    before_bytes: int
    after_bytes: int


def _files_size(db: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(str(db) + suffix)
        except OSError:
            pass
    return total


def _check_dir(root: Path) -> Path:
    """The database file of the quorumkv data dir ``root``; DataDirError naming the problem otherwise."""
    if not root.is_dir():
        raise DataDirError(f"open {root}: no such file or directory")
    if (root / "member" / "snap" / "db").exists():
        raise DataDirError(f"{root} is an etcd data dir (member/snap/db), not a quorumkv one; defragment it with "
                           "etcdctl defrag --data-dir, or restore a snapshot of it into a quorumkv data dir")
    marker = root / FORMAT_FILE
    if not marker.exists():
        raise DataDirError(f"{root} is not a quorumkv data dir (no {FORMAT_FILE} marker); give the --data-dir of "
                           "a stopped quorumkv member")
    found = marker.read_text(encoding="utf-8", errors="replace").strip()
    if found != DATA_FORMAT:
        raise DataDirError(f"data dir {root} has format {found!r} but this quorumkvctl reads {DATA_FORMAT!r}; use "
                           "the quorumkvctl of the quorumkv version that wrote it")
    db = root / DB_FILE
    if not db.exists():
        raise DataDirError(f"open {db}: no such file or directory")
    return db


def defragment_data_dir(path: str | os.PathLike[str]) -> OfflineDefragResult:
    """Rewrite the database of the stopped member whose data dir is ``path`` without its free pages.

    Raises DataDirError (nothing changed) when ``path`` is not a quorumkv data dir, a member holds it, or SQLite
    fails (the message names the cause)."""
    root = Path(path)
    db = _check_dir(root)
    try:
        lock_file = open(root / LOCK_FILE, "ab")
    except OSError as exc:
        raise DataDirError(f"open {root / LOCK_FILE}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirError(f"data dir {root} is in use by a running member (lock {root / LOCK_FILE} is held); "
                               "stop the member first, or defragment it online with quorumkvctl defrag") from None
        before = _files_size(db)
        copy = db.with_name(db.name + OFFLINE_COPY_SUFFIX)
        copy.unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(db, isolation_level=None, timeout=5.0)
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                wal = Path(str(db) + "-wal")
                if busy or (wal.exists() and wal.stat().st_size > 0):
                    # the copy would be right, but the old WAL must be empty before the rename: frames of the
                    # old file replayed onto the new one would corrupt it
                    raise DataDirError(f"{wal} could not be checkpointed (another process has {db} open); "
                                       "close it and retry")
                conn.execute("VACUUM INTO ?", (str(copy),))
            finally:
                conn.close()
            fd = os.open(copy, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            for suffix in ("-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
            os.replace(copy, db)
            fsync_dir(root)
        except (sqlite3.Error, OSError) as exc:
            copy.unlink(missing_ok=True)
            raise DataDirError(f"defragmenting {db}: {exc}") from None
        return OfflineDefragResult(before, _files_size(db))
    finally:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
        lock_file.close()
