"""The HTTP side against a real etcd 3.4.23: gateway JSON, /version, /health, metric names.

etcd 3.4 serves its gateway on the client URL; quorumkv serves it on --listen-client-http-urls (etcd 3.5's
flag): both are driven with the same requests and the answers compared after normalising IDs and sizes.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quorumkv.testing.processes import ServerProcess, free_port, start_etcd, start_quorumkv

pytestmark = pytest.mark.interop


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def call(url: str, method: str = "POST", body: Any = None, timeout: float = 10) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def stream_lines(url: str, body: Any, n: int) -> list[Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("POST", parts.path, body=json.dumps(body).encode())
        resp = conn.getresponse()
        return [json.loads(resp.readline()) for _ in range(n)]
    finally:
        conn.close()


@pytest.fixture
def pair(tmp_path: Path, require_etcd_binaries: None) -> Iterator[dict[str, tuple[ServerProcess, str, str]]]:
    """{kind: (process, gateway base URL, metrics base URL)} for etcd and quorumkv."""
    started: list[ServerProcess] = []
    out: dict[str, tuple[ServerProcess, str, str]] = {}
    try:
        mport = free_port()
        etcd = start_etcd(tmp_path / "etcd", extra_args=["--listen-metrics-urls", f"http://127.0.0.1:{mport}"])
        started.append(etcd)
        out["etcd"] = (etcd, etcd.client_url, f"http://127.0.0.1:{mport}")
        hport, mport2 = free_port(), free_port()
        q = start_quorumkv(tmp_path / "q", extra_args=[
            "--listen-client-http-urls", f"http://127.0.0.1:{hport}",
            "--listen-metrics-urls", f"http://127.0.0.1:{mport2}"])
        started.append(q)
        out["quorumkv"] = (q, f"http://127.0.0.1:{hport}", f"http://127.0.0.1:{mport2}")
        yield out
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def require_etcd_binaries() -> None:
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("etcd not found on PATH")


def normalize(obj: Any, ids: dict[str, str]) -> Any:
    """Replace cluster/member/lease IDs by placeholders, raft_term by T, sizes by N."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("cluster_id", "member_id", "leader", "ID") and isinstance(v, str):
                out[k] = ids.setdefault(v, f"<id{len(ids)}>")
            elif k in ("raft_term", "raftTerm"):
                out[k] = "T"
            elif k in ("dbSize", "dbSizeInUse", "raftIndex", "raftAppliedIndex"):
                out[k] = "N"
            elif k in ("peerURLs", "clientURLs"):
                out[k] = ["URL"] * len(v)
            else:
                out[k] = normalize(v, ids)
        return out
    if isinstance(obj, list):
        return [normalize(v, ids) for v in obj]
    return obj


SCRIPT: list[tuple[str, Any]] = [
    ("/v3/kv/put", {"key": b64("foo"), "value": b64("bar")}),
    ("/v3/kv/put", {"key": b64("foo"), "value": b64("baz"), "prev_kv": True}),
    ("/v3/kv/put", {"key": b64("foo"), "value": b64("q"), "prevKv": True, "unknown": 1}),
    ("/v3/kv/range", {"key": b64("foo")}),
    ("/v3/kv/range", {"key": b64("f"), "range_end": b64("g"), "keys_only": True}),
    ("/v3/kv/range", {"key": b64("nope")}),
    ("/v3/kv/range", {"key": b64("foo"), "count_only": True}),
    ("/v3/kv/range", {"key": ""}),
    ("/v3/kv/range", {"key": b64("foo"), "revision": "100"}),
    ("/v3/kv/put", {}),
    ("/v3/kv/put", {"key": b64("x"), "value": b64("y"), "lease": "123"}),
    ("/v3/kv/txn", {"compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("q")}],
                    "success": [{"request_put": {"key": b64("foo"), "value": b64("t")}}],
                    "failure": [{"request_range": {"key": b64("foo")}}]}),
    ("/v3/kv/txn", {"compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("q")}],
                    "success": [{"request_put": {"key": b64("foo"), "value": b64("t")}}],
                    "failure": [{"request_range": {"key": b64("foo")}}]}),
    ("/v3/kv/deleterange", {"key": b64("foo"), "prev_kv": True}),
    ("/v3/kv/deleterange", {"key": b64("foo")}),
    ("/v3/kv/compaction", {"revision": "3"}),
    ("/v3/kv/range", {"key": b64("foo"), "revision": "2"}),
    ("/v3/lease/revoke", {"ID": "1"}),
    ("/v3/kv/lease/timetolive", {"ID": "1"}),
    ("/v3/lease/grant", {"TTL": 60, "ID": "77"}),
    ("/v3/lease/leases", {}),
    ("/v3/kv/lease/leases", {}),
    ("/v3/kv/lease/revoke", {"ID": "77"}),
    ("/v3/maintenance/status", {}),
    ("/v3/cluster/member/list", {}),
    ("/v3/kv/range", b"{bad json"),
]


def test_gateway_answers_match_etcd(pair: dict[str, tuple[ServerProcess, str, str]]) -> None:
    results: dict[str, list[Any]] = {}
    for kind, (_, base, _) in pair.items():
        ids: dict[str, str] = {}
        out: list[Any] = []
        for path, body in SCRIPT:
            status, raw = call(base + path, body=body)
            parsed = json.loads(raw)
            if "version" in parsed:  # quorumkv reports 3.4.34 (Kubernetes' progress-request gate), etcd 3.4.23
                assert re.fullmatch(r"3\.4\.\d+", parsed["version"])
                parsed["version"] = "<3.4.x>"
            out.append((path, status, normalize(parsed, ids)))
        results[kind] = out
    for e, q in zip(results["etcd"], results["quorumkv"], strict=True):
        assert q == e


def test_watch_stream_lines_match_etcd(pair: dict[str, tuple[ServerProcess, str, str]]) -> None:
    results = {}
    for kind, (_, base, _) in pair.items():
        for v in ("1", "2"):
            call(base + "/v3/kv/put", body={"key": b64("w"), "value": b64(v)})
        call(base + "/v3/kv/deleterange", body={"key": b64("w")})
        lines = stream_lines(base + "/v3/watch",
                             {"create_request": {"key": b64("w"), "start_revision": "2", "prev_kv": True}}, 2)
        results[kind] = normalize(lines, {})
    assert results["quorumkv"] == results["etcd"]


def test_version_and_health_match_etcd(pair: dict[str, tuple[ServerProcess, str, str]]) -> None:
    answers = {}
    for kind, (_, base, metrics) in pair.items():
        status, body = call(base + "/version", "GET")
        version = json.loads(body)
        assert re.fullmatch(r"3\.4\.\d+", version.pop("etcdserver")), body  # 3.4.34 and etcd's 3.4.23
        answers[kind] = (
            (status, version),
            [(s, json.loads(b)["health"]) for s, b in (call(u + "/health", "GET") for u in (base, metrics))],
            call(base + "/health", "POST")[0],
            call(base + "/nope", "GET"),
        )
    assert answers["quorumkv"] == answers["etcd"]


def _names(url: str) -> set[str]:
    status, body = call(url + "/metrics", "GET")
    assert status == 200
    # The parser names every counter sample ``*_total`` (etcd's health counters have no suffix): compare stems.
    return {s.name.removesuffix("_total") for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_metric_names_are_etcds(pair: dict[str, tuple[ServerProcess, str, str]]) -> None:
    for _, _, metrics in pair.values():  # etcd registers its health counters with the first /health
        call(metrics + "/health", "GET")
    etcd = _names(pair["etcd"][2])
    ours = _names(pair["quorumkv"][2])
    wanted = {n for n in ours if re.match(r"(etcd|grpc)_", n)}
    assert "etcd_mvcc_put" in wanted and "grpc_server_handled" in wanted
    assert wanted - etcd == set(), "quorumkv exports names etcd 3.4 does not have"
