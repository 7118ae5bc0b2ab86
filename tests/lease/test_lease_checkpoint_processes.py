"""Lease checkpoints in real processes: a kill -9 and restart of a single member, the kill -9 of a 3-member
cluster's leader, and (differential, against etcd 3.4) the full TTL after a restart without the flag.

Margins are wide (a noisy 2-core host): "clearly below the full TTL" and "still counting down", no timings.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from quorumkv.testing.cluster import patient_etcdctl, start_quorumkv_cluster
from quorumkv.testing.processes import ETCD_BIN, ETCDCTL_BIN, ServerProcess, start_etcd, start_quorumkv

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
                       reason="etcd/etcdctl 3.4 not on PATH (scripts/test.sh installs them)"),
]

CHECKPOINT = ("--experimental-enable-lease-checkpoint", "--experimental-lease-checkpoint-interval", "1s")
TTL = 60
#: Real seconds the lease runs before the crash: several 1 s checkpoints happen in that time.
RUN_S = 8


def _grant(endpoint: str) -> str:
    r = patient_etcdctl(endpoint, "lease", "grant", str(TTL), write_out="json")
    assert r.returncode == 0, r.stderr
    return f"{json.loads(r.stdout)['ID']:x}"


def _ttl(endpoint: str, lease: str) -> tuple[int, int]:
    """(remaining TTL, granted TTL) from ``etcdctl lease timetolive``."""
    r = patient_etcdctl(endpoint, "lease", "timetolive", lease, write_out="json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return int(out["ttl"]), int(out["granted-ttl"])


def _restart_single(server: ServerProcess, tmp_path: Path, start: object, args: tuple[str, ...]) -> ServerProcess:
    server.kill9()
    return start(tmp_path, extra_args=args, data_dir=server.data_dir)  # type: ignore[operator,no-any-return]


@pytest.mark.skipif(os.environ.get("QUORUMKV_SLOW") != "1",
                    reason="slow: set QUORUMKV_SLOW=1 (test_lease_checkpoint.py restarts in-process)")
def test_single_member_kill9_restart_keeps_the_remaining_ttl(tmp_path: Path) -> None:
    server = start_quorumkv(tmp_path, extra_args=CHECKPOINT)
    try:
        lease = _grant(server.client_url)
        time.sleep(RUN_S)
        server = _restart_single(server, tmp_path, start_quorumkv, CHECKPOINT)
        first, granted = _ttl(server.client_url, lease)
        assert granted == TTL
        assert 20 < first <= TTL - 4, f"restarted with {first}s left of {TTL}s: the checkpoint was not kept"
        time.sleep(2)
        assert _ttl(server.client_url, lease)[0] < first, "the remaining TTL keeps counting down"
    finally:
        server.stop()


@pytest.mark.skipif(os.environ.get("QUORUMKV_SLOW") != "1",
                    reason="slow: set QUORUMKV_SLOW=1 (test_lease_checkpoint.py checks quorumkv's side in-process)")
def test_without_the_flag_a_restart_gives_the_full_ttl_as_etcd(tmp_path: Path) -> None:
    """etcd 3.4 without --experimental-enable-lease-checkpoint: a restarted lease starts again from its TTL."""
    seen = {}
    for kind, start in (("etcd", start_etcd), ("quorumkv", start_quorumkv)):
        server = start(tmp_path / kind)
        try:
            lease = _grant(server.client_url)
            time.sleep(2)
            before = _ttl(server.client_url, lease)[0]
            server = _restart_single(server, tmp_path / kind, start, ())
            seen[kind] = (before, _ttl(server.client_url, lease))
        finally:
            server.stop()
    for kind, (before, (after, granted)) in seen.items():
        assert before <= TTL - 2, (kind, before)
        assert after >= TTL - 2 and granted == TTL, (kind, after, granted)


def test_cluster_leader_kill9_keeps_the_remaining_ttl(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path, extra_args=CHECKPOINT, heartbeat_ms=50, election_ms=500) as cluster:
        leader = cluster.leader()
        lease = _grant(cluster.member(leader).client_url)
        time.sleep(RUN_S)
        cluster.kill(leader)
        new = cluster.leader(timeout_s=30, exclude=leader)
        endpoint = cluster.member(new).client_url
        first, granted = _ttl(endpoint, lease)
        assert granted == TTL
        assert 20 < first <= TTL - 4, f"new leader reports {first}s left of {TTL}s: the checkpoint was not kept"
        other = next(n for n in cluster.names if n not in (leader, new))
        time.sleep(2)
        assert _ttl(cluster.member(other).client_url, lease)[0] < first, "a follower sees it count down too"
