"""RawNode façade and the Ready/advance contract."""

from __future__ import annotations

import random

import pytest

from quorumkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    EntryType,
    Message,
    MessageType,
    NodeId,
    RawNode,
    StateType,
    Storage,
    Term,
)
from quorumkv.raft.memory_storage import MemoryStorage
from quorumkv.raft.messages import decode_conf_change
from quorumkv.testing.harness import Cluster, bootstrap_storage

MT = MessageType


def test_memory_storage_implements_the_storage_protocol() -> None:
    s: Storage = MemoryStorage()  # checked structurally by mypy
    assert s.first_index() == 1 and s.last_index() == 0


def test_only_one_ready_outstanding_but_steps_allowed_in_between() -> None:
    st = bootstrap_storage((1,))
    node = RawNode(Config(id=NodeId(1), storage=st, rng=random.Random(0)))
    node.campaign()
    rd = node.ready()
    assert not node.has_ready()
    with pytest.raises(RuntimeError):
        node.ready()
    node.propose(b"while-persisting")  # allowed: the next Ready will carry it
    st.append(rd.entries)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    node.advance(rd)
    assert node.has_ready()
    rd2 = node.ready()
    assert [e.data for e in rd2.entries] == [b"while-persisting"]
    with pytest.raises(RuntimeError):
        node.advance(rd)  # not the outstanding Ready


def test_single_node_ready_sequence() -> None:
    st = bootstrap_storage((1,))
    node = RawNode(Config(id=NodeId(1), storage=st, rng=random.Random(0)))
    node.campaign()
    rd = node.ready()
    assert rd.soft_state is not None and rd.soft_state.raft_state == StateType.LEADER
    assert rd.hard_state is not None and rd.hard_state.term == 1 and rd.hard_state.vote == 1
    assert rd.must_sync and len(rd.entries) == 1 and rd.committed_entries == rd.entries
    st.append(rd.entries)
    st.set_hard_state(rd.hard_state)
    node.advance(rd)
    assert not node.has_ready()
    assert node.status().applied == 1


def test_local_messages_cannot_be_stepped_from_the_network() -> None:
    node = RawNode(Config(id=NodeId(1), storage=bootstrap_storage((1, 2)), rng=random.Random(0)))
    with pytest.raises(ValueError):
        node.step(Message(MT.HUP))


def test_responses_from_unknown_peers_are_ignored() -> None:
    node = RawNode(Config(id=NodeId(1), storage=bootstrap_storage((1, 2)), rng=random.Random(0)))
    node.step(Message(MT.APP_RESP, NodeId(1), NodeId(9), Term(5)))
    assert node.raft.term == 0


def test_status_reports_progress_on_the_leader() -> None:
    c = Cluster()
    c.campaign(1)
    st = c.node(1).status()
    assert st.soft_state.raft_state == StateType.LEADER
    assert {n: (p.match, p.next) for n, p in st.progress.items()} == {1: (1, 2), 2: (1, 2), 3: (1, 2)}
    assert c.node(2).status().progress == {}


def test_report_unreachable_and_snapshot_move_progress_to_probe() -> None:
    c = Cluster()
    c.campaign(1)
    c.node(1).report_unreachable(NodeId(2))
    assert c.node(1).status().progress[NodeId(2)].state.name == "PROBE"
    pr = c.node(1).raft.tracker.progress[NodeId(3)]
    pr.become_snapshot(pr.match)
    c.node(1).report_snapshot(NodeId(3), ok=False)
    assert pr.state.name == "PROBE" and pr.msg_app_flow_paused


def test_apply_conf_change_ignores_invalid_changes_deterministically() -> None:
    node = RawNode(Config(id=NodeId(1), storage=bootstrap_storage((1,)), rng=random.Random(0)))
    cs = node.apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, NodeId(1)))  # last voter
    assert cs.voters == (1,)


def test_conf_change_entry_encoding_round_trips_through_the_log() -> None:
    c = Cluster()
    c.campaign(1)
    c.propose_conf_change(1, ConfChange(ConfChangeType.ADD_LEARNER_NODE, NodeId(4)))
    ents = [e for e in c.storages[NodeId(2)].all_entries() if e.type == EntryType.CONF_CHANGE]
    want = ConfChange(ConfChangeType.ADD_LEARNER_NODE, NodeId(4))
    assert [decode_conf_change(e.data) for e in ents] == [want]
