"""Unit tests named after the rules they check.

Raft paper Figure 2/3 and §5; thesis §3.10, §4.2.3, §6, §9.6.
"""

from __future__ import annotations

import random

import pytest

from quorumkv.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    ProposalDroppedError,
    Raft,
    RawNode,
    StateType,
    Term,
)
from quorumkv.raft.memory_storage import MemoryStorage
from quorumkv.raft.messages import ConfState, Snapshot, SnapshotMetadata
from quorumkv.testing.harness import Cluster, bootstrap_storage
from quorumkv.testing.planted import new_raft

MT = MessageType
N1, N2, N3, N4 = NodeId(1), NodeId(2), NodeId(3), NodeId(4)


def storage_with(
    terms: list[int], term: int, commit: int, voters: tuple[int, ...] = (1, 2, 3)
) -> MemoryStorage:
    """Storage holding entries 1..len(terms) with the given terms, and a hard state."""
    st = bootstrap_storage(voters)
    st.append([Entry(Term(t), Index(i), data=b"e%d" % i) for i, t in enumerate(terms, start=1)])
    st.set_hard_state(HardState(Term(term), NONE, Index(commit)))
    return st


def raft(
    nid: int = 1,
    voters: tuple[int, ...] = (1, 2, 3),
    pre_vote: bool = False,
    check_quorum: bool = False,
    bugs: frozenset[str] = frozenset(),
) -> Raft:
    return new_raft(
        Config(
            id=NodeId(nid),
            storage=bootstrap_storage(voters),
            rng=random.Random(nid),
            pre_vote=pre_vote,
            check_quorum=check_quorum,
        ),
        bugs,
    )


def take(r: Raft) -> list[Message]:
    out, r.msgs = r.msgs, []
    return out


def elect(c: Cluster, nid: int = 1) -> None:
    c.campaign(nid)
    assert c.state(nid) == StateType.LEADER


# ---------------------------------------------------------------------------- elections


def test_leader_election_with_majority_5_2() -> None:
    c = Cluster()
    elect(c)
    assert c.term(1) == 1
    assert [c.node(i).raft.lead for i in (1, 2, 3)] == [1, 1, 1]


def test_election_timeout_is_randomized_in_et_to_2et_5_2() -> None:
    timeouts = set()
    for seed in range(30):
        r = Raft(Config(id=N1, storage=bootstrap_storage((1, 2, 3)), rng=random.Random(seed)))
        assert 10 <= r.randomized_election_timeout < 20
        timeouts.add(r.randomized_election_timeout)
    assert len(timeouts) > 3


def test_follower_becomes_candidate_after_election_timeout_figure2() -> None:
    r = raft()
    for _ in range(r.randomized_election_timeout):
        r.tick()
    assert r.state == StateType.CANDIDATE and r.term == 1 and r.vote == 1
    msgs = take(r)
    assert sorted((m.type, m.to, m.term) for m in msgs) == [(MT.VOTE, N2, 1), (MT.VOTE, N3, 1)]


def test_candidate_reverts_to_follower_when_majority_rejects_figure2() -> None:
    r = raft()
    r.step(Message(MT.HUP, frm=N1))
    r.step(Message(MT.VOTE_RESP, N1, N2, Term(1), reject=True))
    states = [r.state]
    r.step(Message(MT.VOTE_RESP, N1, N3, Term(1), reject=True))
    states.append(r.state)
    assert states == [StateType.CANDIDATE, StateType.FOLLOWER] and r.term == 1


def test_candidate_steps_down_on_append_from_leader_of_same_term_5_2() -> None:
    r = raft()
    r.step(Message(MT.HUP, frm=N1))
    r.step(Message(MT.APP, N1, N2, Term(1)))
    assert r.state == StateType.FOLLOWER and r.lead == N2


def test_each_server_votes_at_most_once_per_term_election_safety_5_2() -> None:
    r = raft(3)
    r.step(Message(MT.VOTE, N3, N1, Term(1)))
    r.step(Message(MT.VOTE, N3, N2, Term(1)))
    resp = take(r)
    assert [(m.to, m.reject) for m in resp] == [(N1, False), (N2, True)]
    assert r.vote == N1


def test_planted_double_vote_bug_breaks_election_safety() -> None:
    r = raft(3, bugs=frozenset({"double_vote"}))
    r.step(Message(MT.VOTE, N3, N1, Term(1)))
    r.step(Message(MT.VOTE, N3, N2, Term(1)))
    assert [m.reject for m in take(r)] == [False, False]


def test_vote_is_in_the_same_ready_as_its_grant_figure2_persistent_state() -> None:
    st = bootstrap_storage((1, 2, 3))
    node = RawNode(Config(id=N3, storage=st, rng=random.Random(0), pre_vote=False))
    node.step(Message(MT.VOTE, N3, N1, Term(5)))
    rd = node.ready()
    assert rd.hard_state == HardState(Term(5), N1, Index(0))
    assert rd.must_sync
    assert [(m.type, m.reject) for m in rd.messages] == [(MT.VOTE_RESP, False)]


def test_restarted_server_remembers_its_vote() -> None:
    c = Cluster()
    c.node(3).step(Message(MT.VOTE, N3, N1, Term(1)))
    c.process_ready(3)
    c.queue.clear()
    node = c.restart(3)
    assert node.raft.vote == N1 and node.raft.term == 1
    node.step(Message(MT.VOTE, N3, N2, Term(1)))
    assert node.raft.msgs[-1].reject


def test_vote_denied_to_candidate_with_less_up_to_date_log_5_4_1() -> None:
    st = storage_with([1, 2], term=2, commit=1)
    r = Raft(Config(id=N3, storage=st, rng=random.Random(0), pre_vote=False))
    r.step(Message(MT.VOTE, N3, N1, Term(3), Term(1), Index(5)))  # longer log, older last term
    r.step(Message(MT.VOTE, N3, N2, Term(4), Term(2), Index(1)))  # same last term, shorter
    assert [m.reject for m in take(r)] == [True, True]
    r.step(Message(MT.VOTE, N3, N2, Term(5), Term(2), Index(2)))
    assert [m.reject for m in take(r)] == [False]


def test_higher_term_converts_leader_to_follower_5_1() -> None:
    c = Cluster()
    elect(c)
    c.node(1).step(Message(MT.APP, N1, N2, Term(7), Term(0), Index(0)))
    r = c.node(1).raft
    assert r.state == StateType.FOLLOWER and r.term == 7 and r.lead == N2


def test_stale_term_append_is_rejected_and_answered_with_current_term_5_1() -> None:
    r = raft(2, check_quorum=True)
    r.step(Message(MT.APP, N2, N1, Term(3)))
    take(r)
    r.step(Message(MT.APP, N2, N3, Term(2), entries=(Entry(Term(2), Index(1)),)))
    resp = take(r)
    assert [(m.type, m.term, m.index) for m in resp] == [(MT.APP_RESP, 3, 0)]
    assert r.log.last_index() == 0 and r.lead == N1


# ---------------------------------------------------------------------------- replication


def test_leader_commits_once_replicated_on_a_majority_5_3() -> None:
    c = Cluster()
    elect(c)
    c.cut |= {(1, 2), (1, 3)}
    c.propose(1, b"x")
    assert c.committed(1) == 1  # only the election's empty entry
    c.cut.discard((1, 2))
    c.tick(1)  # heartbeat -> response -> append
    assert c.committed(1) == 2 and c.applied_data(1) == [b"x"] and c.applied_data(2) == [b"x"]


def test_follower_truncates_conflicting_entries_log_matching_5_3() -> None:
    c = Cluster()
    c.add_node(2, storage_with([1, 2, 2, 2], term=2, commit=1))  # stale uncommitted suffix from term 2
    c.add_node(1, storage_with([1, 3, 3], term=3, commit=1))
    c.add_node(3, storage_with([1, 3, 3], term=3, commit=1))
    elect(c)
    c.propose(1, b"new")
    e1 = [(e.index, e.term) for e in c.storages[N1].all_entries()]
    e2 = [(e.index, e.term) for e in c.storages[N2].all_entries()]
    assert e1 == e2 == [(1, 1), (2, 3), (3, 3), (4, 4), (5, 4)]


def test_fast_backtracking_skips_a_whole_conflicting_term_per_round_trip() -> None:
    c = Cluster()
    c.add_node(2, storage_with([1] + [2] * 30, term=2, commit=1))
    c.add_node(1, storage_with([1] + [3] * 10, term=3, commit=1))
    c.add_node(3, storage_with([1] + [3] * 10, term=3, commit=1))
    elect(c)
    rejects = [m for m in c.delivered if m.type == MT.APP_RESP and m.reject and m.frm == N2]
    assert len(rejects) == 1  # one hint jumps over all 30 stale entries
    assert c.storages[N2].last_index() == 12


def test_leader_never_commits_previous_term_entry_by_counting_5_4_2() -> None:
    """Figure 8: entry 2 (term 2) replicated on a majority must not be committed by the term-3 leader
    until an entry of term 3 is also on a majority."""
    c = Cluster(max_size_per_msg_bytes=1)
    c.add_node(1, storage_with([1, 2], term=2, commit=1))
    c.add_node(2, storage_with([1], term=2, commit=1))
    c.add_node(3, storage_with([1], term=2, commit=1))
    c.node(1).campaign()
    c.process_ready(1)
    seen_commit_of_2_before_3 = False
    while c.queue:
        m = c.deliver_one()
        r1 = c.node(1).raft
        if (
            m is not None
            and m.type == MT.APP_RESP
            and not m.reject
            and m.index == 2
            and r1.tracker.committed() == 2
        ):
            seen_commit_of_2_before_3 = True
            assert r1.log.committed == 1, "committed a term-2 entry by counting replicas"
    assert seen_commit_of_2_before_3
    assert c.committed(1) == 3 and c.term(1) == 3


def test_planted_commit_previous_term_bug_commits_by_counting() -> None:
    c = Cluster(max_size_per_msg_bytes=1, bugs=frozenset({"commit_previous_term"}))
    c.add_node(1, storage_with([1, 2], term=2, commit=1))
    c.add_node(2, storage_with([1], term=2, commit=1))
    c.add_node(3, storage_with([1], term=2, commit=1))
    c.node(1).campaign()
    c.process_ready(1)
    commits = []
    while c.queue:
        c.deliver_one()
        commits.append(c.node(1).raft.log.committed)
    assert 2 in commits  # committed index 2 (term 2) before the term-3 entry was replicated


def test_single_voter_commits_immediately() -> None:
    c = Cluster(voters=(1,))
    elect(c)
    c.propose(1, b"a")
    assert c.applied_data(1) == [b"a"]


def test_proposals_are_batched_into_one_append() -> None:
    c = Cluster()
    elect(c)
    c.delivered.clear()
    c.node(1).propose_batch([b"a", b"b", b"c"])
    c.stabilize()
    apps = [m for m in c.delivered if m.type == MT.APP and m.to == N2 and m.entries]
    assert len(apps) == 1 and len(apps[0].entries) == 3


def test_flow_control_limits_inflight_appends() -> None:
    c = Cluster(max_inflight_msgs=2)
    elect(c)
    c.drop_types.add(MT.APP_RESP)
    c.delivered.clear()
    for i in range(10):
        c.propose(1, b"%d" % i)
    apps = [m for m in c.delivered if m.type == MT.APP and m.to == N2]
    assert len(apps) == 2
    pr = c.node(1).status().progress[N2]
    assert pr.paused


def test_flow_control_max_size_per_message() -> None:
    c = Cluster(max_size_per_msg_bytes=60)
    elect(c)
    c.cut |= {(1, 3), (3, 1)}
    for i in range(6):
        c.propose(1, b"%d" % i)
    c.heal()
    c.delivered.clear()
    c.tick(1)
    apps = [m for m in c.delivered if m.type == MT.APP and m.to == N3 and m.entries]
    assert len(apps) >= 3 and all(len(m.entries) <= 2 for m in apps)
    assert c.committed(3) == c.committed(1) == 7


def test_no_proposal_without_leader() -> None:
    c = Cluster()
    with pytest.raises(ProposalDroppedError):
        c.node(1).propose(b"x")


def test_follower_forwards_proposals_to_leader() -> None:
    c = Cluster()
    elect(c)
    c.propose(2, b"via-follower")
    assert c.applied_data(1) == [b"via-follower"]


# ---------------------------------------------------------------------------- pre-vote, check-quorum


def test_prevote_partitioned_node_does_not_increase_term_9_6() -> None:
    c = Cluster(pre_vote=True)
    elect(c)
    c.isolate(3)
    c.tick(3, 100)
    assert c.term(3) == 1 and c.state(3) == StateType.PRE_CANDIDATE
    c.heal()
    c.tick_all(3)
    assert c.state(1) == StateType.LEADER and c.term(1) == 1 and c.state(3) == StateType.FOLLOWER


def test_without_prevote_rejoining_node_disrupts_the_leader() -> None:
    c = Cluster(pre_vote=False)
    elect(c)
    c.isolate(3)
    c.tick(3, 100)
    assert c.term(3) > 1
    c.heal()
    c.tick_all(2 * c.election_timeout_ticks)
    assert c.term(1) > 1  # node 3's next higher-term vote request deposed the term-1 leader


def test_check_quorum_leader_steps_down_without_quorum_6_2() -> None:
    c = Cluster(check_quorum=True)
    elect(c)
    c.isolate(1)
    c.tick(1, 2 * c.election_timeout_ticks)
    assert c.state(1) == StateType.FOLLOWER


def test_check_quorum_leader_stays_with_quorum_6_2() -> None:
    c = Cluster(check_quorum=True)
    elect(c)
    c.isolate(3)
    c.tick_all(5 * c.election_timeout_ticks)
    assert c.state(1) == StateType.LEADER


def test_leader_lease_ignores_disruptive_vote_requests_4_2_3() -> None:
    c = Cluster(check_quorum=True)
    elect(c)
    c.node(2).step(Message(MT.VOTE, N2, N3, Term(9), Term(1), Index(100)))
    assert c.term(2) == 1 and c.node(2).raft.msgs == []


# ---------------------------------------------------------------------------- reads


def test_read_index_requires_a_heartbeat_quorum_6_4() -> None:
    c = Cluster()
    elect(c)
    c.isolate(1)
    c.node(1).read_index(b"r1")
    c.stabilize()
    assert c.read_states[N1] == []
    c.heal()
    c.tick(1)
    assert [(rs.index, rs.request_ctx) for rs in c.read_states[N1]] == [(1, b"r1")]


def test_read_index_waits_for_an_entry_committed_in_the_leaders_term_6_4() -> None:
    r = raft()
    r.become_candidate()
    r.become_leader()
    take(r)
    r.step(Message(MT.READ_INDEX, context=b"r"))
    assert r.pending_read_index_messages and not any(m.context == b"r" for m in take(r))
    r.step(Message(MT.APP_RESP, N1, N2, Term(1), index=Index(1)))  # noop committed
    hbs = [m for m in take(r) if m.type == MT.HEARTBEAT]
    assert {m.to for m in hbs} == {N2, N3} and all(m.context == b"r" for m in hbs)
    r.step(Message(MT.HEARTBEAT_RESP, N1, N3, Term(1), context=b"r"))
    assert [(rs.index, rs.request_ctx) for rs in r.read_states] == [(1, b"r")]


def test_read_index_from_follower_is_answered_by_leader() -> None:
    c = Cluster()
    elect(c)
    c.propose(1, b"x")
    c.node(3).read_index(b"f")
    c.stabilize()
    assert [(rs.index, rs.request_ctx) for rs in c.read_states[N3]] == [(2, b"f")]


def test_planted_read_without_quorum_bug_answers_while_isolated() -> None:
    c = Cluster(bugs=frozenset({"read_without_quorum"}))
    elect(c)
    c.isolate(1)
    c.node(1).read_index(b"r1")
    c.stabilize()
    assert len(c.read_states[N1]) == 1


# ---------------------------------------------------------------------------- snapshots


def test_compacted_log_is_sent_as_a_chunked_snapshot() -> None:
    c = Cluster(snapshot_chunk_size_bytes=16)
    elect(c)
    c.isolate(3)
    for i in range(5):
        c.propose(1, b"%d" % i)
    st1 = c.storages[N1]
    st1.create_snapshot(Index(5), ConfState((N1, N2, N3), ()), b"S" * 50)
    st1.compact(Index(5))
    c.heal()
    c.delivered.clear()
    c.tick(1)
    snaps = [m for m in c.delivered if m.type == MT.SNAP]
    assert len(snaps) == 4 and [m.snap_offset for m in snaps] == [0, 16, 32, 48]
    assert c.storages[N3].snapshot().data == b"S" * 50
    assert c.storages[N3].snapshot().metadata.index == 5
    assert c.committed(3) == 6
    assert c.node(1).status().progress[N3].match == 6


def test_snapshot_chunks_are_reassembled_out_of_order() -> None:
    r = raft(3)
    meta = SnapshotMetadata(ConfState((N1, N2, N3), ()), Index(9), Term(2))
    data = bytes(range(40))
    chunks = [
        Message(
            MT.SNAP, N3, N1, Term(2), snapshot=Snapshot(data[o : o + 16], meta), snap_offset=o, snap_total=40
        )
        for o in (0, 16, 32)
    ]
    for m in reversed(chunks):
        r.step(m)
    assert r.log.committed == 9 and r.log.unstable.snapshot is not None
    assert r.log.unstable.snapshot.data == data
    assert [(m.type, m.index) for m in take(r)] == [(MT.APP_RESP, 9)]


# ---------------------------------------------------------------------------- membership


def test_add_learner_does_not_count_for_quorum_then_promote_to_voter() -> None:
    c = Cluster()
    elect(c)
    c.add_node(4, bootstrap_storage((1, 2, 3)))
    c.propose_conf_change(1, ConfChange(ConfChangeType.ADD_LEARNER_NODE, N4))
    assert c.node(1).raft.tracker.learners == {N4}
    c.tick(1)
    assert c.committed(4) == c.committed(1)
    c.cut |= {(1, 2), (1, 3)}
    c.propose(1, b"x")
    assert c.node(4).raft.log.last_index() == 3 and c.committed(1) == 2  # learner's copy does not count
    c.heal()
    c.tick(1)
    c.propose_conf_change(1, ConfChange(ConfChangeType.ADD_NODE, N4))
    assert c.node(1).raft.tracker.voters == {N1, N2, N3, N4}
    assert c.node(4).raft.promotable()


def test_only_one_membership_change_may_be_pending() -> None:
    c = Cluster()
    elect(c)
    c.isolate(2)
    c.isolate(3)
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, N4))
    with pytest.raises(ProposalDroppedError):
        c.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, N3))


def test_new_leader_changes_membership_only_after_applying_its_term_entry() -> None:
    r = Raft(Config(id=N1, storage=storage_with([1, 1], term=1, commit=1), rng=random.Random(1)))
    r.become_candidate()
    r.become_leader()
    conf = Entry(Term(0), Index(0), EntryType.CONF_CHANGE)
    with pytest.raises(ProposalDroppedError):
        r.step(Message(MT.PROP, frm=N1, entries=(conf,)))
    r.log.commit_to(Index(3))
    r.log.applied_to(Index(3))  # earlier-term entries and our own empty entry applied
    r.step(Message(MT.PROP, frm=N1, entries=(conf,)))
    assert r.pending_conf_index == 4


def test_removing_the_leader_makes_it_step_down_and_others_elect() -> None:
    c = Cluster()
    elect(c)
    c.propose_conf_change(1, ConfChange(ConfChangeType.REMOVE_NODE, N1))
    assert c.state(1) == StateType.FOLLOWER and not c.node(1).raft.promotable()
    c.down.add(1)
    c.tick_all(3 * c.election_timeout_ticks)
    lead = c.leader()
    assert lead in (N2, N3)
    assert c.node(lead).raft.tracker.voters == {N2, N3}
    c.propose(lead, b"after")
    assert c.applied_data(2)[-1] == b"after"


# ---------------------------------------------------------------------------- leadership transfer


def test_leadership_transfer_catches_up_the_target_then_sends_timeout_now_3_10() -> None:
    c = Cluster(pre_vote=True, check_quorum=True)
    elect(c)
    c.isolate(3)
    for i in range(3):
        c.propose(1, b"%d" % i)
    c.heal()
    c.delivered.clear()
    c.node(1).transfer_leadership(N3)
    c.stabilize()
    kinds = [(m.type, m.to) for m in c.delivered if m.frm == N1 and m.to == N3]
    assert kinds.index((MT.APP, N3)) < kinds.index((MT.TIMEOUT_NOW, N3))
    assert c.state(3) == StateType.LEADER and c.term(3) == 2 and c.state(1) == StateType.FOLLOWER


def test_proposals_dropped_while_transfer_in_progress_and_transfer_aborts_after_timeout() -> None:
    c = Cluster()
    elect(c)
    c.isolate(3)
    c.propose(1, b"x")
    c.node(1).transfer_leadership(N3)
    c.stabilize()
    assert c.node(1).raft.lead_transferee == N3
    with pytest.raises(ProposalDroppedError):
        c.node(1).propose(b"y")
    c.tick(1, c.election_timeout_ticks)
    assert c.node(1).raft.lead_transferee == NONE
    c.propose(1, b"z")
    assert c.applied_data(1)[-1] == b"z"
