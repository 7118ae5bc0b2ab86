"""Talk to a real etcd 3.4 server with quorumkv's own stubs.

If any field number used here were wrong, etcd would decode our requests differently (or we would
mis-decode its responses) and the assertions below would fail.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2

from quorumkv.api.authpb import auth_pb2
from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from quorumkv.api.mvccpb import kv_pb2

pytestmark = pytest.mark.interop

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
RPC_TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EtcdServer:
    client_url: str
    peer_url: str
    channel: grpc.Channel


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"etcd binary not found at {ETCD}")
    tmp = tmp_path_factory.mktemp("etcd")
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    log_path = tmp / "etcd.log"
    cmd = [
        ETCD,
        "--name", "default",
        "--data-dir", str(tmp / "data"),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"default={peer_url}",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    channel = grpc.insecure_channel(client_url.removeprefix("http://"))
    try:
        maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"etcd exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                status = maintenance.Status(rpc_pb2.StatusRequest(), timeout=1.0)
                if status.leader != 0:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"etcd not ready after {STARTUP_TIMEOUT}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.1)
        yield EtcdServer(client_url=client_url, peer_url=peer_url, channel=channel)
    finally:
        channel.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def put(server: EtcdServer, key: bytes, value: bytes, lease: int = 0) -> rpc_pb2.PutResponse:
    kv = rpc_pb2_grpc.KVStub(server.channel)
    return kv.Put(rpc_pb2.PutRequest(key=key, value=value, lease=lease), timeout=RPC_TIMEOUT)


def test_put_and_range_with_sort_and_limit(etcd: EtcdServer) -> None:
    kv = rpc_pb2_grpc.KVStub(etcd.channel)
    first = put(etcd, b"/sort/a", b"1")
    put(etcd, b"/sort/b", b"2")
    put(etcd, b"/sort/c", b"3")
    again = kv.Put(rpc_pb2.PutRequest(key=b"/sort/a", value=b"1b", prev_kv=True), timeout=RPC_TIMEOUT)
    assert again.prev_kv.key == b"/sort/a" and again.prev_kv.value == b"1"
    assert again.header.revision > first.header.revision > 0
    assert again.header.cluster_id != 0 and again.header.member_id != 0 and again.header.raft_term >= 1

    resp = kv.Range(
        rpc_pb2.RangeRequest(
            key=b"/sort/",
            range_end=b"/sort0",
            limit=2,
            sort_order=rpc_pb2.RangeRequest.DESCEND,
            sort_target=rpc_pb2.RangeRequest.KEY,
        ),
        timeout=RPC_TIMEOUT,
    )
    assert [x.key for x in resp.kvs] == [b"/sort/c", b"/sort/b"]
    assert resp.more is True
    assert resp.count == 3

    by_mod = kv.Range(
        rpc_pb2.RangeRequest(
            key=b"/sort/",
            range_end=b"/sort0",
            sort_order=rpc_pb2.RangeRequest.DESCEND,
            sort_target=rpc_pb2.RangeRequest.MOD,
            limit=1,
        ),
        timeout=RPC_TIMEOUT,
    )
    newest = by_mod.kvs[0]
    assert newest.key == b"/sort/a" and newest.value == b"1b"
    assert newest.version == 2
    assert newest.mod_revision == again.header.revision
    assert newest.create_revision == first.header.revision

    counted = kv.Range(
        rpc_pb2.RangeRequest(key=b"/sort/", range_end=b"/sort0", count_only=True), timeout=RPC_TIMEOUT
    )
    assert counted.count == 3 and len(counted.kvs) == 0
    keys_only = kv.Range(
        rpc_pb2.RangeRequest(key=b"/sort/b", keys_only=True, serializable=True), timeout=RPC_TIMEOUT
    )
    assert keys_only.kvs[0].key == b"/sort/b" and keys_only.kvs[0].value == b""


def test_txn_compare_and_nested_ops(etcd: EtcdServer) -> None:
    kv = rpc_pb2_grpc.KVStub(etcd.channel)
    created = put(etcd, b"/txn/k", b"v1")
    txn = rpc_pb2.TxnRequest(
        compare=[
            rpc_pb2.Compare(
                key=b"/txn/k",
                target=rpc_pb2.Compare.MOD,
                result=rpc_pb2.Compare.EQUAL,
                mod_revision=created.header.revision,
            ),
            rpc_pb2.Compare(
                key=b"/txn/k", target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.NOT_EQUAL, value=b"zz"
            ),
        ],
        success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/txn/k", value=b"v2")),
            rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"/txn/k")),
        ],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"/txn/missing"))],
    )
    ok = kv.Txn(txn, timeout=RPC_TIMEOUT)
    assert ok.succeeded is True
    assert [r.WhichOneof("response") for r in ok.responses] == ["response_put", "response_range"]
    assert ok.responses[1].response_range.kvs[0].value == b"v2"

    # Same guard again: the mod revision moved, so the failure branch runs.
    failed = kv.Txn(txn, timeout=RPC_TIMEOUT)
    assert failed.succeeded is False
    assert failed.responses[0].response_range.count == 0

    # CompareTarget.LEASE and a nested txn (request_txn / response_txn).
    nested = kv.Txn(
        rpc_pb2.TxnRequest(
            compare=[
                rpc_pb2.Compare(
                    key=b"/txn/k", target=rpc_pb2.Compare.LEASE, result=rpc_pb2.Compare.EQUAL, lease=0
                )
            ],
            success=[
                rpc_pb2.RequestOp(
                    request_txn=rpc_pb2.TxnRequest(
                        success=[
                            rpc_pb2.RequestOp(
                                request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"/txn/k", prev_kv=True)
                            )
                        ]
                    )
                )
            ],
        ),
        timeout=RPC_TIMEOUT,
    )
    assert nested.succeeded is True
    inner = nested.responses[0].response_txn
    assert inner.succeeded is True
    deleted = inner.responses[0].response_delete_range
    assert deleted.deleted == 1 and deleted.prev_kvs[0].value == b"v2"


def test_lease_grant_keepalive_and_ttl(etcd: EtcdServer) -> None:
    lease = rpc_pb2_grpc.LeaseStub(etcd.channel)
    granted = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60, ID=0x5151), timeout=RPC_TIMEOUT)
    assert granted.ID == 0x5151 and granted.TTL == 60 and granted.error == ""
    put(etcd, b"/lease/k", b"v", lease=granted.ID)

    ttl = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=granted.ID, keys=True), timeout=RPC_TIMEOUT)
    assert ttl.ID == granted.ID and ttl.grantedTTL == 60 and 0 < ttl.TTL <= 60
    assert list(ttl.keys) == [b"/lease/k"]

    kv = rpc_pb2_grpc.KVStub(etcd.channel)
    got = kv.Range(rpc_pb2.RangeRequest(key=b"/lease/k"), timeout=RPC_TIMEOUT)
    assert got.kvs[0].lease == granted.ID

    replies = lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=granted.ID)]), timeout=RPC_TIMEOUT)
    first = next(iter(replies))
    assert first.ID == granted.ID and first.TTL == 60
    replies.cancel()

    leases = lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=RPC_TIMEOUT)
    assert granted.ID in {s.ID for s in leases.leases}
    lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=granted.ID), timeout=RPC_TIMEOUT)
    assert kv.Range(rpc_pb2.RangeRequest(key=b"/lease/k"), timeout=RPC_TIMEOUT).count == 0


def test_status_and_member_list(etcd: EtcdServer) -> None:
    status = rpc_pb2_grpc.MaintenanceStub(etcd.channel).Status(rpc_pb2.StatusRequest(), timeout=RPC_TIMEOUT)
    assert status.version.startswith("3.4.")
    assert status.dbSize > 0 and 0 < status.dbSizeInUse <= status.dbSize
    assert status.leader == status.header.member_id
    assert status.raftIndex > 0 and status.raftTerm >= 1 and status.raftAppliedIndex > 0
    assert status.isLearner is False and list(status.errors) == []

    members = rpc_pb2_grpc.ClusterStub(etcd.channel).MemberList(
        rpc_pb2.MemberListRequest(), timeout=RPC_TIMEOUT
    )
    assert len(members.members) == 1
    m = members.members[0]
    assert m.ID == status.leader
    assert m.name == "default"
    assert list(m.peerURLs) == [etcd.peer_url]
    assert list(m.clientURLs) == [etcd.client_url]
    assert m.isLearner is False


def test_alarm_hashkv_and_snapshot(etcd: EtcdServer) -> None:
    maintenance = rpc_pb2_grpc.MaintenanceStub(etcd.channel)
    alarms = maintenance.Alarm(
        rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET, alarm=rpc_pb2.NONE), timeout=RPC_TIMEOUT
    )
    assert list(alarms.alarms) == []

    hashed = maintenance.HashKV(rpc_pb2.HashKVRequest(revision=0), timeout=RPC_TIMEOUT)
    assert hashed.hash != 0 and hashed.header.revision > 0

    chunks = list(maintenance.Snapshot(rpc_pb2.SnapshotRequest(), timeout=RPC_TIMEOUT))
    # etcd streams the bbolt file, then a trailing 32-byte SHA-256 of it; remaining_bytes counts the
    # database bytes still to come after each chunk.
    assert len(chunks) >= 2
    db = b"".join(c.blob for c in chunks[:-1])
    assert len(db) > 0
    assert chunks[-1].blob == hashlib.sha256(db).digest()
    assert chunks[0].remaining_bytes == len(db) - len(chunks[0].blob)
    assert chunks[-2].remaining_bytes == 0


def test_watch_stream(etcd: EtcdServer) -> None:
    watch = rpc_pb2_grpc.WatchStub(etcd.channel)
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()

    def request_iter() -> Iterator[rpc_pb2.WatchRequest]:
        while True:
            item = requests.get(timeout=RPC_TIMEOUT)
            if item is None:
                return
            yield item

    requests.put(
        rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=b"/watch/", range_end=b"/watch0", prev_kv=True, watch_id=7
            )
        )
    )
    call = watch.Watch(request_iter(), timeout=RPC_TIMEOUT)
    try:
        responses = iter(call)
        created = next(responses)
        assert created.created is True and created.watch_id == 7

        put(etcd, b"/watch/x", b"1")
        put(etcd, b"/watch/x", b"2")
        kv = rpc_pb2_grpc.KVStub(etcd.channel)
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"/watch/x"), timeout=RPC_TIMEOUT)

        events: list[kv_pb2.Event] = []
        while len(events) < 3:
            resp = next(responses)
            assert resp.watch_id == 7
            events.extend(resp.events)
        assert [e.type for e in events] == [kv_pb2.Event.PUT, kv_pb2.Event.PUT, kv_pb2.Event.DELETE]
        assert [e.kv.value for e in events[:2]] == [b"1", b"2"]
        assert events[1].prev_kv.value == b"1"
        assert events[2].kv.key == b"/watch/x" and events[2].prev_kv.value == b"2"
        assert events[2].kv.mod_revision > events[1].kv.mod_revision

        requests.put(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=7)))
        canceled = next(responses)
        assert canceled.canceled is True and canceled.watch_id == 7
    finally:
        requests.put(None)
        call.cancel()


def embedded_etcd_descriptors() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The gzipped FileDescriptorProtos that etcd's generated Go code registers, read from the binary."""
    data = Path(ETCD).read_bytes()
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for match in re.finditer(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00", data):
        try:
            raw = zlib.decompressobj(31).decompress(data[match.start() : match.start() + (1 << 20)])
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except Exception:  # not a descriptor; keep scanning
            continue
        if (fd.name, fd.package) in {
            ("rpc.proto", "etcdserverpb"),
            ("kv.proto", "mvccpb"),
            ("auth.proto", "authpb"),
        }:
            found[fd.package] = fd
    return found


def all_messages(
    msgs: Iterator[descriptor_pb2.DescriptorProto] | list[descriptor_pb2.DescriptorProto], prefix: str = ""
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for m in msgs:
        yield prefix + m.name, m
        yield from all_messages(list(m.nested_type), prefix + m.name + ".")


def all_enums(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, dict[str, int]]:
    out = {e.name: {v.name: v.number for v in e.value} for e in fd.enum_type}
    for name, msg in all_messages(list(fd.message_type)):
        out.update({f"{name}.{e.name}": {v.name: v.number for v in e.value} for e in msg.enum_type})
    return out


def test_descriptors_are_a_superset_of_the_etcd_binary() -> None:
    """Everything etcd 3.4 declares (messages, fields, enums, methods) exists identically in ours."""
    if not os.access(ETCD, os.R_OK):
        pytest.skip(f"etcd binary not found at {ETCD}")
    theirs = embedded_etcd_descriptors()
    assert set(theirs) == {"etcdserverpb", "mvccpb", "authpb"}
    ours: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for module in (rpc_pb2, kv_pb2, auth_pb2):
        fd = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fd)
        ours[fd.package] = fd

    problems: list[str] = []
    for pkg, their_fd in theirs.items():
        our_msgs = dict(all_messages(list(ours[pkg].message_type)))
        for name, their_msg in all_messages(list(their_fd.message_type)):
            our_msg = our_msgs.get(name)
            if our_msg is None:
                problems.append(f"missing message {pkg}.{name}")
                continue
            our_fields = {f.name: f for f in our_msg.field}
            for f in their_msg.field:
                g = our_fields.get(f.name)
                if g is None:
                    problems.append(f"missing field {pkg}.{name}.{f.name}")
                    continue
                for attr in ("number", "type", "label", "type_name"):
                    if getattr(f, attr) != getattr(g, attr):
                        problems.append(
                            f"{pkg}.{name}.{f.name}.{attr}: {getattr(f, attr)} != {getattr(g, attr)}"
                        )
                their_oneof = their_msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
                our_oneof = our_msg.oneof_decl[g.oneof_index].name if g.HasField("oneof_index") else None
                if their_oneof != our_oneof:
                    problems.append(f"{pkg}.{name}.{f.name} oneof: {their_oneof} != {our_oneof}")
        our_enums = all_enums(ours[pkg])
        for name, values in all_enums(their_fd).items():
            if our_enums.get(name) != values:
                problems.append(f"enum {pkg}.{name}: {values} != {our_enums.get(name)}")
        our_services = {s.name: {m.name: m for m in s.method} for s in ours[pkg].service}
        for svc in their_fd.service:
            for m in svc.method:
                ours_m = our_services.get(svc.name, {}).get(m.name)
                if ours_m is None:
                    problems.append(f"missing method {svc.name}.{m.name}")
                    continue
                for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
                    if getattr(m, attr) != getattr(ours_m, attr):
                        problems.append(f"{svc.name}.{m.name}.{attr} differs")
    assert problems == []
