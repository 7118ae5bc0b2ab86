"""/health, /livez, /readyz and /version on the metrics and client HTTP listeners."""

from __future__ import annotations

import json
import sqlite3

from quorumkv.api.etcdserverpb import rpc_pb2 as pb

from .obskit import Member, request, scrape


def raise_alarm(member: Member, alarm: int) -> None:
    """Write an alarm row as the alarm apply would (a separate connection: the member's reader sees it)."""
    server = member.running.server
    conn = sqlite3.connect(server.backend.db_path, timeout=10)
    try:
        conn.execute("INSERT INTO alarm(member_id, alarm) VALUES (?, ?)", (1, alarm))
        conn.commit()
    finally:
        conn.close()


async def test_health_ok_on_both_listeners(member: Member) -> None:
    for url in (member.metrics_url, member.http_url):
        status, _, body = await request("GET", url + "/health")
        assert status == 200
        assert json.loads(body) == {"health": "true", "reason": ""}
        status, _, _ = await request("GET", url + "/health?serializable=true")
        assert status == 200
    metrics = await scrape(member.metrics_url)
    assert metrics["etcd_server_health_success"] == 4


async def test_health_is_get_only(member: Member) -> None:
    status, _, _ = await request("POST", member.http_url + "/health", b"")
    assert status == 405


async def test_nospace_alarm_makes_health_503_unless_excluded(member: Member) -> None:
    raise_alarm(member, pb.NOSPACE)
    assert member.running.server.active_alarms() == [(1, pb.NOSPACE)]
    status, _, body = await request("GET", member.http_url + "/health")
    assert status == 503
    assert json.loads(body) == {"health": "false", "reason": "ALARM NOSPACE"}
    status, _, body = await request("GET", member.metrics_url + "/health?exclude=NOSPACE")
    assert status == 200, body
    assert (await scrape(member.metrics_url))["etcd_server_health_failures"] == 1
    # A NOSPACE alarm does not make the member unready (etcd's readyz checks CORRUPT only).
    status, _, _ = await request("GET", member.http_url + "/readyz")
    assert status == 200


async def test_livez_readyz_verbose_exclude_and_per_check(member: Member) -> None:
    status, _, body = await request("GET", member.http_url + "/livez")
    assert (status, body) == (200, b"ok")
    status, _, body = await request("GET", member.http_url + "/readyz?verbose")
    assert status == 200
    assert body.decode().splitlines() == [
        "[+]data_corruption ok", "[+]serializable_read ok", "[+]linearizable_read ok", "/readyz check passed"]
    status, _, body = await request("GET", member.metrics_url + "/readyz?verbose&exclude=serializable_read")
    assert "[+]serializable_read excluded: ok" in body.decode()
    status, _, body = await request("GET", member.http_url + "/readyz/linearizable_read")
    assert (status, body) == (200, b"ok")
    status, _, _ = await request("GET", member.http_url + "/readyz/no_such_check")
    assert status == 404

    raise_alarm(member, pb.CORRUPT)
    status, _, body = await request("GET", member.http_url + "/readyz")
    assert status == 503
    text = body.decode()
    assert "[-]data_corruption failed: alarm activated: CORRUPT" in text and text.endswith("/readyz check failed\n")
    status, _, _ = await request("GET", member.http_url + "/readyz/data_corruption")
    assert status == 503
    status, _, _ = await request("GET", member.http_url + "/readyz?exclude=data_corruption")
    assert status == 200
    status, _, _ = await request("GET", member.http_url + "/livez")
    assert status == 200
    status, _, body = await request("GET", member.http_url + "/health")
    assert json.loads(body) == {"health": "false", "reason": "ALARM CORRUPT"}


async def test_version_and_unknown_paths(member: Member) -> None:
    status, headers, body = await request("GET", member.http_url + "/version")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"etcdserver": "3.4.34", "etcdcluster": "3.4.0"}
    status, _, body = await request("GET", member.http_url + "/nope")
    assert (status, body) == (404, b"404 page not found\n")
    # The metrics listener serves metrics and health only, as etcd's.
    status, _, _ = await request("POST", member.metrics_url + "/v3/kv/range", b"{}")
    assert status == 404
