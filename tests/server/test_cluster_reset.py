"""Recovering from quorum loss with real processes: ``--cluster-reset`` (K3s), ``--force-new-cluster`` (etcd,
compared with etcd 3.4 itself) and ``--cluster-reset-restore-path`` (a quorumkv or an etcd 3.4 snapshot).

Every wait is bounded; every process is started here and stopped by its pid (the harness's ``close``).
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import pytest

from quorumkv.testing.cluster import Cluster, ClusterMember, patient_etcdctl, start_etcd_cluster, start_quorumkv_cluster
from quorumkv.testing.processes import (
    ETCD_BIN,
    ETCDCTL_BIN,
    run_etcdctl,
    start_etcd,
    start_quorumkv,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
                       reason="etcd/etcdctl 3.4 not on PATH (scripts/test.sh installs them)"),
]

FAST = {"heartbeat_ms": 50, "election_ms": 500}


def ok(result: object) -> str:
    assert result.returncode == 0, f"{getattr(result, 'args', '')}: {getattr(result, 'stderr', '')}"
    return str(result.stdout)


def all_kvs(endpoint: str) -> dict[str, str]:
    out = json.loads(ok(patient_etcdctl(endpoint, "get", "--prefix", "", write_out="json")))
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
            for kv in out.get("kvs", [])}


def member_names(endpoint: str) -> list[str]:
    out = json.loads(ok(patient_etcdctl(endpoint, "member", "list", write_out="json")))
    return sorted(m.get("name", "") for m in out["members"])


def wait_exit(member: ClusterMember, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    assert member.process is not None
    while member.process.returncode is None:
        assert time.monotonic() < deadline, f"{member.name} still running after {timeout_s}s:\n{member.log_tail()}"
        time.sleep(0.1)
    return member.process.returncode


def set_flag(member: ClusterMember, flag: str, value: str) -> None:
    i = member.argv.index(flag)
    member.argv[i + 1] = value


def crash_all(cluster: Cluster, last_key: str) -> None:
    """Quorum loss: every member dies (SIGKILL) once the survivor-to-be, m1, holds the last acknowledged write (a
    reset keeps what its member holds; a write m1 never received cannot survive on m1)."""
    deadline = time.monotonic() + 30
    while True:
        r = run_etcdctl(cluster.member("m1").client_url, "get", last_key, "--consistency=s", timeout_s=30)
        if r.returncode == 0 and last_key in r.stdout:
            break
        assert time.monotonic() < deadline, f"m1 never applied {last_key}"
        time.sleep(0.1)
    for name in ("m2", "m3", "m1"):
        cluster.kill(name)


def test_cluster_reset_after_quorum_loss(tmp_path: Path) -> None:
    """--cluster-reset on the survivor of a 3-member cluster that lost 2: every acknowledged write kept, writes
    served; a second start with the flag refused; an old member on its old data refused (it stops, does not take
    writes, and its data dir is refused afterwards); wiped members rejoin with member add and catch up."""
    with start_quorumkv_cluster(3, tmp_path, **FAST) as cluster:
        m1, m2, m3 = (cluster.member(n) for n in ("m1", "m2", "m3"))
        acked = {}
        for k in range(20):
            endpoint = cluster.members[k % 3].client_url  # followers forward: each write acknowledged by one
            ok(run_etcdctl(endpoint, "put", f"k{k}", f"v{k}", timeout_s=30))
            acked[f"k{k}"] = f"v{k}"
        crash_all(cluster, "k19")
        old_m2 = tmp_path / "m2-old-data"
        shutil.copytree(m2.data_dir, old_m2)
        shutil.rmtree(m2.data_dir)
        shutil.rmtree(m3.data_dir)

        m1.argv.append("--cluster-reset")
        cluster.restart("m1", ready_timeout_s=60)
        log = m1.log_path.read_text()
        assert "is now the only member of its cluster" in log and "--initial-cluster-state existing" in log
        assert "restart this member without --cluster-reset" in log
        assert (m1.data_dir / "reset-flag").exists()
        assert acked.items() <= all_kvs(m1.client_url).items()
        assert member_names(m1.client_url) == ["m1"]
        ok(run_etcdctl(m1.client_url, "put", "after-reset", "yes", timeout_s=30))

        # an old member on its old data: refused by m1 as removed; it stops and never takes a write
        m2_argv = list(m2.argv)
        m2.argv = [a if a != str(m2.data_dir) else str(old_m2) for a in m2.argv]
        cluster.restart("m2", wait_ready=False)
        r = run_etcdctl(m2.client_url, "--command-timeout=3s", "put", "old", "x", timeout_s=30)
        assert r.returncode != 0
        wait_exit(m2, 60)  # (0: a member that learns its removal stops cleanly, as after member remove)
        m2_log = m2.log_tail(200)
        assert "removed from the cluster" in m2_log
        assert "wipe its data dir" in m1.log_path.read_text()  # m1 names the member and the fix
        cluster.restart("m2", wait_ready=False)  # the data dir is refused from now on, with the fix
        assert wait_exit(m2, 30) != 0
        assert "cannot be used again: remove the data dir" in m2.log_tail(5)
        assert "old" not in all_kvs(m1.client_url)

        # a second start with --cluster-reset is refused; without it the member starts (and the guard goes)
        cluster.stop("m1")
        cluster.restart("m1", wait_ready=False)
        assert wait_exit(m1, 30) != 0
        assert "already reset" in m1.log_tail(5) and "remove --cluster-reset" in m1.log_tail(5)
        m1.argv.remove("--cluster-reset")
        cluster.restart("m1", ready_timeout_s=60)
        assert not (m1.data_dir / "reset-flag").exists()

        # the wiped members rejoin: member add, fresh data dir, --initial-cluster-state existing
        m2.argv = m2_argv
        joined = f"m1={m1.peer_url}"
        for m in (m2, m3):
            ok(run_etcdctl(m1.client_url, "member", "add", m.name, f"--peer-urls={m.peer_url}", timeout_s=30))
            joined += f",{m.name}={m.peer_url}"
            set_flag(m, "--initial-cluster", joined)
            set_flag(m, "--initial-cluster-state", "existing")
            cluster.restart(m.name, ready_timeout_s=60)
        ok(run_etcdctl(m2.client_url, "put", "after-rejoin", "yes", timeout_s=30))
        deadline = time.monotonic() + 60
        while True:
            out = json.loads(ok(patient_etcdctl(cluster.endpoints, "endpoint", "hashkv", write_out="json")))
            hashes = {e["HashKV"]["hash"] for e in out}
            revs = {e["HashKV"]["header"]["revision"] for e in out}
            if len(out) == 3 and len(hashes) == 1 and len(revs) == 1:
                break
            assert time.monotonic() < deadline, f"members did not converge: {out}"
            time.sleep(0.5)
        assert member_names(m1.client_url) == ["m1", "m2", "m3"]
        assert acked.items() <= all_kvs(m3.client_url).items()


def _force_new_cluster(cluster: Cluster) -> dict[str, object]:
    """What a user sees after --force-new-cluster on the survivor of a quorum loss."""
    for k in range(5):
        ok(run_etcdctl(cluster.members[k % 2].client_url, "put", f"k{k}", f"v{k}", timeout_s=30))
    cluster.kill("m2")
    cluster.stop("m1")
    m1 = cluster.member("m1")
    m1.argv.append("--force-new-cluster")
    cluster.restart("m1", ready_timeout_s=60)
    before = all_kvs(m1.client_url)
    names = member_names(m1.client_url)
    put = run_etcdctl(m1.client_url, "put", "after", "x", timeout_s=30)
    status = json.loads(ok(patient_etcdctl(m1.client_url, "endpoint", "status", write_out="json")))[0]["Status"]
    # a second start with the flag: etcd resets again (nothing to remove), no guard
    cluster.stop("m1")
    cluster.restart("m1", ready_timeout_s=60)
    again = member_names(m1.client_url)
    return {"kvs": before, "members": names, "put": put.returncode, "after": all_kvs(m1.client_url).get("after"),
            "leader_is_self": status["leader"] == status["header"]["member_id"], "again": again}


@pytest.mark.slow  # two clusters; the default suite checks the flag in process (test_reset_unit.py)
def test_force_new_cluster_matches_etcd(tmp_path: Path) -> None:
    with start_etcd_cluster(2, tmp_path / "etcd", **FAST) as etcd:
        want = _force_new_cluster(etcd)
    with start_quorumkv_cluster(2, tmp_path / "qkv", **FAST) as qkv:
        got = _force_new_cluster(qkv)
    assert want == {"kvs": {f"k{k}": f"v{k}" for k in range(5)}, "members": ["m1"], "put": 0, "after": "x",
                    "leader_is_self": True, "again": ["m1"]}
    assert got == want


@pytest.mark.parametrize("source", [pytest.param("quorumkv", marks=pytest.mark.slow), "etcd"])
def test_cluster_reset_restore_path(tmp_path: Path, source: str) -> None:
    """A snapshot saved by ``etcdctl snapshot save`` (from quorumkv or from etcd 3.4) restored by
    ``--cluster-reset --cluster-reset-restore-path`` on a fresh data dir, then over an existing one (kept aside)."""
    snap = tmp_path / "snap.db"
    start = start_quorumkv if source == "quorumkv" else start_etcd
    origin = start(tmp_path / "origin", "origin")
    try:
        for k in range(10):
            ok(origin.etcdctl("put", f"s{k}", f"w{k}"))
        ok(origin.etcdctl("snapshot", "save", str(snap)))
    finally:
        origin.stop()
    data = tmp_path / "restored"
    flags = ["--cluster-reset", f"--cluster-reset-restore-path={snap}"]
    server = start_quorumkv(tmp_path / "fresh", "n1", flags, data_dir=data)
    try:
        assert all_kvs(server.client_url) == {f"s{k}": f"w{k}" for k in range(10)}
        assert member_names(server.client_url) == ["n1"]
        ok(server.etcdctl("put", "new", "1"))
    finally:
        server.stop()
    # over the existing data dir: a second reset needs the guard removed; the old dir is kept beside it
    refused = start_quorumkv(tmp_path / "again", "n1", flags, data_dir=data, ready_timeout_s=None)
    try:
        deadline = time.monotonic() + 30
        while refused.returncode is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert refused.returncode != 0 and "already reset" in refused.log_tail(5)
    finally:
        refused.stop()
    (data / "reset-flag").unlink()
    (data / "snapshots").mkdir(exist_ok=True)
    shutil.copy(snap, data / "snapshots" / "kept.db")  # the default --etcd-snapshot-dir stays in the data dir
    flags[1] = f"--cluster-reset-restore-path={data / 'snapshots' / 'kept.db'}"
    server = start_quorumkv(tmp_path / "over", "n1", flags, data_dir=data)
    try:
        assert "new" not in all_kvs(server.client_url)
        assert len(all_kvs(server.client_url)) == 10
    finally:
        server.stop()
    old = [p for p in tmp_path.iterdir() if p.name.startswith("restored-old-")]
    assert len(old) == 1 and (old[0] / "quorumkv.db").exists()
    assert (data / "snapshots" / "kept.db").exists()


def test_cluster_reset_refusals(tmp_path: Path) -> None:
    """Flags that cannot work are refused at start with one line naming the fix."""
    bad = start_quorumkv(tmp_path / "a", "x", ["--cluster-reset-restore-path=/nonexistent"], ready_timeout_s=None)
    fresh = start_quorumkv(tmp_path / "b", "y", ["--cluster-reset"], ready_timeout_s=None)
    missing = start_quorumkv(tmp_path / "c", "z", ["--cluster-reset", "--cluster-reset-restore-path=/nonexistent"],
                             ready_timeout_s=None)
    try:
        deadline = time.monotonic() + 60
        while any(p.returncode is None for p in (bad, fresh, missing)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert bad.returncode == 2 and "needs --cluster-reset" in bad.log_tail(3)
        assert fresh.returncode == 1 and "holds no member to reset" in fresh.log_tail(3)
        assert missing.returncode == 1 and "does not exist" in missing.log_tail(3)
    finally:
        for p in (bad, fresh, missing):
            p.stop()


@pytest.mark.slow  # a second 3-member cluster
def test_two_old_members_back_together_are_refused(tmp_path: Path) -> None:
    """Both lost members come back on their old data at once (a majority of the old configuration): the reset
    member refuses both as removed, both stop, and neither acknowledges a write."""
    with start_quorumkv_cluster(3, tmp_path, **FAST) as cluster:
        m1 = cluster.member("m1")
        for k in range(5):
            ok(run_etcdctl(cluster.members[k % 3].client_url, "put", f"k{k}", f"v{k}", timeout_s=30))
        crash_all(cluster, "k4")
        m1.argv.append("--cluster-reset")
        cluster.restart("m1", ready_timeout_s=60)
        for name in ("m2", "m3"):
            cluster.restart(name, wait_ready=False)
        results = [run_etcdctl(cluster.member(n).client_url, "--command-timeout=3s", "put", "split", n, timeout_s=30)
                   for n in ("m2", "m3")]
        for name in ("m2", "m3"):
            wait_exit(cluster.member(name), 60)
            assert "removed from the cluster" in cluster.member(name).log_tail(200)
        assert all(r.returncode != 0 for r in results), [r.stdout for r in results]
        assert "split" not in all_kvs(m1.client_url)
        assert member_names(m1.client_url) == ["m1"]
