"""Stateful property test: the real Applier on SQLite against the in-memory model of etcd's KV.

Each step hands one random request to both (writes as encoded log entries through ``Applier.apply``, reads
through the server's read path) and compares the complete answers: response messages, errors, the events
the apply produced. After every step the invariants compare the whole key space at every readable
revision, the change history a watcher catches up from, the revision counters and the leases.

Reproducible by default (``derandomize=True``); set QUORUMKV_HYPOTHESIS_RANDOM=1 to explore new examples and
QUORUMKV_HYPOTHESIS_EXAMPLES=N for a longer run.
The planted-bug tests at the end show the machine catches a store that gets versions, compaction or lease
revocation wrong.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from quorumkv import errors
from quorumkv.api import validate
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.mvcc import store
from quorumkv.server.apply import Applier, ApplyResult, execute_range, execute_read_only_txn
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.server.kv import is_txn_read_only
from quorumkv.storage.backend import Backend, read_txn
from quorumkv.testing.model import Model, ModelError

MIN_LEASE_TTL = 2
#: Each example gets a fresh database; RAM-backed when available (durability is not under test here).
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
RANDOM = os.environ.get("QUORUMKV_HYPOTHESIS_RANDOM") == "1"
SETTINGS = settings(
    max_examples=int(os.environ.get("QUORUMKV_HYPOTHESIS_EXAMPLES", "150")),
    stateful_step_count=30,
    deadline=None,
    derandomize=not RANDOM,
    database=None if not RANDOM else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- request strategies: a small key alphabet so that keys, ranges and prefixes collide -------------------------

KEYS = [b"a", b"ab", b"b", b"ba", b"c"]
keys = st.sampled_from(KEYS)
values = st.sampled_from([b"", b"x", b"y", b"zz"])
lease_ids = st.sampled_from([0, 0, 1, 1, 2, 3])
#: Revisions are drawn relative to the store's revision at the time of the request (RELATIVE + d means
#: current + d, see ``resolve``), plus some absolute ones, so past, current and future reads all happen.
RELATIVE = 1 << 40
revisions = st.one_of(st.just(0), st.integers(1, 34), st.integers(-6, 1).map(lambda d: RELATIVE + d))
#: Compactions mostly to a recent past revision (they succeed, and leave older history to get wrong).
compact_revisions = st.one_of(st.sampled_from([-1, -2, -3, -5, 0]).map(lambda d: RELATIVE + d), st.integers(0, 34))
rare = st.sampled_from([False, False, False, True])
small_revs = st.one_of(st.just(0), st.just(0), st.integers(1, 30))


def prefix_end(key: bytes) -> bytes:
    return key[:-1] + bytes([key[-1] + 1])


@st.composite
def key_ranges(draw: st.DrawFn) -> tuple[bytes, bytes]:
    key = draw(keys)
    kind = draw(st.sampled_from(["single", "single", "prefix", "from", "end"]))
    if kind == "single":
        return key, b""
    if kind == "prefix":
        return key, prefix_end(key)
    if kind == "from":
        return key, b"\x00"
    return key, draw(st.sampled_from([b"b", b"c", b"d", b"a"]))  # may end at or before key: an empty range


@st.composite
def put_requests(draw: st.DrawFn) -> pb.PutRequest:
    ignore_value, ignore_lease = draw(rare), draw(rare)
    return pb.PutRequest(key=draw(keys), value=b"" if ignore_value else draw(values),
                         lease=0 if ignore_lease else draw(lease_ids), prev_kv=draw(st.booleans()),
                         ignore_value=ignore_value, ignore_lease=ignore_lease)


@st.composite
def delete_requests(draw: st.DrawFn) -> pb.DeleteRangeRequest:
    key, end = draw(key_ranges())
    return pb.DeleteRangeRequest(key=key, range_end=end, prev_kv=draw(st.booleans()))


@st.composite
def range_requests(draw: st.DrawFn) -> pb.RangeRequest:
    key, end = draw(key_ranges())
    return pb.RangeRequest(
        key=key, range_end=end, revision=draw(revisions), limit=draw(st.sampled_from([0, 0, 1, 2, 3])),
        sort_order=draw(st.sampled_from([0, 0, 1, 2])), sort_target=draw(st.sampled_from([0, 0, 1, 2, 3, 4])),
        keys_only=draw(rare), count_only=draw(rare),
        min_mod_revision=draw(small_revs), max_mod_revision=draw(small_revs),
        min_create_revision=draw(small_revs), max_create_revision=draw(small_revs),
    )


@st.composite
def compares(draw: st.DrawFn) -> pb.Compare:
    key, end = draw(st.one_of(st.tuples(keys, st.just(b"")), key_ranges()))
    c = pb.Compare(key=key, range_end=end, target=draw(st.integers(0, 4)), result=draw(st.integers(0, 3)))
    if c.target == pb.Compare.VALUE:
        c.value = draw(values)
    elif c.target == pb.Compare.VERSION:
        c.version = draw(st.integers(0, 3))
    elif c.target == pb.Compare.CREATE:
        c.create_revision = draw(revisions)
    elif c.target == pb.Compare.MOD:
        c.mod_revision = draw(revisions)
    else:
        c.lease = draw(lease_ids)
    return c


def resolve(req: Any, current: int) -> Any:
    """A copy of ``req`` with relative revisions (see RELATIVE) made absolute against ``current``."""
    req = type(req).FromString(req.SerializeToString())

    def fix(msg: Any) -> None:
        for field, value in msg.ListFields():
            if field.message_type is not None:
                for sub in value if field.is_repeated else [value]:
                    fix(sub)
            elif isinstance(value, int) and value > RELATIVE // 2:
                setattr(msg, field.name, max(1, current + value - RELATIVE))

    fix(req)
    return req


def txn_requests(depth: int = 2) -> st.SearchStrategy[pb.TxnRequest]:
    op_choices = [
        range_requests().map(lambda r: pb.RequestOp(request_range=r)),
        put_requests().map(lambda r: pb.RequestOp(request_put=r)),
        delete_requests().map(lambda r: pb.RequestOp(request_delete_range=r)),
    ]
    if depth > 0:
        op_choices.append(txn_requests(depth - 1).map(lambda r: pb.RequestOp(request_txn=r)))
    ops = st.lists(st.one_of(op_choices), max_size=3)
    return st.builds(lambda c, s, f: pb.TxnRequest(compare=c, success=s, failure=f),
                     st.lists(compares(), max_size=2), ops, ops)


# -- the system under test -------------------------------------------------------------------------------------


class RealStore:
    """An Applier on a fresh SQLite backend, fed encoded log entries exactly as the node feeds it."""

    def __init__(self, path: Path) -> None:
        self.backend = Backend(path / "db.sqlite")
        self.backend.writer.execute("PRAGMA synchronous=OFF")  # durability is not under test here
        self.applier = Applier(self.backend.writer, min_lease_ttl_seconds=MIN_LEASE_TTL)
        self.reader = self.backend.new_reader()
        self.page_counts = store.PageCounts()
        self.index = 0
        self.result = ApplyResult()

    def submit(self, kind: EntryKind, msg: Any) -> Any:
        self.index += 1
        self.result = ApplyResult()
        with self.backend.write_txn() as conn:
            self.applier.apply(conn, self.index, encode_entry(kind, self.index, msg.SerializeToString()),
                               self.result)
            self.applier.finish(conn)
        resp = self.result.responses[self.index]
        if isinstance(resp, EtcdError):
            raise resp
        return resp

    def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        """The read path of QuorumServer.range."""
        reader, counts = self.reader, self.page_counts
        try:
            with read_txn(reader):
                return execute_range(
                    lambda rev, limit, count_only: store.range_at(
                        reader, req.key, req.range_end, rev, limit=limit, count_only=count_only, counts=counts),
                    req,
                )
        except store.CompactedError as exc:
            raise errors.COMPACTED from exc
        except store.FutureRevisionError as exc:
            raise errors.FUTURE_REV from exc

    def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        if is_txn_read_only(req):  # as QuorumServer.txn routes it
            with read_txn(self.reader):
                return execute_read_only_txn(self.reader, req)
        resp: pb.TxnResponse = self.submit(EntryKind.TXN, req)
        return resp

    def close(self) -> None:
        self.backend.close()


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", response) or ("error", etcd's message), so a model and a server answer compare with ==."""
    try:
        return "ok", call()
    except (EtcdError, ModelError) as exc:
        return "error", exc.message


def kv_tuple(kv: Any) -> tuple[Any, ...]:
    return (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="qkv-model-", dir=SCRATCH))
        self.real = RealStore(self.tmp)
        self.model = Model(min_lease_ttl=MIN_LEASE_TTL)

    def teardown(self) -> None:
        self.real.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def both(self, real: Callable[[], Any], model: Callable[[], Any], *, writes: bool = True) -> None:
        n_events = len(self.model.events)
        self.real.result = ApplyResult()
        got, want = outcome(real), outcome(model)
        assert got == want, f"\nquorumkv: {got}\nmodel:    {want}"
        event(f"{want[0]}: {want[1] if want[0] == 'error' else type(want[1]).__name__}")
        if writes:
            real_events = [(rev, ev.type, kv_tuple(ev.kv), ev.prev_mod_revision)
                           for rev, evs in self.real.result.events for ev in evs]
            model_events = [(ev.revision, ev.type, kv_tuple(ev.kv), ev.prev_kv.mod_revision if ev.prev_kv else 0)
                            for ev in self.model.events[n_events:]]
            assert real_events == model_events

    @initialize()
    def starts_at_revision_one(self) -> None:
        assert self.real.applier.revision == self.model.revision == 1

    @rule(req=put_requests())
    def put(self, req: pb.PutRequest) -> None:
        self.both(lambda: self.real.submit(EntryKind.PUT, req), lambda: self.model.put(req))

    @rule(req=delete_requests())
    def delete_range(self, req: pb.DeleteRangeRequest) -> None:
        self.both(lambda: self.real.submit(EntryKind.DELETE_RANGE, req), lambda: self.model.delete_range(req))

    @rule(req=range_requests())
    def range(self, req: pb.RangeRequest) -> None:
        req = resolve(req, self.model.revision)
        self.both(lambda: self.real.range(req), lambda: self.model.range(req), writes=False)

    @rule(bounds=key_ranges().filter(lambda b: b[1] != b""), revision=st.one_of(st.just(0), st.just(0), revisions),
          limit=st.integers(1, 2), keys_only=rare,
          puts=st.lists(keys, max_size=len(KEYS), unique=True))
    def paginated_list(self, bounds: tuple[bytes, bytes], revision: int, limit: int, keys_only: bool,
                       puts: list[bytes]) -> None:
        """A list in pages, as clients page (each page from just after the last key of the one before, at the
        first page's revision): later pages take their count from the pages before (``store.PageCounts``).
        ``puts``: keys written first in one txn (other rules leave few keys: there would be no second page)."""
        if puts:
            put_txn = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"p"))
                                             for k in puts])
            self.both(lambda: self.real.txn(put_txn), lambda: self.model.txn(put_txn))
        req = resolve(pb.RangeRequest(key=bounds[0], range_end=bounds[1], revision=revision, limit=limit,
                                      keys_only=keys_only), self.model.revision)
        for _ in range(len(KEYS) + 1):
            got, want = outcome(lambda: self.real.range(req)), outcome(lambda: self.model.range(req))
            assert got == want, f"\nquorumkv: {got}\nmodel:    {want}"
            if got[0] != "ok" or not got[1].more or not got[1].kvs:
                break
            req.key = got[1].kvs[-1].key + b"\x00"
            req.revision = got[1].header.revision

    @rule(req=txn_requests())
    def txn(self, req: pb.TxnRequest) -> None:
        req = resolve(req, self.model.revision)
        try:
            validate.check_txn_intervals(req)
        except EtcdError:
            event("txn rejected: duplicate key")
            return
        self.both(lambda: self.real.txn(req), lambda: self.model.txn(req))

    @rule(key=keys, write=st.booleans(), value=values, cmp=compares(), outer_cmp=compares())
    def txn_write_then_nested_compare(self, key: bytes, write: bool, value: bytes, cmp: pb.Compare,
                                      outer_cmp: pb.Compare) -> None:
        """A write to ``key`` followed by a nested txn comparing ``key``: the compare must see the old state."""
        cmp.key, cmp.range_end = key, b""
        first = (pb.RequestOp(request_put=pb.PutRequest(key=key, value=value)) if write
                 else pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key)))
        read = pb.RequestOp(request_range=pb.RangeRequest(key=key))
        nested = pb.TxnRequest(compare=[cmp], success=[read], failure=[read, read])
        req = resolve(pb.TxnRequest(compare=[outer_cmp], success=[first, pb.RequestOp(request_txn=nested)],
                                    failure=[pb.RequestOp(request_txn=nested), first]), self.model.revision)
        self.both(lambda: self.real.txn(req), lambda: self.model.txn(req))

    @rule(start=keys, key=keys, value=values)
    def txn_delete_from_key_and_put(self, start: bytes, key: bytes, value: bytes) -> None:
        """etcd allows a put next to a from-key delete: the key may change twice in one revision."""
        req = pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=start,
                                                                                             range_end=b"\x00")),
                                     pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))])
        validate.check_txn_intervals(req)
        self.both(lambda: self.real.txn(req), lambda: self.model.txn(req))

    @rule(rev=compact_revisions)
    def compact(self, rev: int) -> None:
        req = resolve(pb.CompactionRequest(revision=rev), self.model.revision)
        self.both(lambda: self.real.submit(EntryKind.COMPACTION, req), lambda: self.model.compact(req))

    @rule(lease_id=st.sampled_from([1, 1, 2, 3]), ttl=st.sampled_from([-1, 1, 5, 5, 9_000_000_001]))
    def lease_grant(self, lease_id: int, ttl: int) -> None:
        req = pb.LeaseGrantRequest(ID=lease_id, TTL=ttl)
        self.both(lambda: self.real.submit(EntryKind.LEASE_GRANT, req), lambda: self.model.lease_grant(req))

    @rule(lease_id=st.integers(1, 3))
    def lease_revoke(self, lease_id: int) -> None:
        req = pb.LeaseRevokeRequest(ID=lease_id)
        self.both(lambda: self.real.submit(EntryKind.LEASE_REVOKE, req), lambda: self.model.lease_revoke(req))

    # -- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def same_revisions(self) -> None:
        conn = self.real.backend.writer
        assert store.current_revision(conn) == self.real.applier.revision == self.model.revision
        assert store.compact_revision(conn) == self.real.applier.compact_revision == self.model.compact_revision

    @invariant()
    def compaction_keeps_exactly_each_keys_latest_live_row(self) -> None:
        """At or below the compaction only each key's latest row at or below it is stored, unless a tombstone
        (compaction reads only the window since the last one: nothing may be left behind, nothing more dropped)."""
        conn = self.real.backend.writer
        c = store.compact_revision(conn)
        stored = {(r[0], r[1]) for r in conn.execute("SELECT rev, sub FROM kv WHERE rev <= ?", (c,))}
        latest: dict[bytes, tuple[int, int, bool]] = {}
        for key, rev, sub, dead in conn.execute(
                "SELECT key, rev, sub, value IS NULL FROM kv WHERE rev <= ? ORDER BY rev, sub", (c,)):
            latest[key] = (rev, sub, bool(dead))
        assert stored == {(rev, sub) for rev, sub, dead in latest.values() if not dead}

    @invariant()
    def same_key_space_at_every_readable_revision(self) -> None:
        m = self.model
        for rev in range(max(m.compact_revision, 1), m.revision + 1):
            got = self.real.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00", revision=rev))
            want = m.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00", revision=rev))
            assert got == want, f"state at revision {rev} differs"
        if m.compact_revision > 1:
            below = pb.RangeRequest(key=b"\x00", range_end=b"\x00", revision=m.compact_revision - 1)
            assert outcome(lambda: self.real.range(below)) == ("error", errors.COMPACTED.message)

    @invariant()
    def same_history_after_compaction(self) -> None:
        """What a watcher catching up from stored history would get (revisions above the compaction)."""
        m = self.model
        start = m.compact_revision + 1
        with read_txn(self.real.reader):
            got = [(ev.kv.mod_revision, ev.type, kv_tuple(ev.kv))
                   for ev in store.events_between(self.real.reader, start, m.revision)]
        assert got == [(ev.revision, ev.type, kv_tuple(ev.kv)) for ev in m.events_since(start)]

    @invariant()
    def same_leases(self) -> None:
        assert self.real.applier.leases == self.model.leases
        for lease_id in self.model.leases:
            with read_txn(self.real.reader):
                attached = store.keys_with_lease(self.real.reader, lease_id)
            assert attached == self.model.keys_of_lease(lease_id)


StoreMachine.TestCase.settings = SETTINGS
TestStoreAgainstModel = StoreMachine.TestCase


# -- the checker can fail: plant bugs, the machine must notice --------------------------------------------------


def _skip_version_increment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = store.WriteTxn.put

    def put(self: store.WriteTxn, key: bytes, value: bytes | None, lease: int | None) -> Any:
        kv, prev = original(self, key, value, lease)
        if prev is not None:  # an update keeps the old version: the bug
            self.conn.execute("UPDATE kv SET version = version - 1 WHERE key = ? AND rev = ?", (key, kv.mod_revision))
            kv = kv._replace(version=kv.version - 1)
        return kv, prev

    monkeypatch.setattr(store.WriteTxn, "put", put)


def _compaction_drops_latest(monkeypatch: pytest.MonkeyPatch) -> None:
    def compact(conn: Any, revision: int) -> int:
        cur = conn.execute(  # forgets to keep each key's latest revision at or before the compaction
            "DELETE FROM kv WHERE rev < ? AND id NOT IN (SELECT max(id) FROM kv GROUP BY key)", (revision,))
        store.meta_set(conn, "compact_revision", revision)
        return int(cur.rowcount)

    monkeypatch.setattr(store, "compact", compact)


def _revoke_forgets_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "keys_with_lease", lambda conn, lease_id: [])


def _nested_compare_sees_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    import quorumkv.server.apply as apply_mod

    original = Applier._apply_txn

    def apply_txn(self: Applier, txn: Any, req: pb.TxnRequest, path: list[bool], at: int, resp: Any) -> int:
        # evaluates a nested txn's compares when it is reached (after earlier ops ran): the bug
        path[at] = all(apply_mod.apply_compare(txn, c) for c in req.compare)
        return original(self, txn, req, path, at, resp)

    monkeypatch.setattr(Applier, "_apply_txn", apply_txn)


def _later_pages_miscounted(monkeypatch: pytest.MonkeyPatch) -> None:
    original = store.PageCounts.get

    def get(self: store.PageCounts, conn: Any, key: bytes, range_end: bytes, rev: int) -> int | None:
        count = original(self, conn, key, range_end, rev)
        return None if count is None else count - 1  # one key too few after each page: the bug

    monkeypatch.setattr(store.PageCounts, "get", get)


@dataclasses.dataclass
class PlantedBug:
    name: str
    plant: Callable[[pytest.MonkeyPatch], None]


PLANTED = [
    PlantedBug("update keeps the old version", _skip_version_increment),
    PlantedBug("compaction drops each key's latest revision", _compaction_drops_latest),
    PlantedBug("lease revoke deletes no keys", _revoke_forgets_keys),
    PlantedBug("nested compares evaluated after earlier ops", _nested_compare_sees_writes),
    PlantedBug("a list's later pages miscounted", _later_pages_miscounted),
]


@pytest.mark.parametrize("bug", PLANTED, ids=[b.name for b in PLANTED])
def test_planted_bug_is_caught(bug: PlantedBug, monkeypatch: pytest.MonkeyPatch) -> None:
    bug.plant(monkeypatch)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            StoreMachine,
            settings=settings(SETTINGS, max_examples=200, stateful_step_count=50, phases=[Phase.generate],
                              print_blob=False, database=None),
        )
