"""FaultProxy against a small echo server: each mode does what it says, on existing and new connections."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from quorumkv.testing.faultproxy import EventLoopThread, FaultProxy, ProxyMode

#: How long a receive waits before concluding that nothing is coming (kept short: the suite must stay fast).
QUIET_S = 0.3
BANNER = b"hello\n"


class _EchoHandler(socketserver.BaseRequestHandler):
    """Sends BANNER when a connection arrives (bytes that flow backward unprompted), then echoes."""

    server: EchoServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        with self.server.lock:
            self.server.connections += 1
        try:
            sock.sendall(BANNER)
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                with self.server.lock:
                    self.server.received.extend(data)
                sock.sendall(data)
        except OSError:
            return


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.lock = threading.Lock()
        self.received = bytearray()
        self.connections = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def got(self) -> bytes:
        with self.lock:
            return bytes(self.received)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port, seed=7) as p:
        yield p


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int, timeout_s: float = 2.0) -> bytes:
    sock.settimeout(timeout_s)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out.extend(chunk)
    return bytes(out)


def nothing_arrives(sock: socket.socket, quiet_s: float = QUIET_S) -> bool:
    """True if the connection stays open and silent for ``quiet_s``; False on data, EOF or reset."""
    sock.settimeout(quiet_s)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False
    del data  # data or EOF: something arrived
    return False


def is_reset(sock: socket.socket, timeout_s: float = 2.0) -> bool:
    """True if the connection is reset or closed by the peer (within ``timeout_s``), discarding any data."""
    sock.settimeout(timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def new_connection_is_reset(proxy: FaultProxy) -> bool:
    """Connect and see the connection reset; the RST can already arrive while connect() returns."""
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return True
    with sock:
        return is_reset(sock)


def wait_for(predicate: object, timeout_s: float = 2.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def test_pass_through_relays_both_ways_and_counts(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        assert recv_exactly(sock, len(BANNER)) == BANNER
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
    assert wait_for(lambda: proxy.stats().connections_active == 0)
    stats = proxy.stats()
    assert stats.bytes_forward == 4
    assert stats.bytes_backward == len(BANNER) + 4
    assert stats.connections_accepted == 1 and stats.connections_refused == 0
    assert stats.swallowed_forward == stats.swallowed_backward == 0
    assert echo.got() == b"ping"


def test_blackhole_swallows_both_directions_keeps_connections_open(proxy: FaultProxy, echo: EchoServer) -> None:
    busy = connect(proxy)
    idle = connect(proxy)
    try:
        assert recv_exactly(busy, len(BANNER)) == BANNER
        assert recv_exactly(idle, len(BANNER)) == BANNER
        proxy.blackhole()
        assert proxy.mode == ProxyMode("blackhole")
        busy.sendall(b"lost")
        assert nothing_arrives(busy)  # open, nothing echoed
        assert wait_for(lambda: proxy.stats().swallowed_forward == 4)
        assert echo.got() == b""
        with connect(proxy) as fresh:  # a new connection is accepted, the server's banner is swallowed
            assert nothing_arrives(fresh)
            assert wait_for(lambda: proxy.stats().swallowed_backward >= len(BANNER))
        assert proxy.stats().connections_reset == 0

        proxy.pass_through()
        # The busy connection lost bytes, so its stream has a hole: it is reset rather than resumed.
        assert is_reset(busy)
        # The idle one lost nothing and carries on.
        idle.sendall(b"still here")
        assert recv_exactly(idle, 10) == b"still here"
        with connect(proxy) as fresh:
            assert recv_exactly(fresh, len(BANNER)) == BANNER
    finally:
        busy.close()
        idle.close()


def test_delay_holds_each_direction_and_keeps_order(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert recv_exactly(sock, len(BANNER)) == BANNER
        proxy.delay(150)
        t0 = time.monotonic()
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        assert time.monotonic() - t0 >= 0.29  # 150 ms forward + 150 ms back

        proxy.delay(5, jitter_ms=30)
        messages = [f"<{i:03d}>".encode() for i in range(60)]
        for message in messages:
            sock.sendall(message)  # TCP_NODELAY: mostly separate chunks, each with its own random hold
        expected = b"".join(messages)
        assert recv_exactly(sock, len(expected), timeout_s=5.0) == expected


def test_drop_connections_resets_existing_and_refuses_new_until_pass(proxy: FaultProxy) -> None:
    existing = connect(proxy)
    try:
        assert recv_exactly(existing, len(BANNER)) == BANNER
        proxy.drop_connections()
        assert is_reset(existing)
        assert new_connection_is_reset(proxy)  # the listener stays (the port is not given up), connections reset
        stats = proxy.stats()
        assert stats.connections_reset == 1 and stats.connections_refused == 1
        assert stats.connections_active == 0
        proxy.pass_through()
        with connect(proxy) as again:
            assert recv_exactly(again, len(BANNER)) == BANNER
    finally:
        existing.close()


def test_one_way_forward_passes_only_client_to_target(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        assert recv_exactly(sock, len(BANNER)) == BANNER
        proxy.one_way("forward")
        sock.sendall(b"ping")
        assert wait_for(lambda: echo.got() == b"ping")  # reached the server
        assert nothing_arrives(sock)  # the echo did not come back
        assert wait_for(lambda: proxy.stats().swallowed_backward == 4)
        assert proxy.stats().bytes_forward == 4


def test_one_way_backward_passes_only_target_to_client(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.one_way("backward")
    with connect(proxy) as sock:
        assert recv_exactly(sock, len(BANNER)) == BANNER  # the server's bytes arrive
        sock.sendall(b"ping")
        assert nothing_arrives(sock)
        assert wait_for(lambda: proxy.stats().swallowed_forward == 4)
        assert echo.got() == b""  # the client's bytes never reached the server


def test_buffers_are_bounded_under_a_stalled_link(echo: EchoServer) -> None:
    """With a 60 s delay the proxy may hold only max_buffered_chunks chunks; the sender then blocks."""
    with FaultProxy("127.0.0.1", echo.port, chunk_size=1024, max_buffered_chunks=4) as p:
        with connect(p) as sock:
            assert recv_exactly(sock, len(BANNER)) == BANNER
            p.delay(60_000)
            sock.setblocking(False)
            block, sent, limit = b"z" * 65536, 0, 64 * 1024 * 1024
            deadline = time.monotonic() + 5.0
            # Offer up to 64 MiB (bounded in bytes and time) until the socket stays unwritable for QUIET_S.
            while sent < limit and time.monotonic() < deadline:
                if not select.select([], [sock], [], QUIET_S)[1]:
                    break
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(block)
            # Kernel socket buffers (a few MiB on loopback) plus the proxy's 4 KiB: far below what was offered.
            assert sent < 32 * 1024 * 1024
            assert echo.got() == b""
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5.0  # stop() does not wait for the held chunks


def test_stop_closes_connections_and_listener(echo: EchoServer) -> None:
    p = FaultProxy("127.0.0.1", echo.port).start()
    sock = connect(p)
    try:
        assert recv_exactly(sock, len(BANNER)) == BANNER
        port = p.port
        p.stop()
        assert is_reset(sock)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        p.stop()  # idempotent
    finally:
        sock.close()


def test_unreachable_target_resets_the_client() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]  # bound but not listening: connections are refused
        with FaultProxy("127.0.0.1", dead_port) as p:
            assert new_connection_is_reset(p)
            assert wait_for(lambda: p.stats().connections_refused == 1)
            assert p.stats().connections_accepted == 0


def test_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("10.1.2.3", 80)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("127.0.0.1", 80, listen_host="0.0.0.0")


def test_several_proxies_share_one_loop_thread(echo: EchoServer) -> None:
    with EventLoopThread() as loop_thread:
        a = FaultProxy("127.0.0.1", echo.port).start(loop_thread)
        b = FaultProxy("127.0.0.1", echo.port).start(loop_thread)
        try:
            a.blackhole()
            with connect(a) as sa, connect(b) as sb:
                assert recv_exactly(sb, len(BANNER)) == BANNER
                assert nothing_arrives(sa)
        finally:
            a.stop()
            b.stop()
        assert loop_thread.loop.is_running()  # proxies started on a shared loop leave it running


async def test_async_use_on_the_callers_loop(echo: EchoServer) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as p:
        reader, writer = await asyncio.open_connection(*p.address)
        try:
            assert await asyncio.wait_for(reader.readexactly(len(BANNER)), 2.0) == BANNER
            p.blackhole()  # on the proxy's own loop: applied directly
            writer.write(b"lost")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), QUIET_S)
            p.pass_through()  # the connection lost bytes: reset
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 2.0)
        finally:
            writer.close()
        assert p.stats().swallowed_forward == 4
        assert p.stats().connections_reset == 1
