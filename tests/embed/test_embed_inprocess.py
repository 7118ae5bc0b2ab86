"""In-process isolation: serve on a thread's event loop, close cleanly, report startup errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from conftest import get, loopback_config, port_is_free, put

from quorumkv import embed
from quorumkv.embed import EmbedError


def _port(handle: embed.Handle) -> int:
    return int(handle.client_endpoints[0].rsplit(":", 1)[1])


def test_start_put_get_close_then_restart_on_same_dir(data_dir: Path) -> None:
    config = loopback_config(data_dir)
    with embed.start(config) as handle:
        assert handle.isolation == "in-process" and handle.is_running and handle.pid is None
        endpoint = handle.client_endpoints[0]
        assert endpoint.startswith("127.0.0.1:")
        put(endpoint, b"/k", b"v1")
        assert get(endpoint, b"/k") == b"v1"
        loop_threads = [t for t in threading.enumerate() if t.name == "quorumkv-embed-m1"]
        assert len(loop_threads) == 1
    assert not handle.is_running
    assert not loop_threads[0].is_alive()
    assert port_is_free(_port(handle))
    handle.close()  # idempotent

    # The lock is released and the port reusable: the same config starts again and sees the data.
    with embed.start(config) as again:
        assert get(again.client_endpoints[0], b"/k") == b"v1"


def test_locked_data_dir_raises_with_the_lock_message(data_dir: Path) -> None:
    with embed.start(loopback_config(data_dir)):
        with pytest.raises(EmbedError, match="is in use by another quorumkv process") as info:
            embed.start(loopback_config(data_dir, name="m1"))
        assert info.value.__cause__ is not None
        assert type(info.value.__cause__).__name__ == "DataDirError"


def test_port_in_use_raises(tmp_path: Path) -> None:
    with embed.start(loopback_config(tmp_path / "a")) as first:
        port = _port(first)
        with pytest.raises(EmbedError, match=r"cannot listen on .*address in use"):
            embed.start(loopback_config(tmp_path / "b", client_port=port))
    # The failed start released its own data dir.
    with embed.start(loopback_config(tmp_path / "b")):
        pass


def test_usable_from_a_running_asyncio_program(data_dir: Path) -> None:
    """The host keeps its own loop; blocking calls go through a worker thread."""

    async def host() -> bytes | None:
        handle = await asyncio.to_thread(embed.start, loopback_config(data_dir))
        try:
            endpoint = handle.client_endpoints[0]
            await asyncio.to_thread(put, endpoint, b"/async", b"yes")
            return await asyncio.to_thread(get, endpoint, b"/async")
        finally:
            await asyncio.to_thread(handle.close)

    assert asyncio.run(host()) == b"yes"


def test_no_wait_then_wait_ready(data_dir: Path) -> None:
    handle = embed.start(loopback_config(data_dir), ready_timeout_s=None)
    try:
        handle.wait_ready(10)
        put(handle.client_endpoints[0], b"/k", b"v")
    finally:
        handle.close()
    with pytest.raises(EmbedError, match="closed"):
        handle.wait_ready(1)
