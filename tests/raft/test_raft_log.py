"""RaftLog / Unstable / MemoryStorage: the log rules of Figure 2 and §5.3."""

from __future__ import annotations

import pytest

from quorumkv.raft.ids import Index, Term
from quorumkv.raft.log import RaftLog, limit_size
from quorumkv.raft.memory_storage import MemoryStorage
from quorumkv.raft.messages import ConfState, Entry, Snapshot, SnapshotMetadata
from quorumkv.raft.storage import CompactedError, UnavailableError


def ents(*pairs: tuple[int, int]) -> list[Entry]:
    """Entries from (index, term) pairs."""
    return [Entry(Term(t), Index(i), data=b"%d" % i) for i, t in pairs]


def log_with(*pairs: tuple[int, int], stable: bool = True) -> RaftLog:
    st = MemoryStorage()
    if stable:
        st.append(ents(*pairs))
        return RaftLog(st)
    log = RaftLog(st)
    log.append(ents(*pairs))
    return log


def terms_of(log: RaftLog) -> list[int]:
    return [e.term for e in log.all_entries()]


def test_append_entries_consistency_check_rejects_missing_previous_entry_5_3() -> None:
    log = log_with((1, 1), (2, 2))
    assert log.maybe_append(Index(3), Term(2), Index(0), tuple(ents((4, 2)))) is None
    assert log.maybe_append(Index(2), Term(1), Index(0), tuple(ents((3, 2)))) is None  # term mismatch at 2


def test_append_entries_truncates_conflicting_suffix_5_3() -> None:
    log = log_with((1, 1), (2, 1), (3, 1))
    assert log.maybe_append(Index(1), Term(1), Index(1), tuple(ents((2, 2)))) == 2
    assert terms_of(log) == [1, 2]  # entry 3 (after the conflict) is gone too
    assert log.committed == 1


def test_append_entries_is_idempotent_and_keeps_later_entries() -> None:
    log = log_with((1, 1), (2, 1), (3, 1))
    # A stale/duplicate append covering only a prefix must not truncate the log.
    assert log.maybe_append(Index(0), Term(0), Index(0), tuple(ents((1, 1), (2, 1)))) == 2
    assert terms_of(log) == [1, 1, 1]


def test_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    log = log_with((1, 1))
    log.maybe_append(Index(1), Term(1), Index(10), tuple(ents((2, 1))))
    assert log.committed == 2


def test_committed_entries_can_never_be_overwritten() -> None:
    log = log_with((1, 1), (2, 1))
    log.commit_to(Index(2))
    with pytest.raises(AssertionError):
        log.maybe_append(Index(1), Term(1), Index(2), tuple(ents((2, 2))))


def test_candidate_log_up_to_date_comparison_5_4_1() -> None:
    log = log_with((1, 1), (2, 2), (3, 2))
    assert log.is_up_to_date(Index(1), Term(3))  # higher last term wins regardless of length
    assert log.is_up_to_date(Index(3), Term(2))  # same term, same length
    assert not log.is_up_to_date(Index(2), Term(2))  # same term, shorter
    assert not log.is_up_to_date(Index(10), Term(1))  # lower last term loses regardless of length


def test_find_conflict_by_term_skips_whole_terms() -> None:
    log = log_with((1, 1), (2, 1), (3, 2), (4, 2), (5, 3))
    assert log.find_conflict_by_term(Index(5), Term(2)) == (4, 2)
    assert log.find_conflict_by_term(Index(5), Term(1)) == (2, 1)
    assert log.find_conflict_by_term(Index(5), Term(0)) == (0, 0)


def test_unstable_stable_to_ignores_entries_replaced_since_ready() -> None:
    log = log_with((1, 1), (2, 1), stable=False)
    log.append(ents((2, 2)))  # replaced after a Ready handed out (2, 1)
    log.stable_to(Index(2), Term(1))
    assert log.unstable.offset == 1  # nothing marked stable
    log.stable_to(Index(2), Term(2))
    assert log.unstable.offset == 3 and log.unstable.entries == []


def test_slice_spans_storage_and_unstable_and_respects_size_limit() -> None:
    log = log_with((1, 1), (2, 1))
    log.append(ents((3, 1), (4, 1)))
    assert [e.index for e in log.slice(Index(1), Index(5), None)] == [1, 2, 3, 4]
    one = ents((1, 1))[0].size()
    assert [e.index for e in log.slice(Index(1), Index(5), 2 * one)] == [1, 2]
    assert [e.index for e in log.slice(Index(2), Index(5), 0)] == [2]  # always at least one


def test_compacted_and_unavailable_errors() -> None:
    st = MemoryStorage()
    st.append(ents((1, 1), (2, 1), (3, 2)))
    st.create_snapshot(Index(2), ConfState(), b"s")
    st.compact(Index(2))
    log = RaftLog(st)
    assert log.first_index() == 3 and log.term(Index(2)) == 1
    with pytest.raises(CompactedError):
        log.term(Index(1))
    with pytest.raises(UnavailableError):
        log.term(Index(4))
    with pytest.raises(CompactedError):
        log.slice(Index(2), Index(4), None)


def test_restore_snapshot_resets_log() -> None:
    log = log_with((1, 1), (2, 1))
    s = Snapshot(b"x", SnapshotMetadata(ConfState(), Index(10), Term(3)))
    log.restore(s)
    assert log.committed == 10 and log.last_index() == 10 and log.first_index() == 11
    assert log.term(Index(10)) == 3


def test_next_committed_entries_start_after_applied() -> None:
    log = log_with((1, 1), (2, 1), (3, 1))
    log.commit_to(Index(3))
    log.applied_to(Index(1))
    assert [e.index for e in log.next_committed_ents()] == [2, 3]


def test_memory_storage_append_truncates_and_rejects_gaps() -> None:
    st = MemoryStorage()
    st.append(ents((1, 1), (2, 1), (3, 1)))
    st.append(ents((2, 2)))
    assert [(e.index, e.term) for e in st.all_entries()] == [(1, 1), (2, 2)]
    with pytest.raises(UnavailableError):
        st.append(ents((5, 2)))


def test_limit_size_keeps_at_least_one() -> None:
    e = ents((1, 1), (2, 1))
    assert limit_size(e, 0) == e[:1]
    assert limit_size(e, None) == e
