"""Watch: many watchers per stream, fed live from apply or caught up from stored history.

Guarantees (etcd's): events arrive in revision order, never twice, with no gaps inside retained history;
the events of one revision are never split across responses (unless the watcher asked for fragments).

Invariants:
- ``watcher.next_rev`` is the lowest revision not yet handed to the watcher's stream;
- a *synced* watcher has ``next_rev > hub.last_rev`` and receives events as revisions are applied;
- an *unsynced* watcher (new with a past start revision, or demoted because its stream was slow) is caught
  up from the ``kv`` table, only up to ``hub.last_rev`` (so nothing is delivered twice), then becomes synced;
- dispatch never blocks: a stream whose queue is full has its watchers demoted, never a writer delayed.
All methods run on the event loop thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.mvcc import store
from quorumkv.mvcc.store import EVENT_PUT, Event
from quorumkv.storage.backend import read_txn

#: A stream with more queued responses than this is slow: its watchers catch up from history instead.
STREAM_QUEUE_MAX = 512
#: Revisions per catch-up response (etcd's watchBatchMaxRevs).
CATCHUP_REVS_MAX = 1000

NOPUT = pb.WatchCreateRequest.NOPUT
NODELETE = pb.WatchCreateRequest.NODELETE


class Watcher:
    __slots__ = (
        "fragment", "key", "next_rev", "no_delete", "no_put", "prev_kv", "progress_notify", "range_end",
        "stream", "synced", "watch_id",
    )

    def __init__(self, stream: WatchStream, watch_id: int, key: bytes, range_end: bytes, next_rev: int,
                 *, no_put: bool, no_delete: bool, prev_kv: bool, progress_notify: bool, fragment: bool) -> None:
        self.stream = stream
        self.watch_id = watch_id
        self.key = key
        self.range_end = range_end
        self.next_rev = next_rev
        self.no_put = no_put
        self.no_delete = no_delete
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.fragment = fragment
        self.synced = False

    def matches(self, key: bytes) -> bool:
        end = self.range_end
        if not end:
            return key == self.key
        if end == b"\x00":
            return key >= self.key
        return self.key <= key < end


class WatchStream:
    """One gRPC Watch call: its watchers and its outgoing queue of responses."""

    def __init__(self, hub: WatchHub, header: Callable[[int], pb.ResponseHeader]) -> None:
        self.hub = hub
        self.header = header
        self.queue: asyncio.Queue[pb.WatchResponse | None] = asyncio.Queue()
        self.watchers: dict[int, Watcher] = {}
        self._next_id = 0
        self.progress_pending = False
        self.closed = False

    def send(self, resp: pb.WatchResponse) -> None:
        if not self.closed:
            self.queue.put_nowait(resp)

    @property
    def slow(self) -> bool:
        return self.queue.qsize() >= STREAM_QUEUE_MAX

    def create(self, req: pb.WatchCreateRequest) -> None:
        hub = self.hub
        cur = hub.last_rev
        key = req.key or b"\x00"
        range_end = req.range_end
        watch_id = req.watch_id
        error = ""
        if watch_id != 0 and watch_id in self.watchers:
            error = "mvcc: duplicate watch ID provided on the WatchStream"
        elif range_end and range_end != b"\x00" and range_end <= key:
            error = "mvcc: watcher range is empty"  # etcd: ErrEmptyWatcherRange
        if error:
            self.send(pb.WatchResponse(header=self.header(cur), watch_id=-1, created=True, canceled=True,
                                       cancel_reason=error))
            return
        if watch_id == 0:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        start = req.start_revision if req.start_revision > 0 else cur + 1
        filters = set(req.filters)
        w = Watcher(self, watch_id, key, range_end, start, no_put=NOPUT in filters,
                    no_delete=NODELETE in filters, prev_kv=req.prev_kv, progress_notify=req.progress_notify,
                    fragment=req.fragment)
        self.watchers[watch_id] = w
        self.send(pb.WatchResponse(header=self.header(cur), watch_id=watch_id, created=True))
        hub.add(w)

    def cancel(self, watch_id: int) -> None:
        w = self.watchers.pop(watch_id, None)
        if w is None:
            return
        self.hub.remove(w)
        self.send(pb.WatchResponse(header=self.header(self.hub.last_rev), watch_id=watch_id, canceled=True))

    def request_progress(self) -> None:
        if all(w.synced for w in self.watchers.values()):
            self.send(pb.WatchResponse(header=self.header(self.hub.last_rev), watch_id=-1))
        else:
            self.progress_pending = True
            self.hub.kick()

    def close(self) -> None:
        self.closed = True
        for w in self.watchers.values():
            self.hub.remove(w)
        self.watchers.clear()
        self.queue.put_nowait(None)


class WatchHub:
    """All watchers of the member."""

    def __init__(self, reader: sqlite3.Connection, last_rev: int, header: Callable[[int], pb.ResponseHeader],
                 *, max_event_bytes: int = 1572864) -> None:
        self.reader = reader
        self.last_rev = last_rev
        self.header = header
        self.max_event_bytes = max_event_bytes
        self._by_key: dict[bytes, set[Watcher]] = {}
        self._ranges: set[Watcher] = set()
        self._unsynced: set[Watcher] = set()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.compact_rev = 0

    @property
    def watcher_count(self) -> int:
        return sum(len(s) for s in self._by_key.values()) + len(self._ranges) + len(self._unsynced)

    @property
    def has_synced_watchers(self) -> bool:
        """Whether live events would reach anyone (unsynced watchers catch up from the database)."""
        return bool(self._by_key or self._ranges)

    @property
    def slow_watcher_count(self) -> int:
        return len(self._unsynced)

    def new_stream(self) -> WatchStream:
        return WatchStream(self, self.header)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sync_loop(), name="watch-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def kick(self) -> None:
        self._kick.set()

    # -- membership of the synced/unsynced groups ------------------------------------------------------------

    def add(self, w: Watcher) -> None:
        if w.next_rev > self.last_rev:
            self._add_synced(w)
        else:
            w.synced = False
            self._unsynced.add(w)
            self.kick()

    def _add_synced(self, w: Watcher) -> None:
        w.synced = True
        if w.range_end:
            self._ranges.add(w)
        else:
            self._by_key.setdefault(w.key, set()).add(w)

    def _drop_synced(self, w: Watcher) -> None:
        if w.range_end:
            self._ranges.discard(w)
        else:
            group = self._by_key.get(w.key)
            if group is not None:
                group.discard(w)
                if not group:
                    del self._by_key[w.key]

    def remove(self, w: Watcher) -> None:
        if w.synced:
            self._drop_synced(w)
        else:
            self._unsynced.discard(w)
        w.synced = False

    def _demote(self, w: Watcher) -> None:
        self._drop_synced(w)
        w.synced = False
        self._unsynced.add(w)

    # -- live dispatch ---------------------------------------------------------------------------------------

    def notify(self, batches: Iterable[tuple[int, list[Event]]]) -> None:
        """Hand the events of newly applied revisions to synced watchers (called after commit)."""
        if not self._by_key and not self._ranges:  # nobody to tell: only the revision moves
            if isinstance(batches, list):
                if batches:
                    self.last_rev = batches[-1][0]
            else:
                for rev, _events in batches:
                    self.last_rev = rev
            return
        for rev, events in batches:
            per_watcher: dict[Watcher, list[Event]] = {}
            by_key = self._by_key
            ranges = self._ranges
            for ev in events:
                k = ev.kv.key
                group = by_key.get(k)
                if group:
                    for w in group:
                        per_watcher.setdefault(w, []).append(ev)
                for w in ranges:
                    if w.matches(k):
                        per_watcher.setdefault(w, []).append(ev)
            self.last_rev = rev
            for w, evs in per_watcher.items():
                if w.next_rev > rev:
                    continue
                if w.stream.slow:
                    w.next_rev = rev
                    self._demote(w)
                    self.kick()
                    continue
                self._send_events(w, evs, rev)
                w.next_rev = rev + 1

    def resync(self, rev: int, compact_rev: int) -> None:
        """The store jumped to ``rev`` without events (a Raft snapshot from the leader was restored): every
        synced watcher becomes unsynced and catches up from the store, as after a slow-watcher demotion."""
        for w in [*self._ranges, *(w for g in self._by_key.values() for w in g)]:
            self._demote(w)
        self.compact_rev = max(self.compact_rev, compact_rev)
        self.last_rev = max(self.last_rev, rev)
        self.kick()

    def advance(self, rev: int) -> None:
        """The store reached ``rev`` without events (e.g. a read-only apply)."""
        if rev > self.last_rev:
            self.last_rev = rev

    def _pb_events(self, w: Watcher, evs: list[Event]) -> list[kv_pb2.Event]:
        out = []
        for ev in evs:
            if ev.type == EVENT_PUT:
                if w.no_put:
                    continue
            elif w.no_delete:
                continue
            kv = ev.kv
            pev = kv_pb2.Event(
                type=ev.type,  # type: ignore[arg-type]
                kv=kv_pb2.KeyValue(key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                                   version=kv.version, value=kv.value, lease=kv.lease),
            )
            if w.prev_kv:
                prev = self._prev_kv(ev)
                if prev is not None:
                    pev.prev_kv.CopyFrom(kv_pb2.KeyValue(
                        key=prev.key, create_revision=prev.create_revision, mod_revision=prev.mod_revision,
                        version=prev.version, value=prev.value, lease=prev.lease))
            out.append(pev)
        return out

    def _prev_kv(self, ev: Event) -> store.KeyValue | None:
        try:
            if ev.prev_mod_revision:
                return store.get_kv_by_mod(self.reader, ev.kv.key, ev.prev_mod_revision)
            return store.get_kv_at(self.reader, ev.kv.key, ev.kv.mod_revision)
        except sqlite3.Error:
            return None

    def _send_events(self, w: Watcher, evs: list[Event], header_rev: int) -> None:
        pevs = self._pb_events(w, evs)
        if not pevs:
            return
        if w.fragment:
            total = sum(e.ByteSize() for e in pevs)
            if total > self.max_event_bytes:
                chunk: list[kv_pb2.Event] = []
                size = 0
                for e in pevs:
                    if chunk and size + e.ByteSize() > self.max_event_bytes:
                        w.stream.send(pb.WatchResponse(header=self.header(header_rev), watch_id=w.watch_id,
                                                       events=chunk, fragment=True))
                        chunk, size = [], 0
                    chunk.append(e)
                    size += e.ByteSize()
                w.stream.send(pb.WatchResponse(header=self.header(header_rev), watch_id=w.watch_id, events=chunk))
                return
        w.stream.send(pb.WatchResponse(header=self.header(header_rev), watch_id=w.watch_id, events=pevs))

    # -- catch-up --------------------------------------------------------------------------------------------

    def on_compacted(self, rev: int) -> None:
        self.compact_rev = rev
        if self._unsynced:
            self.kick()

    async def _sync_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=0.1)
            except TimeoutError:
                pass
            self._kick.clear()
            if self._unsynced:
                self.sync_unsynced()
            self._flush_progress()

    def sync_unsynced(self) -> None:
        """Catch unsynced watchers up from history, at most CATCHUP_REVS_MAX revisions per round."""
        target = self.last_rev
        ready = [w for w in self._unsynced if not w.stream.slow]
        if not ready:
            return
        compact_rev = self.compact_rev
        for w in ready:
            if w.next_rev < compact_rev:
                self._unsynced.discard(w)
                w.stream.watchers.pop(w.watch_id, None)
                w.stream.send(pb.WatchResponse(header=self.header(0), watch_id=w.watch_id,
                                               compact_revision=compact_rev, canceled=True))
                continue
        ready = [w for w in ready if w in self._unsynced]
        if not ready:
            return
        low = min(w.next_rev for w in ready)
        with read_txn(self.reader):
            events = store.events_between(self.reader, low, target, CATCHUP_REVS_MAX)
        upto = min(target, low + CATCHUP_REVS_MAX - 1)
        for w in ready:
            evs = [e for e in events if e.kv.mod_revision >= w.next_rev and w.matches(e.kv.key)]
            if evs:
                self._send_events(w, evs, self.last_rev)
            if upto > w.next_rev - 1:
                w.next_rev = upto + 1
            if w.next_rev > self.last_rev:
                self._unsynced.discard(w)
                self._add_synced(w)
        if self._unsynced:
            self.kick()

    def _flush_progress(self) -> None:
        streams = {w.stream for w in self._ranges} | {w.stream for g in self._by_key.values() for w in g}
        for s in streams:
            if s.progress_pending and all(w.synced for w in s.watchers.values()):
                s.progress_pending = False
                s.send(pb.WatchResponse(header=self.header(self.last_rev), watch_id=-1))

    def progress_notify_all(self) -> None:
        """Periodic progress notification to synced watchers that asked for it (etcd's progress_notify)."""
        for w in list(self._ranges) + [w for g in self._by_key.values() for w in g]:
            if w.progress_notify and not w.stream.slow:
                w.stream.send(pb.WatchResponse(header=self.header(self.last_rev), watch_id=w.watch_id))
