"""Lock and Election on a 3-member quorumkv cluster: contenders on different members (followers included) wait
for each other, a release through a third member wakes the waiter, and an observer on another member sees the
leadership move. Slow (three member processes)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.api.v3electionpb import v3election_pb2 as epb
from quorumkv.api.v3electionpb import v3election_pb2_grpc as epb_grpc
from quorumkv.api.v3lockpb import v3lock_pb2 as lpb
from quorumkv.api.v3lockpb import v3lock_pb2_grpc as lpb_grpc
from quorumkv.testing.cluster import start_quorumkv_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WAIT_S = 30.0


def test_lock_and_election_across_members(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path / "c") as cluster:
        leader = cluster.leader()
        followers = [n for n in cluster.names if n != leader]
        order = [followers[0], followers[1], leader]
        channels = [grpc.insecure_channel(cluster.member(n).grpc_target) for n in order]
        try:
            leases = [pb_grpc.LeaseStub(ch).LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=WAIT_S).ID
                      for ch in channels]
            locks = [lpb_grpc.LockStub(ch) for ch in channels]
            held = locks[0].Lock(lpb.LockRequest(name=b"job", lease=leases[0]), timeout=WAIT_S)
            waiter = locks[1].Lock.future(lpb.LockRequest(name=b"job", lease=leases[1]), timeout=WAIT_S)
            time.sleep(1.0)
            assert not waiter.done()  # held through another member
            locks[2].Unlock(lpb.UnlockRequest(key=held.key), timeout=WAIT_S)
            got = waiter.result(timeout=WAIT_S)
            assert got.key == b"job/" + format(leases[1], "x").encode()

            elections = [epb_grpc.ElectionStub(ch) for ch in channels]
            first = elections[0].Campaign(epb.CampaignRequest(name=b"lead", lease=leases[0], value=b"a"),
                                          timeout=WAIT_S)
            stream = elections[2].Observe(epb.LeaderRequest(name=b"lead"), timeout=WAIT_S)
            assert next(stream).kv.value == b"a"
            second = elections[1].Campaign.future(epb.CampaignRequest(name=b"lead", lease=leases[1], value=b"b"),
                                                  timeout=WAIT_S)
            elections[0].Proclaim(epb.ProclaimRequest(leader=first.leader, value=b"a2"), timeout=WAIT_S)
            assert next(stream).kv.value == b"a2"
            pb_grpc.LeaseStub(channels[2]).LeaseRevoke(pb.LeaseRevokeRequest(ID=leases[0]), timeout=WAIT_S)
            assert second.result(timeout=WAIT_S).leader.key == b"lead/" + format(leases[1], "x").encode()
            assert next(stream).kv.value == b"b"
            stream.cancel()
            answer = elections[0].Leader(epb.LeaderRequest(name=b"lead"), timeout=WAIT_S)
            assert answer.kv.value == b"b"
        finally:
            for ch in channels:
                ch.close()
