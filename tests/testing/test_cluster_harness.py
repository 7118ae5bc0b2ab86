"""The cluster harness: real etcd 3.4 clusters (the reference), the proxy wiring, and quorumkv clusters.

The quorumkv cluster tests at the bottom start real ``python -m quorumkv`` members with etcd's flags.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from quorumkv.testing.cluster import (
    PEER_DIAL_MAP_ENV,
    Cluster,
    format_peer_dial_map,
    parse_peer_dial_map,
    start_etcd_cluster,
    start_quorumkv_cluster,
)
from quorumkv.testing.faultproxy import ProxyMode
from quorumkv.testing.processes import ETCD_BIN, ETCDCTL_BIN, ServerNotReady

#: Short Raft timings: elections in well under a second, still stable on a busy 2-core machine.
FAST = {"heartbeat_ms": 50, "election_ms": 500}

needs_etcd = pytest.mark.skipif(
    shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
    reason="etcd/etcdctl 3.4 not on PATH (apt-get install etcd-server etcd-client; scripts/test.sh does this)",
)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (our children are reaped by ServerProcess.stop)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def get_value(cluster: Cluster, name: str, key: str, *, serializable: bool = False) -> str | None:
    args = ["get", key] + (["--consistency=s"] if serializable else [])
    result = cluster.member(name).process.etcdctl(*args, write_out="json")  # type: ignore[union-attr]
    assert result.returncode == 0, result.stderr
    kvs = json.loads(result.stdout).get("kvs", [])
    if not kvs:
        return None
    return base64.b64decode(kvs[0]["value"]).decode()


# ------------------------------------------------------------------------------------------------ dial map


def test_peer_dial_map_round_trip_and_errors() -> None:
    mapping = {"http://127.0.0.1:4001": "http://127.0.0.1:5001", "http://127.0.0.1:4002": "http://127.0.0.1:5002"}
    text = format_peer_dial_map(mapping)
    assert text == "http://127.0.0.1:4001=http://127.0.0.1:5001,http://127.0.0.1:4002=http://127.0.0.1:5002"
    assert parse_peer_dial_map(text) == mapping
    assert parse_peer_dial_map("") == {}
    assert parse_peer_dial_map(" a=b , ,c=d ") == {"a": "b", "c": "d"}
    for bad in ("a", "a=", "=b", "a=b,a=c"):
        with pytest.raises(ValueError):
            parse_peer_dial_map(bad)
    with pytest.raises(ValueError):
        format_peer_dial_map({"a,b": "c"})


# ------------------------------------------------------------------------------------------------ etcd


@pytest.mark.interop
@needs_etcd
def test_etcd_cluster_start_leader_kill_restart_stop(tmp_path: Path) -> None:
    cluster = start_etcd_cluster(3, tmp_path, **FAST)
    pids = [m.pid for m in cluster.members]
    try:
        assert cluster.names == ["m1", "m2", "m3"]
        assert len(set(pids)) == 3 and all(m.alive for m in cluster.members)
        assert len({m.client_url for m in cluster.members} | {m.peer_url for m in cluster.members}) == 6
        assert all(m.data_dir.is_dir() for m in cluster.members)

        # One cluster of three, as etcd itself reports it: names and peer URLs are the harness's.
        listed = json.loads(cluster.etcdctl("member", "list", write_out="json").stdout)["members"]
        assert sorted((m["name"], m["peerURLs"][0]) for m in listed) == sorted(
            (m.name, m.peer_url) for m in cluster.members
        )

        leader = cluster.leader()
        statuses = cluster.statuses()
        assert len(statuses) == 3
        leader_id = cluster.member(leader).member_id
        assert {s.leader_id for s in statuses} == {leader_id}

        assert cluster.etcdctl("put", "k1", "before-crash").returncode == 0

        # Crash the leader: a new leader among the other two; writes still work.
        assert cluster.kill(leader) == -9
        assert not cluster.member(leader).alive
        t0 = time.monotonic()
        new_leader = cluster.leader(timeout_s=15.0, exclude=leader)
        failover_s = time.monotonic() - t0
        assert new_leader != leader
        assert cluster.status(leader) is None  # a dead member does not answer
        assert cluster.etcdctl("put", "k2", "after-crash").returncode == 0

        # Restart on the same data dir and ports: same member ID, catches up with the write it missed.
        old_id, old_url, old_dir = leader_id, cluster.member(leader).client_url, cluster.member(leader).data_dir
        member = cluster.restart(leader)
        assert member.alive and member.pid not in pids and member.starts == 2
        assert (member.member_id, member.client_url, member.data_dir) == (old_id, old_url, old_dir)
        assert get_value(cluster, leader, "k1") == "before-crash"
        assert get_value(cluster, leader, "k2") == "after-crash"
        assert len(cluster.statuses()) == 3

        # A clean stop (SIGTERM) of a follower: the other two keep a leader.
        follower = next(n for n in cluster.names if n != cluster.leader())
        cluster.stop(follower)
        assert not cluster.member(follower).alive
        assert cluster.leader(exclude=follower) != follower
        print(f"etcd failover (kill -9 leader -> new leader acknowledged): {failover_s:.2f}s")
    finally:
        cluster.close()
    assert all(pid_gone(p) for p in [*pids, cluster.member(leader).pid] if p is not None)
    with pytest.raises(RuntimeError, match="with_proxies"):
        cluster.isolate("m1")


def child_pids() -> set[int]:
    """Live (not yet reaped) children of this test process, from /proc."""
    pids: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        pids.update(int(p) for p in children.read_text().split())
    return pids


@pytest.mark.interop
@needs_etcd
def test_etcd_cluster_that_cannot_start_reports_logs(tmp_path: Path) -> None:
    with pytest.raises(ServerNotReady) as info:
        start_etcd_cluster(3, tmp_path, extra_args=["--no-such-flag"], ready_timeout_s=10.0)
    message = str(info.value)
    assert "etcd cluster of 3 did not become ready" in message
    assert "--- m1 (" in message and "--- m3 (" in message  # every member's log tail
    assert "no-such-flag" in message  # etcd's own complaint, from the log


@pytest.mark.interop
@needs_etcd
def test_etcd_cluster_not_ready_in_time_is_torn_down(tmp_path: Path) -> None:
    before = child_pids()
    with pytest.raises(ServerNotReady, match="did not become ready"):
        # The members run but cannot elect a leader within a second (the first election takes 10-20 s).
        start_etcd_cluster(
            3, tmp_path, heartbeat_ms=1000, election_ms=10_000, extra_args=["--initial-election-tick-advance=false"],
            ready_timeout_s=1.0,
        )  # fmt: skip
    assert child_pids() - before == set()


def test_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"1\.\.9 members"):
        start_etcd_cluster(0, tmp_path)
    with pytest.raises(ValueError, match="distinct member names"):
        start_etcd_cluster(2, tmp_path, names=["a", "a"])


# ------------------------------------------------------------------------------------------------ proxies


def test_quorumkv_cluster_proxy_wiring(tmp_path: Path) -> None:
    """One proxy per directed link, each member's dial map, and what the fault helpers do to the proxies.

    Runs without waiting for readiness, so it checks the wiring whether or not clustering works yet.
    """
    cluster = start_quorumkv_cluster(3, tmp_path, with_proxies=True, ready_timeout_s=None, **FAST)
    try:
        names = cluster.names
        assert sorted(cluster.proxies) == sorted((a, b) for a in names for b in names if a != b)
        for (_src, dst), proxy in cluster.proxies.items():
            assert (proxy.target_host, proxy.target_port) == ("127.0.0.1", cluster.member(dst).peer_port)
            assert proxy.mode == ProxyMode("pass")
        for member in cluster.members:
            assert member.env is not None
            dial_map = parse_peer_dial_map(member.env[PEER_DIAL_MAP_ENV])
            assert dial_map == {
                cluster.member(other).peer_url: cluster.link(member.name, other).url
                for other in names
                if other != member.name
            }
            # Each member still listens on and advertises its own, unproxied peer URL.
            assert member.argv[member.argv.index("--listen-peer-urls") + 1] == member.peer_url
            assert member.argv[member.argv.index("--initial-advertise-peer-urls") + 1] == member.peer_url

        def modes() -> dict[tuple[str, str], str]:
            return {
                link: f"{p.mode.kind}:{p.mode.direction}" if p.mode.direction else p.mode.kind
                for link, p in cluster.proxies.items()
            }

        cluster.isolate("m2")
        assert modes() == {
            ("m1", "m2"): "blackhole", ("m2", "m1"): "blackhole", ("m2", "m3"): "blackhole",
            ("m3", "m2"): "blackhole", ("m1", "m3"): "pass", ("m3", "m1"): "pass",
        }  # fmt: skip
        cluster.heal()
        assert set(modes().values()) == {"pass"}

        cluster.partition(["m1"], ["m2", "m3"], how="drop")
        assert modes()[("m1", "m2")] == modes()[("m3", "m1")] == "drop"
        assert modes()[("m2", "m3")] == "pass"
        cluster.heal()

        cluster.one_way("m1", "m3")
        assert modes()[("m1", "m3")] == "one_way:forward"  # m1's requests reach m3
        assert modes()[("m3", "m1")] == "one_way:backward"  # m1's replies reach m3, m3's requests do not
        assert modes()[("m1", "m2")] == "pass"

        cluster.link("m2", "m3").delay(20, jitter_ms=5)
        assert cluster.link("m2", "m3").mode == ProxyMode("delay", 20.0, 5.0)
        with pytest.raises(ValueError):
            cluster.partition(["m1"], ["m1", "m2"])
        with pytest.raises(KeyError):
            cluster.link("m1", "nope")
    finally:
        cluster.close()
    for proxy in cluster.proxies.values():
        with pytest.raises(OSError):
            socket.create_connection(proxy.address, timeout=1.0).close()


# ------------------------------------------------------------------------------------------------ quorumkv


@pytest.mark.interop
@needs_etcd
def test_quorumkv_cluster_start_leader_kill_restart(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path, **FAST) as cluster:
        leader = cluster.leader()
        assert {s.leader_id for s in cluster.statuses()} == {cluster.member(leader).member_id}
        assert cluster.etcdctl("put", "k1", "v1").returncode == 0
        cluster.kill(leader)
        new_leader = cluster.leader(exclude=leader)
        assert new_leader != leader
        assert cluster.etcdctl("put", "k2", "v2").returncode == 0
        cluster.restart(leader)
        assert get_value(cluster, leader, "k1") == "v1"
        assert get_value(cluster, leader, "k2") == "v2"


@pytest.mark.interop
@needs_etcd
def test_quorumkv_members_dial_peers_through_their_proxies(tmp_path: Path) -> None:
    """Every directed link carries traffic: the server honours QUORUMKV_TEST_PEER_DIAL_MAP."""
    with start_quorumkv_cluster(3, tmp_path, with_proxies=True, **FAST) as cluster:
        cluster.leader()
        assert cluster.etcdctl("put", "k", "v").returncode == 0
        deadline = time.monotonic() + 5.0
        proxies = list(cluster.proxies.values())
        while time.monotonic() < deadline and any(p.stats().bytes_forward == 0 for p in proxies):
            time.sleep(0.05)
        unused = [link for link, p in cluster.proxies.items() if p.stats().bytes_forward == 0]
        assert not unused, f"links never dialled through their proxy: {unused}"


@pytest.mark.interop
@needs_etcd
def test_quorumkv_isolated_leader_is_replaced_and_rejoins(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path, with_proxies=True, **FAST) as cluster:
        old = cluster.leader()
        assert cluster.etcdctl("put", "k", "before").returncode == 0
        cluster.isolate(old)
        new = cluster.leader(exclude=old)
        majority = [n for n in cluster.names if n != old]
        put = cluster.member(new).process.etcdctl("put", "k", "during")  # type: ignore[union-attr]
        assert put.returncode == 0, put.stderr
        # The isolated member cannot commit anything on its own.
        stuck = cluster.member(old).process.etcdctl(  # type: ignore[union-attr]
            "--command-timeout=2s", "put", "k", "lost", timeout_s=10.0
        )
        assert stuck.returncode != 0
        cluster.heal()
        assert cluster.leader() in majority
        deadline = time.monotonic() + 10.0
        while get_value(cluster, old, "k", serializable=True) != "during" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get_value(cluster, old, "k") == "during"
