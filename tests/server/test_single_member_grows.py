"""A single member is a Raft cluster of one, so it grows as etcd's does: ``member add`` on it, then the new member
started with ``--initial-cluster-state existing`` catches up by a state snapshot that keeps the whole MVCC
history. The same holds for a data dir written by release 0.1's single-member node (upgraded in place). And a
multi-member ``snapshot restore`` gives members that form ONE cluster: a lone restored member never leads.

Real processes and the real etcdctl 3.4; every wait bounded.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quorumkv.testing.processes import (
    ETCD_BIN,
    ETCDCTL_BIN,
    ServerProcess,
    free_port,
    quorumkv_env,
    run_etcdctl,
    start_quorumkv,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
                       reason="etcd/etcdctl 3.4 not on PATH (scripts/test.sh installs them)"),
]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TIMING = ("--heartbeat-interval", "50", "--election-timeout", "500")

Answer = list[list[Any]]


def ok(result: Any) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return str(result.stdout)


def ctl(server: ServerProcess, *args: str) -> str:
    return ok(run_etcdctl(server.client_url, "--command-timeout=30s", *args, timeout_s=60))


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s}s"
        time.sleep(0.1)


def answers_at(server: ServerProcess, revisions: range) -> dict[int, Answer]:
    """Every key at each revision as this member alone answers it (serializable reads)."""
    out: dict[int, Answer] = {}
    for rev in revisions:
        got = json.loads(ctl(server, "get", "", "--from-key", "--rev", str(rev), "--consistency=s", "-w", "json"))
        out[rev] = [[kv["key"], kv.get("value", ""), kv["create_revision"], kv["mod_revision"], kv["version"],
                     kv.get("lease", 0)] for kv in got.get("kvs", [])]
    return out


def revision_of(server: ServerProcess) -> int:
    got = json.loads(ctl(server, "get", "none", "--consistency=s", "-w", "json"))
    return int(got["header"]["revision"])


def write_history(server: ServerProcess) -> int:
    """Puts, overwrites, a delete, a leased key, a txn and a compaction; returns the compacted revision."""
    for i in range(12):
        ctl(server, "put", f"k{i % 5}", f"v{i}")
    ctl(server, "del", "k2")
    lease = ctl(server, "lease", "grant", "600").split()[1]
    ctl(server, "put", "--lease", lease, "leased", "x")
    txn = run_etcdctl(server.client_url, "txn", stdin='value("k1") = "v11"\n\nput k1 from-txn\n\nput k9 no\n\n')
    assert txn.returncode == 0 and "SUCCESS" in txn.stdout, txn.stdout + txn.stderr
    ctl(server, "compact", "5")
    ctl(server, "put", "after-compact", "y")
    return 5


def add_member(existing: ServerProcess, tmp_path: Path, name: str) -> ServerProcess:
    """``member add`` through ``existing``, then start the new member with etcd's printed settings."""
    peer_url = f"http://127.0.0.1:{free_port()}"
    added = ctl(existing, "member", "add", name, f"--peer-urls={peer_url}")
    env_lines = dict(line.split("=", 1) for line in added.splitlines() if line.startswith("ETCD_"))
    assert env_lines["ETCD_INITIAL_CLUSTER_STATE"] == '"existing"', added
    return start_quorumkv(tmp_path / name, name=name, ready_timeout_s=60, extra_args=(
        "--initial-cluster", env_lines["ETCD_INITIAL_CLUSTER"].strip('"'), "--initial-cluster-state", "existing",
        "--initial-advertise-peer-urls", peer_url, "--listen-peer-urls", peer_url, *TIMING))


def check_grown_cluster(first: ServerProcess, second: ServerProcess, revisions: range,
                        expected: dict[int, Answer] | None = None) -> None:
    """Both members answer every revision the same (and as ``expected`` says), and a new write reaches both."""
    current = revisions[-1]
    wait_until(lambda: revision_of(second) >= current, 60, "the new member caught up")
    on_first, on_second = answers_at(first, revisions), answers_at(second, revisions)
    assert on_first == on_second
    if expected is not None:
        assert on_first == expected
    compacted = run_etcdctl(second.client_url, "get", "k0", "--rev", str(revisions[0] - 1), "--consistency=s")
    assert compacted.returncode != 0 and "required revision has been compacted" in compacted.stderr
    members = json.loads(ctl(first, "member", "list", "-w", "json"))["members"]
    assert len(members) == 2 and not any(m.get("isLearner") for m in members)
    ctl(second, "put", "after-grow", "z")
    wait_until(lambda: revision_of(first) == current + 1, 30, "the write reached the first member")
    assert answers_at(first, range(current + 1, current + 2)) == answers_at(second, range(current + 1, current + 2))


def test_member_add_on_a_single_member_keeps_every_revision(tmp_path: Path) -> None:
    m1 = start_quorumkv(tmp_path / "m1", name="m1", extra_args=TIMING)
    m2: ServerProcess | None = None
    try:
        compacted = write_history(m1)
        current = revision_of(m1)
        status = json.loads(ctl(m1, "endpoint", "status", "-w", "json"))[0]["Status"]
        assert status["leader"] == status["header"]["member_id"]  # a cluster of one leads itself
        m2 = add_member(m1, tmp_path, "m2")
        check_grown_cluster(m1, m2, range(compacted, current + 1))
    finally:
        if m2 is not None:
            m2.stop()
        m1.stop()


def test_a_release_0_1_data_dir_is_upgraded_and_can_grow(tmp_path: Path) -> None:
    """``single-member-0.1.0.tar.gz`` was written by release 0.1 (commit 04d79ca); its JSON holds what that
    release answered for every revision after its compaction."""
    expected_file = json.loads((FIXTURES / "single-member-0.1.0.json").read_text())
    with tarfile.open(FIXTURES / "single-member-0.1.0.tar.gz") as archive:
        archive.extractall(tmp_path / "old", filter="data")
    m1 = start_quorumkv(tmp_path / "m1", name="m1", data_dir=tmp_path / "old" / "m1.data", extra_args=TIMING)
    m2: ServerProcess | None = None
    try:
        revisions = range(int(expected_file["compact_revision"]), int(expected_file["revision"]) + 1)
        expected = {int(rev): answer for rev, answer in expected_file["answers"].items()}
        assert answers_at(m1, revisions) == expected  # upgraded in place, history intact
        # the old member record names the peer URL of the release that wrote it: point it at this start's
        members = json.loads(ctl(m1, "member", "list", "-w", "json"))["members"]
        ctl(m1, "member", "update", f"{members[0]['ID']:x}", f"--peer-urls={m1.peer_url}")
        m2 = add_member(m1, tmp_path, "m2")
        check_grown_cluster(m1, m2, revisions, expected)
    finally:
        if m2 is not None:
            m2.stop()
        m1.stop()


def test_a_multi_member_restore_forms_one_cluster_and_a_lone_member_refuses_writes(tmp_path: Path) -> None:
    source = start_quorumkv(tmp_path / "source", name="src", extra_args=TIMING)
    try:
        for i in range(10):
            ctl(source, "put", f"r{i}", f"v{i}")
        snap = tmp_path / "backup.db"
        ctl(source, "snapshot", "save", str(snap))
        expected = answers_at(source, range(revision_of(source), revision_of(source) + 1))
    finally:
        source.stop()
    names = ["m1", "m2", "m3"]
    peer_urls = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    spec = ",".join(f"{n}={u}" for n, u in peer_urls.items())
    for n in names:
        restored = subprocess_ctl("snapshot", "restore", str(snap), "--name", n, "--initial-cluster", spec,
                                  "--initial-advertise-peer-urls", peer_urls[n],
                                  "--data-dir", str(tmp_path / f"{n}.data"))
        assert restored.returncode == 0, restored.stderr

    def start(n: str) -> ServerProcess:
        return start_quorumkv(tmp_path / n, name=n, data_dir=tmp_path / f"{n}.data", ready_timeout_s=None,
                              extra_args=("--initial-cluster", spec, "--initial-advertise-peer-urls", peer_urls[n],
                                          "--listen-peer-urls", peer_urls[n], *TIMING))

    servers = [start("m1")]
    try:
        lone = servers[0]
        wait_until(lambda: run_etcdctl(lone.client_url, "get", "r0", "--consistency=s").returncode == 0, 30,
                   "the lone member serves serializable reads")
        refused = run_etcdctl(lone.client_url, "--command-timeout=4s", "put", "lone", "write", timeout_s=30)
        assert refused.returncode != 0, "a lone member of a 3-member restore acknowledged a write"
        status = json.loads(ctl(lone, "endpoint", "status", "-w", "json"))[0]["Status"]
        assert status.get("leader", 0) == 0, status
        servers += [start("m2"), start("m3")]
        for s in servers:
            s.wait_ready(60)
        cluster_ids = {s.cluster_id for s in servers}
        assert len(cluster_ids) == 1, cluster_ids
        leaders = {json.loads(ctl(s, "endpoint", "status", "-w", "json"))[0]["Status"]["leader"] for s in servers}
        assert len(leaders) == 1 and 0 not in leaders, leaders
        ctl(servers[1], "put", "after-restore", "ok")
        for s in servers:
            wait_until(lambda s=s: run_etcdctl(s.client_url, "get", "after-restore", "--consistency=s",
                                               "--print-value-only").stdout.strip() == "ok", 30, "replicated")
            got = answers_at(s, range(revision_of(s), revision_of(s) + 1))
            keys = {base64.b64decode(kv[0]).decode() for kv in next(iter(got.values()))}
            assert keys == {base64.b64decode(kv[0]).decode() for kv in next(iter(expected.values()))} | {
                "after-restore"}
            assert "lone" not in keys
        members = json.loads(ctl(servers[2], "member", "list", "-w", "json"))["members"]
        assert sorted(m["name"] for m in members) == names
    finally:
        for s in servers:
            s.stop()


def subprocess_ctl(*args: str) -> Any:
    import subprocess

    return subprocess.run([sys.executable, "-m", "quorumkv.cli.ctl", *args], capture_output=True, text=True,
                          env=quorumkv_env(), timeout=120)
