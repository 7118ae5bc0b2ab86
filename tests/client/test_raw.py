"""The low-level client API (``raw_call``, ``raw_stream``, ``wait_ready``, ``grpc_options``) that quorumkvctl uses
to print etcd's exact messages, against real etcd 3.4 and quorumkv."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.client import (
    AsyncClient,
    AsyncRawStream,
    Client,
    DeadlineExceededError,
    EtcdError,
    LeaseNotFoundError,
    RawStream,
    UnavailableError,
)
from quorumkv.testing.processes import ServerProcess


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_raw_call_returns_the_servers_message(client: Client, ns: str) -> None:
    put = client.raw_call("KV", "Put", rpc_pb2.PutRequest(key=f"{ns}k".encode(), value=b"v1"))
    assert isinstance(put, rpc_pb2.PutResponse)
    got = client.raw_call("KV", "Range", rpc_pb2.RangeRequest(key=f"{ns}k".encode()), idempotent=True)
    assert isinstance(got, rpc_pb2.RangeResponse)
    assert [(kv.key, kv.value) for kv in got.kvs] == [(f"{ns}k".encode(), b"v1")]
    assert got.header.revision == put.header.revision
    # the same answer the typed method decodes
    assert client.get_range(f"{ns}k").header.revision == got.header.revision


def test_raw_call_maps_errors_like_the_typed_methods(client: Client) -> None:
    with pytest.raises(LeaseNotFoundError) as info:
        client.raw_call("Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=0x7FFF_FFFF_0000_0001))
    assert info.value.message == "etcdserver: requested lease not found"
    assert info.value.code == "NOT_FOUND"


def test_raw_stream_watch_yields_raw_responses(client: Client, ns: str) -> None:
    key = f"{ns}w".encode()
    done = threading.Event()

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        # the request side stays open until the test ends (quorumkv ends a watch stream the client half-closes)
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key))
        done.wait(10.0)

    with client.raw_stream("Watch", "Watch", requests(), timeout=10.0) as stream:
        assert isinstance(stream, RawStream)
        responses = iter(stream)
        created = next(responses)
        assert isinstance(created, rpc_pb2.WatchResponse) and created.created
        client.put(key, "x")
        event = next(responses)
        assert [(e.kv.key, e.kv.value) for e in event.events] == [(key, b"x")]
    done.set()


def test_raw_stream_failure_is_an_etcd_error() -> None:
    with Client(f"127.0.0.1:{_closed_port()}", timeout=5.0) as dead:
        stream = dead.raw_stream("Maintenance", "Snapshot", rpc_pb2.SnapshotRequest(), timeout=5.0)
        with pytest.raises(UnavailableError) as info:
            for _ in stream:
                pass
    assert info.value.code == "UNAVAILABLE"


def test_wait_ready_connects_or_times_out(server: ServerProcess) -> None:
    with Client(server.client_url, timeout=5.0) as live:
        live.wait_ready(5.0)
    with Client(f"127.0.0.1:{_closed_port()}", timeout=5.0, max_retries=0) as dead:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            dead.wait_ready(0.5)
        assert time.monotonic() - started < 4.0
        with pytest.raises(UnavailableError):
            dead.raw_call("KV", "Range", rpc_pb2.RangeRequest(key=b"k"), idempotent=True)


def test_grpc_options_reach_the_channel(server: ServerProcess) -> None:
    # a receive limit below the answer's size makes the call fail: the option was applied
    with Client(server.client_url, timeout=5.0, grpc_options=[("grpc.max_receive_message_length", 16)]) as small:
        with pytest.raises(EtcdError) as info:
            small.raw_call("Maintenance", "Status", rpc_pb2.StatusRequest(), idempotent=True)
    assert info.value.code == "RESOURCE_EXHAUSTED"


async def test_async_raw_call_stream_and_wait_ready(server: ServerProcess, ns: str) -> None:
    key = f"{ns}a".encode()
    async with AsyncClient(server.client_url, timeout=10.0) as aclient:
        await aclient.wait_ready(5.0)
        put = await aclient.raw_call("KV", "Put", rpc_pb2.PutRequest(key=key, value=b"v"))
        assert isinstance(put, rpc_pb2.PutResponse)
        got = await aclient.raw_call("KV", "Range", rpc_pb2.RangeRequest(key=key), idempotent=True)
        assert [kv.value for kv in got.kvs] == [b"v"] and got.header.revision == put.header.revision
        with pytest.raises(LeaseNotFoundError):
            await aclient.raw_call("Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=0x7FFF_FFFF_0000_0002))
        stream = await aclient.raw_stream("Maintenance", "Snapshot", rpc_pb2.SnapshotRequest(), timeout=30.0)
        assert isinstance(stream, AsyncRawStream)
        size = 0
        async for chunk in stream:
            assert isinstance(chunk, rpc_pb2.SnapshotResponse)
            size += len(chunk.blob)
        assert size > 0
    async with AsyncClient(f"127.0.0.1:{_closed_port()}", timeout=5.0, max_retries=0) as dead:
        with pytest.raises(DeadlineExceededError):
            await dead.wait_ready(0.5)
        dead_stream = await dead.raw_stream("Maintenance", "Snapshot", rpc_pb2.SnapshotRequest(), timeout=5.0)
        with pytest.raises(UnavailableError):
            async for _ in dead_stream:
                pass
