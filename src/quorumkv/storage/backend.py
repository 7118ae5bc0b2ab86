"""SQLite backend: one database file holds the replicated log, the MVCC key space, leases and membership.

Why one SQLite file (see docs/storage.md for the measurements): on a single member the log append and its
apply happen in one transaction, so one fsync covers both and the applied index is stored atomically with the
data it describes. SQLite in WAL mode with ``synchronous=FULL`` syncs the WAL on every commit; a torn tail
frame fails SQLite's frame checksum and is rolled back, and nothing is acknowledged before its commit returns.

Invariants:
- every write goes through one writer connection inside an explicit transaction (``write_txn``);
- ``meta.applied_index`` is written in the same transaction as the effects of the entry it names;
- readers use their own connections and see only committed transactions (snapshot isolation).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3
#: Older schema versions that opening a data file upgrades in place (and that snapshot restore therefore accepts).
UPGRADABLE_SCHEMA_VERSIONS = frozenset({1, 2})

log = logging.getLogger("quorumkv.storage")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value
);
-- Every revision of every key. A row with value IS NULL is a tombstone (a delete).
CREATE TABLE IF NOT EXISTS kv (
    id         INTEGER PRIMARY KEY,
    rev        INTEGER NOT NULL,
    sub        INTEGER NOT NULL,
    key        BLOB    NOT NULL,
    value      BLOB,
    create_rev INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    lease      INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS kv_by_rev ON kv(rev, sub);
CREATE INDEX IF NOT EXISTS kv_by_key ON kv(key, rev, sub);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease) WHERE lease != 0;
CREATE INDEX IF NOT EXISTS kv_tombstones ON kv(key, rev, sub) WHERE value IS NULL;
CREATE TABLE IF NOT EXISTS lease (
    id            INTEGER PRIMARY KEY,
    ttl           INTEGER NOT NULL,
    remaining_ttl INTEGER NOT NULL DEFAULT 0
);
-- The replicated log. crc is CRC32 of (term, kind, data), checked whenever an entry is read back.
CREATE TABLE IF NOT EXISTS raft_log (
    idx  INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB    NOT NULL,
    crc  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS member (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    peer_urls   TEXT    NOT NULL,
    client_urls TEXT    NOT NULL,
    is_learner  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS alarm (
    member_id INTEGER NOT NULL,
    alarm     INTEGER NOT NULL,
    PRIMARY KEY (member_id, alarm)
);
-- IDs of members removed from the cluster: they may never rejoin (etcd refuses them the same way).
CREATE TABLE IF NOT EXISTS removed_member (
    id INTEGER PRIMARY KEY
);
-- etcd's auth (schema 3): authpb.User / authpb.Role records by name (storage/auth.py reads and writes them).
CREATE TABLE IF NOT EXISTS auth_user (
    name BLOB PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_role (
    name BLOB PRIMARY KEY,
    data BLOB NOT NULL
);
"""


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 kept a ``live`` table (each existing key's current row), derived from ``kv``; schema 2 reads the
    current state from ``kv`` itself: ``kv_by_key`` gains ``sub`` (a key's latest row in one index descent) and
    ``kv_by_lease`` finds a lease's keys. ``kv`` itself is unchanged."""
    conn.execute("DROP TABLE IF EXISTS live")
    conn.execute("DROP INDEX IF EXISTS kv_by_key")  # was (key, rev): a key's latest row now needs (key, rev, sub)
    conn.execute("CREATE INDEX kv_by_key ON kv(key, rev, sub)")
    conn.execute("CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease) WHERE lease != 0")
    log.info("storage schema upgraded from version 1 to 2 (the live table is gone)")
    _migrate_from_2(conn)


_AUTH_TABLES = """
CREATE TABLE IF NOT EXISTS auth_user (name BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS auth_role (name BLOB PRIMARY KEY, data BLOB NOT NULL)
"""


def _migrate_from_2(conn: sqlite3.Connection) -> None:
    """Schema 3 adds etcd's auth: the ``auth_user`` and ``auth_role`` tables (auth starts disabled, revision 0,
    as on a new etcd). Nothing existing changes."""
    for stmt in _AUTH_TABLES.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    log.info("storage schema upgraded to version %d (auth tables added)", SCHEMA_VERSION)


TOMBSTONE_INDEX_SQL = "CREATE INDEX IF NOT EXISTS kv_tombstones ON kv(key, rev, sub) WHERE value IS NULL"


class StorageError(Exception):
    """The stored data cannot be used as it is; the message says what and how to recover."""


#: WAL pages after which a commit also checkpoints (SQLite's default is 1000 pages, 4 MiB). A put touches pages
#: of five B-trees, so at 1000 the writer checkpointed every few batches; at 10,000 hot pages (meta, index
#: interiors, the tails of kv and raft_log) are copied once per checkpoint instead of once per few batches:
#: ~15 % less writer CPU per put, ~30 % more puts per second (docs/performance.md). The WAL is still reset
#: when it passes raft_node.WAL_TRUNCATE_BYTES. A running node turns it off for the background checkpointer
#: (``Backend.start_checkpointer``); it applies to tools and tests that open a Backend without one.
WAL_AUTOCHECKPOINT_PAGES = 10_000


#: Prepared statements kept per writer connection (sqlite3's default is 128). A batch's multi-row INSERTs have
#: one statement text per row count (1-256) and table, so with the default the writer re-compiled most of its
#: statements every batch: ~12 % of its CPU per put with batch sizes varying as they do under load.
WRITER_CACHED_STATEMENTS = 2048


def _connect(path: Path, *, sync_full: bool, cached_statements: int = 128) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0,
                           cached_statements=cached_statements)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if sync_full else 'NORMAL'}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


#: How often the writer re-measures the store's allocated bytes after a commit (``Backend.allocation_after_commit``):
#: every this many batches or this many payload bytes, whichever comes first. Measuring is one more SQLite
#: statement per batch, and each statement releases the GIL and has to win it back from the busy event loop.
ALLOCATION_MEASURE_EVERY_BATCHES = 16
ALLOCATION_MEASURE_EVERY_BYTES = 256 * 1024


#: How often the background checkpointer (``Backend.start_checkpointer``) looks at the WAL's growth. With the
#: writer's auto-checkpoint, every ~10,000 pages one COMMIT also copied 40 MB and synced the database file:
#: ~100 ms during which no batch could commit and every client waited (12 % of the writer's time under check
#: perf, docs/performance.md).
BACKGROUND_CHECKPOINT_PERIOD_S = 0.25

#: WAL pages (frames) written since the last checkpoint after which the background checkpointer copies them into
#: the database file: checkpoints are paced by the WAL's growth, not by the clock. A checkpoint writes each page
#: changed since the last one once, at its place in the file (a random write): the hot pages (meta, index
#: interiors, the tails of kv and raft_log) and, under random keys, about one kv_by_key leaf per put. Checkpointing
#: every 250 ms rewrote them four times a second, about 2 write IOs per put on an IOPS-limited disk
#: (docs/performance.md, "a slow disk"); waiting for this many pages writes them once per 32 MiB of WAL.
CHECKPOINT_GROWTH_PAGES = 8192

#: A WAL with fewer pending pages than ``CHECKPOINT_GROWTH_PAGES`` is still checkpointed once it is this old (an
#: idle or lightly loaded store's WAL is folded into the file within this time).
CHECKPOINT_MAX_AGE_S = 30.0

# The wal-index (``-shm`` file) header, as SQLite's file-format document describes it: the first copy of the
# WalIndexHdr holds mxFrame (the last valid frame) at byte 16; the WalCkptInfo after the two copies holds
# nBackfill (frames already copied into the database) at byte 96. Both are native-endian 32-bit integers.
_SHM_MX_FRAME_OFFSET = 16
_SHM_BACKFILL_OFFSET = 96
_SHM_HEADER_BYTES = 100


def wal_index_frames(shm_header: bytes) -> tuple[int, int] | None:
    """(frames in the current WAL, frames of them already copied into the database file) from the first bytes of
    the ``-shm`` file; None when they are too short to tell (no wal-index yet). The frame count falls to 0 when
    the WAL restarts from its beginning."""
    if len(shm_header) < _SHM_HEADER_BYTES:
        return None
    mx_frame = int.from_bytes(shm_header[_SHM_MX_FRAME_OFFSET:_SHM_MX_FRAME_OFFSET + 4], sys.byteorder)
    backfill = int.from_bytes(shm_header[_SHM_BACKFILL_OFFSET:_SHM_BACKFILL_OFFSET + 4], sys.byteorder)
    return mx_frame, backfill


def pending_wal_pages(shm_header: bytes) -> int | None:
    """Frames in the WAL not yet copied into the database file, from the first bytes of the ``-shm`` file
    (None when they are too short to tell: no wal-index yet)."""
    frames = wal_index_frames(shm_header)
    if frames is None:
        return None
    return max(0, frames[0] - frames[1])


#: Frames (pages) in the WAL past which it is rewound: 16,384 frames of 4 KiB pages are 64 MiB. SQLite starts the
#: WAL over from its beginning at a write transaction that finds every frame copied into the database file and
#: no reader on an older snapshot; under continuous commits a background checkpoint never finds that (a commit
#: always lands while it copies). So past this many frames the checkpointer copies back to back until at most
#: ``WAL_REWIND_TAIL_PAGES`` frames are left, and then asks the writer to copy that tail between two of its
#: transactions (``Backend.rewind_wal_tail``): no commit lands meanwhile, and the writer's next transaction
#: restarts the WAL. A full copy in the writer (or a TRUNCATE checkpoint) blocked every commit for 3-17 s on a
#: 100-IOPS disk (docs/performance.md, "IOPS-limited disk").
WAL_REWIND_FRAMES = 16_384

#: The most frames the writer copies when it finishes a rewind (what it holds up commits for): the checkpointer
#: asks once at most this many are left, and the writer declines (the checkpointer copies again) if commits
#: landed since and more than this are pending.
WAL_REWIND_TAIL_PAGES = 256


def checkpoint_due(pending_pages: int | None, age_s: float, growth_pages: int, max_age_s: float) -> bool:
    """Whether the background checkpointer should copy the WAL now: ``growth_pages`` written since the last
    checkpoint, or anything pending for ``max_age_s``. Unknown growth (None) falls back to the age alone."""
    if pending_pages is None:
        return age_s >= max_age_s
    if pending_pages >= growth_pages:
        return True
    return pending_pages > 0 and age_s >= max_age_s


#: The background checkpointer writes the database file's dirty pages back in ranges of this many bytes, one
#: range at a time (``write_back``). A partial checkpoint (commits landed meanwhile) copies pages into the
#: file without syncing it; the first checkpoint that reaches the WAL's end then syncs them all at once. On an
#: IOPS-limited disk those thousands of random writes queue ahead of every commit's WAL sync (the writer's
#: rewind tail took 6-11 s for 50-150 frames, docs/performance.md); written back in small ranges, the commits'
#: writes take turns with them, and the sync at the end of a rewind finds only the tail's pages.
WRITE_BACK_RANGE_BYTES = 1 << 20


def _load_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


_SYNC_FILE_RANGE = _load_sync_file_range()
#: SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER (linux/fs.h)
_SYNC_FILE_RANGE_WRITE_AND_WAIT = 1 | 2 | 4


def write_back(path: Path, range_bytes: int = WRITE_BACK_RANGE_BYTES, stop: threading.Event | None = None) -> bool:
    """Write the file's dirty pages to the disk one range at a time, waiting for each (Linux's
    ``sync_file_range``; elsewhere one ``fdatasync``). Not a durability point (the file's metadata is not synced):
    it only leaves fewer pages for the next sync. Returns False when it could not (the sync then does it all)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if _SYNC_FILE_RANGE is None:
            os.fdatasync(fd)
            return True
        size = os.fstat(fd).st_size
        for offset in range(0, size, range_bytes):
            if stop is not None and stop.is_set():
                return False
            if _SYNC_FILE_RANGE(fd, offset, range_bytes, _SYNC_FILE_RANGE_WRITE_AND_WAIT) != 0:
                return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


#: How long the checkpointer leaves a rewind's tail to the writer (``Backend.rewind_wal_tail``) before it copies
#: the tail itself: a writer that does not commit does not look for it, and its WAL is folded in regardless.
TAIL_WAIT_S = 2.0


class _Checkpointer:
    """A thread with its own connection running PASSIVE checkpoints (never waits for, nor blocks, the writer or
    readers) when ``checkpoint_due``: it looks at the WAL every ``period_s``. Durability does not depend on it:
    committed frames are durable in the WAL.

    It also rewinds the WAL once it holds ``rewind_frames`` frames: it then checkpoints back to back (commits go
    on) until at most ``tail_pages`` frames are pending, and sets ``tail_wanted``; it copies nothing more until
    the writer has copied that tail (``Backend.rewind_wal_tail``) and cleared it."""

    def __init__(self, db_path: Path, period_s: float, growth_pages: int, max_age_s: float,
                 rewind_frames: int, tail_pages: int) -> None:
        self._db_path = db_path
        self._period_s = period_s
        self._growth_pages = growth_pages
        self._max_age_s = max_age_s
        self.rewind_frames = rewind_frames
        self.tail_pages = tail_pages
        self._stop = threading.Event()
        #: Set when the frames left to copy before the WAL can restart are at most ``tail_pages``: the writer
        #: copies them between two transactions and clears it.
        self.tail_wanted = threading.Event()
        #: Checkpoints run (for tests and diagnostics).
        self.runs = 0
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="quorumkv-checkpointer", daemon=True)
        self._thread.start()

    def _frames(self) -> tuple[int, int] | None:
        try:
            with open(str(self._db_path) + "-shm", "rb", buffering=0) as f:
                return wal_index_frames(f.read(_SHM_HEADER_BYTES))
        except OSError:
            return None

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.runs += 1
            return True
        except sqlite3.Error as exc:
            if not self._warned:
                log.warning("background WAL checkpoint failed (the Raft thread's WAL reset still bounds the "
                            "WAL): %r", exc)
                self._warned = True
            return False

    def _run(self) -> None:
        conn = _connect(self._db_path, sync_full=True)
        last = asked = time.monotonic()
        try:
            while not self._stop.wait(self._period_s):
                frames = self._frames()
                if frames is not None and frames[0] >= self.rewind_frames:
                    if not self.tail_wanted.is_set():
                        last = self._rewind(conn, last)
                        asked = time.monotonic()
                        continue
                    if time.monotonic() - asked < TAIL_WAIT_S:
                        continue
                    # no commit came to take the tail (an idle writer): copy it here, nothing is landing
                    self.tail_wanted.clear()
                    last = time.monotonic()
                    self._checkpoint(conn)
                    continue
                pending = None if frames is None else max(0, frames[0] - frames[1])
                if not checkpoint_due(pending, time.monotonic() - last, self._growth_pages, self._max_age_s):
                    continue
                last = time.monotonic()
                self._checkpoint(conn)
        finally:
            conn.close()

    def _rewind(self, conn: sqlite3.Connection, last: float) -> float:
        """Copy back to back until the tail is short, then ask the writer for it. Returns when the last
        checkpoint ran. Bounded: a checkpoint that copies nothing (a reader holds an old snapshot) ends it."""
        while not self._stop.is_set():
            frames = self._frames()
            if frames is None or frames[0] < self.rewind_frames:
                return last  # restarted meanwhile
            pending = frames[0] - frames[1]
            if pending <= 0:
                return last  # all copied: the next write transaction restarts the WAL (unless a reader pins it)
            if pending <= self.tail_pages:
                self.tail_wanted.set()
                return last
            last = time.monotonic()
            if not self._checkpoint(conn):
                return last
            write_back(self._db_path, stop=self._stop)
            after = self._frames()
            if after is not None and after[1] <= frames[1]:
                return last  # no progress (readers on old snapshots): try again next period
        return last

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Backend:
    """Owns the database file and hands out the writer and reader connections.

    The writer connection may be used from one thread at a time (the node's writer thread); each reader
    connection from one thread at a time.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._writer = _connect(db_path, sync_full=True, cached_statements=WRITER_CACHED_STATEMENTS)
        self._readers: list[sqlite3.Connection] = []
        #: (allocated bytes when last measured, batches and payload bytes committed since); None: measure next.
        self._allocation: tuple[int, int, int] | None = None
        self._checkpointer: _Checkpointer | None = None
        #: (period, growth pages, max age, rewind frames, tail pages) of the running checkpointer, to restart it
        #: after a swap.
        self._checkpoint_pacing: tuple[float, int, float, int, int] | None = None
        #: (frames copied, seconds) of the writer's last WAL rewind tails (``rewind_wal_tail``), newest last.
        self.wal_tails: list[tuple[int, float]] = []
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            with self.write_txn() as conn:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version == 1:
            with self.write_txn() as conn:
                _migrate_from_1(conn)
        elif version == 2:
            with self.write_txn() as conn:
                _migrate_from_2(conn)
        elif version != SCHEMA_VERSION:
            raise StorageError(
                f"{db_path} has schema version {version}, this quorumkv reads {SCHEMA_VERSION}; "
                "use the quorumkv version that wrote it, or restore a snapshot into a new --data-dir"
            )
        # the tombstones' index (a Range's count reads it, docs/storage.md): a store written before it existed
        # gets it at its first open, built once from the kv rows (derived data: nothing else changes)
        self._writer.execute(TOMBSTONE_INDEX_SQL)

    @property
    def writer(self) -> sqlite3.Connection:
        return self._writer

    def start_checkpointer(self, period_s: float = BACKGROUND_CHECKPOINT_PERIOD_S,
                           growth_pages: int = CHECKPOINT_GROWTH_PAGES,
                           max_age_s: float = CHECKPOINT_MAX_AGE_S,
                           rewind_frames: int | None = None, tail_pages: int | None = None) -> None:
        """Checkpoint from a background thread instead of inside the writer's COMMITs (the writer's
        auto-checkpoint is turned off): every ``growth_pages`` WAL pages, or when pending pages are ``max_age_s``
        old, looking every ``period_s``; past ``rewind_frames`` frames it rewinds the WAL with the writer's help
        (``rewind_wal_tail``, at most ``tail_pages`` frames). Stopped by ``close``; paused around ``swap_file``."""
        if self._checkpointer is not None:
            return
        if rewind_frames is None:
            rewind_frames = WAL_REWIND_FRAMES
        if tail_pages is None:
            tail_pages = WAL_REWIND_TAIL_PAGES
        self._checkpoint_pacing = (period_s, growth_pages, max_age_s, rewind_frames, tail_pages)
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = _Checkpointer(self.db_path, period_s, growth_pages, max_age_s, rewind_frames,
                                           tail_pages)

    def wal_frames(self) -> tuple[int, int] | None:
        """(frames in the current WAL, frames of them copied into the database file), from the wal-index; None
        when it cannot be read."""
        try:
            with open(str(self.db_path) + "-shm", "rb", buffering=0) as f:
                return wal_index_frames(f.read(_SHM_HEADER_BYTES))
        except OSError:
            return None

    def rewind_wal_tail(self) -> int | None:
        """The writer's part of a WAL rewind (writer thread, between two transactions; cheap when there is nothing
        to do): when the checkpointer has copied all but a short tail of an oversized WAL, copy that tail with a
        PASSIVE checkpoint on the writer's connection. No commit can land while it runs, so every frame is then
        in the database file and the writer's next transaction starts the WAL over from its beginning (SQLite
        does that itself unless a reader still holds an older snapshot; the checkpointer then tries again).
        Declines, and lets the checkpointer copy again, when more than its ``tail_pages`` frames are pending
        by now. Returns the frames copied (0 when declined), or None when no tail was wanted."""
        cp = self._checkpointer
        if cp is None or not cp.tail_wanted.is_set():
            return None
        try:
            frames = self.wal_frames()
            if frames is None or frames[0] - frames[1] > cp.tail_pages:
                return 0
            started = time.perf_counter()
            busy, wal, copied = self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            took = time.perf_counter() - started
            done = max(0, int(copied) - frames[1])  # copied is -1 when the checkpoint could not run (busy)
            self.wal_tails.append((done, took))
            del self.wal_tails[:-64]
            log.debug("WAL rewind: the writer copied the last %d of %d frames in %.3f s (busy=%d)",
                      done, int(wal), took, int(busy))
            return done
        finally:
            cp.tail_wanted.clear()

    @property
    def checkpointer_runs(self) -> int:
        """Background checkpoints run so far (0 when none is running)."""
        return self._checkpointer.runs if self._checkpointer is not None else 0

    def _stop_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None

    def new_reader(self) -> sqlite3.Connection:
        """A read-only connection; use ``read_txn`` on it for a consistent view."""
        conn = _connect(self.db_path, sync_full=False)
        conn.execute("PRAGMA query_only=1")
        self._readers.append(conn)
        return conn

    @contextmanager
    def write_txn(self, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on normal exit, rolled back on error. ``sync``: the commit is fsynced
        before this returns; ``sync=False`` only for changes that may be lost in a crash and redone from what
        is durable (a Raft member's apply of entries already synced in its log): a later synced commit makes
        them durable too (the WAL is one sequential file)."""
        conn = self._writer
        if not sync:
            conn.execute("PRAGMA synchronous=OFF")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if not sync:
                conn.execute("PRAGMA synchronous=FULL")

    def size_bytes(self) -> int:
        """Physical size on disk: the database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(str(self.db_path) + suffix)
            except OSError:
                pass
        return total

    def allocated_bytes(self, conn: sqlite3.Connection | None = None) -> int:
        """Pages the database holds, free pages included (what bbolt's file size is to etcd's quota).

        Committed WAL frames count (the size is the database as readers see it); the WAL file itself does not.
        """
        c = conn or self._writer
        return int(c.execute("SELECT page_size * page_count FROM pragma_page_size(), pragma_page_count()")
                   .fetchone()[0])

    def allocation_after_commit(self, payload_bytes: int) -> int:
        """The allocated bytes after a batch that wrote ``payload_bytes`` of requests (writer thread only).

        Measured (:meth:`allocated_bytes`) every ``ALLOCATION_MEASURE_EVERY_*``; in between, the last measurement
        plus the payload bytes written since, so the estimate never falls behind the store's growth by more
        than what the page overhead of those bytes adds. Swapping the file (defrag) forces a new measurement.
        """
        state = self._allocation
        if state is not None:
            measured, batches, written = state[0], state[1] + 1, state[2] + payload_bytes
            if batches < ALLOCATION_MEASURE_EVERY_BATCHES and written < ALLOCATION_MEASURE_EVERY_BYTES:
                self._allocation = (measured, batches, written)
                return measured + written
        measured = self.allocated_bytes()
        self._allocation = (measured, 0, 0)
        return measured

    def forget_allocation(self) -> None:
        """The store was replaced or rebuilt: the next ``allocation_after_commit`` measures it again."""
        self._allocation = None

    @contextmanager
    def temp_reader(self) -> Iterator[sqlite3.Connection]:
        """A private read-only connection (for work off the event loop, e.g. hashing); closed on exit."""
        conn = _connect(self.db_path, sync_full=False)
        try:
            conn.execute("PRAGMA query_only=1")
            yield conn
        finally:
            conn.close()

    def size_in_use_bytes(self, conn: sqlite3.Connection | None = None) -> int:
        """Logical size: pages holding data (free pages excluded)."""
        c = conn or self._writer
        page_size = c.execute("PRAGMA page_size").fetchone()[0]
        page_count = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return int((page_count - free) * page_size)

    def checkpoint(self) -> None:
        """Copy committed WAL frames into the database file (PASSIVE: never waits for, nor blocks, anyone)."""
        conn = _connect(self.db_path, sync_full=True)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def swap_file(self, replacement: Path) -> Path:
        """Put ``replacement`` (a complete, fsynced database with the same content) in place of the file.

        Caller guarantees: the writer is paused and no transaction is open on any connection. Every reader
        from ``new_reader`` is closed (get new ones); the writer connection is reopened on the new file.
        Raises StorageError (and keeps the old file) if a connection outside this Backend still uses the WAL.
        Returns a hard link to the old file: delete it later (freeing its blocks can take a while).
        """
        self.forget_allocation()
        background = self._checkpoint_pacing if self._checkpointer is not None else None
        self._stop_checkpointer()
        try:
            return self._swap_file(replacement)
        finally:
            if background is not None:
                self.start_checkpointer(*background)

    def _swap_file(self, replacement: Path) -> Path:
        from quorumkv.storage.datadir import fsync_dir

        for conn in self._readers:
            conn.close()
        self._readers.clear()
        self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._writer.close()
        wal = Path(str(self.db_path) + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            self._writer = _connect(self.db_path, sync_full=True, cached_statements=WRITER_CACHED_STATEMENTS)
            raise StorageError(f"{wal} is still in use by another connection; the database was not swapped")
        for suffix in ("-wal", "-shm"):
            Path(str(self.db_path) + suffix).unlink(missing_ok=True)
        old = self.db_path.with_name(self.db_path.name + ".old")
        old.unlink(missing_ok=True)
        os.link(self.db_path, old)
        os.replace(replacement, self.db_path)
        fsync_dir(self.db_path.parent)
        self._writer = _connect(self.db_path, sync_full=True, cached_statements=WRITER_CACHED_STATEMENTS)
        return old

    def close(self) -> None:
        self._stop_checkpointer()
        for conn in self._readers:
            conn.close()
        self._readers.clear()
        try:
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._writer.close()


@contextmanager
def read_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent read snapshot on a reader connection."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


#: Rows per multi-row INSERT statement (8 columns x 256 rows stays far below SQLite's variable limit).
MULTI_ROW_CHUNK = 256


def insert_rows(conn: sqlite3.Connection, head: str, ncols: int, rows: Sequence[Sequence[Any]], *,
                row_sql: str | None = None) -> None:
    """``head`` (e.g. "INSERT INTO t(a, b) VALUES") for many rows, in few multi-row statements.

    Same effect as ``executemany``, but one SQLite step per statement instead of one per row: the sqlite3
    module releases and re-acquires the GIL around every step, and with the event loop busy on another thread
    each re-acquire can wait a whole switch interval. ``row_sql``: one row's placeholders when some columns are
    constants written into the statement (default: ``ncols`` placeholders); each row supplies ``ncols`` values.
    """
    one = row_sql if row_sql is not None else "(" + ",".join("?" * ncols) + ")"
    for at in range(0, len(rows), MULTI_ROW_CHUNK):
        chunk = rows[at:at + MULTI_ROW_CHUNK]
        params = [v for row in chunk for v in row]
        conn.execute(head + ",".join([one] * len(chunk)), params)


def meta_get(conn: sqlite3.Connection, name: str, default: Any = None) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
    return default if row is None else row[0]


def meta_set(conn: sqlite3.Connection, name: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO meta(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
        (name, value),
    )


def savepoint(conn: sqlite3.Connection, name: str) -> None:
    """Open a savepoint inside the current transaction (undo one entry's effects with :func:`rollback_to`)."""
    conn.execute(f"SAVEPOINT {name}")


def rollback_to(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(f"ROLLBACK TO {name}")


def release(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(f"RELEASE {name}")


@contextmanager
def immediate_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on a private connection (tools: restore, offline rewrites): committed on success,
    rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def set_wal_mode(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")


def copy_database(db_path: Path, dest: Path) -> int:
    """Write a consistent copy of the database at ``db_path`` to ``dest`` (rollback-journal mode, one read
    transaction on the source: writers are not blocked); returns its size in bytes."""
    src = sqlite3.connect(db_path, isolation_level=None, timeout=30.0)
    try:
        src.execute("PRAGMA query_only=1")
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(dst)  # pages=-1: one step, one read transaction on the source
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    return dest.stat().st_size


def open_store_file(db: Path) -> tuple[sqlite3.Connection, int]:
    """Open a store file that is not a running member's (a snapshot's content): the connection and its schema
    version. Raises ``sqlite3.DatabaseError`` if it is not a quorumkv store."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute("SELECT count(*) FROM kv").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn, version


def vacuum_into(db_path: Path, dest: Path) -> None:
    """A compact copy of the database at ``db_path`` written to ``dest``, from a private connection (one read
    transaction: writers go on)."""
    src = sqlite3.connect(db_path, isolation_level=None, timeout=30.0)
    try:
        src.execute("VACUUM INTO ?", (str(dest),))
    finally:
        src.close()


def open_unsynced(path: Path) -> sqlite3.Connection:
    """A writer connection to a file that is made durable later by one fsync (a defrag copy): no syncs."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def open_query_only(path: Path) -> sqlite3.Connection:
    """A private read-only connection to a live database file."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA query_only=1")
    return conn


def truncate_wal(conn: sqlite3.Connection) -> None:
    """Checkpoint and reset the WAL (waits for the read transactions in flight)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
