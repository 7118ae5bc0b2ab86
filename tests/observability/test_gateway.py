"""The JSON gateway on --listen-client-http-urls: grpc-gateway conventions, streaming, errors, HTTP details."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from .obskit import Member, post_json, request


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Stream:
    """A streaming POST read line by line with the stdlib client (chunked decoding included)."""

    def __init__(self, url: str, body: bytes) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        self.conn.request("POST", parts.path, body=body)
        self.resp = self.conn.getresponse()

    @classmethod
    async def open(cls, url: str, obj: Any) -> Stream:
        body = b"".join(json.dumps(o).encode() for o in obj) if isinstance(obj, list) else json.dumps(obj).encode()
        return await asyncio.to_thread(cls, url, body)

    async def next(self) -> Any:
        line = await asyncio.to_thread(self.resp.readline)
        assert line, "stream ended"
        return json.loads(line)

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


async def test_kv_round_trip_in_grpc_gateway_json(member: Member) -> None:
    url = member.http_url
    status, put = await post_json(url + "/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
    assert status == 200
    header = put["header"]
    assert set(header) == {"cluster_id", "member_id", "revision", "raft_term"}
    assert all(isinstance(v, str) for v in header.values())  # uint64/int64 as strings
    assert header["member_id"] == str(member.running.server.member_id)
    status, put2 = await post_json(url + "/v3/kv/put", {"key": b64("foo"), "value": b64("baz"), "prevKv": True})
    assert put2["prev_kv"] == {"key": b64("foo"), "create_revision": "2", "mod_revision": "2", "version": "1",
                               "value": b64("bar")}
    status, rng = await post_json(url + "/v3/kv/range", {"key": b64("foo"), "bogus_field": 1})
    assert status == 200
    assert rng["kvs"] == [{"key": b64("foo"), "create_revision": "2", "mod_revision": "3", "version": "2",
                           "value": b64("baz")}]
    assert rng["count"] == "1" and "more" not in rng
    status, txn = await post_json(url + "/v3/kv/txn", {
        "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("baz")}],
        "success": [{"request_delete_range": {"key": b64("foo"), "prev_kv": True}}],
    })
    assert txn["succeeded"] is True
    assert txn["responses"][0]["response_delete_range"]["deleted"] == "1"
    status, rng = await post_json(url + "/v3/kv/range", {"key": b64("foo")})
    assert "kvs" not in rng and "count" not in rng
    status, comp = await post_json(url + "/v3/kv/compaction", {"revision": "3"})
    assert status == 200 and comp["header"]["revision"] == "4"
    status, _ = await post_json(url + "/v3/kv/deleterange", {"key": b64("nothing")})
    assert status == 200


async def test_errors_are_grpc_gateway_shaped(member: Member) -> None:
    url = member.http_url
    status, err = await post_json(url + "/v3/kv/put", {"value": b64("x")})
    assert status == 400
    assert err == {"error": "etcdserver: key is not provided", "message": "etcdserver: key is not provided",
                   "code": 3}
    status, err = await post_json(url + "/v3/kv/range", {"key": b64("a"), "revision": "100"})
    assert (status, err["code"]) == (400, 11)
    assert err["message"] == "etcdserver: mvcc: required revision is a future revision"
    status, err = await post_json(url + "/v3/lease/revoke", {"ID": "1"})
    assert (status, err["code"], err["message"]) == (404, 5, "etcdserver: requested lease not found")
    status, _, body = await request("POST", url + "/v3/kv/range", b"{not json")
    assert status == 400 and json.loads(body)["code"] == 3
    status, _, body = await request("GET", url + "/v3/kv/range")
    assert status == 405
    status, _, body = await request("POST", url + "/v3/kv/nosuch", b"{}")
    assert (status, body) == (404, b"Not Found\n")
    # a single member is a Raft cluster of one: it grows (a learner here, so writes keep their quorum)
    status, added = await post_json(url + "/v3/cluster/member/add", {"peerURLs": ["http://127.0.0.1:1"],
                                                                     "isLearner": True})
    assert status == 200 and added["member"]["peerURLs"] == ["http://127.0.0.1:1"], added
    status, err = await post_json(url + "/v3/cluster/member/add", {"peerURLs": ["http://127.0.0.1:1"]})
    assert (status, err["message"]) == (412, "etcdserver: Peer URLs already exists"), err
    status, _, body = await request("POST", url + "/v3/kv/put", b"")  # empty body = empty request
    assert status == 400 and json.loads(body)["message"] == "etcdserver: key is not provided"


async def test_leases_and_aliases(member: Member) -> None:
    url = member.http_url
    status, grant = await post_json(url + "/v3/lease/grant", {"TTL": 60})
    assert status == 200 and grant["TTL"] == "60"
    lid = grant["ID"]
    for path in ("/v3/lease/leases", "/v3/kv/lease/leases"):
        _, leases = await post_json(url + path, {})
        assert leases["leases"] == [{"ID": lid}]
    for path in ("/v3/lease/timetolive", "/v3/kv/lease/timetolive"):
        _, ttl = await post_json(url + path, {"ID": lid, "keys": True})
        assert ttl["ID"] == lid and ttl["grantedTTL"] == "60" and int(ttl["TTL"]) > 0
    ka = await Stream.open(url + "/v3/lease/keepalive", [{"ID": lid}, {"ID": lid}])
    try:
        for _ in range(2):
            msg = await ka.next()
            assert msg["result"]["ID"] == lid and msg["result"]["TTL"] == "60"
    finally:
        ka.close()
    status, _ = await post_json(url + "/v3/kv/lease/revoke", {"ID": lid})
    assert status == 200
    _, ttl = await post_json(url + "/v3/lease/timetolive", {"ID": lid})
    assert ttl["TTL"] == "-1"


async def test_watch_streams_one_result_per_line(member: Member) -> None:
    url = member.http_url
    watch = await Stream.open(url + "/v3/watch", {"create_request": {"key": b64("w"), "prev_kv": True}})
    try:
        assert watch.resp.status == 200
        assert watch.resp.getheader("Transfer-Encoding") == "chunked"
        created = await watch.next()
        assert created["result"]["created"] is True
        await post_json(url + "/v3/kv/put", {"key": b64("w"), "value": b64("1")})
        await post_json(url + "/v3/kv/deleterange", {"key": b64("w")})
        ev = await watch.next()
        assert ev["result"]["events"] == [{"kv": {"key": b64("w"), "create_revision": "2", "mod_revision": "2",
                                                  "version": "1", "value": b64("1")}}]
        ev = await watch.next()
        (delete,) = ev["result"]["events"]
        assert delete["type"] == "DELETE" and delete["kv"] == {"key": b64("w"), "mod_revision": "3"}
        assert delete["prev_kv"]["value"] == b64("1")
    finally:
        watch.close()
    # The client went away: the watcher is removed.
    for _ in range(100):
        if member.running.server.hub is not None and member.running.server.hub.watcher_count == 0:
            break
        await asyncio.sleep(0.02)
    assert member.running.server.hub is not None and member.running.server.hub.watcher_count == 0


async def test_watch_from_a_past_revision_and_bad_body(member: Member) -> None:
    url = member.http_url
    for v in ("a", "b"):
        await post_json(url + "/v3/kv/put", {"key": b64("h"), "value": b64(v)})
    watch = await Stream.open(url + "/v3/watch", {"create_request": {"key": b64("h"), "start_revision": "2"}})
    try:
        assert (await watch.next())["result"]["created"] is True
        events = (await watch.next())["result"]["events"]
        assert [e["kv"]["value"] for e in events] == [b64("a"), b64("b")]
    finally:
        watch.close()
    status, _, body = await request("POST", url + "/v3/watch", b"xx")
    assert status == 500 and json.loads(body)["code"] == 2


async def test_maintenance_and_cluster(member: Member) -> None:
    url = member.http_url
    _, st = await post_json(url + "/v3/maintenance/status", {})
    assert st["version"] == "3.4.34" and st["leader"] == str(member.running.server.member_id)
    status, _ = await post_json(url + "/v3/maintenance/alarm", {"action": "GET"})
    assert status == 200
    _, members = await post_json(url + "/v3/cluster/member/list", {})
    assert [m["ID"] for m in members["members"]] == [str(member.running.server.member_id)]


async def _raw(url: str, data: bytes) -> bytes:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 2.0)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


async def test_http_details_keepalive_chunked_and_expect_continue(member: Member) -> None:
    body = json.dumps({"key": b64("k"), "value": b64("v")}).encode()
    # Two requests on one connection, the second with a chunked body, then Connection: close.
    rbody = json.dumps({"key": b64("k")}).encode()
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, rbody[:5], len(rbody) - 5, rbody[5:])
    raw = await _raw(member.http_url, (
        b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + chunked))
    assert raw.count(b"HTTP/1.1 200 OK") == 2, raw
    assert raw.endswith(b'"value":"dg=="}],"count":"1"}')
    # Expect: 100-continue gets the interim response before the body is read.
    parts = urlsplit(member.http_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % len(body))
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    rest = await asyncio.wait_for(reader.read(), 2.0)
    assert rest.startswith(b"HTTP/1.1 200 OK") and b'"kvs"' in rest
    writer.close()
    # Garbage request line: 400 and the connection closes.
    raw = await _raw(member.http_url, b"NONSENSE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400")


async def test_bidi_answers_end_with_the_request_body_except_watch(member: Member) -> None:
    """As etcd's gateway: the body's end half-closes the call, so a keepalive answers each request object and
    ends (an empty body: nothing, at once); a watch keeps streaming (checked against etcd 3.4 in
    tests/api/test_client_port.py)."""
    url = member.http_url
    _, grant = await post_json(url + "/v3/lease/grant", {"TTL": 60})
    lid = grant["ID"]
    body = json.dumps({"ID": lid}).encode() * 3
    status, _, data = await asyncio.wait_for(request("POST", url + "/v3/lease/keepalive", body), 30)
    lines = [json.loads(line) for line in data.splitlines() if line.strip()]
    assert status == 200 and [r["result"]["ID"] for r in lines] == [lid] * 3
    status, _, data = await asyncio.wait_for(request("POST", url + "/v3/lease/keepalive", b""), 30)
    assert (status, data) == (200, b"")
    status, _, data = await asyncio.wait_for(request("POST", url + "/v3/lease/keepalive", b"[1]"), 30)
    assert status == 500 and json.loads(data)["code"] == 2
    watch = await Stream.open(url + "/v3/watch", {"create_request": {"key": b64("half")}})
    try:
        assert (await asyncio.wait_for(watch.next(), 30))["result"]["created"] is True
        await post_json(url + "/v3/kv/put", {"key": b64("half"), "value": b64("1")})
        event = await asyncio.wait_for(watch.next(), 30)
        assert event["result"]["events"][0]["kv"]["key"] == b64("half")
    finally:
        watch.close()
