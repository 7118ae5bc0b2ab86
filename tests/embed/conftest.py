"""Helpers for the embed tests: free ports, a loopback config, put/get over the real gRPC API."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from quorumkv.server.config import ServerConfig

RPC_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True if a server could bind ``127.0.0.1:port`` now (SO_REUSEADDR, as gRPC binds)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def loopback_config(data_dir: Path, *, name: str = "m1", client_port: int | None = None) -> ServerConfig:
    """A single-member config on loopback ports with its data in ``data_dir``."""
    client = f"http://127.0.0.1:{client_port or free_port()}"
    peer = f"http://127.0.0.1:{free_port()}"
    return ServerConfig(
        name=name,
        data_dir=str(data_dir),
        listen_client_urls=[client],
        advertise_client_urls=[client],
        listen_peer_urls=[peer],
        initial_advertise_peer_urls=[peer],
    )


def put(endpoint: str, key: bytes, value: bytes) -> int:
    """Put ``key`` and return the new revision."""
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        resp = kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT_S)
        return int(resp.header.revision)


def get(endpoint: str, key: bytes) -> bytes | None:
    """The value of ``key``, or None if it does not exist."""
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        resp = kv.Range(rpc_pb2.RangeRequest(key=key), timeout=RPC_TIMEOUT_S)
        return bytes(resp.kvs[0].value) if resp.kvs else None


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "m1.quorumkv"
