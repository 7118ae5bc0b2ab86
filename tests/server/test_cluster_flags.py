"""Three members, two of them stopped one after the other, on etcd 3.4 and on quorumkv (issue 22, items 4 and 6).

* ``--strict-reconfig-check``: with one member down, removing a live one would leave the active members without
  quorum; etcd refuses it with ``etcdserver: unhealthy cluster`` and so does quorumkv.
* ``hasleader`` metadata (``clientv3.WithRequireLeader``, which kube-apiserver puts on every watch): a member
  without a leader refuses the watch with ``etcdserver: no leader`` (Unavailable); a watch without the metadata
  is still created; a unary call with the metadata is refused the same way.
* ``--pre-vote``: the lone quorumkv member's term grows with every election it starts when pre-vote is off
  (etcd 3.4's default), and stays put when it is on (quorumkv's default): a pre-candidate asks before raising
  its term. (etcd's Status shows the term of the last applied entry, so etcd cannot show this one.)
* The version Kubernetes reads from Status is one with which it turns watch progress requests on (>= 3.4.31).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.cluster import Cluster, start_etcd_cluster, start_quorumkv_cluster
from quorumkv.testing.processes import ETCD_BIN, ETCDCTL_BIN, run_etcdctl

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
                       reason="etcd/etcdctl 3.4 not on PATH"),
]

#: Kubernetes' feature_support_checker turns RequestWatchProgress on for 3.4 servers from this version.
KUBE_PROGRESS_MIN_3_4 = (3, 4, 31)


def _start(kind: str, tmp_path: Path, extra: Sequence[str]) -> Cluster:
    if kind == "etcd":
        return start_etcd_cluster(3, tmp_path / "etcd", extra_args=extra, heartbeat_ms=50, election_ms=500)
    return start_quorumkv_cluster(3, tmp_path / "q", extra_args=extra, heartbeat_ms=50, election_ms=500)


def etcdctl_answer(proc: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """(exit code, the gRPC code etcdctl's retry warning names or "", the last line of stderr)."""
    code = re.search(r"code = (\w+) desc", proc.stderr)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, code.group(1) if code else "", lines[-1] if lines else ""


def _wait_leaderless(cluster: Cluster, name: str, timeout_s: float = 30.0) -> int:
    """Wait until ``name`` knows no leader; its raft term then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = cluster.status(name)
        if status is not None and status.leader_id == 0:
            return status.raft_term
        time.sleep(0.2)
    raise AssertionError(f"{name} still follows a leader after {timeout_s}s")


def _first_watch_answer(target: str, metadata: tuple[tuple[str, str], ...]) -> pb.WatchResponse | grpc.RpcError:
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k"))
    with grpc.insecure_channel(target) as channel:
        stream = pb_grpc.WatchStub(channel).Watch(iter([create]), metadata=metadata, timeout=15)
        try:
            first: pb.WatchResponse = next(stream)
            return first
        except grpc.RpcError as exc:
            return exc
        finally:
            stream.cancel()


@pytest.mark.parametrize(("kind", "extra", "term_grows"), [
    # etcd 3.4 (--pre-vote defaults to false) reports the term of the last *applied* entry in Status, which
    # does not move while it has no leader: it is the oracle for the rest, not for the term
    ("etcd", [], None),
    ("quorumkv", ["--pre-vote=false"], True),
    ("quorumkv", [], False),  # quorumkv: --pre-vote defaults to true
], ids=["etcd", "quorumkv-pre-vote-false", "quorumkv-default"])
def test_pre_vote_hasleader_and_reconfig_with_members_down(tmp_path: Path, kind: str, extra: list[str],
                                                           term_grows: bool | None) -> None:
    with _start(kind, tmp_path, extra) as cluster:
        leader = cluster.leader(timeout_s=30)
        follower, other = [n for n in cluster.names if n != leader]
        if kind == "quorumkv":
            with grpc.insecure_channel(cluster.member(leader).grpc_target) as channel:
                version = pb_grpc.MaintenanceStub(channel).Status(pb.StatusRequest(), timeout=15).version
            assert tuple(int(p) for p in version.split(".")) >= KUBE_PROGRESS_MIN_3_4, version

        # --strict-reconfig-check (on by default in both): one member down, removing a live one is refused
        follower_status = cluster.status(follower)
        assert follower_status is not None
        cluster.stop(other)
        time.sleep(1.5)  # the leader sees the stream to the stopped member break
        removed = run_etcdctl(cluster.member(leader).client_url, "--command-timeout=10s", "member", "remove",
                              f"{follower_status.member_id:x}", timeout_s=60)
        assert etcdctl_answer(removed) == (1, "Unavailable", "Error: etcdserver: unhealthy cluster"), \
            removed.stdout + removed.stderr

        # the lone survivor: no leader
        cluster.stop(leader)
        term = _wait_leaderless(cluster, follower)
        target = cluster.member(follower).grpc_target
        refused = _first_watch_answer(target, (("hasleader", "true"),))
        assert isinstance(refused, grpc.RpcError), refused
        assert (refused.code(), refused.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
        plain = _first_watch_answer(target, ())
        assert isinstance(plain, pb.WatchResponse) and plain.created, plain
        with grpc.insecure_channel(target) as channel:  # unary calls too (etcd's unary interceptor)
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.KVStub(channel).Range(pb.RangeRequest(key=b"k", serializable=True),
                                              metadata=(("hasleader", "true"),), timeout=15)
            assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
            status = pb_grpc.MaintenanceStub(channel).Status(pb.StatusRequest(), timeout=15)  # without: answered
            assert status.leader == 0

        if term_grows is None:
            return
        # --pre-vote: several election timeouts later (quorumkv's Status reports the current raft term)
        time.sleep(3.0)
        later = cluster.status(follower)
        assert later is not None
        assert (later.raft_term > term) is term_grows, (term, later.raft_term)
