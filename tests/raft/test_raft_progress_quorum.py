"""Quorum arithmetic, inflight flow control and the progress state machine."""

from __future__ import annotations

import pytest

from quorumkv.raft.confchange import ConfChangeError, apply_change
from quorumkv.raft.ids import Index, NodeId
from quorumkv.raft.messages import ConfChange, ConfChangeType, ConfState
from quorumkv.raft.progress import Inflights, Progress, ProgressState
from quorumkv.raft.quorum import VoteResult, committed_index, majority, vote_result


def ids(*xs: int) -> list[NodeId]:
    return [NodeId(x) for x in xs]


def test_majority_sizes() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_committed_index_is_the_majority_acknowledged_index() -> None:
    match = {1: 10, 2: 7, 3: 5}
    assert committed_index(ids(1, 2, 3), lambda v: Index(match[v])) == 7
    match5 = {1: 10, 2: 9, 3: 3, 4: 2, 5: 1}
    assert committed_index(ids(1, 2, 3, 4, 5), lambda v: Index(match5[v])) == 3


def test_vote_result_won_lost_pending() -> None:
    v = ids(1, 2, 3)
    assert vote_result(v, {NodeId(1): True}) == VoteResult.PENDING
    assert vote_result(v, {NodeId(1): True, NodeId(2): True}) == VoteResult.WON
    assert vote_result(v, {NodeId(1): True, NodeId(2): False, NodeId(3): False}) == VoteResult.LOST
    assert vote_result(v, {NodeId(9): True, NodeId(8): True}) == VoteResult.PENDING  # non-voters ignored


def test_inflights_limit_by_count_and_bytes() -> None:
    f = Inflights(3)
    for i in (1, 2, 3):
        f.add(Index(i), 10)
    assert f.full()
    f.free_le(Index(2))
    assert f.count() == 1 and not f.full()
    b = Inflights(100, max_bytes=25)
    b.add(Index(1), 10)
    b.add(Index(2), 20)
    assert b.full()
    b.free_first_one()
    assert not b.full()


def test_probe_sends_one_message_then_pauses() -> None:
    pr = Progress(Index(0), Index(5), Inflights(4))
    assert pr.state == ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(2, 20, Index(6))
    assert pr.is_paused() and pr.next == 5  # probe does not advance next optimistically


def test_replicate_advances_next_optimistically_and_respects_inflights() -> None:
    pr = Progress(Index(4), Index(5), Inflights(2))
    pr.become_replicate()
    pr.sent_entries(2, 20, Index(6))
    pr.sent_entries(1, 10, Index(7))
    assert pr.next == 8 and pr.is_paused()
    assert pr.maybe_update(Index(6))
    pr.inflights.free_le(Index(6))
    assert not pr.is_paused()


def test_maybe_decr_to_ignores_stale_rejections_and_uses_hint() -> None:
    pr = Progress(Index(0), Index(10), Inflights(4))
    assert not pr.maybe_decr_to(Index(5), Index(3))  # stale: we did not send at 5
    assert pr.maybe_decr_to(Index(9), Index(3))
    assert pr.next == 4
    rep = Progress(Index(5), Index(9), Inflights(4))
    rep.become_replicate()
    assert not rep.maybe_decr_to(Index(4), Index(0))  # below match: stale
    assert rep.maybe_decr_to(Index(7), Index(0)) and rep.next == 6


def test_snapshot_state_pauses_until_acknowledged() -> None:
    pr = Progress(Index(0), Index(1), Inflights(4))
    pr.become_snapshot(Index(20))
    assert pr.is_paused() and pr.pending_snapshot == 20
    pr.become_probe()
    assert pr.next == 21


def test_conf_change_single_server_steps() -> None:
    cs = ConfState(tuple(ids(1, 2, 3)), ())
    cs = apply_change(cs, ConfChange(ConfChangeType.ADD_LEARNER_NODE, NodeId(4)))
    assert cs == ConfState(tuple(ids(1, 2, 3)), tuple(ids(4)))
    cs = apply_change(cs, ConfChange(ConfChangeType.ADD_NODE, NodeId(4)))  # promote
    assert cs == ConfState(tuple(ids(1, 2, 3, 4)), ())
    cs = apply_change(cs, ConfChange(ConfChangeType.REMOVE_NODE, NodeId(1)))
    assert cs == ConfState(tuple(ids(2, 3, 4)), ())
    with pytest.raises(ConfChangeError):
        apply_change(cs, ConfChange(ConfChangeType.ADD_LEARNER_NODE, NodeId(2)))  # no demotion
    with pytest.raises(ConfChangeError):
        apply_change(ConfState(tuple(ids(1)), ()), ConfChange(ConfChangeType.REMOVE_NODE, NodeId(1)))
