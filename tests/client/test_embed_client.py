"""``quorumkv.embed`` hands out clients for the embedded member."""

from __future__ import annotations

import socket
from pathlib import Path

from quorumkv import embed
from quorumkv.server.config import ServerConfig


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_handle_client_and_async_client(tmp_path: Path) -> None:
    client_url = f"http://127.0.0.1:{_free_port()}"
    peer_url = f"http://127.0.0.1:{_free_port()}"
    config = ServerConfig(name="m1", data_dir=str(tmp_path / "m1"), listen_client_urls=[client_url],
                          advertise_client_urls=[client_url], listen_peer_urls=[peer_url],
                          initial_advertise_peer_urls=[peer_url])
    with embed.start(config) as handle:
        with handle.client(timeout=10.0) as client:
            assert client.endpoints == tuple(handle.client_endpoints)
            client.put("embedded", "yes")
            kv = client.get("embedded")
            assert kv is not None and kv.value == b"yes"
            assert client.members()[0].name == "m1"
        async with handle.async_client() as aclient:
            again = await aclient.get("embedded")
            assert again is not None and again.value == b"yes"
