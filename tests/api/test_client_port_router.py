"""The client port's router (``api/cmux_router.py``): plaintext gRPC spliced in a child process, everything else
handed back to the member by fd passing, and the child never outliving the member.

The first tests drive :class:`ClientMux` in-process against a stand-in "gRPC server" (an echo server on a unix
socket: the splice is byte-for-byte, whatever the protocol) and a stand-in HTTP handler; the last ones run a
real ``quorumkv`` member and kill it (or its router) with SIGKILL. Every socket has a timeout and every wait a
bound, so a hang fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quorumkv.api.cmux import SPLICE_ENV, ClientMux
from quorumkv.api.cmux_router import H2_PREFACE, Router
from quorumkv.testing.processes import run_etcdctl, start_quorumkv

TIMEOUT_S = 20.0


class EchoServer:
    """A unix socket server in a thread: each connection gets back every byte it sends, and the server
    half-closes its side when the client has (then the connection ends)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(512)
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[EchoServer]:
    server = EchoServer(str(tmp_path / "g.sock"))
    yield server
    server.close()


async def _http_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one HTTP/1.1 request with the pid that served it (the member's, not the router's)."""
    head = await reader.readuntil(b"\r\n\r\n")
    body = f"{os.getpid()} {head.split(b' ')[1].decode()}".encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


@pytest.fixture(params=["process", "thread", "loop"])
async def mux(request: pytest.FixtureRequest, echo: EchoServer, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[tuple[ClientMux, int]]:
    monkeypatch.setenv(SPLICE_ENV, request.param)
    front = ClientMux(stream_limit=65536)
    port = front.listen("127.0.0.1", 0, secure=False)
    front.start({False: [echo.path]}, _http_handler, None)
    assert (front._router is None) == (request.param == "loop")
    yield front, port
    await front.close()


def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return asyncio.wait_for(asyncio.to_thread(fn, *args), 60)


def _grpc_roundtrip(port: int, payload: bytes) -> bytes:
    """Send the preface and ``payload``, half-close, read everything back until the end of file."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        s.sendall(H2_PREFACE + payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def _http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


async def test_grpc_is_spliced_and_http_handed_back(mux: tuple[ClientMux, int], echo: EchoServer) -> None:
    """A preface goes to the gRPC socket byte for byte (a half-close travels both ways and the connection then
    ends); an HTTP/1.1 request is answered by the member's handler, on the same port."""
    _, port = mux
    payload = os.urandom(3 * 1024 * 1024)  # more than the socket buffers: flow control in both directions
    assert await _blocking(_grpc_roundtrip, port, payload) == H2_PREFACE + payload
    assert echo.connections == 1
    answer = await _blocking(_http_get, port, "/health")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(f"{os.getpid()} /health".encode())
    assert echo.connections == 1  # the HTTP connection never reached the gRPC side


async def test_many_concurrent_connections(mux: tuple[ClientMux, int], echo: EchoServer) -> None:
    """300 gRPC connections and 50 HTTP ones at once: each gets its own bytes back."""
    _, port = mux

    def many() -> None:
        payloads = [os.urandom(20000) + str(i).encode() for i in range(300)]
        socks = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) for _ in payloads]
        try:
            for s, p in zip(socks, payloads, strict=True):
                s.sendall(H2_PREFACE + p)
            for s, p in zip(socks, payloads, strict=True):
                want = H2_PREFACE + p
                got = b""
                while len(got) < len(want):
                    data = s.recv(65536)
                    assert data, "connection ended early"
                    got += data
                assert got == want
        finally:
            for s in socks:
                s.close()

    grpc_side = asyncio.to_thread(many)
    http_side = [asyncio.to_thread(_http_get, port, f"/r{i}") for i in range(50)]
    _, *answers = await asyncio.wait_for(asyncio.gather(grpc_side, *http_side), 90)
    for i, answer in enumerate(answers):
        assert isinstance(answer, bytes) and answer.endswith(f" /r{i}".encode())
    assert echo.connections == 300


async def test_partial_preface_and_silence_do_not_block_others(mux: tuple[ClientMux, int]) -> None:
    _, port = mux
    held = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) for _ in range(2)]
    try:
        held[0].sendall(H2_PREFACE[:10])
        await asyncio.sleep(0.1)
        assert await _blocking(_grpc_roundtrip, port, b"x") == H2_PREFACE + b"x"
        assert (await _blocking(_http_get, port, "/a")).startswith(b"HTTP/1.1 200 OK")
        held[0].sendall(H2_PREFACE[10:] + b"late")  # the rest of the preface: spliced after all
        held[0].shutdown(socket.SHUT_WR)
        got = b""
        while data := await asyncio.to_thread(held[0].recv, 65536):
            got += data
        assert got == H2_PREFACE + b"late"
    finally:
        for s in held:
            s.close()


async def test_a_dead_router_process_is_replaced_by_the_event_loop(echo: EchoServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of the router: the member accepts on the same port itself (gRPC and HTTP), and closing still
    frees the port."""
    monkeypatch.setenv(SPLICE_ENV, "process")
    front = ClientMux(stream_limit=65536)
    port = front.listen("127.0.0.1", 0, secure=False)
    front.start({False: [echo.path]}, _http_handler, None)
    try:
        router = front._router
        assert router is not None
        proc: subprocess.Popen[bytes] = router.proc  # type: ignore[attr-defined]
        assert await _blocking(_grpc_roundtrip, port, b"a") == H2_PREFACE + b"a"
        proc.kill()
        for _ in range(400):
            if front._router is None:
                break
            await asyncio.sleep(0.025)
        assert front._router is None
        assert proc.poll() is not None
        assert await _blocking(_grpc_roundtrip, port, b"b") == H2_PREFACE + b"b"
        assert (await _blocking(_http_get, port, "/after")).endswith(b" /after")
    finally:
        await front.close()
    with socket.socket() as probe:  # nobody holds the port any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


async def test_router_problems_are_logged_by_the_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The router reports through the pair (no stray lines on the member's stderr): a gRPC server socket that
    is gone closes the client's connection and is logged by the member."""
    monkeypatch.setenv(SPLICE_ENV, "process")
    front = ClientMux(stream_limit=65536)
    port = front.listen("127.0.0.1", 0, secure=False)
    missing = str(tmp_path / "gone.sock")
    front.start({False: [missing]}, _http_handler, None)
    try:
        with caplog.at_level("WARNING", logger="quorumkv.cmux"):
            try:  # closed without an answer (a reset: the router closed it with the preface unread)
                assert await _blocking(_grpc_roundtrip, port, b"x") == b""
            except ConnectionResetError:
                pass
            for _ in range(400):
                if any(missing in str(getattr(r, "detail", "")) for r in caplog.records):
                    break
                await asyncio.sleep(0.025)
        assert any("cannot reach the gRPC server" in str(getattr(r, "detail", "")) for r in caplog.records)
        assert (await _blocking(_http_get, port, "/still")).endswith(b" /still")
    finally:
        await front.close()


async def test_closing_ends_the_router_and_frees_the_port(mux: tuple[ClientMux, int]) -> None:
    front, port = mux
    router = front._router
    await front.close()
    proc = getattr(router, "proc", None)
    if proc is not None:
        assert proc.poll() is not None
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def _router_in_a_thread(path: Path, backlog: int) -> tuple[socket.socket, int, socket.socket, threading.Thread]:
    """A gRPC-side unix listener at ``path`` and a Router (no hand-back) on a fresh loopback port, running in a
    thread: (gRPC-side listener, client port, the socket whose closing stops the router, the thread)."""
    backend = socket.socket(socket.AF_UNIX)
    backend.bind(str(path))
    backend.listen(backlog)
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)
    stop_w, stop_r = socket.socketpair()
    thread = threading.Thread(target=Router([lsock], [str(path)], lambda s: False, stop_r).run, daemon=True)
    thread.start()
    return backend, lsock.getsockname()[1], stop_w, thread


def test_router_half_close_from_the_server_side(tmp_path: Path) -> None:
    """The gRPC side ending its output first: the client reads the end of file and may still send."""
    backend, port, stop_w, thread = _router_in_a_thread(tmp_path / "h.sock", backlog=1)
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        client.sendall(H2_PREFACE)
        backend.settimeout(TIMEOUT_S)
        conn, _ = backend.accept()
        conn.settimeout(TIMEOUT_S)
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)
        got = b""
        while data := client.recv(100):
            got += data
        assert got == b"bye"
        client.sendall(b"still here")  # the other direction is still open
        client.shutdown(socket.SHUT_WR)
        received = b""
        while data := conn.recv(100):
            received += data
        assert received == H2_PREFACE + b"still here"
        conn.close()
        client.close()
    finally:
        stop_w.close()
        thread.join(10)
        backend.close()
    assert not thread.is_alive()


def test_router_a_reset_client_ends_its_grpc_connection(tmp_path: Path) -> None:
    """A client that resets its connection (SO_LINGER 0) while the router holds bytes it sent (the gRPC side
    reads nothing): the gRPC side's connection is closed too, and the router goes on serving others."""
    backend, port, stop_w, thread = _router_in_a_thread(tmp_path / "r.sock", backlog=4)
    backend.settimeout(TIMEOUT_S)
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        client.sendall(H2_PREFACE)
        conn, _ = backend.accept()
        conn.settimeout(TIMEOUT_S)
        assert conn.recv(100) == H2_PREFACE
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            for _ in range(1000):  # more than the gRPC side reads: the router holds some and stops reading
                client.send(b"x" * 65536)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        poller = select.poll()  # the gRPC side reads nothing: its socket hangs up when the router closes it
        poller.register(conn.fileno(), select.POLLHUP)
        deadline = time.monotonic() + TIMEOUT_S
        while not poller.poll(100) and time.monotonic() < deadline:
            pass
        assert poller.poll(0), "the router kept the gRPC side's connection of a reset client"
        conn.close()
        second = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        second.sendall(H2_PREFACE + b"2")
        conn2, _ = backend.accept()
        conn2.settimeout(TIMEOUT_S)
        got = b""
        while len(got) < len(H2_PREFACE) + 1:
            got += conn2.recv(100)
        assert got == H2_PREFACE + b"2"
        conn2.close()
        second.close()
    finally:
        stop_w.close()
        thread.join(10)
        backend.close()
    assert not thread.is_alive()


def test_router_a_stale_event_of_a_closed_pair_does_not_reset_a_new_connection(tmp_path: Path) -> None:
    """One batch of epoll events can report a spliced pair's two ends; handling the first closes both, and a
    connection spliced later in the same batch gets a freed descriptor number. The closed end's event further
    down the batch is about the old socket: taken for the new one, its error reset a fresh client connection
    (about 1 in 300 new connections under a connect-and-close loop). The batch is built by hand here so that
    the new connection's gRPC-side socket gets the number of the closed end whose stale error comes last."""
    backend = socket.socket(socket.AF_UNIX)
    backend.bind(str(tmp_path / "s.sock"))
    backend.listen(8)
    backend.settimeout(TIMEOUT_S)
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)
    port = lsock.getsockname()[1]
    stop_w, stop_r = socket.socketpair()
    router = Router([lsock], [str(tmp_path / "s.sock")], lambda s: False, stop_r)
    thread = threading.Thread(target=router.run, daemon=True)

    def settle(until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not until():
            assert time.monotonic() < deadline, "the router did not get there"
            router._dispatch(router._ep.poll(0.05))

    try:
        first = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        first.sendall(H2_PREFACE)
        settle(lambda: len(router._ends) == 2)  # accepted, sniffed and spliced
        first_back, _ = backend.accept()
        client_fd, back_fd = sorted(router._ends, key=lambda fd: router._ends[fd].sock.family == socket.AF_UNIX)
        second = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        second.sendall(H2_PREFACE + b"2")
        settle(lambda: bool(router._sniffing))
        (sniffed_fd,) = router._sniffing
        # the new gRPC-side socket will get the lowest free number: the smaller of the pair's two
        reused, other = min(client_fd, back_fd), max(client_fd, back_fd)
        router._dispatch([(other, select.EPOLLERR), (sniffed_fd, select.EPOLLIN), (reused, select.EPOLLERR)])
        assert len(router._ends) == 2, "the new connection was closed by the old pair's stale event"
        assert reused in router._ends, "the new connection's gRPC side did not get the freed number"
        thread.start()  # from here the router runs on its own
        second_back, _ = backend.accept()
        second_back.settimeout(TIMEOUT_S)
        got = b""
        while len(got) < len(H2_PREFACE) + 1:
            got += second_back.recv(100)
        assert got == H2_PREFACE + b"2"
        second_back.sendall(b"answer")
        assert second.recv(100) == b"answer", "the new connection was closed by the old pair's stale event"
        for sock in (first, first_back, second, second_back):
            sock.close()
    finally:
        stop_w.close()
        if thread.is_alive():
            thread.join(10)
        else:
            router.close()
        backend.close()
    assert not thread.is_alive()


# -- a real member -------------------------------------------------------------------------------------------


def _router_pids(member_pid: int) -> list[int]:
    """The member's router children (from /proc: ppid and command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == member_pid and b"cmux_router" in cmdline:
            pids.append(int(entry))
    return pids


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"  # a zombie waits for a dead parent's reaper
    except FileNotFoundError:
        return True


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not found on PATH")
@pytest.mark.timeout(120)
def test_the_router_dies_with_a_killed_member(tmp_path: Path) -> None:
    """The member serves gRPC and HTTP through its router child; kill -9 of the member takes the router with
    it (PR_SET_PDEATHSIG and the pair's end of file) and frees the port."""
    server = start_quorumkv(tmp_path)
    try:
        routers = _router_pids(server.pid)
        assert len(routers) == 1, server.log_path.read_text()[-3000:]
        assert run_etcdctl(server.client_url, "put", "k", "v", timeout_s=30).returncode == 0
        port = int(server.client_url.rsplit(":", 1)[1])
        assert b'"health":"true"' in _http_get(port, "/health")
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not _gone(routers[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(routers[0])
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not found on PATH")
@pytest.mark.timeout(120)
def test_a_member_outlives_its_killed_router(tmp_path: Path) -> None:
    server = start_quorumkv(tmp_path)
    try:
        routers = _router_pids(server.pid)
        assert len(routers) == 1, server.log_path.read_text()[-3000:]
        os.kill(routers[0], signal.SIGKILL)
        assert run_etcdctl(server.client_url, "put", "k", "v", timeout_s=30).returncode == 0
        out = run_etcdctl(server.client_url, "get", "k", timeout_s=30)
        assert out.stdout.split() == ["k", "v"]
        port = int(server.client_url.rsplit(":", 1)[1])
        assert b'"health":"true"' in _http_get(port, "/health")
        assert server.stop() == 0
    finally:
        server.stop()


def test_an_unknown_splice_mode_is_refused_before_the_data_dir_is_touched(tmp_path: Path) -> None:
    """``QUORUMKV_CLIENT_PORT_SPLICE`` is read at start-up: an unknown value gets one line naming the accepted
    ones and exit 1, before the data dir is created (it used to be noticed only once the member had started)."""
    data_dir = tmp_path / "d"
    env = {**os.environ, SPLICE_ENV: "bogus"}
    proc = subprocess.run(
        [sys.executable, "-m", "quorumkv", "--data-dir", str(data_dir),
         "--listen-client-urls", "http://127.0.0.1:0", "--advertise-client-urls", "http://127.0.0.1:2379",
         "--listen-peer-urls", "http://127.0.0.1:0"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "quorumkv: QUORUMKV_CLIENT_PORT_SPLICE='bogus' is not one of process, thread, loop; unset it or pick one")
    assert not data_dir.exists()
