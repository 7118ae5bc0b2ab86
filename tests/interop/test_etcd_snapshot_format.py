"""Snapshots in etcd's format, both ways, against the real etcd 3.4 and etcdctl binaries.

(a) quorumkv with history -> ``quorumkvctl snapshot save`` -> real ``etcdctl snapshot status`` agrees with
    quorumkvctl's -> ``etcdctl snapshot restore`` -> real etcd on the restored dir answers every read at every
    revision as the quorumkv it came from did (old revisions, deleted keys, leases, the compacted revision);
(b) real etcd with the same kind of history -> ``etcdctl snapshot save`` -> ``quorumkvctl snapshot restore``
    -> quorumkv on the restored dir answers every read as that etcd does.

Every revision is compared through the gRPC Range API (fast); a handful through ``etcdctl get -w json``, with the
header fields that name the cluster and member (cluster_id, member_id, raft_term) left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.processes import (
    ETCDCTL_BIN,
    ServerProcess,
    etcdctl_env,
    run_etcdctl,
    start_etcd,
    start_quorumkv,
)

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("require_etcd_binaries")]

SRC = str(Path(__file__).resolve().parents[2] / "src")
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]
RPC_TIMEOUT_S = 20.0


def quorumkvctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = etcdctl_env()
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "quorumkv.cli.ctl", *args], capture_output=True, text=True,
                          timeout=120, env=env, check=False)


def etcdctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ETCDCTL_BIN, *args], capture_output=True, text=True, timeout=120, env=etcdctl_env(),
                          check=False)


def _stubs(server: ServerProcess) -> tuple[grpc.Channel, Any, Any]:
    channel = grpc.insecure_channel(server.client_url.split("://", 1)[1], options=_CHANNEL_OPTIONS)
    return channel, pb_grpc.KVStub(channel), pb_grpc.LeaseStub(channel)  # type: ignore[no-untyped-call]


def make_history(server: ServerProcess) -> dict[str, int]:
    """Puts, overwrites, deletes, a txn, a lease with keys, big values, enough keys for branch pages, and a
    compaction in the middle. Returns the lease ID, the compaction revision and the final revision."""
    channel, kv, lease = _stubs(server)
    with channel:
        def put(key: bytes, value: bytes, lease_id: int = 0) -> int:
            return int(kv.Put(pb.PutRequest(key=key, value=value, lease=lease_id), timeout=RPC_TIMEOUT_S)
                       .header.revision)

        put(b"a", b"1")
        put(b"b", b"2")
        put(b"a", b"3")
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"b"), timeout=RPC_TIMEOUT_S)
        kv.Txn(pb.TxnRequest(
            compare=[pb.Compare(key=b"a", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"3")],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"from-txn")),
                     pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a")),
                     pb.RequestOp(request_put=pb.PutRequest(key=b"d", value=b"also-txn"))],
        ), timeout=RPC_TIMEOUT_S)
        lease_id = int(lease.LeaseGrant(pb.LeaseGrantRequest(TTL=900), timeout=RPC_TIMEOUT_S).ID)
        put(b"leased/1", b"x", lease_id)
        put(b"leased/2", b"y", lease_id)
        put(b"big", bytes(range(256)) * 80)  # 20 KiB: overflow pages
        for i in range(260):  # many revisions: branch pages in the key bucket
            put(b"many/%03d" % (i % 130), b"value-%d" % i)
        compact_rev = put(b"b", b"back")
        put(b"big", b"small now")
        kv.Compact(pb.CompactionRequest(revision=compact_rev, physical=True), timeout=RPC_TIMEOUT_S)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"many/01", range_end=b"many/02"), timeout=RPC_TIMEOUT_S)
        put(b"a", b"again")
        final = put(b"many/000", b"last")
    return {"lease": lease_id, "compact": compact_rev, "final": final}


def read_everything(server: ServerProcess, final: int, lease_id: int) -> dict[str, Any]:
    """Every revision's full key space (or the error), and the lease's TTL and keys."""
    channel, kv, lease = _stubs(server)
    out: dict[str, Any] = {}
    with channel:
        for rev in range(1, final + 2):
            try:
                resp = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0", revision=rev), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as err:
                out[f"rev {rev}"] = ("error", err.code(), err.details())
            else:
                out[f"rev {rev}"] = (resp.header.revision, resp.count, [
                    (k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease) for k in resp.kvs])
        ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=RPC_TIMEOUT_S)
        out["lease"] = (ttl.ID, ttl.grantedTTL, sorted(ttl.keys), 0 < ttl.TTL <= ttl.grantedTTL)
        leases = lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=RPC_TIMEOUT_S)
        out["leases"] = sorted(x.ID for x in leases.leases)
    return out


def etcdctl_reads(server: ServerProcess, revisions: list[int]) -> dict[str, Any]:
    """``etcdctl get`` -w json at some revisions (whole key space and one deleted-then-recreated key),
    header fields naming the cluster and member removed."""
    out: dict[str, Any] = {}
    for rev in revisions:
        for args in (("get", "", "--prefix"), ("get", "a"), ("get", "b")):
            got = run_etcdctl(server.client_url, *args, "--rev", str(rev), write_out="json", timeout_s=60)
            if got.returncode != 0:
                out[f"{args} @{rev}"] = ("error", got.stderr.strip().splitlines()[-1:])
                continue
            doc = json.loads(got.stdout)
            for field in ("cluster_id", "member_id", "raft_term"):
                doc["header"].pop(field, None)
            out[f"{args} @{rev}"] = doc
    return out


def _status(tool: str, path: Path) -> dict[str, Any]:
    run = etcdctl if tool == "etcdctl" else quorumkvctl
    got = run("snapshot", "status", str(path), "-w", "json")
    assert got.returncode == 0, f"{tool} snapshot status: {got.stderr}"
    status: dict[str, Any] = json.loads(got.stdout)
    return status


def test_quorumkv_snapshot_restores_into_real_etcd(tmp_path: Path) -> None:
    source = start_quorumkv(tmp_path / "qkv")
    try:
        marks = make_history(source)
        expected = read_everything(source, marks["final"], marks["lease"])
        probe_revs = [1, marks["compact"] - 1, marks["compact"], marks["compact"] + 1, marks["final"]]
        expected_ctl = etcdctl_reads(source, probe_revs)
        snap = tmp_path / "from-quorumkv.db"
        saved = quorumkvctl("--endpoints", source.client_url, "snapshot", "save", str(snap))
        assert saved.returncode == 0, saved.stderr
    finally:
        source.stop()
    assert snap.stat().st_size % 512 == 32

    ours, theirs = _status("quorumkvctl", snap), _status("etcdctl", snap)
    assert ours == theirs
    assert theirs["revision"] == marks["final"] and theirs["totalKey"] > 140

    peer = "http://127.0.0.1:2380"
    restored = etcdctl("snapshot", "restore", str(snap), "--data-dir", str(tmp_path / "etcd-restored"),
                       "--name", "default", "--initial-cluster", f"default={peer}",
                       "--initial-advertise-peer-urls", peer)
    assert restored.returncode == 0, restored.stderr
    etcd = start_etcd(tmp_path / "etcd", data_dir=tmp_path / "etcd-restored")
    try:
        assert read_everything(etcd, marks["final"], marks["lease"]) == expected
        assert etcdctl_reads(etcd, probe_revs) == expected_ctl
        assert etcd.etcdctl("put", "after-restore", "1").returncode == 0  # bbolt accepts writes to the file
        assert etcd.etcdctl("get", "after-restore", "--print-value-only").stdout.strip() == "1"
    finally:
        etcd.stop()


def test_real_etcd_snapshot_restores_into_quorumkv(tmp_path: Path) -> None:
    source = start_etcd(tmp_path / "etcd")
    try:
        marks = make_history(source)
        expected = read_everything(source, marks["final"], marks["lease"])
        probe_revs = [1, marks["compact"] - 1, marks["compact"], marks["compact"] + 1, marks["final"]]
        expected_ctl = etcdctl_reads(source, probe_revs)
        snap = tmp_path / "from-etcd.db"
        saved = source.etcdctl("snapshot", "save", str(snap), timeout_s=60)
        assert saved.returncode == 0, saved.stderr
    finally:
        source.stop()

    assert _status("quorumkvctl", snap) == _status("etcdctl", snap)
    restored = quorumkvctl("snapshot", "restore", str(snap), "--data-dir", str(tmp_path / "qkv-restored"),
                           "--name", "default")
    assert restored.returncode == 0, restored.stderr
    assert "restored snapshot" in restored.stderr
    qkv = start_quorumkv(tmp_path / "qkv", data_dir=tmp_path / "qkv-restored")
    try:
        assert read_everything(qkv, marks["final"], marks["lease"]) == expected
        assert etcdctl_reads(qkv, probe_revs) == expected_ctl
    finally:
        qkv.stop()

    # the stopped etcd's own database file (no SHA-256 trailer) restores with --skip-hash-check, as in etcdctl
    raw = source.data_dir / "member" / "snap" / "db"
    refused = quorumkvctl("snapshot", "restore", str(raw), "--data-dir", str(tmp_path / "raw-refused"))
    assert refused.returncode != 0 and "--skip-hash-check" in refused.stderr
    assert _status("quorumkvctl", raw) == _status("etcdctl", raw)
    restored = quorumkvctl("snapshot", "restore", str(raw), "--data-dir", str(tmp_path / "raw-restored"),
                           "--skip-hash-check")
    assert restored.returncode == 0, restored.stderr
    qkv = start_quorumkv(tmp_path / "qkv-raw", data_dir=tmp_path / "raw-restored")
    try:
        assert read_everything(qkv, marks["final"], marks["lease"]) == expected
    finally:
        qkv.stop()


def test_damaged_etcd_snapshot_is_refused_by_restore(tmp_path: Path) -> None:
    """A file with a valid SHA-256 trailer over damaged bbolt content: one clear error, no data dir left."""
    import hashlib

    from quorumkv.storage.bbolt import write_db

    content_path = tmp_path / "content"
    write_db(content_path, {b"key": [], b"meta": []})
    content = bytearray(content_path.read_bytes())
    content[16 + 48] ^= 0xFF  # meta page 0's txid: its checksum no longer matches
    snap = tmp_path / "damaged.db"
    snap.write_bytes(bytes(content) + hashlib.sha256(content).digest())
    for args in (("snapshot", "status", str(snap)),
                 ("snapshot", "restore", str(snap), "--data-dir", str(tmp_path / "r"))):
        got = quorumkvctl(*args)
        assert got.returncode != 0 and "Traceback" not in got.stderr
        assert "meta page 0 fails its checksum" in got.stderr and str(snap) in got.stderr
    assert not (tmp_path / "r").exists()


ROOT = ("--user", "root:rootpw")


def make_auth(server: ServerProcess) -> None:
    """Users, roles with read / readwrite / prefix permissions, a key written before auth, then ``auth enable``."""
    for args in (("put", "a1", "x"), ("user", "add", "root:rootpw"), ("role", "add", "reader"),
                 ("role", "grant-permission", "reader", "read", "a", "b"), ("user", "add", "bob:bobpw"),
                 ("user", "grant-role", "bob", "reader"), ("role", "add", "writer"),
                 ("role", "grant-permission", "writer", "readwrite", "w/", "--prefix"),
                 ("user", "add", "carol:carolpw"), ("user", "grant-role", "carol", "writer"), ("auth", "enable")):
        got = server.etcdctl(*args)
        assert got.returncode == 0, (args, got.stderr)


def auth_view(server: ServerProcess) -> list[tuple[tuple[str, ...], int, str, str]]:
    """What etcdctl sees of the auth state and its enforcement: (command, exit code, stdout, last stderr line)."""
    out = []
    for args in ((*ROOT, "user", "list"), (*ROOT, "role", "list"), (*ROOT, "user", "get", "bob"),
                 (*ROOT, "user", "get", "carol"), (*ROOT, "role", "get", "reader"), (*ROOT, "role", "get", "writer"),
                 ("--user", "bob:bobpw", "get", "a1"), ("--user", "bob:bobpw", "put", "a1", "y"),
                 ("--user", "carol:carolpw", "put", "w/1", "z"), ("--user", "carol:carolpw", "get", "a1"),
                 ("--user", "bob:wrong", "get", "a1"), ("get", "a1")):
        got = server.etcdctl(*args)
        lines = got.stderr.strip().splitlines()
        out.append((args, got.returncode, got.stdout, lines[-1] if lines else ""))
    return out


@pytest.mark.parametrize("source_kind", ["etcd", "quorumkv"])
def test_users_roles_and_permissions_travel_in_the_snapshot(tmp_path: Path, source_kind: str) -> None:
    """Auth enabled on the source: the snapshot carries users (bcrypt hashes), roles, permissions and the enabled
    flag, and the server restored from it (the other kind) enforces them exactly as the source did."""
    start_source = start_etcd if source_kind == "etcd" else start_quorumkv
    source = start_source(tmp_path / "source", extra_args=["--bcrypt-cost=4"])
    snap = tmp_path / "auth.db"
    try:
        make_auth(source)
        expected = auth_view(source)
        saver = etcdctl if source_kind == "etcd" else quorumkvctl
        saved = saver("--endpoints", source.client_url, *ROOT, "snapshot", "save", str(snap))
        assert saved.returncode == 0, saved.stderr
    finally:
        source.stop()
    assert _status("quorumkvctl", snap) == _status("etcdctl", snap)
    data = tmp_path / "restored"
    if source_kind == "etcd":
        restored = quorumkvctl("snapshot", "restore", str(snap), "--data-dir", str(data), "--name", "default")
    else:
        peer = "http://127.0.0.1:2380"
        restored = etcdctl("snapshot", "restore", str(snap), "--data-dir", str(data), "--name", "default",
                           "--initial-cluster", f"default={peer}", "--initial-advertise-peer-urls", peer)
    assert restored.returncode == 0, restored.stderr
    start_target = start_quorumkv if source_kind == "etcd" else start_etcd
    target = start_target(tmp_path / "target", data_dir=data, ready_timeout_s=None)
    try:
        deadline = time.monotonic() + 60
        while target.etcdctl(*ROOT, "get", "a1").returncode != 0:  # the readiness probe has no user: poll as root
            assert time.monotonic() < deadline, target.log_tail(20)
            time.sleep(0.25)
        assert auth_view(target) == expected
    finally:
        target.stop()
