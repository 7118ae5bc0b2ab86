"""``server/reset.py`` in process: a member whose log holds entries it never saw committed keeps them all (what
Raft would do had it won an election), becomes the only voter and member, and records the others as removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.mvcc import store
from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import Entry, EntryType
from quorumkv.server import reset
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings
from quorumkv.storage import membership, schema
from quorumkv.storage.raftlog import RaftLogTable

pytestmark = pytest.mark.timeout(60)

PEERS = {"a": "http://127.0.0.1:1", "b": "http://127.0.0.2:1", "c": "http://127.0.0.3:1"}


def settings(data_dir: Path, **kw: object) -> ServerSettings:
    return ServerSettings(name="a", data_dir=str(data_dir), initial_advertise_peer_urls=[PEERS["a"]],
                          listen_peer_urls=[PEERS["a"]],
                          initial_cluster=",".join(f"{n}={u}" for n, u in PEERS.items()), **kw)  # type: ignore[arg-type]


def make_three_member_data_dir(data_dir: Path) -> int:
    """A member of a 3-member cluster whose log holds two puts beyond its commit index (it never heard they were
    committed): built by bootstrapping, then appending the entries as a follower would."""
    server = QuorumServer(settings(data_dir))
    try:
        conn = server.backend.writer
        hs = schema.hard_state(conn)
        assert hs is not None and hs.commit == 3
        puts = [pb.PutRequest(key=f"k{k}".encode(), value=b"v").SerializeToString() for k in range(2)]
        entries = [Entry(Term(2), Index(4 + k), EntryType.NORMAL, encode_entry(EntryKind.PUT, 0, put))
                   for k, put in enumerate(puts)]
        with server.backend.write_txn() as c:
            RaftLogTable().append(c, entries)
            schema.save_hard_state(c, type(hs)(Term(2), NodeId(0), Index(3)))
        return server.member_id
    finally:
        server.backend.close()
        server.datadir.close()


def test_reset_keeps_every_entry_the_member_holds(tmp_path: Path) -> None:
    data = tmp_path / "a"
    me = make_three_member_data_dir(data)

    server = QuorumServer(settings(data, cluster_reset=True))
    try:
        assert server.reset_removed is not None and len(server.reset_removed) == 2
        assert me not in server.reset_removed
        conn = server.backend.writer
        assert schema.applied_index(conn) == 5
        assert store.current_revision(conn) == 3  # both puts applied
        hs = schema.hard_state(conn)
        assert hs is not None and (hs.term, hs.commit) == (2, 5)
        cs = schema.conf_state(conn)
        assert cs is not None and list(cs.voters) == [me] and not cs.learners
        assert list(membership.load_members(conn)) == [me]
        assert all(membership.is_removed(conn, m) for m in server.reset_removed)
        assert (data / reset.GUARD_FILE).exists()
    finally:
        server.backend.close()
        server.datadir.close()
    with pytest.raises(EtcdError, match="already reset"):
        QuorumServer(settings(data, cluster_reset=True))
    plain = QuorumServer(settings(data))  # a start without the flag clears the guard
    plain.backend.close()
    plain.datadir.close()
    assert not (data / reset.GUARD_FILE).exists()


def test_cluster_reset_of_an_empty_data_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EtcdError, match="holds no member to reset"):
        QuorumServer(settings(tmp_path / "none", cluster_reset=True))


def test_force_new_cluster_resets_on_every_start_without_a_guard(tmp_path: Path) -> None:
    """etcd's flag: the same reset, no reset-flag file, and a start with the flag again resets again (a no-op
    for a sole member: nothing more removed, its data kept)."""
    data = tmp_path / "a"
    me = make_three_member_data_dir(data)
    for removed in (2, 0):
        server = QuorumServer(settings(data, force_new_cluster=True))
        try:
            assert server.reset_removed is not None and len(server.reset_removed) == removed
            conn = server.backend.writer
            assert list(membership.load_members(conn)) == [me]
            assert store.current_revision(conn) == 3
            assert not (data / reset.GUARD_FILE).exists()
        finally:
            server.backend.close()
            server.datadir.close()
