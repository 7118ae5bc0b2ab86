"""The apply process: the node's writer (log append, apply, commit) in a child process.

Why: in :class:`~quorumkv.server.node.LocalNode` the writer thread and the event loop (all of gRPC's Python
side) share one GIL, so every batch's SQLite work competes with request handling for the same core. Here the
serving process keeps only gRPC, validation and bookkeeping; a child process (``python -m
quorumkv.server.applyproc``) owns the SQLite writer connection and runs :class:`~quorumkv.server.node.LogWriter`.

Protocol, over a Unix socketpair; every frame is ``<u32 body length><u8 type><body>``:

parent → child
  BATCH   entries, each ``>u32 length`` + the entry bytes of ``entries.encode_entry`` (kind, request id, payload);
          BATCH_QUIET: the same, but no live watcher needs the watch events of these entries (not sent back)
  START   pickled ``slow_apply_s`` (or None): begin a new term with its no-op entry, then serve batches
  PAUSE / RESUME   close the writer connection and wait (online defrag swaps the file), then reopen it
  PIN     pickled log pin (or None)
  STOP    commit what was received, then exit
child → parent (bodies pickled; plain tuples, no protobuf objects except serialized bytes)
  HELLO   the writer's state after opening the store (and replaying, if needed)
  RESULT  one committed batch: indexes, revisions, compact responses, events (unless every frame of the batch
          was BATCH_QUIET), lease and alarm changes
  FAILED  one batch that failed to commit (nothing of it is durable): the error and its request ids
  PAUSED  the writer connection is closed; STARTED: the new term's no-op is durable
  LOG     a log record, re-emitted by the parent's logging (so the child logs as the parent does)
  FATAL   the store cannot be opened (the message says why); the child exits

The child reads whatever the parent has sent while it was committing and commits it as one batch (group
commit, as the writer thread does). Durability is unchanged: a RESULT is sent only after COMMIT returned, and
the parent acknowledges nothing before it reads that RESULT.

Failure handling: the child inherits the data dir's lock (so no new server can open the directory while it
might still write), asks the kernel to SIGKILL it when the parent dies, and exits on EOF. If the child dies,
the parent fails every pending proposal with UNAVAILABLE and starts a new child; what the dead child committed
but never reported is read back from the database (events, lease and alarm changes) so watchers miss
nothing. A child that cannot start, or too many restarts in a row, make the node fatal: proposals fail at once
and ``on_fatal`` is called (the ``quorumkv`` command then exits).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.mvcc import store
from quorumkv.mvcc.store import Event, KeyValue
from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.server.entries import EntryKind
from quorumkv.server.errors import EtcdError
from quorumkv.storage.backend import Backend, StorageError

log = logging.getLogger("quorumkv.node")

FRAME = struct.Struct("<IB")
#: Per-entry header of a BATCH body: entry length, then the entry's own header (kind, request id).
_ENTRY = struct.Struct(">IBQ")
_U32 = struct.Struct(">I")

T_BATCH, T_START, T_PAUSE, T_RESUME, T_STOP, T_PIN, T_BATCH_QUIET = 1, 2, 3, 4, 5, 6, 7
T_HELLO, T_RESULT, T_FAILED, T_PAUSED, T_STARTED, T_LOG, T_FATAL = 10, 11, 12, 13, 14, 15, 16

#: Socket buffer size asked for on both ends (the kernel may cap it).
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
#: The child stops reading ahead once this much is buffered (the rest waits in the socket).
READ_AHEAD_BYTES = 8 * 1024 * 1024
#: How long the parent waits for a starting child, a pause, or a stopping child.
HANDSHAKE_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
#: Restarts of a dead child allowed within RESTART_WINDOW_S before the node gives up (fatal).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0

#: Response message class per entry kind (what the applier answers a request of that kind with).
_RESPONSE_TYPES: dict[int, Any] = {
    EntryKind.PUT: pb.PutResponse,
    EntryKind.DELETE_RANGE: pb.DeleteRangeResponse,
    EntryKind.TXN: pb.TxnResponse,
    EntryKind.COMPACTION: pb.CompactionResponse,
    EntryKind.LEASE_GRANT: pb.LeaseGrantResponse,
    EntryKind.LEASE_REVOKE: pb.LeaseRevokeResponse,
    EntryKind.ALARM: pb.AlarmResponse,
}
_KIND_OF_RESPONSE: dict[Any, int] = {cls: kind for kind, cls in _RESPONSE_TYPES.items()}


def _frame(ftype: int, body: bytes = b"") -> bytes:
    return FRAME.pack(len(body), ftype) + body


def _dumps(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class _FrameReader:
    """Frames out of a stream socket, read with ``recv_into`` into one reusable buffer (``recv(n)`` would
    allocate, and for large ``n`` mmap and unmap, a fresh buffer per read)."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.buf = bytearray(size)
        self.start = 0
        self.end = 0

    @property
    def buffered(self) -> int:
        return self.end - self.start

    def read_from(self, sock: socket.socket, flags: int = 0) -> int:
        """One ``recv_into``; returns the byte count (0: EOF). Raises BlockingIOError if nothing is there."""
        if self.end == len(self.buf):
            if self.start:  # move the partial frame to the front
                n = self.end - self.start
                self.buf[:n] = self.buf[self.start:self.end]
                self.start, self.end = 0, n
            else:  # one frame larger than the buffer
                self.buf.extend(bytes(len(self.buf)))
        with memoryview(self.buf) as view:
            n = sock.recv_into(view[self.end:], 0, flags)
        self.end += n
        return n

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete frame as (type, body), or None."""
        start = self.start
        if self.end - start < FRAME.size:
            return None
        length, ftype = FRAME.unpack_from(self.buf, start)
        body_at = start + FRAME.size
        if self.end - body_at < length:
            return None
        with memoryview(self.buf) as view:
            body = bytes(view[body_at:body_at + length])
        self.start = body_at + length
        if self.start == self.end:
            self.start = self.end = 0
        return ftype, body


# -- the child ------------------------------------------------------------------------------------------------


def encode_result(writer: Any, result: ApplyResult, took: float, with_events: bool = True) -> bytes:
    """A committed batch as the RESULT body: responses of plain puts as (request id, revision) pairs, other
    responses serialized, errors as (code, message), events as flat tuples (None: left out)."""
    applier = writer.applier
    puts: list[int] = []
    others: list[tuple[int, int, bytes]] = []
    errs: list[tuple[int, str, str]] = []
    put_type = pb.PutResponse
    kinds = _KIND_OF_RESPONSE
    for rid, resp in result.responses.items():
        rtype = type(resp)
        if rtype is put_type and not resp.HasField("prev_kv"):  # type: ignore[attr-defined]
            puts.append(rid)
            puts.append(resp.header.revision)  # type: ignore[attr-defined]
        elif isinstance(resp, EtcdError):
            errs.append((rid, resp.code, resp.message))
        elif resp is None:
            others.append((rid, -1, b""))
        elif rtype in kinds:
            others.append((rid, kinds[rtype], resp.SerializeToString()))  # type: ignore[attr-defined]
        else:
            others.append((rid, -2, _dumps(resp)))
    events = [
        (rev, [(e.type, e.kv.key, e.kv.create_revision, e.kv.mod_revision, e.kv.version, e.kv.value, e.kv.lease,
                e.prev_mod_revision) for e in evs])
        for rev, evs in result.events
    ] if with_events else None
    alarms = sorted(applier.alarms) if result.alarms_changed else None
    return _dumps((
        writer.last_index, applier.applied_index, applier.revision, applier.compact_revision,
        puts, others, errs, events, result.leases_granted, result.leases_revoked, result.compacted_to, alarms,
        writer.slow_applies, took,
    ))


def _state(writer: Any) -> tuple[Any, ...]:
    a = writer.applier
    return (writer.term, writer.last_index, a.applied_index, a.revision, a.compact_revision, dict(a.leases),
            sorted(a.alarms))


class _Forward(logging.Handler):
    """Sends the child's log records to the parent (LOG frames), which emits them with its own handlers."""

    _PLAIN = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)

    def __init__(self, child: _Child) -> None:
        super().__init__()
        self.child = child

    def emit(self, record: logging.LogRecord) -> None:
        try:
            d = dict(record.__dict__)
            d["msg"] = record.getMessage()
            d["args"] = None
            if record.exc_info:
                d["exc_text"] = logging.Formatter().formatException(record.exc_info)
            d["exc_info"] = None
            for k, v in list(d.items()):
                if k not in self._PLAIN and not isinstance(v, str | int | float | bool | type(None)):
                    d[k] = str(v)
            self.child.send(T_LOG, _dumps(d))
        except Exception:  # logging must never take the writer down
            pass


class _Child:
    """The child's main loop: read frames, commit batches, answer."""

    def __init__(self, sock: socket.socket, db_path: Path, min_lease_ttl_seconds: int) -> None:
        self.sock = sock
        self.db_path = db_path
        self.min_lease_ttl_seconds = min_lease_ttl_seconds
        self.reader = _FrameReader()

    def send(self, ftype: int, body: bytes = b"") -> None:
        header = FRAME.pack(len(body), ftype)
        sent = self.sock.sendmsg([header, body])
        if sent < len(header) + len(body):  # interrupted: send the rest
            self.sock.sendall((header + body)[sent:])

    def _fill(self, block: bool) -> bool:
        """Read more from the parent; False if nothing was available (non-blocking). EOFError on EOF."""
        try:
            n = self.reader.read_from(self.sock, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        if not n:
            raise EOFError
        return True

    def frames(self) -> list[tuple[int, bytes]]:
        """Every complete frame: blocks for the first, then takes whatever else is already there."""
        out: list[tuple[int, bytes]] = []
        reader = self.reader
        while True:
            f = reader.next_frame()
            if f is not None:
                out.append(f)
                continue
            if out:
                if reader.buffered > READ_AHEAD_BYTES or not self._fill(block=False):
                    return out
            else:
                self._fill(block=True)

    def open(self) -> Any:
        from quorumkv.server.node import LogWriter

        backend = Backend(self.db_path)
        try:
            applier = Applier(backend.writer, min_lease_ttl_seconds=self.min_lease_ttl_seconds)
            return LogWriter(backend, applier)
        except BaseException:
            backend.close()
            raise

    def run(self) -> int:
        try:
            writer = self.open()
        except Exception as exc:
            msg = str(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
            self.send(T_FATAL, _dumps(msg))
            return 1
        self.send(T_HELLO, _dumps(_state(writer)))
        from quorumkv.server.node import MAX_BATCH_ENTRIES

        # as the serving process does (run.tune_gc): startup objects out of the collector's sight, rarer
        # young collections
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, *gc.get_threshold()[1:])

        pending: list[tuple[int, bytes]] = []
        frames: collections.deque[tuple[int, bytes]] = collections.deque()
        want_events = False  # whether any frame of what is pending asked for the watch events

        def flush() -> None:
            nonlocal want_events
            with_events, want_events = want_events, False
            while pending:
                chunk = pending[:MAX_BATCH_ENTRIES]
                del pending[:MAX_BATCH_ENTRIES]
                try:
                    result, took = writer.commit(chunk)
                except Exception as exc:  # storage failure: nothing of this batch is durable
                    log.error("group commit of %d entries failed: %r", len(chunk), exc)
                    rids = [int.from_bytes(data[1:9], "big") for _, data in chunk]
                    self.send(T_FAILED, _dumps((repr(exc), rids)))
                    continue
                self.send(T_RESULT, encode_result(writer, result, took, with_events))

        try:
            while True:
                if not frames:
                    frames.extend(self.frames())
                ftype, body = frames.popleft()
                if ftype == T_BATCH or ftype == T_BATCH_QUIET:
                    want_events = want_events or ftype == T_BATCH
                    _split_batch(body, pending)
                    if not frames:
                        flush()
                    continue
                flush()
                if ftype == T_START:
                    writer.slow_apply_s = pickle.loads(body)
                    started = writer.begin_term()
                    self.send(T_STARTED, _dumps((writer.term, _state(writer), encode_result(writer, started, 0.0))))
                elif ftype == T_PIN:
                    writer.log_pin = pickle.loads(body)
                elif ftype == T_PAUSE:
                    writer.backend.close()
                    self.send(T_PAUSED)
                    if not self._wait_resume(frames, pending):
                        return 0
                    writer.reopen(Backend(self.db_path))
                    flush()  # what arrived while paused
                elif ftype == T_STOP:
                    writer.backend.close()
                    return 0
        except EOFError:  # the parent is gone: what was received but not committed was never acknowledged
            writer.backend.close()
            return 0

    def _wait_resume(self, frames: collections.deque[tuple[int, bytes]], pending: list[tuple[int, bytes]]) -> bool:
        """While paused: batches are kept for later. True on RESUME, False on STOP (EOFError on EOF)."""
        while True:
            if not frames:
                frames.extend(self.frames())
            ftype, body = frames.popleft()
            if ftype == T_RESUME:
                return True
            if ftype == T_STOP:
                return False
            if ftype == T_BATCH or ftype == T_BATCH_QUIET:
                _split_batch(body, pending)


def _split_batch(body: bytes, into: list[tuple[int, bytes]]) -> None:
    """A BATCH body's entries as (kind, entry bytes)."""
    off, end = 0, len(body)
    unpack = _U32.unpack_from
    while off < end:
        (n,) = unpack(body, off)
        data = body[off + 4:off + 4 + n]
        into.append((data[0], data))
        off += 4 + n


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (best effort), and exit if it already did."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: EOF on the socket still ends the child
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quorumkv.server.applyproc",
                                 description="quorumkv's apply process (started by the server, not by hand)")
    ap.add_argument("--fd", type=int, required=True, help="the socket to the parent")
    ap.add_argument("--db", required=True)
    ap.add_argument("--min-lease-ttl", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle
    _die_with_parent(args.parent_pid)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    child = _Child(sock, Path(args.db), args.min_lease_ttl)
    root = logging.getLogger()
    root.handlers[:] = [_Forward(child)]
    root.setLevel(logging.INFO)
    return child.run()


# -- the parent -----------------------------------------------------------------------------------------------


class _PauseLock:
    """``LocalNode.write_lock`` for the process node: while held, the child has closed its writer connection
    and commits nothing. ``acquire`` blocks (call it off the event loop); ``release`` from any thread."""

    def __init__(self, node: ProcessNode) -> None:
        self.node = node
        self._held = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        node = self.node
        loop = node._loop
        if loop is None or threading.get_ident() == node._loop_thread:
            raise RuntimeError("ProcessNode.write_lock.acquire must be called off the event loop, after start")
        done = threading.Event()
        outcome: list[BaseException | None] = []
        loop.call_soon_threadsafe(node._request_pause, done, outcome)
        if not done.wait(HANDSHAKE_TIMEOUT_S if timeout < 0 else timeout):
            loop.call_soon_threadsafe(node._send_control, T_RESUME, b"")
            raise StorageError("the apply process did not pause in time")
        if outcome and outcome[0] is not None:
            raise StorageError(f"pausing the apply process failed: {outcome[0]}")
        self._held = True
        return True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("release of an unheld write lock")
        self._held = False
        node = self.node
        assert node._loop is not None
        if threading.get_ident() == node._loop_thread:
            node._resume()
        else:
            node._loop.call_soon_threadsafe(node._resume)

    def __enter__(self) -> _PauseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ProcessNode:
    """A cluster of one whose writer runs in a child process; the surface of ``LocalNode``.

    ``applier`` is the serving process's mirror of the applier's state (revision, compact revision, applied
    index, leases, alarms): it is updated from every batch result before ``on_applied`` runs, and never applies
    anything itself.
    """

    def __init__(self, backend: Backend, applier: Applier, *, on_applied: Callable[[ApplyResult], None],
                 fsync_observer: Callable[[float], None] | None = None, lock_fd: int | None = None) -> None:
        from quorumkv.server.node import SLOW_APPLY_S

        self.backend = backend
        self.applier = applier
        self._on_applied = on_applied
        self._fsync_observer = fsync_observer
        self._lock_fd = lock_fd
        #: Called on the event loop with (index, entry bytes, seconds) of each entry (run of entries) whose apply
        #: took longer than ``slow_apply_s``; None: entries are not timed. Set before ``start``.
        self.slow_apply_observer: Callable[[int, bytes, float], None] | None = None
        self.slow_apply_s = SLOW_APPLY_S
        #: Called on the event loop once the node gave up (the child cannot be (re)started); writes then fail.
        self.on_fatal: Callable[[str], None] | None = None
        #: Whether anyone needs live watch events (the server: "the hub has synced watchers"); when it says no,
        #: batches are sent as BATCH_QUIET and their events never built. None: always wanted.
        self.events_wanted: Callable[[], bool] | None = None
        self.write_lock = _PauseLock(self)
        self.term = 0
        self.last_index = 0
        self._log_pin: int | None = None
        self._waiters: dict[int, asyncio.Future[object]] = {}
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._wbuf = bytearray()
        self._reader = _FrameReader()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._next_request_id = 1
        self._stopping = False
        self._fatal: str | None = None
        self._ready = False  # a child is connected, started, and not paused by a dead predecessor
        self._pause_waiters: list[tuple[threading.Event, list[BaseException | None]]] = []
        self._exited = threading.Event()
        self._restarts: list[float] = []
        self._restart_pending = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._spawn()
        state = self._handshake_sync(T_HELLO)
        self._set_state(state)

    # -- child management -----------------------------------------------------------------------------------

    def _spawn(self) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (parent_sock, child_sock):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
                except OSError:
                    pass
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "quorumkv.server.applyproc", "--fd", str(child_sock.fileno()),
               "--db", str(self.backend.db_path), "--min-lease-ttl", str(self.applier.min_lease_ttl_seconds),
               "--parent-pid", str(os.getpid())]
        fds = [child_sock.fileno()] + ([self._lock_fd] if self._lock_fd is not None else [])
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=fds, stdin=subprocess.DEVNULL, env=env, close_fds=True)
        finally:
            child_sock.close()
        self._sock = parent_sock
        self._reader = _FrameReader()
        self._wbuf = bytearray()

    def _handshake_sync(self, want: int) -> Any:
        """Blocking read of frames until ``want`` (log records on the way are emitted); raises on FATAL/EOF."""
        sock = self._sock
        assert sock is not None
        sock.setblocking(True)
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        reader = self._reader
        try:
            while True:
                frame = reader.next_frame()
                if frame is None:
                    if not reader.read_from(sock):
                        raise StorageError(f"the apply process exited while starting (code {self._reap()})")
                    continue
                ftype, body = frame
                if ftype == want:
                    return pickle.loads(body)
                if ftype == T_LOG:
                    _emit(body)
                elif ftype == T_FATAL:
                    raise StorageError(pickle.loads(body))
                else:
                    raise StorageError(f"apply process: unexpected frame {ftype} while starting")
        except (TimeoutError, OSError) as exc:
            self._kill()
            raise StorageError(f"the apply process did not start: {exc!r}") from exc
        except BaseException:
            self._kill()
            raise

    def _set_state(self, state: tuple[Any, ...]) -> None:
        term, last_index, applied_index, revision, compact_revision, leases, alarms = state
        self.term = term
        self.last_index = last_index
        m = self.applier
        m.applied_index = applied_index
        m.revision = revision
        m.compact_revision = compact_revision
        m.leases = dict(leases)
        m.alarms = {tuple(a) for a in alarms}

    def _reap(self, timeout: float = 5.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            self._reap()
        if self._sock is not None:
            self._sock.close()

    @property
    def child_pid(self) -> int | None:
        """The apply process's pid (for tests and diagnostics)."""
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become leader of a one-member cluster (a new term and its no-op entry), then serve proposals."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        sock = self._sock
        assert sock is not None
        slow = self.slow_apply_s if self.slow_apply_observer is not None else None
        sock.sendall(_frame(T_START, _dumps(slow)))
        term, state, result_body = self._handshake_sync(T_STARTED)
        self._set_state(state)
        self.term = term
        self._attach()
        self._ready = True
        self._on_result(result_body)

    def _attach(self) -> None:
        sock = self._sock
        loop = self._loop
        assert sock is not None and loop is not None
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)

    def status(self) -> Any:
        from quorumkv.server.node import NodeStatus

        return NodeStatus(term=self.term, commit_index=self.last_index, applied_index=self.applier.applied_index)

    @property
    def pending_proposals(self) -> int:
        """Proposals sent or being committed (etcd_server_proposals_pending)."""
        return len(self._waiters)

    @property
    def log_pin(self) -> int | None:
        """Entries at or above this index are never trimmed (set by an online defrag while it catches up)."""
        return self._log_pin

    @log_pin.setter
    def log_pin(self, value: int | None) -> None:
        self._log_pin = value
        if self._loop is not None:
            self._send_control(T_PIN, _dumps(value))

    def stop(self) -> None:
        """Commit what was proposed, then stop the child (waits for it; call off the event loop if you can)."""
        if self._stopping:
            return
        self._stopping = True
        loop = self._loop
        proc = self._proc
        if loop is None or proc is None:  # never started
            if self._sock is not None:
                try:
                    self._sock.sendall(_frame(T_STOP))
                except OSError:
                    pass
            self._reap(STOP_TIMEOUT_S)
            self._kill()
            return
        if self._fatal is not None or self._sock is None or self._sock.fileno() < 0:
            self._kill()
            return
        if threading.get_ident() == self._loop_thread:
            self._send_control(T_STOP, b"")
            self._drain_sync()
        else:
            try:
                loop.call_soon_threadsafe(self._send_control, T_STOP, b"")
            except RuntimeError:  # the loop is closed
                self._drain_sync()
            self._exited.wait(STOP_TIMEOUT_S)
        if self._reap(STOP_TIMEOUT_S) is None:
            log.error("the apply process did not stop in %ss; killing it", STOP_TIMEOUT_S)
            self._kill()

    def _drain_sync(self) -> None:
        """On the loop thread (or with the loop gone): read the child's last frames until it closes."""
        sock = self._sock
        if sock is None or sock.fileno() < 0:
            return
        if self._wbuf:
            try:
                sock.setblocking(True)
                sock.sendall(bytes(self._wbuf))
            except OSError:
                pass
            self._wbuf.clear()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        sock.setblocking(True)
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self._reader.read_from(sock):
                    break
            except (TimeoutError, OSError):
                break
            self._parse()
        self._child_lost()

    # -- the event loop side --------------------------------------------------------------------------------

    def propose(self, kind: int, payload: bytes) -> asyncio.Future[object]:
        """Send an entry; the future resolves with its response (or EtcdError) once durable and applied."""
        loop = self._loop
        assert loop is not None, "node not started"
        fut: asyncio.Future[object] = loop.create_future()
        if self._stopping or self._fatal is not None:
            reason = "server stopped" if self._fatal is None else self._fatal
            fut.set_exception(EtcdError("UNAVAILABLE", f"etcdserver: {reason}"))
            return fut
        request_id = self._next_request_id
        self._next_request_id = request_id + 1
        self._waiters[request_id] = fut
        out = self._out
        out.append(_ENTRY.pack(len(payload) + 9, kind, request_id))
        out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out or not self._ready:
            return
        body = b"".join(self._out)
        self._out.clear()
        wanted = self.events_wanted
        ftype = T_BATCH if wanted is None or wanted() else T_BATCH_QUIET
        self._write(FRAME.pack(len(body), ftype), body)

    def _send_control(self, ftype: int, body: bytes) -> None:
        if self._sock is None or self._sock.fileno() < 0:
            return
        self._flush()
        self._write(FRAME.pack(len(body), ftype), body)

    def _resume(self) -> None:
        if self._restart_pending:  # the child died while paused: its successor may open the (new) file now
            self._restart_pending = False
            self._restart()
        else:
            self._send_control(T_RESUME, b"")

    def _request_pause(self, done: threading.Event, outcome: list[BaseException | None]) -> None:
        if not self._ready:
            outcome.append(StorageError("the apply process is not running"))
            done.set()
            return
        self._pause_waiters.append((done, outcome))
        self._send_control(T_PAUSE, b"")

    def _write(self, header: bytes, body: bytes) -> None:
        """Send one frame (or queue it behind what the socket did not take yet)."""
        sock = self._sock
        assert sock is not None and self._loop is not None
        if self._wbuf:
            self._wbuf += header
            self._wbuf += body
            return
        try:
            n = sock.sendmsg([header, body])
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:  # the child is gone; the reader sees EOF and handles it
            return
        if n < len(header) + len(body):
            self._wbuf += (header + body)[n:]
            self._loop.add_writer(sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        sock = self._sock
        assert sock is not None and self._loop is not None
        try:
            n = sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._loop.remove_writer(sock.fileno())
            self._wbuf.clear()
            return
        del self._wbuf[:n]
        if not self._wbuf:
            self._loop.remove_writer(sock.fileno())

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            n = self._reader.read_from(sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self._child_lost()
            return
        self._parse()

    def _parse(self) -> None:
        next_frame = self._reader.next_frame
        while (frame := next_frame()) is not None:
            self._dispatch(*frame)

    def _dispatch(self, ftype: int, body: bytes) -> None:
        if ftype == T_RESULT:
            self._on_result(body)
        elif ftype == T_FAILED:
            failure, rids = pickle.loads(body)
            err = EtcdError("UNAVAILABLE", f"quorumkv: storage write failed: {failure}")
            waiters = self._waiters
            for rid in rids:
                fut = waiters.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(err)
        elif ftype == T_LOG:
            _emit(body)
        elif ftype == T_PAUSED:
            if self._pause_waiters:
                done, outcome = self._pause_waiters.pop(0)
                outcome.append(None)
                done.set()
        elif ftype == T_HELLO:
            self._on_restarted_hello(pickle.loads(body))
        elif ftype == T_STARTED:
            self._on_restarted_started(pickle.loads(body))
        elif ftype == T_FATAL:
            self._go_fatal(f"the apply process cannot open the store: {pickle.loads(body)}")
        else:
            log.error("apply process: unexpected frame type %d", ftype)

    def _on_result(self, body: bytes) -> None:
        (last_index, applied_index, revision, compact_revision, puts, others, errs, events, granted, revoked,
         compacted_to, alarms, slow, took) = pickle.loads(body)
        m = self.applier
        previous_revision = m.revision
        m.applied_index = applied_index
        m.revision = revision
        m.compact_revision = compact_revision
        if granted or revoked:
            leases = m.leases
            for lid, ttl in granted:
                leases[lid] = ttl
            for lid in revoked:
                leases.pop(lid, None)
        if alarms is not None:
            m.alarms = {tuple(a) for a in alarms}
        self.last_index = last_index
        if took and self._fsync_observer is not None:
            self._fsync_observer(took)
        if slow and self.slow_apply_observer is not None:
            for index, data, seconds in slow:
                try:
                    self.slow_apply_observer(index, data, seconds)
                except Exception:
                    log.exception("slow apply observer failed")
        result = ApplyResult(leases_granted=granted, leases_revoked=revoked, compacted_to=compacted_to,
                             alarms_changed=alarms is not None)
        if events is not None:
            new_event = tuple.__new__
            result.events = [(rev, [new_event(Event, (t, new_event(KeyValue, (k, c, mr, v, val, lease)), p))
                                    for t, k, c, mr, v, val, lease, p in evs]) for rev, evs in events]
        elif revision > previous_revision and self.events_wanted is not None and self.events_wanted():
            # a watcher appeared while this batch was in flight without its events: read them back
            result.events = self._read_events(previous_revision + 1, revision)
        else:
            result.revision = revision
        self._on_applied(result)
        waiters = self._waiters
        pop = waiters.pop
        put_response = pb.PutResponse
        it = iter(puts)
        for rid, rev in zip(it, it, strict=True):
            fut = pop(rid, None)
            if fut is None or fut.done():
                continue
            resp = put_response()
            resp.header.revision = rev
            fut.set_result(resp)
        for rid, kind, data in others:
            fut = pop(rid, None)
            if fut is None or fut.done():
                continue
            if kind >= 0:
                fut.set_result(_RESPONSE_TYPES[kind].FromString(data))
            else:
                fut.set_result(None if kind == -1 else pickle.loads(data))
        for rid, code, message in errs:
            fut = pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(EtcdError(code, message))

    # -- losing and restarting the child --------------------------------------------------------------------

    def _child_lost(self) -> None:
        sock = self._sock
        loop = self._loop
        if sock is not None and sock.fileno() >= 0:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(sock.fileno())
                loop.remove_writer(sock.fileno())
            sock.close()
        self._ready = False
        code = self._reap(0.5 if self._stopping else 5.0)
        reason = "server stopped" if self._stopping else f"the apply process exited (code {code})"
        self._fail_all(EtcdError("UNAVAILABLE", f"etcdserver: {reason}"))
        if self._stopping:
            self._exited.set()
            return
        log.error("the apply process exited unexpectedly; failing pending proposals and restarting it",
                  extra={"exit-code": code})
        if self._fatal is not None:
            return
        if self.write_lock.held:  # a defrag may be swapping the file: the next child starts on release
            self._restart_pending = True
        else:
            self._restart()

    def _fail_all(self, err: EtcdError) -> None:
        waiters, self._waiters = self._waiters, {}
        self._out.clear()
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(err)
        pauses, self._pause_waiters = self._pause_waiters, []
        for done, outcome in pauses:
            outcome.append(StorageError(err.message))
            done.set()

    def _restart(self) -> None:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            self._go_fatal(f"the apply process died {len(self._restarts)} times in {RESTART_WINDOW_S:.0f}s")
            return
        try:
            self._spawn()
        except OSError as exc:
            self._go_fatal(f"cannot start the apply process: {exc}")
            return
        self._attach()  # HELLO, then STARTED, arrive through _dispatch

    def _on_restarted_hello(self, state: tuple[Any, ...]) -> None:
        """A restarted child opened the store: catch the mirror (and watchers) up with what the dead child
        committed without reporting it, then start a new term."""
        if self._stopping:
            return
        m = self.applier
        before_rev, before_compact, before_leases, before_alarms = (
            m.revision, m.compact_revision, dict(m.leases), set(m.alarms))
        self._set_state(state)
        result = ApplyResult(
            leases_granted=[(lid, ttl) for lid, ttl in m.leases.items() if lid not in before_leases],
            leases_revoked=[lid for lid in before_leases if lid not in m.leases],
            compacted_to=m.compact_revision if m.compact_revision != before_compact else 0,
            alarms_changed=m.alarms != before_alarms,
        )
        if m.revision > before_rev:
            result.events = self._read_events(before_rev + 1, m.revision)
        self._on_applied(result)
        slow = self.slow_apply_s if self.slow_apply_observer is not None else None
        body = _dumps(slow)
        self._write(FRAME.pack(len(body), T_START), body)

    def _read_events(self, low: int, high: int) -> list[tuple[int, list[Event]]]:
        with self.backend.temp_reader() as conn:
            return store.events_by_revision(conn, low, high)

    def _on_restarted_started(self, reply: tuple[Any, ...]) -> None:
        term, state, result_body = reply
        self._set_state(state)
        self.term = term
        self._ready = True
        log.info("the apply process was restarted", extra={"term": term})
        self._on_result(result_body)
        if self._out and not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _go_fatal(self, reason: str) -> None:
        self._fatal = reason
        self._ready = False
        log.critical("%s; writes fail from now on", reason)
        self._fail_all(EtcdError("UNAVAILABLE", f"etcdserver: {reason}"))
        if self._sock is not None and self._loop is not None and self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
        self._kill()
        if self.on_fatal is not None:
            try:
                self.on_fatal(reason)
            except Exception:
                log.exception("on_fatal hook failed")


def _emit(body: bytes) -> None:
    record = logging.makeLogRecord(pickle.loads(body))
    logging.getLogger(record.name).handle(record)


if __name__ == "__main__":
    sys.exit(main())
