"""``quorumkvctl member progress`` (not in etcdctl): each member's applied index against the leader's raft index,
read from every member's own endpoint status; a learner that caught up is shown ready. ``member list`` keeps
etcdctl's output (IS LEARNER column) unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from quorumkv.testing.processes import ETCDCTL_BIN, free_port, quorumkv_env, run_etcdctl, start_quorumkv

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which(ETCDCTL_BIN) is None, reason="needs etcdctl 3.4")]

TIMING = ("--heartbeat-interval", "50", "--election-timeout", "500")


def qctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quorumkv.cli.ctl", f"--endpoints={endpoint}", *args],
                          capture_output=True, text=True, env=quorumkv_env(), timeout=60)


def progress(endpoint: str) -> list[dict[str, Any]]:
    out = qctl(endpoint, "member", "progress", "-w", "json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)["members"]
    return rows


def test_member_progress_shows_a_learner_catching_up_and_an_unstarted_one(tmp_path: Path) -> None:
    first = start_quorumkv(tmp_path / "a", name="a", extra_args=TIMING)
    learner = None
    try:
        for i in range(20):
            assert run_etcdctl(first.client_url, "put", f"k{i}", "v" * 100).returncode == 0
        # an added learner that never starts: no client URL, no status
        unstarted_url = f"http://127.0.0.1:{free_port()}"
        assert run_etcdctl(first.client_url, "member", "add", "ghost", "--learner",
                           f"--peer-urls={unstarted_url}").returncode == 0
        rows = {r["name"] or "ghost": r for r in progress(first.client_url)}
        assert rows["a"]["isLeader"] and not rows["a"]["isLearner"] and rows["a"]["progress"] == 100.0
        assert rows["ghost"]["isLearner"] and rows["ghost"]["progress"] is None and not rows["ghost"]["ready"]
        assert "no client URL" in rows["ghost"]["error"]
        ghost_id = rows["ghost"]["ID"]
        assert run_etcdctl(first.client_url, "member", "remove", ghost_id).returncode == 0
        # a real learner catches up (nobody promotes it outside a managed cluster): 100%, ready
        peer_url = f"http://127.0.0.1:{free_port()}"
        added = run_etcdctl(first.client_url, "member", "add", "b", "--learner", f"--peer-urls={peer_url}")
        assert added.returncode == 0, added.stderr
        env = dict(line.split("=", 1) for line in added.stdout.splitlines() if line.startswith("ETCD_"))
        learner = start_quorumkv(tmp_path / "b", name="b", ready_timeout_s=60, extra_args=(
            "--initial-cluster", env["ETCD_INITIAL_CLUSTER"].strip('"'), "--initial-cluster-state", "existing",
            "--initial-advertise-peer-urls", peer_url, "--listen-peer-urls", peer_url, *TIMING))
        deadline = time.monotonic() + 60
        while True:
            rows = {r["name"]: r for r in progress(first.client_url)}
            if "b" in rows and rows["b"]["ready"]:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.3)
        assert rows["b"]["isLearner"] and not rows["b"]["isLeader"] and rows["b"]["error"] == ""
        assert rows["b"]["raftAppliedIndex"] >= 0.9 * rows["b"]["leaderRaftIndex"] > 0
        table = qctl(first.client_url, "member", "progress", "-w", "table")
        assert table.returncode == 0, table.stderr
        assert "RAFT APPLIED INDEX" in table.stdout and "PROGRESS" in table.stdout
        line = next(ln for ln in table.stdout.splitlines() if "| b " in ln or " b |" in ln)
        assert "true" in line and "%" in line
        # member list stays etcdctl's: same columns and learner flag as etcdctl prints
        ours = qctl(first.client_url, "member", "list", "-w", "table").stdout
        theirs = run_etcdctl(first.client_url, "member", "list", "-w", "table").stdout
        assert ours == theirs
    finally:
        if learner is not None:
            learner.stop()
        first.stop()
