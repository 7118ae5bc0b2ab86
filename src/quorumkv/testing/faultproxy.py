"""A fault-injecting TCP proxy on loopback, for cluster tests (partitions, lossy or slow links, resets).

:class:`FaultProxy` listens on ``127.0.0.1`` (port 0: the OS picks one) and relays every accepted connection
to one target ``host:port``.  "forward" is the direction from the connecting client to the target, "backward"
the replies from the target to the client.  One mode applies to the whole proxy at a time, switchable at any
moment from any thread, and it applies to connections already open as well as to new ones:

=========================== ======================================================================================
``pass_through()``          bytes are relayed unchanged (the initial mode)
``blackhole()``             connections stay open; bytes in both directions are read and thrown away
``delay(ms, jitter_ms=0)``  every chunk is held ``ms`` (+ uniform ``0..jitter_ms``) before it is relayed; the order
                            of bytes in each direction is kept (a chunk never overtakes an earlier one)
``drop_connections()``      every open connection is reset (RST); new ones are accepted and reset at once, until
                            another mode is set
``one_way(direction)``      only ``"forward"`` or only ``"backward"`` bytes pass; the other direction's are thrown
                            away
=========================== ======================================================================================

Thrown-away bytes leave a hole in a TCP byte stream, which no framed protocol (HTTP/2, gRPC) can resume
after.  So a connection that lost bytes in one direction is *reset* at the moment a mode lets that direction
pass again (``pass_through()`` after ``blackhole()``, for instance); a connection that lost nothing (it was
idle while blackholed) carries on.  Chunks still waiting out a delay when the mode changes are judged by the
mode at the moment they are due.

Bounded: each direction of each connection holds at most ``max_buffered_chunks`` chunks of at most
``chunk_size`` bytes (a full buffer stops reading from the sender, i.e. TCP back-pressure); at most
``max_connections`` connections are relayed at once (more are reset); stopping the proxy closes the listener
and every connection.

Synchronous use (the proxy runs its own event loop in a daemon thread)::

    with FaultProxy("127.0.0.1", server_port) as proxy:
        connect_to(proxy.port); proxy.blackhole(); ...; proxy.pass_through()
        print(proxy.stats())

Asynchronous use (the proxy runs on the caller's loop)::

    async with FaultProxy("127.0.0.1", server_port) as proxy:
        ...

Several proxies can share one background loop: ``loop = EventLoopThread(); FaultProxy(...).start(loop)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "DIRECTIONS",
    "Direction",
    "EventLoopThread",
    "FaultProxy",
    "ProxyMode",
    "ProxyStats",
]

Direction = Literal["forward", "backward"]
DIRECTIONS: tuple[Direction, Direction] = ("forward", "backward")
ModeKind = Literal["pass", "blackhole", "delay", "drop", "one_way"]

_T = TypeVar("_T")
_LOOPBACK_PREFIX = "127."
_EOF = b""
#: How long a synchronous caller waits for the proxy's loop to carry out a control or a stop.
_CONTROL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ProxyMode:
    """The proxy's current behaviour (see the module docstring)."""

    kind: ModeKind = "pass"
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    #: For ``one_way``: the only direction whose bytes pass.
    direction: Direction | None = None

    def passes(self, direction: Direction) -> bool:
        """Whether bytes travelling in ``direction`` are relayed (rather than thrown away) in this mode."""
        if self.kind in ("pass", "delay"):
            return True
        if self.kind == "one_way":
            return direction == self.direction
        return False


@dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy started (a snapshot)."""

    #: Bytes relayed client → target and target → client.
    bytes_forward: int
    bytes_backward: int
    #: Bytes read and thrown away (blackhole, one_way) per direction.
    swallowed_forward: int
    swallowed_backward: int
    #: Connections accepted and relayed to the target.
    connections_accepted: int
    #: Connections reset right after accept: drop mode, target unreachable, or ``max_connections`` reached.
    connections_refused: int
    #: Relayed connections the proxy reset (drop_connections, a stream with a hole, stop, an error).
    connections_reset: int
    #: Connections currently relayed.
    connections_active: int


class EventLoopThread:
    """An asyncio event loop running in a daemon thread; coroutines are submitted from other threads."""

    def __init__(self, name: str = "faultproxy-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float = _CONTROL_TIMEOUT_S) -> _T:
        """Run ``coro`` on the loop and wait (bounded) for its result; not callable from the loop thread."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("EventLoopThread.run() called from its own loop thread (await the coroutine instead)")
        if self._closed:
            coro.close()
            raise RuntimeError("EventLoopThread is closed")
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def close(self, timeout_s: float = _CONTROL_TIMEOUT_S) -> None:
        """Stop the loop and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running() or self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if not self.in_loop_thread():
            self._thread.join(timeout_s)

    def __enter__(self) -> EventLoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reset_transport(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN: the peer sees "connection reset"."""
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Connection:
    """One relayed connection: two directions, each a reader task → bounded queue → writer task."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.up_reader, self.up_writer = upstream
        self.tainted: dict[Direction, bool] = {"forward": False, "backward": False}
        self.closed = False
        self._last_due: dict[Direction, float] = {"forward": 0.0, "backward": 0.0}
        self._queues: dict[Direction, asyncio.Queue[tuple[float, bytes]]] = {
            d: asyncio.Queue(maxsize=proxy.max_buffered_chunks) for d in DIRECTIONS
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._finished: dict[Direction, bool] = {"forward": False, "backward": False}
        self.done = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        for direction in DIRECTIONS:
            src, dst = (
                (self.client_reader, self.up_writer)
                if direction == "forward"
                else (self.up_reader, self.client_writer)
            )
            self._tasks.append(asyncio.create_task(self._read(direction, src)))
            self._tasks.append(asyncio.create_task(self._write(direction, dst)))

    async def _read(self, direction: Direction, src: asyncio.StreamReader) -> None:
        proxy, queue = self.proxy, self._queues[direction]
        try:
            while True:
                data = await src.read(proxy.chunk_size)
                if not data:
                    await queue.put((0.0, _EOF))
                    return
                mode = proxy.mode
                if not mode.passes(direction):
                    self._swallow(direction, len(data))
                    continue
                due = 0.0
                if mode.kind == "delay":
                    hold = mode.delay_ms + (proxy.rng.uniform(0.0, mode.jitter_ms) if mode.jitter_ms > 0 else 0.0)
                    due = max(time.monotonic() + hold / 1000.0, self._last_due[direction])
                    self._last_due[direction] = due
                await queue.put((due, data))
        except (ConnectionError, OSError):
            self.reset()

    async def _write(self, direction: Direction, dst: asyncio.StreamWriter) -> None:
        proxy, queue = self.proxy, self._queues[direction]
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    if dst.can_write_eof() and not dst.transport.is_closing():
                        dst.write_eof()
                    self._finish(direction)
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not proxy.mode.passes(direction):
                    self._swallow(direction, len(data))
                    continue
                dst.write(data)
                await dst.drain()
                proxy._count_relayed(direction, len(data))
        except (ConnectionError, OSError):
            self.reset()

    def _swallow(self, direction: Direction, nbytes: int) -> None:
        self.tainted[direction] = True
        self.proxy._count_swallowed(direction, nbytes)

    def _finish(self, direction: Direction) -> None:
        """One direction reached EOF and passed it on; when both have, close both sides normally."""
        self._finished[direction] = True
        if all(self._finished.values()) and not self.closed:
            self.closed = True
            for writer in (self.client_writer, self.up_writer):
                writer.close()
            self._settle()

    def reset(self) -> None:
        """Reset both sides (RST) and stop relaying. Idempotent; callable only on the proxy's loop."""
        if self.closed:
            return
        self.closed = True
        self.proxy._count_reset()
        for writer in (self.client_writer, self.up_writer):
            _reset_transport(writer)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._settle()

    def _settle(self) -> None:
        self.proxy._forget(self)
        if not self.done.done():
            self.done.set_result(None)

    async def wait_tasks(self) -> None:
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class FaultProxy:
    """A TCP proxy ``127.0.0.1:<port>`` → ``target_host:target_port`` with switchable faults (see module doc)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "",
        chunk_size: int = 16 * 1024,
        max_buffered_chunks: int = 64,
        max_connections: int = 256,
        connect_timeout_s: float = 2.0,
        seed: int | None = None,
    ) -> None:
        for host in (target_host, listen_host):
            if not (host.startswith(_LOOPBACK_PREFIX) or host == "localhost"):
                raise ValueError(f"FaultProxy only works on loopback (127.0.0.0/8), not {host!r}")
        if chunk_size <= 0 or max_buffered_chunks <= 0 or max_connections <= 0:
            raise ValueError("chunk_size, max_buffered_chunks and max_connections must be positive")
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.name = name or f"proxy->{target_host}:{target_port}"
        self.chunk_size = chunk_size
        self.max_buffered_chunks = max_buffered_chunks
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.rng = random.Random(seed)
        self._requested_port = listen_port
        self._mode = ProxyMode()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set when :meth:`start` runs the proxy on a background loop thread.
        self._loop_thread: EventLoopThread | None = None
        self._owns_loop_thread = False
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._port = 0
        self._stopped = False
        self._counts = {
            "bytes_forward": 0,
            "bytes_backward": 0,
            "swallowed_forward": 0,
            "swallowed_backward": 0,
            "connections_accepted": 0,
            "connections_refused": 0,
            "connections_reset": 0,
        }

    # ------------------------------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The listening port (after start)."""
        if not self._port:
            raise RuntimeError(f"{self.name}: not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the proxy in the form etcd-style peer/client URLs take."""
        return f"http://{self.listen_host}:{self.port}"

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    def stats(self) -> ProxyStats:
        return ProxyStats(**self._counts, connections_active=len(self._connections))

    # ------------------------------------------------------------------------------------------ lifecycle

    async def astart(self) -> FaultProxy:
        """Start listening on the running event loop; returns self."""
        if self._server is not None or self._stopped:
            raise RuntimeError(f"{self.name}: already started (a proxy starts once)")
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self._requested_port, reuse_address=True
        )
        sockets = self._server.sockets
        self._port = int(sockets[0].getsockname()[1])
        return self

    async def aclose(self) -> None:
        """Stop listening and reset every connection (idempotent); runs on the proxy's loop."""
        if self._stopped:
            return
        self._stopped = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.reset()
        for conn in connections:
            await conn.wait_tasks()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        for task in handlers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    def start(self, loop_thread: EventLoopThread | None = None) -> FaultProxy:
        """Start on ``loop_thread`` (default: a new one owned by this proxy); for synchronous callers."""
        if loop_thread is None:
            loop_thread = EventLoopThread(name=f"faultproxy-{self.name}")
            self._owns_loop_thread = True
        self._loop_thread = loop_thread
        try:
            loop_thread.run(self.astart())
        except BaseException:
            if self._owns_loop_thread:
                loop_thread.close()
            raise
        return self

    def stop(self) -> None:
        """Stop the proxy and close every connection (idempotent); from any thread but the proxy's loop."""
        loop = self._loop
        if loop is None or self._stopped:
            self._close_owned_thread()
            return
        if self._in_loop_thread():
            raise RuntimeError(f"{self.name}: stop() called on the proxy's own loop; use 'await aclose()'")
        if loop.is_closed():
            self._stopped = True
            return
        future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
        try:
            future.result(_CONTROL_TIMEOUT_S)
        finally:
            self._close_owned_thread()

    def _close_owned_thread(self) -> None:
        if self._loop_thread is not None and self._owns_loop_thread:
            self._loop_thread.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FaultProxy:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------ controls

    def pass_through(self) -> None:
        """Relay bytes unchanged (existing and new connections)."""
        self._set_mode(ProxyMode("pass"))

    def blackhole(self) -> None:
        """Keep connections open, throw away every byte in both directions."""
        self._set_mode(ProxyMode("blackhole"))

    def delay(self, ms: float, jitter_ms: float = 0.0) -> None:
        """Hold every chunk ``ms`` + uniform(0, ``jitter_ms``) milliseconds; order within a direction is kept."""
        if ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0")
        self._set_mode(ProxyMode("delay", delay_ms=float(ms), jitter_ms=float(jitter_ms)))

    def drop_connections(self) -> None:
        """Reset every open connection and reset new ones at accept, until another mode is set."""
        self._set_mode(ProxyMode("drop"))

    def one_way(self, direction: Direction) -> None:
        """Only ``direction``'s bytes pass ("forward": client → target, "backward": target → client)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        self._set_mode(ProxyMode("one_way", direction=direction))

    def _set_mode(self, mode: ProxyMode) -> None:
        def apply() -> None:
            self._mode = mode
            for conn in list(self._connections):
                if mode.kind == "drop" or any(conn.tainted[d] and mode.passes(d) for d in DIRECTIONS):
                    conn.reset()

        self._call_on_loop(apply)

    def _in_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _call_on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the proxy's loop and wait for it (directly when already on that loop)."""
        loop = self._loop
        if loop is None or self._stopped or loop.is_closed() or self._in_loop_thread():
            fn()
            return
        done = threading.Event()
        errors: list[BaseException] = []

        def wrapper() -> None:
            try:
                fn()
            except BaseException as exc:  # handed to the caller's thread
                errors.append(exc)
            finally:
                done.set()

        loop.call_soon_threadsafe(wrapper)
        if not done.wait(_CONTROL_TIMEOUT_S):
            raise TimeoutError(f"{self.name}: the proxy's loop did not run a control within {_CONTROL_TIMEOUT_S}s")
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------------------------------ relaying

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing() or len(self._connections) >= self.max_connections:
            self._counts["connections_refused"] += 1
            _reset_transport(writer)
            return
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), self.connect_timeout_s
            )
        except (OSError, TimeoutError):
            self._counts["connections_refused"] += 1
            _reset_transport(writer)
            return
        except asyncio.CancelledError:  # stopped while dialling
            _reset_transport(writer)
            raise
        if self._refusing():  # stopped, or the mode changed while dialling
            self._counts["connections_refused"] += 1
            _reset_transport(upstream[1])
            _reset_transport(writer)
            return
        conn = _Connection(self, (reader, writer), upstream)
        self._connections.add(conn)
        self._counts["connections_accepted"] += 1
        conn.start()
        await conn.done

    def _refusing(self) -> bool:
        return self._stopped or self._mode.kind == "drop"

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)

    def _count_relayed(self, direction: Direction, nbytes: int) -> None:
        self._counts[f"bytes_{direction}"] += nbytes

    def _count_swallowed(self, direction: Direction, nbytes: int) -> None:
        self._counts[f"swallowed_{direction}"] += nbytes

    def _count_reset(self) -> None:
        self._counts["connections_reset"] += 1

    def __repr__(self) -> str:
        port = self._port or "?"
        return f"<FaultProxy {self.name} 127.0.0.1:{port} -> {self.target_host}:{self.target_port} {self._mode.kind}>"
