"""Fault scenarios on real 3-member quorumkv clusters, every peer link through a fault-injecting proxy.

After each scenario: every acknowledged write is present on every member and HashKV agrees at one revision.
Clients write concurrently through every scenario (bounded in count and time); a failed or timed-out write is
"maybe applied" and only acknowledged ones are required. In the partition scenarios the clients are the
history recorder (puts, linearizable gets, txns on every member), and the recorded history must be
linearizable (``quorumkv.testing.linearizability``); the same history with a planted stale read must not be.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from quorumkv.testing.cluster import Cluster, patient_etcdctl, start_quorumkv_cluster
from quorumkv.testing.processes import ETCD_BIN, ETCDCTL_BIN, run_etcdctl

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
                       reason="etcd/etcdctl 3.4 not on PATH (scripts/test.sh installs them)"),
]

FAST = {"heartbeat_ms": 50, "election_ms": 500}


class Writers:
    """Background clients putting unique keys through every member, recording what was acknowledged."""

    def __init__(self, cluster: Cluster, prefix: str, max_ops: int = 400) -> None:
        self.cluster, self.prefix, self.max_ops = cluster, prefix, max_ops
        self.acked: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name, i), daemon=True)
                         for i, name in enumerate(cluster.names)]

    def _run(self, name: str, worker: int) -> None:
        endpoint = self.cluster.member(name).client_url
        for n in range(self.max_ops // len(self._threads)):
            if self._stop.is_set():
                return
            key = f"{self.prefix}/{worker}/{n:05d}"
            r = run_etcdctl(endpoint, "--command-timeout=2s", "--dial-timeout=1s", "put", key, "x", timeout_s=10)
            if r.returncode == 0:
                self.acked.append(key)
            else:
                self.failed += 1
                time.sleep(0.05)

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def keys_on(cluster: Cluster, name: str, prefix: str) -> set[str]:
    r = patient_etcdctl(cluster.member(name).client_url, "get", prefix, "--prefix", "--keys-only")
    assert r.returncode == 0, r.stderr
    return {line for line in r.stdout.splitlines() if line}


def wait_until(cond: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s}s"
        time.sleep(0.2)


def hashes_at_common_revision(cluster: Cluster) -> set[int]:
    revs = []
    for n in cluster.names:
        st = json.loads(patient_etcdctl(cluster.member(n).client_url, "endpoint", "status", write_out="json").stdout)
        revs.append(st[0]["Status"]["header"]["revision"])
    rev = min(revs)
    out = set()
    for n in cluster.names:
        r = patient_etcdctl(cluster.member(n).client_url, "endpoint", "hashkv", f"--rev={rev}", write_out="json")
        out.add(json.loads(r.stdout)[0]["HashKV"]["hash"])
    return out


def check_converged(cluster: Cluster, acked: list[str], prefix: str) -> None:
    """Every acknowledged write on every member, and the members agree (HashKV) at a common revision."""
    wait_until(lambda: len(hashes_at_common_revision(cluster)) == 1, 30, "equal HashKV on all members")
    for n in cluster.names:
        present = keys_on(cluster, n, prefix)
        missing = set(acked) - present
        assert not missing, f"{n} lost acknowledged writes: {sorted(missing)[:5]}"


class Recorder:
    """Records a client history against every member in a background thread while a scenario runs."""

    def __init__(self, cluster: Cluster, max_seconds: float, seed: int) -> None:
        from quorumkv.testing.recorder import RecorderConfig

        self.config = RecorderConfig(endpoints=[m.client_url for m in cluster.members], clients=6, keys=4,
                                     max_operations=3000, max_seconds=max_seconds, op_timeout_s=2.0, seed=seed)
        self.history: object = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from quorumkv.testing.recorder import record_history_sync

        try:
            self.history = record_history_sync(self.config)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=self.config.max_seconds + 60)

    def check(self) -> None:
        """Linearizable (a lost acknowledged write or a stale read would show); a planted stale read is rejected."""
        import random

        from quorumkv.testing.anomalies import plant_stale_read
        from quorumkv.testing.history import History
        from quorumkv.testing.linearizability import check

        assert self.error is None, f"recorder failed: {self.error!r}"
        history = self.history
        assert isinstance(history, History)
        answered = [op for op in history.operations if op.output is not None]
        assert len(answered) > 50, f"too few answered operations: {len(answered)}"
        result = check(history, max_seconds=120)
        assert result.ok, f"{result}\n" + "\n".join(op.describe() for op in result.operations[:10])
        planted = plant_stale_read(history, random.Random(7))
        assert planted is not None, "no read to make stale in this recording"
        assert not check(planted.history, max_seconds=120).ok  # the checker can fail on this very recording


@contextmanager
def cluster3(tmp_path: Path, **kw: object) -> Iterator[Cluster]:
    with start_quorumkv_cluster(3, tmp_path, with_proxies=True, **FAST, **kw) as c:  # type: ignore[arg-type]
        c.leader()
        yield c


def test_partitioned_leader_is_replaced_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    with cluster3(tmp_path) as cluster:
        with Recorder(cluster, max_seconds=8.0, seed=1) as rec:
            time.sleep(1.0)
            old = cluster.leader()
            cluster.isolate(old)
            new = cluster.leader(exclude=old, timeout_s=20)
            assert new != old
            time.sleep(1.5)
            cluster.heal()
            wait_until(lambda: cluster.find_leader() is not None, 20, "one leader after heal")
        wait_until(lambda: len(hashes_at_common_revision(cluster)) == 1, 30, "equal HashKV on all members")
        rec.check()


def test_partitioned_follower_and_asymmetric_links(tmp_path: Path) -> None:
    with cluster3(tmp_path) as cluster:
        with Recorder(cluster, max_seconds=8.0, seed=2) as rec:
            leader = cluster.leader()
            f1, f2 = [n for n in cluster.names if n != leader]
            cluster.isolate(f1)  # a follower partitioned away: the majority goes on
            time.sleep(1.5)
            cluster.heal()
            cluster.one_way(leader, f2)  # the leader reaches f2, f2's answers are lost
            time.sleep(1.5)
            cluster.heal()
            cluster.one_way(f2, leader)  # f2 reaches the leader, but hears nothing back
            time.sleep(1.5)
            cluster.heal()
        wait_until(lambda: len(hashes_at_common_revision(cluster)) == 1, 30, "equal HashKV on all members")
        rec.check()


def test_follower_blackholed_until_it_needs_a_snapshot(tmp_path: Path) -> None:
    with cluster3(tmp_path, extra_args=("--snapshot-count", "40")) as cluster:
        leader = cluster.leader()
        lagging = next(n for n in cluster.names if n != leader)
        cluster.isolate(lagging)
        acked = []
        for i in range(150):  # far past --snapshot-count: the log the follower needs is compacted away
            r = patient_etcdctl(cluster.member(leader).client_url, "put", f"s/{i:04d}", "v")
            assert r.returncode == 0, r.stderr
            acked.append(f"s/{i:04d}")
        cluster.heal()
        wait_until(lambda: "s/0149" in keys_on(cluster, lagging, "s/"), 30, "lagging member caught up")
        assert "restoring a state snapshot" in cluster.member(lagging).log_tail(400)
        check_converged(cluster, acked, "s/")


def test_membership_changes_while_clients_write(tmp_path: Path) -> None:
    from quorumkv.testing.processes import ServerProcess, free_port, start_quorumkv

    m4: ServerProcess | None = None
    with cluster3(tmp_path) as cluster:
        try:
            with Writers(cluster, "mw", max_ops=300) as w:
                peer_url = f"http://127.0.0.1:{free_port()}"
                r = cluster.etcdctl("member", "add", "m4", f"--peer-urls={peer_url}", "--learner")
                assert r.returncode == 0, r.stderr
                env = dict(line.split("=", 1) for line in r.stdout.splitlines() if line.startswith("ETCD_"))
                m4 = start_quorumkv(tmp_path / "m4", name="m4", extra_args=(
                    "--initial-cluster", env["ETCD_INITIAL_CLUSTER"].strip('"'),
                    "--initial-cluster-state", "existing",
                    "--initial-advertise-peer-urls", peer_url, "--listen-peer-urls", peer_url,
                    "--initial-cluster-token", cluster.token, "--heartbeat-interval", "50",
                    "--election-timeout", "500"),
                    # not a readiness probe: a learner refuses linearizable reads once it knows it is one
                    ready_timeout_s=None)
                members = json.loads(cluster.etcdctl("member", "list", write_out="json").stdout)["members"]
                m4_id = next(f"{m['ID']:x}" for m in members if m.get("isLearner"))
                wait_until(lambda: cluster.etcdctl("member", "promote", m4_id).returncode == 0, 40, "promote m4")
                m4.wait_ready()  # a voting member now: it serves linearizable reads
                leader = cluster.leader()
                victim = next(n for n in cluster.names if n != leader)
                victim_id = f"{cluster.member(victim).member_id:x}"
                r = cluster.etcdctl("member", "remove", victim_id)
                assert r.returncode == 0, r.stderr
                time.sleep(1.0)
            assert len(w.acked) > 20
            survivors = [n for n in cluster.names if n != victim]
            wait_until(lambda: all(set(w.acked) <= keys_on(cluster, n, "mw/") for n in survivors), 30,
                       "acknowledged writes on the remaining members")
            m4_url = m4.client_url
            assert set(w.acked) <= {k for k in patient_etcdctl(m4_url, "get", "mw/", "--prefix", "--keys-only",
                                                               "--consistency=s").stdout.splitlines() if k}
        finally:
            if m4 is not None:
                m4.stop()
