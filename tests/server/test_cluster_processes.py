"""Real quorumkv clusters (``python -m quorumkv`` processes, etcd's flags, gRPC peer transport on loopback),
driven by the real ``etcdctl`` 3.4 where etcd users would use it.

Each test is bounded (timeouts on every wait) and tears its cluster down.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from quorumkv.testing.cluster import Cluster, patient_etcdctl, start_etcd_cluster, start_quorumkv_cluster
from quorumkv.testing.processes import (
    ETCD_BIN,
    ETCDCTL_BIN,
    free_port,
    run_etcdctl,
    start_etcdctl,
    start_quorumkv,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
                       reason="etcd/etcdctl 3.4 not on PATH (scripts/test.sh installs them)"),
]

FAST = {"heartbeat_ms": 50, "election_ms": 500}


def ok(result: object) -> str:
    assert result.returncode == 0, f"{getattr(result, 'args', '')}: {getattr(result, 'stderr', '')}"
    return str(result.stdout)


def member_put(cluster: Cluster, name: str, key: str, value: str, timeout: str = "5s") -> tuple[int, str]:
    r = run_etcdctl(cluster.member(name).client_url, f"--command-timeout={timeout}", "put", key, value,
                    timeout_s=30)
    return r.returncode, r.stdout + r.stderr


def get_value(endpoint: str, key: str, serializable: bool = False) -> str | None:
    args = ["get", key] + (["--consistency=s"] if serializable else [])
    kvs = json.loads(ok(patient_etcdctl(endpoint, *args, write_out="json"))).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def wait_until(cond: object, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s}s"
        time.sleep(0.1)


def hashkv_all(cluster: Cluster, names: list[str]) -> dict[str, tuple[int, int]]:
    """(revision, hash) per member at the same revision (the lowest current one)."""
    revs = {}
    for n in names:
        st = json.loads(ok(patient_etcdctl(cluster.member(n).client_url, "endpoint", "status", write_out="json")))
        revs[n] = st[0]["Status"]["header"]["revision"]
    rev = min(revs.values())
    out = {}
    for n in names:
        res = json.loads(ok(patient_etcdctl(cluster.member(n).client_url, "endpoint", "hashkv", f"--rev={rev}",
                                            write_out="json")))
        out[n] = (rev, res[0]["HashKV"]["hash"])
    return out


def test_etcdctl_cluster_commands_on_quorumkv_as_on_etcd(tmp_path: Path) -> None:
    """member list, endpoint status/health --cluster and move-leader give etcd's shape of answers."""
    shapes = {}
    for kind, start in (("etcd", start_etcd_cluster), ("quorumkv", start_quorumkv_cluster)):
        with start(3, tmp_path / kind, **FAST) as cluster:
            leader = cluster.leader()
            members = json.loads(ok(cluster.etcdctl("member", "list", write_out="json")))["members"]
            table = ok(cluster.etcdctl("member", "list", write_out="table"))
            status = json.loads(ok(cluster.etcdctl("endpoint", "status", "--cluster", write_out="json")))
            health = cluster.etcdctl("endpoint", "health", "--cluster")
            leaders = {s["Status"]["leader"] for s in status}
            target = next(m for m in members if m["name"] != leader)
            moved = ok(patient_etcdctl(cluster.member(leader).client_url, "move-leader", f"{target['ID']:x}"))
            wait_until(lambda c=cluster, t=target: c.find_leader() == t["name"], what="leadership moved")
            not_leader = run_etcdctl(cluster.member(leader).client_url, "move-leader", f"{target['ID']:x}")
            shapes[kind] = {
                "names": sorted(m["name"] for m in members),
                "table_header": table.splitlines()[1],
                "status_endpoints": len(status),
                "one_leader": len(leaders) == 1 and leaders <= {m["ID"] for m in members},
                "learners": [s["Status"].get("isLearner", False) for s in status],
                "health_ok": health.returncode == 0 and (health.stdout + health.stderr).count("is healthy") == 3,
                "moved": moved.startswith("Leadership transferred from ") and f"{target['ID']:x}" in moved,
                "not_leader_error": re.sub(r"http://127\.0\.0\.1:\d+", "URL",
                                           not_leader.stderr.strip().splitlines()[-1].split(": ", 1)[-1]),
            }
    assert shapes["quorumkv"] == shapes["etcd"]
    assert shapes["etcd"]["one_leader"] and shapes["etcd"]["health_ok"] and shapes["etcd"]["moved"]


def test_kill_leader_minority_majority(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path, **FAST) as cluster:
        leader = cluster.leader()
        ok(cluster.etcdctl("put", "a", "1"))
        cluster.kill(leader)  # kill -9 of the leader: a new leader, writes go on
        new = cluster.leader(exclude=leader)
        assert new != leader
        ok(cluster.etcdctl("put", "b", "2"))
        cluster.restart(leader)  # the old leader rejoins from its data dir and catches up
        wait_until(lambda: get_value(cluster.member(leader).client_url, "b", serializable=True) == "2",
                   what="restarted member caught up")
        others = [n for n in cluster.names if n != new]
        cluster.kill(others[0])  # a minority down: writes go on
        ok(patient_etcdctl(cluster.member(new).client_url, "put", "c", "3"))
        cluster.kill(others[1])  # a majority down: writes fail with an error, never a false success
        code, out = member_put(cluster, new, "d", "lost?", timeout="3s")
        assert code != 0 and ("timed out" in out or "deadline" in out or "no leader" in out), out
        cluster.restart(others[0])  # quorum back
        wait_until(lambda: member_put(cluster, new, "e", "5", timeout="3s")[0] == 0, 40, "writes after quorum")
        cluster.restart(others[1])
        alive = cluster.names
        wait_until(lambda: len({h for _, h in hashkv_all(cluster, alive).values()}) == 1, 30, "equal HashKV")
        for n in alive:
            assert get_value(cluster.member(n).client_url, "e") == "5"


def test_member_add_learner_promote_remove_with_etcdctl(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path, extra_args=("--snapshot-count", "50"), **FAST) as cluster:
        cluster.leader()
        for i in range(120):  # past --snapshot-count: the new member is caught up by a snapshot
            ok(cluster.etcdctl("put", f"k{i:03d}", f"v{i}"))
        peer_port = free_port()
        peer_url = f"http://127.0.0.1:{peer_port}"
        added = ok(cluster.etcdctl("member", "add", "m4", f"--peer-urls={peer_url}", "--learner"))
        assert "Member" in added and "added to cluster" in added
        env_lines = dict(line.split("=", 1) for line in added.splitlines() if line.startswith("ETCD_"))
        assert env_lines["ETCD_INITIAL_CLUSTER_STATE"] == '"existing"'
        initial_cluster = env_lines["ETCD_INITIAL_CLUSTER"].strip('"')
        # a learner cannot be promoted before it has caught up: etcd's error
        promote_early = cluster.etcdctl("member", "promote", _member_id(cluster, "m4", learner=True))
        assert promote_early.returncode != 0
        assert "can only promote a learner member which is in sync with leader" in promote_early.stderr
        m4 = start_quorumkv(tmp_path / "m4", name="m4", extra_args=(
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "existing",
            "--initial-advertise-peer-urls", peer_url, "--listen-peer-urls", peer_url,
            "--initial-cluster-token", cluster.token,
            "--heartbeat-interval", "50", "--election-timeout", "500"),
            ready_timeout_s=None)  # the readiness probe is a linearizable read, which a learner refuses
        try:
            def caught_up() -> bool:
                got = run_etcdctl(m4.client_url, "get", "k119", "--consistency=s", "--print-value-only")
                return got.returncode == 0 and got.stdout.strip() == "v119"
            wait_until(caught_up, 30, "learner caught up")
            lin = run_etcdctl(m4.client_url, "get", "k000")  # a learner serves only serializable reads
            assert lin.returncode != 0 and "rpc not supported for learner" in lin.stderr
            m4_id = _member_id(cluster, "m4", learner=True)
            wait_until(lambda: cluster.etcdctl("member", "promote", m4_id).returncode == 0, 30, "promote")
            def members_now() -> list[dict[str, object]]:
                return json.loads(ok(cluster.etcdctl("member", "list", write_out="json")))["members"]  # type: ignore
            # member list is answered from the member's own applied state (as etcd 3.4): wait for it to apply
            wait_until(lambda: not any(m.get("isLearner") for m in members_now()), 30, "promotion applied")
            assert sorted(str(m["name"]) for m in members_now()) == ["m1", "m2", "m3", "m4"]
            ok(patient_etcdctl(m4.client_url, "put", "from-m4", "yes"))
            victim = next(n for n in cluster.names if n != cluster.leader())
            victim_id = f"{cluster.member(victim).member_id:x}"
            removed = ok(cluster.etcdctl("member", "remove", victim_id))
            # etcdctl prints the ID as %16x: space-padded when it has fewer than 16 hex digits
            assert f"Member {cluster.member(victim).member_id:16x} removed from cluster" in removed
            proc = cluster.member(victim).process
            assert proc is not None
            wait_until(lambda: not proc.alive(), 20, "removed member exits")
            restarted = cluster.restart(victim, wait_ready=False)
            assert restarted.process is not None
            wait_until(lambda: not restarted.process.alive(), 20, "removed member refuses to start")  # type: ignore
            assert "was removed from the cluster" in cluster.member(victim).log_tail()
        finally:
            m4.stop()


def _member_id(cluster: Cluster, name: str, learner: bool = False) -> str:
    members = json.loads(ok(cluster.etcdctl("member", "list", write_out="json")))["members"]
    for m in members:
        if m.get("name") == name or (learner and m.get("isLearner")):
            return f"{m['ID']:x}"
    raise AssertionError(f"no member {name}: {members}")


def test_watch_on_a_follower_across_a_leader_change(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path, **FAST) as cluster:
        leader = cluster.leader()
        follower = next(n for n in cluster.names if n != leader)
        watch = start_etcdctl(cluster.member(follower).client_url, "watch", "w", "--prefix")
        try:
            time.sleep(0.5)
            for i in range(10):
                ok(cluster.etcdctl("put", f"w{i}", str(i)))
            if leader != follower:
                cluster.kill(leader)
                cluster.leader(exclude=leader)
            for i in range(10, 20):  # once each (a retried put could legitimately appear twice)
                code, out = member_put(cluster, follower, f"w{i}", str(i), timeout="10s")
                assert code == 0, out
            wait_until(lambda: watch.stdout.count("\nw19\n") == 1, 10, "last event seen")
        finally:
            watch.stop()
        lines = watch.stdout.splitlines()
        events = [(lines[k], lines[k + 1], lines[k + 2]) for k in range(0, len(lines) - 2, 3)]
        # no gap, no duplicate, order kept
        assert events == [("PUT", f"w{i}", str(i)) for i in range(20)], watch.stdout


def test_member_of_another_cluster_is_refused_with_both_ids(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path / "a", token="cluster-a", **FAST) as a:
        a.leader()
        m3 = a.member("m3")
        a.kill("m3")
        # the same member name and URLs, but a fresh data dir and another token: another cluster's member
        stranger = start_quorumkv(tmp_path / "b", name="m3", ready_timeout_s=None, extra_args=(
            "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in a.members),
            "--initial-advertise-peer-urls", m3.peer_url, "--listen-peer-urls", m3.peer_url,
            "--initial-cluster-token", "cluster-b", "--heartbeat-interval", "50", "--election-timeout", "500"))
        try:
            wait_until(lambda: "request cluster ID mismatch" in a.member("m1").log_tail(400)
                       + a.member("m2").log_tail(400), 20, "refusal logged")
            logs = a.member("m1").log_tail(400) + a.member("m2").log_tail(400)
            line = next(x for x in logs.splitlines() if "request cluster ID mismatch" in x)
            assert "local member cluster ID" in line and "remote peer" in line
            ok(a.etcdctl("put", "still", "fine"))  # the real cluster is not disturbed
        finally:
            stranger.stop()
