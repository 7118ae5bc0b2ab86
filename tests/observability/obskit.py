"""Helpers for the HTTP-side tests: an in-process member with its metrics and client HTTP listeners, and
small HTTP/gRPC client helpers (not named conftest: tests/embed imports its own conftest by name)."""

from __future__ import annotations

import asyncio
import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from prometheus_client.parser import text_string_to_metric_families

from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.app import HttpOptions, RunningMember, start_member
from quorumkv.server.settings import ServerSettings
from quorumkv.testing.processes import free_port


@dataclass
class Member:
    running: RunningMember
    grpc_target: str
    metrics_url: str
    http_url: str
    channel: grpc.aio.Channel

    @property
    def kv(self) -> pb_grpc.KVStub:
        return pb_grpc.KVStub(self.channel)  # type: ignore[no-untyped-call]

    @property
    def lease(self) -> pb_grpc.LeaseStub:
        return pb_grpc.LeaseStub(self.channel)  # type: ignore[no-untyped-call]

    @property
    def watch(self) -> pb_grpc.WatchStub:
        return pb_grpc.WatchStub(self.channel)  # type: ignore[no-untyped-call]


async def start_test_member(data_dir: Path, **http_kw: Any) -> Member:
    port = free_port()
    settings = ServerSettings(data_dir=str(data_dir), advertise_client_urls=[f"http://127.0.0.1:{port}"])
    opts = HttpOptions(listen_metrics_urls=["http://127.0.0.1:0"], listen_client_http_urls=["http://127.0.0.1:0"],
                       **http_kw)
    running = await start_member(settings, [f"http://127.0.0.1:{port}"], http=opts)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Member(running, f"127.0.0.1:{port}", running.metrics_urls[0], running.client_http_urls[0], channel)


def _request_sync(method: str, url: str, body: bytes | None, headers: dict[str, str] | None
                  ) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with the stdlib client (in a thread, so the member's loop keeps serving)."""
    return await asyncio.to_thread(_request_sync, method, url, body, headers)


async def post_json(url: str, obj: Any) -> tuple[int, Any]:
    status, _, body = await request("POST", url, json.dumps(obj).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


async def scrape(url: str) -> dict[str, float]:
    """``/metrics`` as {sample name{labels}: value} after parsing with prometheus_client's parser."""
    status, headers, body = await request("GET", url + "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
