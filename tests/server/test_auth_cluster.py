"""Auth on a 3-member quorumkv cluster with JWT tokens: every member enforces the same permissions, before and after
the leader is killed; a JWT issued by one member works on the others and goes stale when the auth revision moves."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.cluster import Cluster, start_quorumkv_cluster
from quorumkv.testing.processes import run_etcdctl

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("require_etcd_binaries")]


@pytest.fixture
def require_etcd_binaries() -> None:
    import shutil

    if shutil.which("etcdctl") is None:
        pytest.skip("etcdctl not found on PATH (apt-get install etcd-client)")


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = tmp_path / "jwt.key", tmp_path / "jwt.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _ctl(url: str, *args: str) -> tuple[int, str]:
    proc = run_etcdctl(url, *args, timeout_s=30)
    return proc.returncode, (proc.stdout + proc.stderr.splitlines()[-1] if proc.stderr else proc.stdout).strip()


def _enforced(cluster: Cluster, names: list[str]) -> dict[str, list[tuple[int, str]]]:
    out = {}
    for name in names:
        url = cluster.member(name).client_url
        out[name] = [
            _ctl(url, "--user", "root:rootpw", "put", "/r/a", name),
            _ctl(url, "--user", "alice:apw", "get", "/r/a", "--print-value-only"),
            _ctl(url, "--user", "alice:apw", "put", "/r/a", "x"),
            _ctl(url, "--user", "alice:apw", "get", "/w/a"),
            _ctl(url, "get", "/r/a"),
        ]
    return out


def _expected(name: str) -> list[tuple[int, str]]:
    return [(0, "OK"), (0, name), (1, "Error: etcdserver: permission denied"),
            (1, "Error: etcdserver: permission denied"), (1, "Error: etcdserver: user name is empty")]


def test_three_members_enforce_the_same_permissions_across_a_leader_kill(tmp_path: Path) -> None:
    priv, pub = _keys(tmp_path)
    token_flag = f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=10m"
    with start_quorumkv_cluster(3, tmp_path / "c", extra_args=["--auth-token", token_flag,
                                                              "--bcrypt-cost", "4"]) as cluster:
        first = cluster.member(cluster.names[0]).client_url
        for args in (("user", "add", "root:rootpw"), ("role", "add", "reader"),
                     ("role", "grant-permission", "reader", "read", "/r/", "--prefix"),
                     ("user", "add", "alice:apw"), ("user", "grant-role", "alice", "reader"), ("auth", "enable")):
            assert _ctl(first, *args)[0] == 0, args
        assert _enforced(cluster, cluster.names) == {n: _expected(n) for n in cluster.names}

        # a JWT from one member is good on another (any member verifies it) ...
        ch1 = grpc.insecure_channel(cluster.member(cluster.names[0]).grpc_target)
        ch2 = grpc.insecure_channel(cluster.member(cluster.names[1]).grpc_target)
        try:
            token = pb_grpc.AuthStub(ch1).Authenticate(pb.AuthenticateRequest(name="alice", password="apw"),
                                                       timeout=10).token
            resp = pb_grpc.KVStub(ch2).Range(pb.RangeRequest(key=b"/r/a"), metadata=[("token", token)], timeout=10)
            assert resp.count == 1
            # ... until the auth revision moves on
            assert _ctl(first, "--user", "root:rootpw", "role", "grant-permission", "reader", "read", "/q")[0] == 0
            with pytest.raises(grpc.RpcError) as stale:
                pb_grpc.KVStub(ch2).Range(pb.RangeRequest(key=b"/r/a"), metadata=[("token", token)], timeout=10)
            assert stale.value.details() == "etcdserver: revision of auth store is old"  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as forged:
                pb_grpc.KVStub(ch2).Range(pb.RangeRequest(key=b"/r/a"), metadata=[("token", token[:-4] + "AAAA")],
                                          timeout=10)
            assert forged.value.details() == "etcdserver: invalid auth token"  # type: ignore[attr-defined]
        finally:
            ch1.close()
            ch2.close()

        leader = cluster.leader()
        cluster.kill(leader)
        rest = [n for n in cluster.names if n != leader]
        cluster.leader(timeout_s=30, exclude=leader)
        assert _enforced(cluster, rest) == {n: _expected(n) for n in rest}


def test_simple_tokens_are_valid_only_on_the_member_that_issued_them(tmp_path: Path) -> None:
    with start_quorumkv_cluster(3, tmp_path / "c", extra_args=["--bcrypt-cost", "4"]) as cluster:
        first = cluster.member(cluster.names[0]).client_url
        for args in (("user", "add", "root:rootpw"), ("auth", "enable")):
            assert _ctl(first, *args)[0] == 0, args
        ch1 = grpc.insecure_channel(cluster.member(cluster.names[0]).grpc_target)
        ch2 = grpc.insecure_channel(cluster.member(cluster.names[1]).grpc_target)
        try:
            token = pb_grpc.AuthStub(ch1).Authenticate(pb.AuthenticateRequest(name="root", password="rootpw"),
                                                       timeout=10).token
            pb_grpc.KVStub(ch1).Put(pb.PutRequest(key=b"k", value=b"v"), metadata=[("token", token)], timeout=10)
            with pytest.raises(grpc.RpcError) as other:
                pb_grpc.KVStub(ch2).Range(pb.RangeRequest(key=b"k"), metadata=[("token", token)], timeout=10)
            assert other.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        finally:
            ch1.close()
            ch2.close()
