"""KV, txn, cluster, maintenance and lease calls of the sync client, against etcd 3.4 and quorumkv."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorumkv.client import (
    Client,
    CompactedError,
    DeleteResult,
    EmptyKeyError,
    EtcdError,
    FutureRevisionError,
    GetResult,
    LeaseNotFoundError,
    MemberNotFoundError,
    PutResult,
    create_revision,
    delete,
    get,
    lease,
    mod_revision,
    put,
    value,
    version,
)
from quorumkv.testing.processes import ServerProcess, free_port


def test_put_get_delete_str_and_bytes(client: Client, ns: str) -> None:
    first = client.put(ns + "a", "1")
    again = client.put((ns + "a").encode(), b"2", prev_kv=True)
    assert again.header.revision == first.header.revision + 1
    assert again.prev_kv is not None and again.prev_kv.value == b"1"
    kv = client.get(ns + "a")
    assert kv is not None and kv.value == b"2" and kv.version == 2 and kv.key == (ns + "a").encode()
    assert kv.create_revision == first.header.revision and kv.mod_revision == again.header.revision
    assert client.get(ns + "missing") is None
    old = client.get(ns + "a", revision=first.header.revision)
    assert old is not None and old.value == b"1"
    gone = client.delete(ns + "a", prev_kv=True)
    assert gone.deleted == 1 and gone.prev_kvs[0].value == b"2"
    assert client.get(ns + "a") is None
    assert client.delete(ns + "a").deleted == 0


def test_get_range_options(client: Client, ns: str) -> None:
    for i, v in enumerate(["c", "a", "b", "d"]):
        client.put(f"{ns}k{i}", v)
    everything = client.get_prefix(ns)
    assert [kv.key for kv in everything.kvs] == [f"{ns}k{i}".encode() for i in range(4)]
    assert everything.count == 4 and not everything.more
    limited = client.get_prefix(ns, limit=2)
    assert len(limited.kvs) == 2 and limited.more and limited.count == 4
    by_value = client.get_prefix(ns, sort_target="value", sort_order="descend")
    assert [kv.value for kv in by_value.kvs] == [b"d", b"c", b"b", b"a"]
    keys_only = client.get_prefix(ns, keys_only=True)
    assert all(kv.value == b"" for kv in keys_only.kvs) and len(keys_only.kvs) == 4
    count_only = client.get_prefix(ns, count_only=True)
    assert count_only.kvs == () and count_only.count == 4
    ranged = client.get_range(f"{ns}k1", f"{ns}k3")
    assert [kv.value for kv in ranged.kvs] == [b"a", b"b"]
    serial = client.get_range(f"{ns}k0", serializable=True)
    assert serial.kvs[0].value == b"c"
    at_rev = client.get_prefix(ns, revision=everything.header.revision - 1)
    assert at_rev.count == 3
    newer = client.get_range(ns, prefix=True, min_create_revision=everything.kvs[2].create_revision)
    assert [kv.value for kv in newer.kvs] == [b"b", b"d"]
    removed = client.delete_range(f"{ns}k0", f"{ns}k2")
    assert isinstance(removed, DeleteResult) and removed.deleted == 2
    assert client.delete_prefix(ns, prev_kv=True).deleted == 2
    assert client.get_prefix(ns).count == 0


def test_put_with_lease_and_lease_calls(client: Client, ns: str) -> None:
    granted = client.lease_grant(30)
    assert granted.id != 0 and granted.ttl == 30
    client.put(ns + "leased", "v", lease=granted.id)
    kv = client.get(ns + "leased")
    assert kv is not None and kv.lease == granted.id
    info = client.lease_time_to_live(granted.id, keys=True)
    assert info.granted_ttl == 30 and 0 < info.ttl <= 30 and info.keys == ((ns + "leased").encode(),)
    assert granted.id in client.leases()
    assert client.lease_keep_alive_once(granted.id) == 30
    client.lease_revoke(granted.id)
    assert client.get(ns + "leased") is None
    assert client.lease_time_to_live(granted.id).ttl == -1
    assert client.lease_keep_alive_once(granted.id) <= 0
    with pytest.raises(LeaseNotFoundError):
        client.lease_revoke(granted.id)
    with pytest.raises(LeaseNotFoundError):
        client.put(ns + "x", "v", lease=granted.id)


def test_errors_are_typed(client: Client, ns: str) -> None:
    with pytest.raises(EmptyKeyError) as empty:
        client.put("", "v")
    assert empty.value.code == "INVALID_ARGUMENT" and "key is not provided" in empty.value.message
    head = client.put(ns + "k", "v").header.revision
    with pytest.raises(FutureRevisionError):
        client.get(ns + "k", revision=head + 1000)
    client.put(ns + "k", "w")
    client.compact(head)
    with pytest.raises(CompactedError) as compacted:
        client.get(ns + "k", revision=head - 1)
    assert "compacted" in str(compacted.value)
    with pytest.raises(CompactedError):
        client.compact(head - 1)


def test_txn_builder_branches(client: Client, ns: str) -> None:
    k = ns + "t"
    created = client.txn().if_(create_revision(k) == 0).then(put(k, "one"), get(k)).else_(get(k)).commit()
    assert created.succeeded and isinstance(created.responses[0], PutResult)
    got = created.responses[1]
    assert isinstance(got, GetResult) and got.kvs[0].value == b"one"
    again = client.txn().if_(create_revision(k) == 0).then(put(k, "two")).else_(get(k)).commit()
    assert not again.succeeded and len(again.responses) == 1
    kv = client.get(k)
    assert kv is not None and kv.value == b"one"
    ok = client.txn().if_(value(k) == b"one", version(k) > 0, mod_revision(k) == kv.mod_revision,
                          lease(k) == 0, value(k) != "zzz", version(k) < 2).then(
        put(k, "three", prev_kv=True), delete(ns + "nothing")).commit()  # fmt: skip
    assert ok.succeeded
    put_result = ok.responses[0]
    assert isinstance(put_result, PutResult) and put_result.prev_kv is not None and put_result.prev_kv.value == b"one"
    assert isinstance(ok.responses[1], DeleteResult) and ok.responses[1].deleted == 0
    client.put(ns + "r1", "x")
    client.put(ns + "r2", "x")
    ranged = client.txn().if_(value(ns + "r", prefix=True) == "x").then(delete(ns + "r", prefix=True)).commit()
    assert ranged.succeeded and client.get_prefix(ns + "r").count == 0
    client.put(ns + "r1", "x")
    client.put(ns + "r2", "y")
    mixed = client.txn().if_(value(ns + "r", prefix=True) == "x").then(delete(ns + "r", prefix=True)).commit()
    assert not mixed.succeeded and client.get_prefix(ns + "r").count == 2
    with pytest.raises(TypeError):
        _ = value(k) == 3
    with pytest.raises(TypeError):
        _ = version(k) == "3"


def test_status_members_maintenance(client: Client, server: ServerProcess, tmp_path: Path) -> None:
    status = client.status()
    assert status.version.startswith("3.") and status.leader == status.header.member_id and status.raft_term >= 1
    assert status.db_size > 0 and not status.is_learner
    members = client.members()
    assert len(members) == 1 and members[0].id == status.header.member_id
    assert members[0].client_urls == (server.client_url,)
    assert client.alarms() == ()
    assert client.hash_kv().hash != 0
    client.defragment()  # etcd 3.4 answers with an empty header
    size = client.snapshot(tmp_path / "snap.db")
    assert size > 0 and (tmp_path / "snap.db").stat().st_size == size
    assert not (tmp_path / "snap.db.part").exists()
    assert client.status(endpoint=client.endpoint).header.member_id == status.header.member_id


def test_client_accepts_many_endpoint_forms(server: ServerProcess) -> None:
    with Client([server.client_url]) as by_url, Client(f"127.0.0.1:{server.client_port}") as by_target:
        by_url.put("endpoint-forms", "1")
        kv = by_target.get("endpoint-forms")
        assert kv is not None and kv.value == b"1"
    assert by_url._transport.closed


def check_membership_calls(client: Client) -> None:
    """Add a learner (never started), update its URLs, fail to promote it, remove it."""
    before = len(client.members())
    added = client.member_add([f"http://127.0.0.1:{free_port()}"], is_learner=True)
    assert added.member is not None and added.member.is_learner and len(added.members) == before + 1
    new_url = f"http://127.0.0.1:{free_port()}"
    updated = client.member_update(added.member.id, [new_url])
    assert any(m.peer_urls == (new_url,) for m in updated.members)
    with pytest.raises(EtcdError) as not_ready:
        client.member_promote(added.member.id)
    assert not_ready.value.code == "FAILED_PRECONDITION" and "learner" in not_ready.value.message
    assert len(client.member_remove(added.member.id).members) == before
    with pytest.raises(MemberNotFoundError):
        client.member_remove(added.member.id)


def test_membership_calls(client: Client, server: ServerProcess) -> None:
    # a single member is a Raft cluster of one on both servers: it grows and shrinks alike
    check_membership_calls(client)
