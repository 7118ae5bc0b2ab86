"""The single-member node: a one-member replicated log with group commit.

Flow of a proposal (see docs/architecture.md): the asyncio side registers a future under a fresh request id
and queues ``(kind, request_id, payload)``; the writer thread drains everything queued, applies the entries in
ONE SQLite transaction, commits (fsync), and only then hands the results back to the event loop in one
callback. Nothing is acknowledged before it is on stable storage.

Append and apply share that transaction, so on one member the applied state *is* the durable log: a
:class:`LocalNode` stores ``raft_log`` rows only while an online defrag needs them (``log_pin``). The apply
process keeps the log's tail (its defrag pin is set asynchronously).

The writer's work (append, apply, trim, commit) is :class:`LogWriter`; :class:`LocalNode` runs it on a thread
of the serving process, :class:`quorumkv.server.applyproc.ProcessNode` in a child process.

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


class LogWriter:
    """The writer's side of a node: appends entries to ``raft_log``, applies them and commits, one transaction
    per batch. Used from one thread at a time (the writer thread, or the apply process's main thread).

    A batch is a list of ``(kind, entry bytes)`` with the entry bytes as ``entries.encode_entry`` makes them.

    ``keep_log``: keep the newest applied entries (``LOG_RETAIN_*``) in ``raft_log``. Without it, entries are
    stored only while ``log_pin`` is set (an online defrag replays them into its copy); the rows left from a
    pin are removed with the first batch after it is cleared. Either way an entry's row, if any, is written in
    the transaction that applies it, so the applied index and ``meta`` say where the log ends.
    """

    def __init__(self, backend: Backend, applier: Applier, *, keep_log: bool = True) -> None:
        self.backend = backend
        self.applier = applier
        self.keep_log = keep_log
        conn = backend.writer
        self.term = int(meta_get(conn, "term", 1))
        #: Entries at or above this index are never trimmed (set by an online defrag while it catches up);
        #: without ``keep_log``, entries are stored only while this is set.
        self.log_pin: int | None = None
        #: Entries whose apply took longer than this are collected in ``slow_applies``; None: not timed.
        self.slow_apply_s: float | None = None
        #: (index, entry bytes, seconds) of the slow applies of the last committed batch.
        self.slow_applies: list[tuple[int, bytes, float]] = []
        self._batches_committed = 0
        self._log_sizes: collections.deque[tuple[int, int]] = collections.deque()
        self._log_bytes = 0
        self._load_log_sizes()
        row = conn.execute("SELECT max(idx) FROM raft_log").fetchone()
        # entries are applied in the transaction that stores them, so the applied index is never behind the
        # log's end (it is ahead when rows are not kept); rows above it are durable, not yet applied entries
        self.last_index = max(int(row[0]) if row[0] is not None else 0,
                              int(meta_get(conn, "log_trimmed_index", 0)), applier.applied_index)
        self._replay()

    def _load_log_sizes(self) -> None:
        self._log_sizes = collections.deque(
            (int(i), int(n)) for i, n in self.backend.writer.execute(
                "SELECT idx, length(data) FROM raft_log ORDER BY idx"))
        self._log_bytes = sum(n for _, n in self._log_sizes)

    def reopen(self, backend: Backend) -> None:
        """Continue on another backend holding the same content (after an online defrag swapped the file)."""
        self.backend = backend
        self.applier.reload(backend.writer)
        self._load_log_sizes()

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

    def begin_term(self) -> ApplyResult:
        """Become leader of a one-member cluster: a new term and its no-op entry, durable on return."""
        term = self.term + 1
        result = ApplyResult()
        with self.backend.write_txn() as conn:
            meta_set(conn, "term", term)
            self.term = term
            try:
                self._append_and_apply(conn, [(EntryKind.NOOP, encode_entry(EntryKind.NOOP, 0, b""))], result)
            except BaseException:
                self.term = term - 1
                raise
        return result

    def _append_and_apply(self, conn: sqlite3.Connection, batch: list[tuple[int, bytes]],
                          result: ApplyResult) -> None:
        first = self.last_index + 1
        index = first + len(batch) - 1
        entries = [(first + i, data) for i, (_kind, data) in enumerate(batch)]
        if self.keep_log or self.log_pin is not None:
            term = self.term
            rows = [(first + i, kind, data, zlib.crc32(data, (term << 8) ^ kind) & 0xFFFFFFFF)
                    for i, (kind, data) in enumerate(batch)]
            # the term is the same for the whole batch: written into the statement, not bound per row
            insert_rows(conn, "INSERT INTO raft_log(idx, term, kind, data, crc) VALUES ", 4, rows,
                        row_sql=f"(?,{int(term)},?,?,?)")
        else:
            rows = []
        applier = self.applier
        threshold = self.slow_apply_s
        if threshold is None:
            applier.apply_many(conn, entries, result)
        else:
            # Runs of plain puts are applied together (Applier.apply_many), so timing is per batch: a slow batch
            # is reported under its first entry, with the batch's duration.
            t0 = time.perf_counter()
            applier.apply_many(conn, entries, result)
            took = time.perf_counter() - t0
            if took > threshold and entries:
                self.slow_applies.append((entries[0][0], entries[0][1], took))
        applier.finish(conn, result)
        self.last_index = index
        sizes = self._log_sizes
        for row in rows:
            sizes.append((row[0], len(row[2])))
            self._log_bytes += len(row[2])
        pin = self.log_pin
        trim_to = 0
        if not self.keep_log and pin is None:  # rows left from a pin: all go
            retain_entries, retain_bytes = 0, 0
        else:
            retain_entries, retain_bytes = LOG_RETAIN_ENTRIES, LOG_RETAIN_BYTES
        while sizes and (len(sizes) > retain_entries or self._log_bytes > retain_bytes):
            idx, size = sizes[0]
            if pin is not None and idx >= pin:
                break
            sizes.popleft()
            self._log_bytes -= size
            trim_to = idx
        if trim_to:
            conn.execute("DELETE FROM raft_log WHERE idx <= ?", (trim_to,))
            meta_set(conn, "log_trimmed_index", trim_to)

    def commit(self, batch: list[tuple[int, bytes]]) -> tuple[ApplyResult, float]:
        """Append, apply and commit one batch; returns its results and the COMMIT's duration (with the fsync).

        On a storage failure nothing of the batch is durable: the cached state is re-read and the error raised.
        """
        backend = self.backend
        result = self.applier.new_result()
        last_index = self.last_index
        self.slow_applies = []
        try:
            with backend.write_txn() as conn:
                self._append_and_apply(conn, batch, result)
                started = time.perf_counter()
            # COMMIT (with its fsync) happened when the block exited.
            took = time.perf_counter() - started
            result.allocated_bytes = backend.allocation_after_commit(sum(len(data) for _kind, data in batch))
        except Exception:
            self.slow_applies = []
            self.last_index = last_index
            try:
                self.applier.reload(backend.writer)
                self._load_log_sizes()
            except Exception:  # pragma: no cover - storage gone entirely
                log.exception("reloading applier state failed")
            raise
        self._batches_committed += 1
        if self._batches_committed % WAL_CHECK_EVERY_BATCHES == 0:
            self._maybe_truncate_wal()
        return result, took

    def _maybe_truncate_wal(self) -> None:
        """Reset an oversized WAL. Passive auto-checkpoints copy frames into the database but cannot rewind the
        WAL while readers come and go, so under steady load it only grows; a TRUNCATE checkpoint between two
        batches waits for the (short) read transactions in flight and starts the WAL over."""
        try:
            if os.path.getsize(str(self.backend.db_path) + "-wal") > WAL_TRUNCATE_BYTES:
                self.backend.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, sqlite3.Error) as exc:
            log.warning("WAL checkpoint failed: %r", exc)


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
        self._queue: queue.SimpleQueue[tuple[int, int, bytes] | None] = queue.SimpleQueue()
        self._waiters: dict[int, asyncio.Future[object]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._next_request_id = 1
        self._stopped = False
        #: Held by the writer thread around each batch; holding it from elsewhere pauses the writer (defrag).
        self.write_lock = threading.Lock()
        self.writer = LogWriter(backend, applier, keep_log=False)

    @property
    def term(self) -> int:
        return self.writer.term

    @property
    def last_index(self) -> int:
        return self.writer.last_index

    @property
    def log_pin(self) -> int | None:
        """Entries at or above this index are never trimmed (set by an online defrag while it catches up)."""
        return self.writer.log_pin

    @log_pin.setter
    def log_pin(self, value: int | None) -> None:
        self.writer.log_pin = value

    def pin_log(self) -> int:
        """Store every entry from the next one on (until ``log_pin`` is cleared); returns the pin. Blocks until
        the batch in flight, if any, is committed, so no entry after the returned pin - 1 goes unlogged. Call it
        off the event loop."""
        with self.write_lock:
            pin = self.writer.last_index + 1
            self.writer.log_pin = pin
        return pin

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become leader of a one-member cluster: a new term and its no-op entry, then serve proposals."""
        self._loop = loop
        self.writer.begin_term()
        self.backend.start_checkpointer()
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

    def _report_slow_applies(self, slow: list[tuple[int, bytes, float]]) -> None:
        observer = self.slow_apply_observer
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
            if stop:
                return

    def _commit_batch(self, batch: list[tuple[int, int, bytes]], loop: asyncio.AbstractEventLoop) -> None:
        """Append, apply and commit one batch; hand the results (or the failure) to the event loop."""
        writer = self.writer
        writer.slow_apply_s = self.slow_apply_s if self.slow_apply_observer is not None else None
        try:
            result, took = writer.commit([(kind, encode_entry(kind, rid, payload)) for kind, rid, payload in batch])
        except Exception as exc:  # storage failure: nothing of this batch is durable
            log.error("group commit of %d entries failed: %r", len(batch), exc)
            loop.call_soon_threadsafe(self._deliver, None, exc, [b[1] for b in batch])
            return
        if self._fsync_observer is not None:
            self._fsync_observer(took)
        if writer.slow_applies:
            self._report_slow_applies(writer.slow_applies)
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
