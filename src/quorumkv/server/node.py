"""The single-member node: a one-member replicated log with group commit.

Flow of a proposal (see docs/architecture.md): the asyncio side registers a future under a fresh request id
and queues ``(kind, request_id, payload)``; the writer thread drains everything queued, appends the entries to
``raft_log`` and applies them in ONE SQLite transaction, commits (fsync), and only then hands the results back
to the event loop in one callback. Nothing is acknowledged before it is on stable storage.

A multi-member cluster replaces this class with a Raft-driven node offering the same ``propose`` surface.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.server.entries import EntryKind, decode_entry, encode_entry
from quorumkv.server.errors import EtcdError
from quorumkv.storage.backend import Backend, StorageError, insert_rows, meta_get, meta_set

log = logging.getLogger("quorumkv.node")

#: Upper bound of entries per group commit.
MAX_BATCH_ENTRIES = 2000
#: Applied log entries kept (for catch-up of followers and of an online defrag); older ones are trimmed once
#: either bound is exceeded, so the log never holds more than a few MiB of request payloads twice.
LOG_RETAIN_ENTRIES = 10_000
LOG_RETAIN_BYTES = 8 * 1024 * 1024
#: The WAL is reset (TRUNCATE checkpoint) when it grows past this; checked every few batches.
WAL_TRUNCATE_BYTES = 64 * 1024 * 1024
WAL_CHECK_EVERY_BATCHES = 32
#: etcd's expected duration of applying one request: slower ones are reported ("apply request took too long").
SLOW_APPLY_S = 0.1


@dataclass
class NodeStatus:
    term: int
    commit_index: int
    applied_index: int


class BatchObserver:
    """Hooks the server installs; called on the event loop after each durable batch."""

    def on_applied(self, result: ApplyResult) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class LocalNode:
    """A cluster of one. ``propose`` is called on the event loop; apply runs on the writer thread."""

    def __init__(self, backend: Backend, applier: Applier, *, on_applied: Callable[[ApplyResult], None],
                 fsync_observer: Callable[[float], None] | None = None) -> None:
        self.backend = backend
        self.applier = applier
        self._on_applied = on_applied
        self._fsync_observer = fsync_observer
        #: Called on the writer thread, after the batch's commit, with (index, entry bytes, seconds) of each
        #: entry whose apply took longer than ``slow_apply_s``; None: entries are not timed.
        self.slow_apply_observer: Callable[[int, bytes, float], None] | None = None
        self.slow_apply_s = SLOW_APPLY_S
        self._slow_applies: list[tuple[int, bytes, float]] = []
        self._queue: queue.SimpleQueue[tuple[int, int, bytes] | None] = queue.SimpleQueue()
        self._waiters: dict[int, asyncio.Future[object]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._next_request_id = 1
        self._stopped = False
        self._fatal: BaseException | None = None
        #: Held by the writer thread around each batch; holding it from elsewhere pauses the writer (defrag).
        self.write_lock = threading.Lock()
        conn = backend.writer
        self.term = int(meta_get(conn, "term", 1))
        #: Entries at or above this index are never trimmed (set by an online defrag while it catches up).
        self.log_pin: int | None = None
        self._batches_committed = 0
        self._log_sizes: collections.deque[tuple[int, int]] = collections.deque()
        self._log_bytes = 0
        self._load_log_sizes()
        row = conn.execute("SELECT max(idx) FROM raft_log").fetchone()
        self.last_index = int(row[0]) if row[0] is not None else int(meta_get(conn, "log_trimmed_index", 0))
        self._replay()

    # -- startup --------------------------------------------------------------------------------------------

    def _load_log_sizes(self) -> None:
        self._log_sizes = collections.deque(
            (int(i), int(n)) for i, n in self.backend.writer.execute(
                "SELECT idx, length(data) FROM raft_log ORDER BY idx"))
        self._log_bytes = sum(n for _, n in self._log_sizes)

    def _replay(self) -> None:
        """Apply log entries that are durable but not yet applied (cannot happen on one member, where append
        and apply share a transaction, but the code path is the cluster's and is exercised by tests)."""
        conn = self.backend.writer
        pending = conn.execute(
            "SELECT idx, term, kind, data, crc FROM raft_log WHERE idx > ? ORDER BY idx",
            (self.applier.applied_index,),
        ).fetchall()
        if not pending:
            return
        result = ApplyResult()
        expected = self.applier.applied_index + 1
        with self.backend.write_txn() as c:
            for idx, term, kind, data, crc in pending:
                if idx != expected:  # a hole in the log: applying past it would silently drop an entry
                    raise StorageError(
                        f"log entry {expected} is missing (next stored entry is {idx}, applied index "
                        f"{self.applier.applied_index}): the data dir is corrupt; restore from a snapshot"
                    )
                expected += 1
                if zlib.crc32(data, (term << 8) ^ kind) & 0xFFFFFFFF != crc:
                    raise StorageError(
                        f"log entry {idx} fails its checksum: the data dir is corrupt; restore from a snapshot"
                    )
                self.applier.apply(c, idx, data, result)
            self.applier.finish(c)
        log.info("replayed %d log entries", len(pending))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become leader of a one-member cluster: a new term and its no-op entry, then serve proposals."""
        self._loop = loop
        self.term += 1
        result = ApplyResult()
        with self.backend.write_txn() as conn:
            meta_set(conn, "term", self.term)
            self._append_and_apply(conn, [(EntryKind.NOOP, 0, b"")], result)
        self._thread = threading.Thread(target=self._run, name="quorumkv-writer", daemon=True)
        self._thread.start()

    # -- the event loop side --------------------------------------------------------------------------------

    def propose(self, kind: int, payload: bytes) -> asyncio.Future[object]:
        """Queue an entry; the future resolves with its response (or EtcdError) once durable and applied."""
        assert self._loop is not None, "node not started"
        if self._stopped:
            fut: asyncio.Future[object] = self._loop.create_future()
            fut.set_exception(EtcdError("UNAVAILABLE", "etcdserver: server stopped"))
            return fut
        request_id = self._next_request_id
        self._next_request_id += 1
        fut = self._loop.create_future()
        self._waiters[request_id] = fut
        self._queue.put((kind, request_id, payload))
        return fut

    def _deliver(self, result: ApplyResult | None, failure: BaseException | None,
                 request_ids: list[int]) -> None:
        if result is not None:
            self._on_applied(result)
            waiters = self._waiters
            for request_id, response in result.responses.items():
                fut = waiters.pop(request_id, None)
                if fut is None or fut.done():
                    continue
                if isinstance(response, EtcdError):
                    fut.set_exception(response)
                else:
                    fut.set_result(response)
        else:
            err = EtcdError("UNAVAILABLE", f"quorumkv: storage write failed: {failure!r}")
            for request_id in request_ids:
                fut = self._waiters.pop(request_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(err)

    # -- the writer thread ----------------------------------------------------------------------------------

    def _append_and_apply(self, conn: object, batch: list[tuple[int, int, bytes]], result: ApplyResult) -> None:
        import sqlite3

        assert isinstance(conn, sqlite3.Connection)
        rows = []
        index = self.last_index
        term = self.term
        applier = self.applier
        for kind, request_id, payload in batch:
            index += 1
            data = encode_entry(kind, request_id, payload)
            rows.append((index, term, kind, data, zlib.crc32(data, (term << 8) ^ kind) & 0xFFFFFFFF))
        insert_rows(conn, "INSERT INTO raft_log(idx, term, kind, data, crc) VALUES ", 5, rows)
        if self.slow_apply_observer is None:
            applier.apply_many(conn, [(row[0], row[3]) for row in rows], result)
        else:
            self._apply_timed(conn, rows, result)
        applier.finish(conn)
        self.last_index = index
        sizes = self._log_sizes
        for row in rows:
            sizes.append((row[0], len(row[3])))
            self._log_bytes += len(row[3])
        pin = self.log_pin
        trim_to = 0
        while sizes and (len(sizes) > LOG_RETAIN_ENTRIES or self._log_bytes > LOG_RETAIN_BYTES):
            idx, size = sizes[0]
            if pin is not None and idx >= pin:
                break
            sizes.popleft()
            self._log_bytes -= size
            trim_to = idx
        if trim_to:
            conn.execute("DELETE FROM raft_log WHERE idx <= ?", (trim_to,))
            meta_set(conn, "log_trimmed_index", trim_to)

    def _apply_timed(self, conn: object, rows: list[tuple[int, int, int, bytes, int]], result: ApplyResult) -> None:
        import sqlite3

        assert isinstance(conn, sqlite3.Connection)
        # Runs of plain puts are applied together (Applier.apply_many), so timing is per run of entries: a slow
        # run is reported under its first entry, with the run's duration. Other entries are timed one by one.
        applier = self.applier
        threshold = self.slow_apply_s
        clock = time.perf_counter
        slow = self._slow_applies
        t0 = clock()
        applier.apply_many(conn, [(row[0], row[3]) for row in rows], result)
        took = clock() - t0
        if took > threshold and rows:
            slow.append((rows[0][0], rows[0][3], took))

    def _report_slow_applies(self) -> None:
        observer = self.slow_apply_observer
        slow, self._slow_applies = self._slow_applies, []
        if observer is not None:
            for index, data, took in slow:
                try:
                    observer(index, data, took)
                except Exception:  # a reporting bug must not stop the writer
                    log.exception("slow apply observer failed")

    @property
    def pending_proposals(self) -> int:
        """Proposals queued or being committed (etcd_server_proposals_pending)."""
        return len(self._waiters)

    def _run(self) -> None:
        q = self._queue
        loop = self._loop
        assert loop is not None
        while True:
            item = q.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH_ENTRIES:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            with self.write_lock:
                self._commit_batch(batch, loop)
                self._batches_committed += 1
                if self._batches_committed % WAL_CHECK_EVERY_BATCHES == 0:
                    self._maybe_truncate_wal()
            if stop:
                return

    def _maybe_truncate_wal(self) -> None:
        """Reset an oversized WAL. Passive auto-checkpoints copy frames into the database but cannot rewind the
        WAL while readers come and go, so under steady load it only grows; a TRUNCATE checkpoint between two
        batches waits for the (short) read transactions in flight and starts the WAL over."""
        try:
            if os.path.getsize(str(self.backend.db_path) + "-wal") > WAL_TRUNCATE_BYTES:
                self.backend.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, sqlite3.Error) as exc:
            log.warning("WAL checkpoint failed: %r", exc)

    def _commit_batch(self, batch: list[tuple[int, int, bytes]], loop: asyncio.AbstractEventLoop) -> None:
        """Append, apply and commit one batch; hand the results (or the failure) to the event loop."""
        backend = self.backend
        result = ApplyResult()
        last_index = self.last_index
        try:
            with backend.write_txn() as conn:
                self._append_and_apply(conn, batch, result)
                started = time.perf_counter()
            # COMMIT (with its fsync) happened when the block exited.
            if self._fsync_observer is not None:
                self._fsync_observer(time.perf_counter() - started)
            if self._slow_applies:
                self._report_slow_applies()
        except Exception as exc:  # storage failure: nothing of this batch is durable
            self._slow_applies.clear()
            log.error("group commit of %d entries failed: %r", len(batch), exc)
            self.last_index = last_index
            try:
                self.applier.reload(backend.writer)
                self._load_log_sizes()
            except Exception:  # pragma: no cover - storage gone entirely
                log.exception("reloading applier state failed")
            loop.call_soon_threadsafe(self._deliver, None, exc, [b[1] for b in batch])
        else:
            loop.call_soon_threadsafe(self._deliver, result, None, [])

    # -- lifecycle ------------------------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        return NodeStatus(term=self.term, commit_index=self.last_index, applied_index=self.applier.applied_index)

    def stop(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)


def read_log_entry(backend: Backend, index: int) -> tuple[int, int, int, bytes] | None:
    """(term, kind, request_id, payload) of a stored entry, checksum verified."""
    row = backend.writer.execute("SELECT term, kind, data, crc FROM raft_log WHERE idx = ?", (index,)).fetchone()
    if row is None:
        return None
    term, kind, data, crc = row
    if zlib.crc32(data, (term << 8) ^ kind) & 0xFFFFFFFF != crc:
        raise StorageError(f"log entry {index} fails its checksum")
    dec = decode_entry(data)
    return term, dec.kind, dec.request_id, dec.payload
