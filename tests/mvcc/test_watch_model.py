"""Watch against the model's event log: an in-process QuorumServer takes random writes while watchers consume.

For every watcher the events received must be exactly the model's events for its range, start revision and
filters: in revision order, none twice, none missing, each revision's events in one response, ``prev_kv``
right. A slow watcher (its queue unread while the writes happen) is demoted to catch-up from history and must
still get everything exactly once. A watcher left behind a compaction is canceled with the compact revision.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.mvcc import store, watch
from quorumkv.mvcc.watch import WatchStream
from quorumkv.server.server import QuorumServer
from quorumkv.server.settings import ServerSettings
from quorumkv.testing.model import KV, Event, Model, in_range

KEYS = [b"a", b"a1", b"a2", b"b", b"b1", b"c", b"d"]
NOPUT = pb.WatchCreateRequest.NOPUT
NODELETE = pb.WatchCreateRequest.NODELETE
TIMEOUT_S = 10.0


async def started_server(tmp_path: Path) -> QuorumServer:
    server = QuorumServer(ServerSettings(data_dir=str(tmp_path / "data")))
    await server.start()
    return server


class Workload:
    """Random writes applied to the server and to the model in the same order."""

    def __init__(self, server: QuorumServer, seed: int) -> None:
        self.server = server
        self.model = Model(min_lease_ttl=server.settings.min_lease_ttl_seconds)
        self.rng = random.Random(seed)
        self.next_lease = 100

    def _one(self) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Any]]:
        rng, s, m = self.rng, self.server, self.model
        kind = rng.choice(["put", "put", "put", "delete", "delete_range", "txn", "lease"])
        if kind == "put":
            req = pb.PutRequest(key=rng.choice(KEYS), value=rng.choice([b"x", b"y", b""]),
                                lease=rng.choice([0, 0, *m.leases]))
            return (lambda: s.put(req)), (lambda: m.put(req))
        if kind == "delete":
            d = pb.DeleteRangeRequest(key=rng.choice(KEYS))
            return (lambda: s.delete_range(d)), (lambda: m.delete_range(d))
        if kind == "delete_range":
            d = pb.DeleteRangeRequest(key=b"a", range_end=rng.choice([b"b", b"a2", b"\x00"]))
            return (lambda: s.delete_range(d)), (lambda: m.delete_range(d))
        if kind == "txn":  # several events in one revision
            k1, k2, k3 = rng.sample(KEYS, 3)
            t = pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=k1, value=b"t1")),
                pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k2)),
                pb.RequestOp(request_put=pb.PutRequest(key=k3, value=b"t3")),
            ])
            return (lambda: s.txn(t)), (lambda: m.txn(t))
        if m.leases and rng.random() < 0.5:  # revoke: all attached keys go in one revision
            r = pb.LeaseRevokeRequest(ID=rng.choice(sorted(m.leases)))
            return (lambda: s.lease_revoke(r)), (lambda: m.lease_revoke(r))
        self.next_lease += 1
        g = pb.LeaseGrantRequest(ID=self.next_lease, TTL=3600)
        return (lambda: s.lease_grant(g)), (lambda: m.lease_grant(g))

    async def run(self, n: int) -> None:
        """``n`` writes, proposed in concurrent groups (group commit) but applied in proposal order."""
        done = 0
        while done < n:
            group = [self._one_for_model_order() for _ in range(min(n - done, self.rng.randint(1, 5)))]
            results = await asyncio.gather(*(real() for real, _ in group))
            for (_, expected), got in zip(group, results, strict=True):
                assert got.header.revision == expected.header.revision
            done += len(group)

    def _one_for_model_order(self) -> tuple[Callable[[], Awaitable[Any]], Any]:
        real, model = self._one()
        return real, model()  # the model applies at proposal time, the order the node applies in


@dataclass
class Watch:
    name: str
    req: pb.WatchCreateRequest
    stream: WatchStream
    responses: list[pb.WatchResponse] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def consume(self) -> None:
        while True:
            resp = await self.stream.queue.get()
            if resp is None:
                return
            self.responses.append(resp)
            if resp.watch_id == -1 and not resp.created:  # the progress response: everything before it is in
                self.done.set()
                return


def kv_tuple(kv: Any) -> tuple[Any, ...]:
    return (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)


def expected_events(model: Model, req: pb.WatchCreateRequest, start: int) -> list[tuple[Any, ...]]:
    out = []
    for ev in model.events_since(start):
        if not in_range(ev.kv.key, req.key, req.range_end):
            continue
        if (ev.type == 0 and NOPUT in req.filters) or (ev.type == 1 and NODELETE in req.filters):
            continue
        out.append(event_tuple(ev, req.prev_kv))
    return out


def event_tuple(ev: Event, prev_kv: bool) -> tuple[Any, ...]:
    prev: KV | None = ev.prev_kv if prev_kv else None
    return (ev.type, kv_tuple(ev.kv), kv_tuple(prev) if prev else None)


def check_watch(w: Watch, model: Model, start: int) -> None:
    created, *rest = w.responses
    assert created.created and not created.canceled, w.name
    wid = created.watch_id
    progress = rest.pop()
    assert progress.watch_id == -1 and progress.header.revision == model.revision, w.name
    got: list[tuple[Any, ...]] = []
    response_of_revision: dict[int, int] = {}
    for i, resp in enumerate(rest):
        assert resp.watch_id == wid and not resp.canceled and not resp.fragment, (w.name, resp)
        assert resp.events, (w.name, "empty event response")
        for ev in resp.events:
            rev = ev.kv.mod_revision
            assert response_of_revision.setdefault(rev, i) == i, f"{w.name}: revision {rev} split across responses"
            assert ev.kv.mod_revision <= resp.header.revision
            got.append((ev.type, kv_tuple(ev.kv), kv_tuple(ev.prev_kv) if ev.HasField("prev_kv") else None))
    want = expected_events(model, w.req, start)
    revs = [e[1][2] for e in got]
    assert revs == sorted(revs), f"{w.name}: events out of order"
    assert got == want, f"{w.name}: {len(got)} events received, {len(want)} expected"


async def run_scenario(tmp_path: Path, seed: int) -> dict[str, int]:
    """Writes with six watchers (one slow); returns how many events each received. Raises AssertionError."""
    server = await started_server(tmp_path)
    hub = server.hub
    assert hub is not None
    try:
        work = Workload(server, seed)
        await work.run(12)
        now = work.model.revision
        specs = {
            "all+prev": pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00", prev_kv=True),
            "prefix a from 1": pb.WatchCreateRequest(key=b"a", range_end=b"b", start_revision=1),
            "key b NOPUT": pb.WatchCreateRequest(key=b"b", filters=[NOPUT]),
            "[b,d) NODELETE+prev past": pb.WatchCreateRequest(key=b"b", range_end=b"d", filters=[NODELETE],
                                                              prev_kv=True, start_revision=max(1, now - 4)),
            "from c future": pb.WatchCreateRequest(key=b"c", range_end=b"\x00", start_revision=now + 6),
            "slow all+prev from 2": pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00", prev_kv=True,
                                                          start_revision=2),
        }
        watches = []
        for name, req in specs.items():
            stream = hub.new_stream()
            stream.create(req)
            watches.append(Watch(name, req, stream))
        fast, slow = watches[:-1], watches[-1]
        consumers = [asyncio.create_task(w.consume()) for w in fast]
        await work.run(60)
        assert slow.stream.queue.qsize() >= watch.STREAM_QUEUE_MAX, "the slow watcher never filled its queue"
        consumers.append(asyncio.create_task(slow.consume()))
        for w in watches:
            w.stream.request_progress()
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*consumers)
        for w in watches:
            start = w.req.start_revision or now + 1
            check_watch(w, work.model, start)
        for w in watches:
            w.stream.close()
        return {w.name: sum(len(r.events) for r in w.responses) for w in watches}
    finally:
        await server.stop()


@pytest.fixture
def small_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream is slow after 4 queued responses (so demotion and catch-up happen in a short test)."""
    monkeypatch.setattr(watch, "STREAM_QUEUE_MAX", 4)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_watchers_get_exactly_the_model_events(tmp_path: Path, seed: int, small_queues: None) -> None:
    received = await run_scenario(tmp_path, seed)
    assert all(n > 0 for name, n in received.items() if name != "from c future"), received


async def test_checker_catches_catch_up_that_skips_a_revision(tmp_path: Path, small_queues: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a bug: catch-up reads history from one revision too late. The checks above must fail."""
    original = store.events_between
    monkeypatch.setattr(store, "events_between", lambda conn, start, end, limit=0: original(conn, start + 1, end,
                                                                                            limit))
    with pytest.raises(AssertionError, match="events received"):
        await run_scenario(tmp_path, 1)


async def test_watcher_behind_compaction_is_canceled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "STREAM_QUEUE_MAX", 2)
    server = await started_server(tmp_path)
    hub = server.hub
    assert hub is not None
    try:
        work = Workload(server, 7)
        await work.run(5)
        start = work.model.revision + 1
        behind = Watch("behind", pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00"), hub.new_stream())
        behind.stream.create(behind.req)
        await work.run(20)
        compact_rev = work.model.revision
        await server.compact(pb.CompactionRequest(revision=compact_rev))
        work.model.compact(pb.CompactionRequest(revision=compact_rev))
        # A new watcher asking for history below the compaction is canceled too.
        old = Watch("old", pb.WatchCreateRequest(key=b"a", start_revision=2), hub.new_stream())
        old.stream.create(old.req)
        for w in (behind, old):
            async with asyncio.timeout(TIMEOUT_S):
                while not (w.responses and w.responses[-1].canceled):
                    w.responses.append(await w.stream.queue.get())
        for w in (behind, old):
            created, *events, canceled = w.responses
            assert created.created
            assert canceled.canceled and canceled.compact_revision == compact_rev, canceled
            assert canceled.watch_id == created.watch_id
            got = [(ev.type, kv_tuple(ev.kv), None) for r in events for ev in r.events]
            want = expected_events(work.model, w.req, start if w is behind else 2)
            assert got == want[: len(got)], "events before the cancel must be a gap-free prefix"
        assert 0 < sum(len(r.events) for r in behind.responses) < len(expected_events(work.model, behind.req, start))
        assert hub.slow_watcher_count == 0 and not behind.stream.watchers
    finally:
        await server.stop()
