"""gRPC and HTTP/1.1 on one client port (etcd 3.4's cmux), plain and TLS, against a real etcd 3.4.

The same HTTP requests go to etcd's client URL and to quorumkv's (started without --listen-client-http-urls);
status codes and answer shapes must agree, gRPC clients (etcdctl) keep working on the same port, and every
streaming gateway route ends its answer when etcd's does: a keepalive whose request body has ended finishes,
a watch stays open (it delivers a later event). Every call has a socket timeout, so a hang fails the test.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from quorumkv.testing.pki import PKI, make_pki
from quorumkv.testing.processes import ServerProcess, free_port, run_etcdctl, start_etcd, start_quorumkv

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

KINDS = ("etcd", "quorumkv")
TIMEOUT_S = 15.0


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@pytest.fixture(scope="module")
def require_etcd() -> None:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd/etcdctl not found on PATH")


class Client:
    """http.client against one base URL (plain or TLS)."""

    def __init__(self, url: str, ctx: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.ctx = ctx

    def conn(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S, context=self.ctx)
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = self.conn()
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post(self, path: str, obj: Any) -> tuple[int, Any]:
        status, _, body = self.call("POST", path, json.dumps(obj).encode())
        return status, json.loads(body)


def _lines(body: bytes) -> list[Any]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _http_surface(c: Client) -> dict[str, Any]:
    """What one server answers on its client URL, reduced to what must agree between etcd and quorumkv."""
    out: dict[str, Any] = {}
    status, headers, body = c.call("GET", "/health")
    out["health"] = (status, json.loads(body)["health"], headers.get("access-control-allow-origin"))
    status, headers, body = c.call("GET", "/version")
    version = json.loads(body)
    out["version"] = (status, sorted(version), headers["content-type"])
    status, headers, body = c.call("GET", "/metrics")
    out["metrics"] = (status, b"etcd_server_has_leader 1" in body, headers["content-type"].split(";")[0])
    status, put = c.post("/v3/kv/put", {"key": b64("k"), "value": b64("v1")})
    out["put"] = (status, sorted(put), sorted(put["header"]))
    status, rng = c.post("/v3/kv/range", {"key": b64("k")})
    out["range"] = (status, [(kv["key"], kv["value"]) for kv in rng["kvs"]], rng["count"])
    status, grant = c.post("/v3/lease/grant", {"TTL": 60})
    out["grant"] = (status, sorted(grant), grant["TTL"])
    lid = grant["ID"]
    # a keepalive's answer ends with its request body: one result per request object, then the end
    status, headers, body = c.call("POST", "/v3/lease/keepalive",
                                   json.dumps({"ID": lid}).encode() + json.dumps({"ID": lid}).encode())
    results = _lines(body)
    out["keepalive"] = (status, headers.get("transfer-encoding"), [(r["result"]["ID"] == lid, r["result"]["TTL"])
                                                                  for r in results])
    status, _, body = c.call("POST", "/v3/lease/keepalive", b'{"ID":"1"}')
    out["keepalive-unknown"] = (status, [sorted(r["result"]) for r in _lines(body)])
    status, _, body = c.call("POST", "/v3/lease/keepalive", b"")
    out["keepalive-empty"] = (status, [sorted(r["result"]) for r in _lines(body)])
    status, st = c.post("/v3/maintenance/status", {})
    out["status"] = (status, "version" in st, "dbSize" in st, st["header"]["member_id"] == st["leader"])
    status, ttl = c.post("/v3/lease/timetolive", {"ID": lid})
    out["timetolive"] = (status, ttl["grantedTTL"])
    status, revoked = c.post("/v3/lease/revoke", {"ID": lid})
    out["revoke"] = (status, sorted(revoked))
    status, err = c.post("/v3/lease/revoke", {"ID": lid})
    out["revoke-again"] = (status, err["code"], err["error"])
    status, _, body = c.call("POST", "/v3/kv/nosuch", b"{}")
    out["unknown-route"] = status
    status, _, body = c.call("GET", "/nosuch")
    out["unknown-path"] = status
    status, err = c.post("/v3/kv/put", {"value": b64("x")})
    out["bad-put"] = (status, err)
    status, txn = c.post("/v3/kv/txn", {"compare": [{"key": b64("k"), "result": "EQUAL", "target": "VALUE",
                                                     "value": b64("v1")}],
                                        "success": [{"request_range": {"key": b64("k")}}]})
    out["txn"] = (status, txn["succeeded"], len(txn["responses"]))
    out["watch"] = _watch_stays_open(c)
    return out


def _watch_stays_open(c: Client) -> tuple[Any, ...]:
    """A watch whose request body has ended stays open: it reports a put made afterwards."""
    conn = c.conn()
    try:
        conn.request("POST", "/v3/watch", body=json.dumps({"create_request": {"key": b64("w")}}).encode())
        resp = conn.getresponse()
        created = json.loads(resp.readline())
        status, _ = c.post("/v3/kv/put", {"key": b64("w"), "value": b64("x")})
        event = json.loads(resp.readline())
        return (resp.status, created["result"].get("created"), status,
                [(e.get("type", "PUT"), e["kv"]["key"]) for e in event["result"]["events"]])
    finally:
        conn.close()


def _grpc_same_port(server: ServerProcess, url: str, env: dict[str, str] | None = None) -> list[str]:
    out = []
    for args in (("put", "g", "1"), ("get", "g", "--print-value-only"), ("endpoint", "health")):
        result = run_etcdctl(url, *args, env=env, timeout_s=30)
        assert result.returncode == 0, (server.kind, args, result.stderr, server.log_tail())
        out.append(result.stdout.strip().split(" is ")[-1].split(":")[0])
    return out


@pytest.fixture(scope="module")
def plain_pair(tmp_path_factory: pytest.TempPathFactory, require_etcd: None) -> Iterator[dict[str, ServerProcess]]:
    base = tmp_path_factory.mktemp("plain")
    started: dict[str, ServerProcess] = {}
    try:
        started["etcd"] = start_etcd(base / "etcd")
        started["quorumkv"] = start_quorumkv(base / "quorumkv")
        yield started
    finally:
        for s in started.values():
            s.stop()


def test_http_and_grpc_share_the_plain_client_port_as_in_etcd(plain_pair: dict[str, ServerProcess]) -> None:
    surfaces = {}
    for kind in KINDS:
        server = plain_pair[kind]
        surfaces[kind] = _http_surface(Client(server.client_url))
    assert surfaces["quorumkv"] == surfaces["etcd"]
    # the values the comparison relies on, spelled out
    q = surfaces["quorumkv"]
    assert q["health"] == (200, "true", "*")
    assert q["keepalive"] == (200, "chunked", [(True, "60"), (True, "60")])
    assert q["watch"][0] == 200 and q["watch"][1] is True and q["watch"][3] == [("PUT", b64("w"))]
    for kind in KINDS:
        outs = _grpc_same_port(plain_pair[kind], plain_pair[kind].client_url)
        assert outs[1] == "1"


def test_livez_and_readyz_on_the_client_port(plain_pair: dict[str, ServerProcess]) -> None:
    """Not in etcd 3.4 (404 there); quorumkv serves them on the client port too (etcd 3.5.11+'s probes)."""
    c = Client(plain_pair["quorumkv"].client_url)
    for path in ("/livez", "/readyz"):
        status, _, body = c.call("GET", path)
        assert (status, body) == (200, b"ok"), (path, body)
    assert Client(plain_pair["etcd"].client_url).call("GET", "/livez")[0] == 404


def test_a_partial_preface_or_silent_client_does_not_block_others(plain_pair: dict[str, ServerProcess]) -> None:
    """A client that sends half an HTTP/2 preface (or nothing) holds only its own connection."""
    import socket

    server = plain_pair["quorumkv"]
    parts = urlsplit(server.client_url)
    held = [socket.create_connection((parts.hostname or "", parts.port or 0), timeout=TIMEOUT_S) for _ in range(2)]
    try:
        held[0].sendall(b"PRI * HTTP/2")
        status, _, _ = Client(server.client_url).call("GET", "/health")
        assert status == 200
        assert run_etcdctl(server.client_url, "get", "x", timeout_s=30).returncode == 0
    finally:
        for s in held:
            s.close()


def test_grpc_only_client_port_with_listen_client_http_urls(tmp_path: Path, require_etcd: None) -> None:
    """With --listen-client-http-urls the client URLs serve gRPC only (etcd 3.5), the HTTP side moves there."""
    hport = free_port()
    server = start_quorumkv(tmp_path, extra_args=["--listen-client-http-urls", f"http://127.0.0.1:{hport}"])
    try:
        assert Client(f"http://127.0.0.1:{hport}").call("GET", "/health")[0] == 200
        with pytest.raises((http.client.HTTPException, OSError)):
            Client(server.client_url).call("GET", "/health")
        assert run_etcdctl(server.client_url, "put", "a", "1", timeout_s=30).returncode == 0
    finally:
        server.stop()


# -- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory, require_etcd: None
             ) -> Iterator[tuple[PKI, dict[str, ServerProcess]]]:
    base = tmp_path_factory.mktemp("tls")
    pki = make_pki(base / "pki")
    started: dict[str, ServerProcess] = {}
    try:
        for kind in KINDS:
            url = f"https://127.0.0.1:{free_port()}"
            flags = [f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
                     f"--cert-file={pki.cert('server')}", f"--key-file={pki.key('server')}",
                     f"--trusted-ca-file={pki.ca.path}", "--client-cert-auth"]
            start = start_etcd if kind == "etcd" else start_quorumkv
            server = start(base / kind, extra_args=flags, ready_timeout_s=None)
            server.client_url = url
            server.etcdctl_env = {"ETCDCTL_CACERT": str(pki.ca.path), "ETCDCTL_CERT": pki.cert("client"),
                                  "ETCDCTL_KEY": pki.key("client")}
            started[kind] = server
            server.wait_ready(60)
        yield pki, started
    finally:
        for s in started.values():
            s.stop()


def _client_ctx(pki: PKI, alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.path))
    ctx.load_cert_chain(pki.cert("client"), pki.key("client"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "http1"])
def test_http_and_grpc_share_the_tls_client_port_as_in_etcd(tls_pair: tuple[PKI, dict[str, ServerProcess]],
                                                            alpn: list[str] | None) -> None:
    pki, servers = tls_pair
    surfaces = {kind: _http_surface(Client(servers[kind].client_url, _client_ctx(pki, alpn))) for kind in KINDS}
    assert surfaces["quorumkv"] == surfaces["etcd"]
    assert surfaces["quorumkv"]["health"][0] == 200
    for kind in KINDS:
        assert _grpc_same_port(servers[kind], servers[kind].client_url, servers[kind].etcdctl_env)[1] == "1"


def test_tls_client_port_refuses_http_without_a_client_certificate(tls_pair: tuple[PKI, dict[str, ServerProcess]]
                                                                   ) -> None:
    """--client-cert-auth holds on the HTTP side of the shared port too, as in etcd."""
    pki, servers = tls_pair
    for kind in KINDS:
        ctx = ssl.create_default_context(cafile=str(pki.ca.path))
        with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
            Client(servers[kind].client_url, ctx).call("GET", "/health")
        no_cert = run_etcdctl(servers[kind].client_url, "--dial-timeout=2s", "--command-timeout=5s", "get", "a",
                              env={"ETCDCTL_CACERT": str(pki.ca.path)}, timeout_s=30)
        assert no_cert.returncode != 0, kind


def test_a_client_offering_h2_and_http1_gets_http1(tls_pair: tuple[PKI, dict[str, ServerProcess]]) -> None:
    """curl and browsers offer ALPN ``h2,http/1.1``: quorumkv's front sends them to the HTTP/1.1 side and
    selects no h2 (etcd's Go server would answer them over HTTP/2; either way the client is served)."""
    pki, servers = tls_pair
    c = Client(servers["quorumkv"].client_url, _client_ctx(pki, ["h2", "http/1.1"]))
    conn = c.conn()
    try:
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.selected_alpn_protocol() in (None, "http/1.1")
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["health"]) == (200, "true")
    finally:
        conn.close()


def test_curl_on_the_tls_client_port(tls_pair: tuple[PKI, dict[str, ServerProcess]]) -> None:
    """``curl https://.../health`` (ALPN h2 and http/1.1 offered) and a gateway POST work on both servers."""
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl not found")
    pki, servers = tls_pair
    answers = {}
    for kind in KINDS:
        tls = ["--cacert", str(pki.ca.path), "--cert", pki.cert("client"), "--key", pki.key("client")]
        url = servers[kind].client_url
        health = subprocess.run(["curl", "-sS", "-m", "15", *tls, url + "/health"], capture_output=True,
                                timeout=30, check=False)
        put = subprocess.run(["curl", "-sS", "-m", "15", *tls, url + "/v3/kv/put", "-d",
                              json.dumps({"key": b64("c"), "value": b64("1")})],
                             capture_output=True, timeout=30, check=False)
        assert health.returncode == 0 and put.returncode == 0, (kind, health.stderr, put.stderr)
        answers[kind] = (json.loads(health.stdout)["health"], sorted(json.loads(put.stdout)))
    assert answers["quorumkv"] == answers["etcd"] == ("true", ["header"])
