"""A watch stream whose client has half-closed (sent its create request, then ended its request stream) keeps
delivering events until the client cancels the call: etcd 3.4's behaviour, checked against a real etcd."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.processes import ETCD_BIN, ServerProcess, start_etcd, start_quorumkv

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which(ETCD_BIN) is None, reason="etcd 3.4 not on PATH")]


@pytest.fixture(params=["etcd", "quorumkv"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    s = start_etcd(tmp_path) if request.param == "etcd" else start_quorumkv(tmp_path)
    try:
        yield s
    finally:
        s.stop()


async def _events_after_half_close(target: str) -> list[bytes]:
    async with grpc.aio.insecure_channel(target) as channel:
        kv, watch = pb_grpc.KVStub(channel), pb_grpc.WatchStub(channel)

        async def requests() -> AsyncIterator[pb.WatchRequest]:
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"hc/", range_end=b"hc0"))

        call = watch.Watch(requests())
        keys: list[bytes] = []
        try:
            created = await asyncio.wait_for(call.read(), 30)
            assert created.created
            await asyncio.sleep(0.5)  # the request stream has ended by now
            for i in range(3):
                await kv.Put(pb.PutRequest(key=b"hc/%d" % i, value=b"v"), timeout=30)
            while len(keys) < 3:
                resp = await asyncio.wait_for(call.read(), 30)
                assert resp is not grpc.aio.EOF, "the server ended the watch when the client half-closed"
                keys.extend(ev.kv.key for ev in resp.events)
        finally:
            call.cancel()
        return keys


def test_a_half_closed_watch_keeps_delivering(server: ServerProcess) -> None:
    keys = asyncio.run(_events_after_half_close(server.client_url.removeprefix("http://")))
    assert keys == [b"hc/0", b"hc/1", b"hc/2"]
