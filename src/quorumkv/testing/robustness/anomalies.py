"""Planted anomalies for robustness recordings (test-only): each proves one validator can fail.

:func:`clean_recording` builds a recording every validator accepts (a generated linearizable history, a
two-key txn at its end so one revision carries two events, two watchers -- one resumed half way -- with
progress notifications, and a paginated list). Each ``plant_*`` returns a copy with exactly one anomaly and
the check that must report it. The history anomalies (a stale read, a lost acknowledged write) come from
:mod:`quorumkv.testing.anomalies`; the watch ones are here.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import replace

from quorumkv.testing.anomalies import plant_lost_write, plant_stale_read
from quorumkv.testing.history import History, Operation, Put, PutResult, Txn, TxnResult
from quorumkv.testing.history_gen import GenParams, generate_history
from quorumkv.testing.robustness.record import (
    ListRec,
    Recording,
    WatchEventRec,
    WatchResponseRec,
    WatchStreamRec,
)


def _responses(events: list[WatchEventRec], received: int, rng: random.Random) -> list[WatchResponseRec]:
    """Events grouped one revision per response (sometimes two), a progress notification now and then."""
    out: list[WatchResponseRec] = []
    i = 0
    while i < len(events):
        rev = events[i].revision
        j = i
        while j < len(events) and events[j].revision == rev:
            j += 1
        if j < len(events) and rng.random() < 0.3:  # the next revision in the same response
            nxt = events[j].revision
            while j < len(events) and events[j].revision == nxt:
                j += 1
        batch = tuple(events[i:j])
        out.append(WatchResponseRec(received + i, batch[-1].revision, batch))
        if rng.random() < 0.2:
            out.append(WatchResponseRec(received + i, batch[-1].revision, (), progress=True))
        i = j
    return out


def clean_recording(seed: int = 0, operations: int = 120) -> Recording:
    rng = random.Random(seed)
    h = generate_history(rng, GenParams(operations=operations, clients=4, keys=3, watch=True))
    assert h.watch is not None
    last = h.watch_through
    end = max(op.ret for op in h.operations) + 10
    rev = last + 1
    txn = Operation(len(h.operations), 0, end, end + 5, Txn((), (Put("k0", "both-0"), Put("k1", "both-1"))),
                    TxnResult(True, (PutResult(rev), PutResult(rev)), rev))
    history = History([*h.operations, txn], h.initial_revision, dict(h.initial_values))
    values: dict[str, str] = {}
    events = []
    plain = [(e.revision, e.key, e.value) for e in h.watch] + [(rev, "k0", "both-0"), (rev, "k1", "both-1")]
    for revision, key, value in plain:
        events.append(WatchEventRec(revision, key, value, values.get(key)))
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    # watcher 0: one stream to the middle, then resumed from the revision after its last event
    middle = events[len(events) // 2].revision
    first = [e for e in events if e.revision < middle]
    second = [e for e in events if e.revision >= middle]
    w0a = WatchStreamRec(0, 0, h.initial_revision + 1, "127.0.0.1:1", _responses(first, 1, rng), ended="UNAVAILABLE")
    w0b = WatchStreamRec(0, 1, middle, "127.0.0.2:1", _responses(second, 10_000, rng))
    w1 = WatchStreamRec(1, 0, h.initial_revision + 1, "127.0.0.3:1", _responses(events, 1, rng))
    # a list at the revision of the middle of the run
    state: dict[str, tuple[str, int]] = {}
    for e in events:
        if e.revision > middle:
            break
        if e.value is None:
            state.pop(e.key, None)
        else:
            state[e.key] = (e.value, e.revision)
    lists = [ListRec(2, middle, 2, 2, state)]
    return Recording(history, "", "planted", [w0a, w0b, w1], lists, {}, final_revision=rev)


def _streams_with_events(rec: Recording) -> list[WatchStreamRec]:
    """Streams with at least 4 events spread over at least 2 responses (what the stream plants move between);
    ValueError when the recording has none (a sparse one, e.g. from a saturated host)."""
    streams = [s for s in rec.watches
               if len(s.events()) >= 4 and sum(1 for r in s.responses if r.events) >= 2]
    if not streams:
        raise ValueError("no watch stream with events in two responses")
    return streams


def plant_duplicate_event(rec: Recording, rng: random.Random) -> Recording:
    """An event delivered a second time, in a later response of the same stream."""
    out = copy.deepcopy(rec)
    s = rng.choice(_streams_with_events(out))
    idx = [i for i, r in enumerate(s.responses) if r.events]
    a = rng.choice(idx[:-1])
    ev = s.responses[a].events[0]
    b = next(i for i in idx if i > a)
    s.responses[b] = replace(s.responses[b], events=(*s.responses[b].events, ev))
    return out


def plant_reordered_event(rec: Recording, rng: random.Random) -> Recording:
    """Two responses of different revisions swapped."""
    out = copy.deepcopy(rec)
    s = rng.choice(_streams_with_events(out))
    idx = [i for i, r in enumerate(s.responses) if r.events]
    n = rng.randrange(len(idx) - 1)
    a, b = idx[n], idx[n + 1]
    s.responses[a], s.responses[b] = s.responses[b], s.responses[a]
    return out


def plant_split_revision(rec: Recording, rng: random.Random) -> Recording:
    """The events of one revision delivered in two responses."""
    out = copy.deepcopy(rec)
    for s in out.watches:
        for i, r in enumerate(s.responses):
            revs = [e.revision for e in r.events]
            multi = [rev for rev in set(revs) if revs.count(rev) > 1]
            if multi:
                rev = multi[0]
                keep = tuple(e for e in r.events if e.revision != rev or e is not r.events[revs.index(rev)])
                moved = r.events[revs.index(rev)]
                s.responses[i] = replace(r, events=keep)
                s.responses.insert(i + 1, WatchResponseRec(r.received, r.header_revision, (moved,)))
                return out
    raise ValueError("no revision with two events to split")


def plant_early_bookmark(rec: Recording, rng: random.Random) -> Recording:
    """A progress notification that runs ahead: it claims a revision whose event comes only after it."""
    out = copy.deepcopy(rec)
    s = rng.choice(_streams_with_events(out))
    idx = [i for i, r in enumerate(s.responses) if r.events]
    i = rng.choice(idx[:-1])
    later = s.responses[next(j for j in idx if j > i)]
    s.responses.insert(i + 1, WatchResponseRec(later.received, later.events[-1].revision, (), progress=True))
    return out


def plant_lost_event(rec: Recording, rng: random.Random) -> Recording:
    """An acknowledged write's event missing from every watch stream (a gap, and a lost acknowledged write)."""
    out = copy.deepcopy(rec)
    written = sorted({op.output.revision for op in out.history if isinstance(op.input, Put) and op.output})
    if len(written) < 3:
        raise ValueError("fewer than three acknowledged puts")
    rev = rng.choice(written[1:-1])
    for s in out.watches:
        s.responses = [replace(r, events=tuple(e for e in r.events if e.revision != rev)) for r in s.responses]
        s.responses = [r for r in s.responses if r.events or r.progress]
    return out


def plant_bad_resume(rec: Recording, rng: random.Random) -> Recording:
    """A resumed stream that skips the first event at or after its start revision."""
    out = copy.deepcopy(rec)
    s = next(s for s in out.watches if s.stream > 0)
    first = next(i for i, r in enumerate(s.responses) if r.events)
    s.responses.pop(first)
    return out


def plant_wrong_prev_kv(rec: Recording, rng: random.Random) -> Recording:
    """An event whose prev_kv names a value the key did not hold just before it (in every stream)."""
    out = copy.deepcopy(rec)
    with_prev = sorted({(e.revision, e.key) for s in out.watches for e in s.events() if e.prev is not None})
    if not with_prev:
        raise ValueError("no event carries a prev_kv")
    target = rng.choice(with_prev)
    for s in out.watches:
        s.responses = [replace(r, events=tuple(replace(e, prev="not-the-previous-value")
                                               if (e.revision, e.key) == target else e for e in r.events))
                       for r in s.responses]
    return out


def _history_plant(fn: Callable[[History, random.Random], object]) -> Callable[[Recording, random.Random],
                                                                                 Recording]:
    def plant(rec: Recording, rng: random.Random) -> Recording:
        planted = fn(rec.history, rng)
        if planted is None:
            raise ValueError(f"{fn.__name__}: no place for it in this history")
        out = copy.deepcopy(rec)
        out.history = planted.history  # type: ignore[attr-defined]
        return out
    return plant


#: name -> (plant, the check that must report it)
PLANTS: dict[str, tuple[Callable[[Recording, random.Random], Recording], str]] = {
    "stale read": (_history_plant(plant_stale_read), "linearizable"),
    "lost acknowledged write": (_history_plant(plant_lost_write), "linearizable"),
    "lost watch event": (plant_lost_event, "acked-write"),
    "duplicated watch event": (plant_duplicate_event, "watch-unique"),
    "reordered watch event": (plant_reordered_event, "watch-ordered"),
    "split revision": (plant_split_revision, "watch-atomic"),
    "early bookmark": (plant_early_bookmark, "watch-bookmarkable"),
    "bad resume": (plant_bad_resume, "watch-resumable"),
    "wrong prev_kv": (plant_wrong_prev_kv, "watch-prev-kv"),
}
