"""The retry rule end to end: a fake member that answers UNAVAILABLE after receiving the request, a dead
endpoint (nothing listens), and a real server (etcd 3.4 or quorumkv) behind them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from quorumkv.client import AsyncClient, Client, UnavailableError
from quorumkv.testing.processes import ServerProcess, free_port


class _Unavailable(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Answers every call with UNAVAILABLE *after* reading it (a member that failed mid-request)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def service(self, details: Any) -> Any:
        method = str(details.method)

        def fail(request: bytes, context: Any) -> bytes:
            with self.lock:
                self.calls.append(method.rsplit("/", 1)[-1])
            context.abort(grpc.StatusCode.UNAVAILABLE, "transport is closing")
            return b""

        return grpc.unary_unary_rpc_method_handler(fail)


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[str, _Unavailable]]:
    handler = _Unavailable()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", handler
    finally:
        server.stop(None)


def test_sent_write_is_not_resent_but_read_is(server: ServerProcess, flaky: tuple[str, _Unavailable],
                                              ns: str) -> None:  # fmt: skip
    target, handler = flaky
    handler.calls.clear()
    with Client([target, server.client_url], timeout=10.0) as client:
        with pytest.raises(UnavailableError):
            client.put(ns + "w", "1")
        assert handler.calls == ["Put"]
        assert client.endpoint != target  # moved on for the next call, without resending this one
    with Client([target, server.client_url], timeout=10.0) as client:
        assert client.get(ns + "w") is None  # the write never reached the real server
        assert handler.calls == ["Put", "Range"]  # the read was resent to the next endpoint
        client.put(ns + "r", "x")
        assert client.get_prefix(ns).count == 1


def test_unsent_write_goes_to_the_next_endpoint(server: ServerProcess, ns: str) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the request cannot have been sent
    with Client([dead, server.client_url], timeout=10.0) as client:
        client.put(ns + "k", "v")
        assert client.endpoint == f"127.0.0.1:{server.client_port}"
        kv = client.get(ns + "k")
        assert kv is not None and kv.value == b"v"
    with Client([dead], timeout=3.0, max_retries=2) as lonely, pytest.raises(UnavailableError):
        lonely.put(ns + "k", "v")


async def test_async_client_follows_the_same_rule(server: ServerProcess, flaky: tuple[str, _Unavailable],
                                                  ns: str) -> None:  # fmt: skip
    target, handler = flaky
    handler.calls.clear()
    dead = f"127.0.0.1:{free_port()}"
    async with AsyncClient([target, server.client_url], timeout=10.0) as client:
        with pytest.raises(UnavailableError):
            await client.put(ns + "w", "1")
        assert handler.calls == ["Put"]
    async with AsyncClient([target, dead, server.client_url], timeout=10.0) as client:
        assert await client.get(ns + "w") is None
        assert handler.calls == ["Put", "Range"]
    async with AsyncClient([dead, server.client_url], timeout=10.0) as client:
        await client.put(ns + "a", "1")
        kv = await client.get(ns + "a")
        assert kv is not None and kv.value == b"1"
