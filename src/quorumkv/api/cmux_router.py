"""The client port's router: plaintext gRPC connections spliced outside the member's event loop and GIL.

The member (``api/cmux.py``) binds its plaintext client URLs and starts this module as a child process
(``python -m quorumkv.api.cmux_router``) with the listening sockets and one end of a unix ``SOCK_SEQPACKET``
pair. The child accepts, peeks at each connection's first bytes (``MSG_PEEK``: nothing is consumed) and

- splices a connection opening with the HTTP/2 preface to one of the member's gRPC servers on their private
  unix sockets (round-robin), in its own ``epoll`` loop: the bytes never reach the member's event loop, and the
  member's GIL is not taken per read and write (the in-process splice cost ~25 % of single-member write
  throughput, docs/performance.md);
- hands any other connection (HTTP/1.1: the JSON gateway, /health, /metrics ...) back to the member over the
  pair with its file descriptor (``SCM_RIGHTS``), untouched, where the asyncio HTTP server serves it as before;
- closes a connection that says nothing classifiable within :data:`SNIFF_TIMEOUT_S`.

The child dies with the member: Linux's ``PR_SET_PDEATHSIG`` (SIGKILL) is armed first thing, and the pair's
end of file (the member closing it, exiting or being killed) makes it exit; it never outlives the member, and
when it exits the spliced connections close with it (as the member's own would). If the child dies first, the
member notices the pair's end of file and accepts on the same listeners itself (``api/cmux.py``).

This module imports nothing of the project and little of the standard library, so the child starts quickly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable

#: The HTTP/2 client connection preface (RFC 9113 3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: A connection that has not said enough to be classified in this time is closed.
SNIFF_TIMEOUT_S = 10.0
#: How often a connection that sent part of the preface is peeked at again.
PARTIAL_RECHECK_S = 0.01
#: Read size of the splice.
SPLICE_READ_BYTES = 256 * 1024
#: Connecting to a gRPC server's unix socket (immediate unless its backlog is full).
CONNECT_TIMEOUT_S = 5.0

GRPC = "grpc"
HTTP = "http"

#: Messages on the pair, child -> member: a connection handed back (one fd, ancillary data).
MSG_HTTP = b"h"
#: child -> member, once: the listeners are being accepted on.
MSG_READY = b"r"
#: child -> member: a problem for the member's log (the text follows).
MSG_LOG = b"l"
MAX_LOG_BYTES = 2000

_PR_SET_PDEATHSIG = 1

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP


def classify_plain(data: bytes) -> str | None:
    """``grpc`` for the HTTP/2 preface, ``http`` for anything else, None while a prefix of the preface."""
    n = min(len(data), len(H2_PREFACE))
    if data[:n] != H2_PREFACE[:n]:
        return HTTP
    return GRPC if len(data) >= len(H2_PREFACE) else None


class _End:
    """One socket of a spliced pair: bytes read from it go to ``peer``; ``out`` holds bytes for it that its
    send buffer did not take yet (while they wait, the peer is not read: flow control)."""

    __slots__ = ("eof_in", "fd", "mask", "out", "parked", "peer", "shut_out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: _End = self
        self.out = b""
        self.eof_in = False
        self.shut_out = False
        self.mask = 0
        #: hung up while it could not be read: out of epoll (which would report the hang-up on every poll)
        #: until it can be read again
        self.parked = False


class Router:
    """The accept, sniff and splice loop (one thread; run in the child by :func:`main`, or in a thread)."""

    def __init__(self, listeners: list[socket.socket], grpc_paths: list[str],
                 hand_back: Callable[[socket.socket], bool], control: socket.socket | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self._ep = select.epoll()
        self._listeners = {s.fileno(): s for s in listeners}
        self._paths = list(grpc_paths)
        self._next_path = 0
        self._hand_back = hand_back
        self._control = control
        #: reports a problem (to the member's log)
        self._say = say or _to_stderr
        #: connections being sniffed: fd -> (socket, deadline)
        self._sniffing: dict[int, tuple[socket.socket, float]] = {}
        #: sniffed connections that sent part of the preface (peeked at again every PARTIAL_RECHECK_S)
        self._partial: set[int] = set()
        self._ends: dict[int, _End] = {}
        #: descriptors closed while the current batch of events is handled (see :meth:`_dispatch`)
        self._closed: set[int] = set()
        self._buf = bytearray(SPLICE_READ_BYTES)
        self._view = memoryview(self._buf)
        self._stopped = False
        for fd in self._listeners:
            self._ep.register(fd, _IN)
        if control is not None:
            self._ep.register(control.fileno(), _IN)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until the control socket ends (or :meth:`stop` from another thread's control socket)."""
        try:
            while not self._stopped:
                timeout = -1.0
                if self._partial:
                    timeout = PARTIAL_RECHECK_S
                elif self._sniffing:
                    timeout = max(0.0, min(d for _, d in self._sniffing.values()) - time.monotonic())
                try:
                    events = self._ep.poll(timeout)
                except InterruptedError:
                    continue
                self._dispatch(events)
                if self._partial or self._sniffing:
                    self._recheck()
        finally:
            self.close()

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        """Handle one batch of epoll events.

        Invariant: an event is about the socket that had its file descriptor when the batch was polled. A
        socket closed while handling the batch frees its number, which the next accept or splice in the same
        batch may get; the closed socket's remaining events in the batch are skipped (``_closed``), or they
        would be taken for the new socket's (a stale hang-up would reset a fresh client connection)."""
        closed = self._closed
        closed.clear()
        ends = self._ends
        for fd, ev in events:
            if fd in closed:
                continue
            end = ends.get(fd)
            if end is not None:
                if ev == _IN and self._fast_pump(end):
                    continue
                self._on_end(fd, ev)
            elif fd in self._sniffing:
                self._sniff(fd)
            elif fd in self._listeners:
                self._accept(self._listeners[fd])
            elif self._control is not None and fd == self._control.fileno():
                self._on_control()
        closed.clear()

    def close(self) -> None:
        self._stopped = True
        for end in list(self._ends.values()):
            with contextlib.suppress(OSError):
                end.sock.close()
        self._ends.clear()
        for sock, _ in self._sniffing.values():
            with contextlib.suppress(OSError):
                sock.close()
        self._sniffing.clear()
        self._partial.clear()
        for sock in self._listeners.values():
            with contextlib.suppress(OSError):
                sock.close()
        self._listeners.clear()
        with contextlib.suppress(OSError, ValueError):
            self._ep.close()

    def _on_control(self) -> None:
        assert self._control is not None
        try:
            data = self._control.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the member closed the pair, exited or died
            self._stopped = True

    # -- accepting and sniffing ---------------------------------------------------------------------------
    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the listener stays
                self._say(f"accepting a client connection failed: {exc}")
                return
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = sock.fileno()
            self._sniffing[fd] = (sock, time.monotonic() + SNIFF_TIMEOUT_S)
            self._ep.register(fd, _IN)

    def _sniff(self, fd: int) -> None:
        sock, _ = self._sniffing[fd]
        try:
            data = sock.recv(len(H2_PREFACE), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed before saying anything
            self._drop_sniffing(fd, close=True)
            return
        verdict = classify_plain(data)
        if verdict is None:  # part of the preface: the socket stays readable, so look again gently
            if fd not in self._partial:
                self._partial.add(fd)
                self._ep.unregister(fd)
            return
        self._drop_sniffing(fd, close=False)
        if verdict == GRPC and self._paths:
            self._splice(sock)
            return
        self._closed.add(fd)  # handed back (the member has its own descriptor) or refused: gone from here
        if not self._hand_back(sock):
            sock.close()

    def _drop_sniffing(self, fd: int, *, close: bool) -> None:
        sock, _ = self._sniffing.pop(fd)
        if fd in self._partial:
            self._partial.discard(fd)
        else:
            self._ep.unregister(fd)
        if close:
            self._closed.add(fd)
            sock.close()

    def _recheck(self) -> None:
        now = time.monotonic()
        for fd in list(self._partial):
            self._sniff(fd)
        for fd, (_, deadline) in list(self._sniffing.items()):
            if deadline <= now:
                self._drop_sniffing(fd, close=True)

    # -- splicing -------------------------------------------------------------------------------------
    def _splice(self, sock: socket.socket) -> None:
        path = self._paths[self._next_path % len(self._paths)]
        self._next_path += 1
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            back.settimeout(CONNECT_TIMEOUT_S)
            back.connect(path)
            back.setblocking(False)
        except OSError as exc:
            self._say(f"cannot reach the gRPC server at {path}: {exc}")
            back.close()
            self._closed.add(sock.fileno())
            sock.close()
            return
        a, b = _End(sock), _End(back)
        a.peer, b.peer = b, a
        for end in (a, b):
            self._ends[end.fd] = end
            end.mask = _IN
            self._ep.register(end.fd, _IN)

    def _update(self, end: _End) -> None:
        mask = 0
        if not end.eof_in and not end.peer.out:
            mask |= _IN
        if end.out:
            mask |= _OUT
        if end.parked:
            if mask:
                end.parked = False
                end.mask = mask
                self._ep.register(end.fd, mask)
        elif mask != end.mask:
            end.mask = mask
            self._ep.modify(end.fd, mask)

    def _on_end(self, fd: int, ev: int) -> None:
        end = self._ends[fd]
        if ev & select.EPOLLERR:  # a reset or another socket error: neither direction can go on
            self._close_pair(end)
            return
        read = False
        try:
            if ev & _OUT:
                self._flush(end)
            if ev & (_IN | _ERR) and not end.eof_in and not end.peer.out:
                self._pump(end)
                read = True
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT):
                self._say(f"client connection failed: {exc}")
            self._close_pair(end)
            return
        if end.fd not in self._ends:
            return
        if end.eof_in and end.peer.eof_in and not end.out and not end.peer.out:
            self._close_pair(end)  # both directions ended and delivered
            return
        if ev & select.EPOLLHUP and not read and not end.out and not end.parked:
            end.parked = True  # nothing to do with it now; _update registers it again when it can be read
            self._ep.unregister(end.fd)
        self._update(end)
        self._update(end.peer)

    def _fast_pump(self, end: _End) -> bool:
        """The common case in one step: bytes readable, all taken by the peer, no state change (else False,
        and :meth:`_on_end` does the work)."""
        if end.eof_in or end.peer.out:
            return False
        try:
            n = end.sock.recv_into(self._buf)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # a reset: neither direction can go on
            self._close_pair(end)
            return True
        if n == 0:
            end.eof_in = True
            self._after_eof(end)
            return True
        try:
            sent = end.peer.sock.send(self._view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close_pair(end)
            return True
        if sent < n:
            end.peer.out = bytes(self._view[sent:n])
            self._update(end)
            self._update(end.peer)
        return True

    def _after_eof(self, end: _End) -> None:
        if not end.peer.out:
            self._shut(end.peer)
        if end.eof_in and end.peer.eof_in and not end.out and not end.peer.out:
            self._close_pair(end)
        else:
            self._update(end)
            self._update(end.peer)

    def _pump(self, end: _End) -> None:
        """Read what ``end`` has and write it to its peer (what the peer does not take waits in peer.out)."""
        n = end.sock.recv_into(self._buf)
        peer = end.peer
        if n == 0:
            end.eof_in = True
            if not peer.out:
                self._shut(peer)
            return
        try:
            sent = peer.sock.send(self._view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < n:
            peer.out = bytes(self._view[sent:n])

    def _flush(self, end: _End) -> None:
        if end.out:
            try:
                sent = end.sock.send(end.out)
            except (BlockingIOError, InterruptedError):
                return
            end.out = end.out[sent:]
        if not end.out and end.peer.eof_in:
            self._shut(end)

    def _shut(self, end: _End) -> None:
        """Half-close: no more bytes for ``end`` (its peer said end of file and everything was delivered)."""
        if not end.shut_out:
            end.shut_out = True
            with contextlib.suppress(OSError):
                end.sock.shutdown(socket.SHUT_WR)

    def _close_pair(self, end: _End) -> None:
        for side in (end, end.peer):
            if self._ends.pop(side.fd, None) is not None:
                if not side.parked:
                    with contextlib.suppress(OSError, ValueError):
                        self._ep.unregister(side.fd)
                self._closed.add(side.fd)
                side.sock.close()


def _to_stderr(text: str) -> None:
    print(f"quorumkv client port router: {text}", file=sys.stderr, flush=True)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the member dies (Linux); exit now if it died already."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl: the pair's end of file still ends the child
    if os.getppid() != parent_pid:
        os._exit(0)


def main(argv: list[str]) -> int:
    """``python -m quorumkv.api.cmux_router PARENT_PID CONTROL_FD LISTENER_FDS GRPC_PATHS`` (comma-separated)."""
    parent_pid, control_fd = int(argv[0]), int(argv[1])
    _die_with_parent(parent_pid)
    # a terminal's ^C, or a service manager's SIGTERM to the whole group, reaches the member too, which stops
    # us once its connections are closed (and its death kills us: PR_SET_PDEATHSIG)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    listeners = [socket.socket(fileno=int(fd)) for fd in argv[2].split(",") if fd]
    for sock in listeners:
        sock.setblocking(False)
    paths = [p for p in argv[3].split(",") if p] if len(argv) > 3 else []

    def say(text: str) -> None:
        try:
            control.send(MSG_LOG + text.encode(errors="replace")[:MAX_LOG_BYTES])
        except OSError:
            _to_stderr(text)

    def hand_back(sock: socket.socket) -> bool:
        try:
            socket.send_fds(control, [MSG_HTTP], [sock.fileno()])
        except OSError as exc:  # the member is gone or its queue is full: the client retries
            say(f"cannot hand a connection back: {exc}")
            return False
        sock.close()
        return True

    router = Router(listeners, paths, hand_back, control, say)
    with contextlib.suppress(OSError):
        control.send(MSG_READY)
    router.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
