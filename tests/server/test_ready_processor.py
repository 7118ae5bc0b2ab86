"""The Ready processor's rules, on the harness cluster with a recording ``LogStore`` (no I/O)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import quorumkv.raft
import quorumkv.server.ready as ready_mod
from quorumkv.raft import Config
from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import ConfState, Entry, HardState, Message, SnapshotMetadata
from quorumkv.raft.rawnode import Ready
from quorumkv.raft.storage import SnapshotTemporarilyUnavailableError
from quorumkv.server.failpoints import FailpointError, Failpoints, parse
from quorumkv.server.ready import AppliedStateStorage, Plan, ReadyProcessor
from quorumkv.testing.harness import Cluster, MemoryLogStore
from quorumkv.testing.planted import KNOWN_BUGS

N1, N2 = NodeId(1), NodeId(2)


class RecordingStore(MemoryLogStore):
    """Records each call, and every message sent, in one event list."""

    def __init__(self, events: list[str], applies_in_transaction: bool = False) -> None:
        super().__init__()
        self.events = events
        self.applies_in_transaction = applies_in_transaction

    @contextmanager
    def transaction(self, sync: bool) -> Iterator[None]:
        self.events.append(f"begin sync={sync}")
        yield
        self.events.append("commit")

    def install_snapshot(self, meta: SnapshotMetadata) -> None:
        self.events.append("install_snapshot")

    def append(self, entries: list[Entry]) -> None:
        self.events.append(f"append {entries[0].index}..{entries[-1].index}")

    def skip_to(self, index: Index, term: int) -> None:
        self.events.append(f"skip_to {index}")

    def save_hard_state(self, hs: HardState) -> None:
        self.events.append("hard_state")

    def compact(self, index: Index, term: int) -> None:
        self.events.append(f"compact {index}")


def record(c: Cluster, nid: NodeId, *, applies_in_transaction: bool = False) -> list[str]:
    """Swap ``nid``'s store and sender for recording ones; returns the event list."""
    events: list[str] = []
    proc = c.processors[nid]
    proc.store = RecordingStore(events, applies_in_transaction)

    def send(msgs: list[Message]) -> None:
        events.append(f"send {len(msgs)}")
        c.queue.extend(msgs)

    proc.send = send
    start = proc.start

    def start_logged(rd: Ready) -> Plan:
        events.append("ready")
        return start(rd)

    proc.start = start_logged  # type: ignore[method-assign]
    return events


def test_a_steady_leader_sends_before_its_sync_and_a_follower_after() -> None:
    c = Cluster()
    c.campaign(1)
    leader_events = record(c, N1)
    follower_events = record(c, N2)
    c.propose(1, b"x")
    append = next(k for k, e in enumerate(leader_events) if e.startswith("append"))
    # this Ready: its messages out, then the sync
    assert leader_events[append - 3: append] == ["ready", "send 2", "begin sync=True"], leader_events
    f_append = next(k for k, e in enumerate(follower_events) if e.startswith("append"))
    assert follower_events[f_append - 2: f_append] == ["ready", "begin sync=True"], follower_events
    f_commit = follower_events.index("commit", f_append)
    assert follower_events[f_commit + 1].startswith("send"), follower_events  # the ack only after the sync


def test_a_new_leader_syncs_its_term_before_sending() -> None:
    c = Cluster()
    events = record(c, N1)
    c.campaign(1)
    sends = [k for k, e in enumerate(events) if e.startswith("send")]
    commits = [k for k, e in enumerate(events) if e == "commit"]
    assert sends and commits and commits[0] < sends[0], events


def test_a_ready_that_only_applies_is_not_synced() -> None:
    c = Cluster()
    c.campaign(1)
    events = record(c, N2)
    c.propose(1, b"x")
    assert "begin sync=True" in events  # the new entry
    assert "begin sync=False" in events, events  # the commit index and the apply that follow


def test_a_sole_voter_applying_in_its_transaction_stores_no_rows_unless_pinned() -> None:
    c = Cluster(voters=(1,))
    c.campaign(1)
    events = record(c, N1, applies_in_transaction=True)
    c.propose(1, b"x")
    assert any(e.startswith("skip_to") for e in events) and not any(e.startswith("append") for e in events)
    events.clear()
    c.processors[N1].log_pin = 1
    c.propose(1, b"y")
    assert any(e.startswith("append") for e in events) and not any(e.startswith("skip_to") for e in events)


def test_compaction_keeps_catchup_entries_and_stops_below_the_pin() -> None:
    c = Cluster()
    c.campaign(1)
    proc = c.processors[N1]
    proc.snapshot_count, proc.catchup_entries = 5, 2
    events = record(c, N1)
    for k in range(12):
        c.propose(1, b"v%d" % k)
    applied = proc.sm.applied_index
    proc.log_pin = 6
    assert proc.maybe_compact()
    assert events[-1] == "compact 5", events
    proc.log_pin = None
    assert proc.maybe_compact()
    assert events[-1] == f"compact {applied - 2}"
    assert not proc.maybe_compact()  # fewer than snapshot_count applied entries left


def test_a_sole_voter_storing_no_rows_keeps_few_entries_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ready_mod, "SOLE_VOTER_LOG_ENTRIES", 6)
    c = Cluster(voters=(1,))
    c.campaign(1)
    proc = c.processors[N1]
    proc.catchup_entries = 5
    events = record(c, N1, applies_in_transaction=True)
    for k in range(12):
        c.propose(1, b"v%d" % k)
    proc.log_pin = 1  # pinned (defrag): rows are stored and the usual retention (snapshot_count) applies
    assert not proc.maybe_compact()
    proc.log_pin = None
    assert proc.maybe_compact()
    assert events[-1] == f"compact {proc.sm.applied_index - 3}", events  # half the bound kept
    assert not proc.maybe_compact()


def test_members_keep_snapshot_count_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ready_mod, "SOLE_VOTER_LOG_ENTRIES", 6)
    c = Cluster()
    c.campaign(1)
    record(c, N1, applies_in_transaction=True)
    for k in range(12):
        c.propose(1, b"v%d" % k)
    assert not c.processors[N1].maybe_compact()  # three voters: snapshot_count (the default) is far away


def test_a_failpoint_error_inside_the_transaction_leaves_nothing_of_the_ready() -> None:
    c = Cluster()
    c.campaign(1)
    proc: ReadyProcessor = c.processors[N2]
    last = c.storages[N2].last_index()
    proc.failpoints = Failpoints({"before_apply": parse("before_apply=error")["before_apply"]})
    c.node(1).propose(b"x")
    c.process_ready(1)
    with pytest.raises(FailpointError):
        c.deliver_all()  # node 2 appends in one Ready, then applies in the next: the failpoint fires there
    assert c.storages[N2].last_index() == last + 1  # the append's Ready was finished
    assert c.machines[N2].applied_index == last  # the apply's was not
    assert proc.failpoints.hits == {"before_apply": 1}


def test_failpoint_terms_run_in_order() -> None:
    fp = Failpoints(parse("after_log_save=2*off->error; before_apply=sleep(1)"))
    assert fp.active
    fp.hit("after_log_save")
    fp.hit("after_log_save")
    fp.hit("before_apply")
    with pytest.raises(FailpointError):
        fp.hit("after_log_save")
    assert fp.hits == {"after_log_save": 3, "before_apply": 1}
    assert not Failpoints.from_env({}).active
    with pytest.raises(ValueError, match="unknown failpoint"):
        parse("after_everything=crash")
    with pytest.raises(ValueError, match="bad action"):
        parse("after_apply=explode")


def test_planted_bugs_are_not_part_of_the_core() -> None:
    assert "KNOWN_BUGS" not in quorumkv.raft.__all__
    assert "_bugs" not in Config.__dataclass_fields__
    assert "ack_before_durable" in KNOWN_BUGS


def test_no_state_dump_while_a_transaction_is_open() -> None:
    """A snapshot's data must be the state at its index: none is dumped while the state machine may be ahead."""
    st = AppliedStateStorage(lambda: b"state")
    st.append([Entry(Term(1), Index(i)) for i in range(1, 6)])
    st.set_applied(4, ConfState((N1,)))
    st.in_transaction = True
    with pytest.raises(SnapshotTemporarilyUnavailableError):
        st.snapshot()
    st.in_transaction = False
    snap = st.snapshot()
    assert (snap.metadata.index, snap.data) == (4, b"state")
    st.compact(Index(3))
    st.set_applied(5, ConfState((N1,)))
    st.in_transaction = True
    assert st.snapshot() is snap  # still covers the compacted prefix
