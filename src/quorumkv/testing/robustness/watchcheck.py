"""The validators a robustness run applies after its traffic, besides linearizability (docs/reliability.md).

Watch guarantees, as etcd documents them and its robustness tests check them, per watch stream:

- **ordered**: event revisions never go backwards within a stream;
- **unique**: no (revision, key) is delivered twice by a stream;
- **atomic**: a revision is never split: all events of one revision arrive in one response, all of them;
- **bookmarkable**: a progress notification at revision h promises every event <= h was delivered: no event
  <= h may come after it;
- **resumable**: a stream (re)created at revision r delivers exactly the events >= r (its first event is the
  first event at or after r; nothing before, nothing skipped);
- **reliable**: no gap: between its start and the last revision it delivered, and (for a stream still open at
  the end) up to the final revision, a stream delivers every event.

The reference event stream is the union of what all streams delivered; streams that disagree about the events
of one revision are reported (``watch-consistent``). Then the cross-checks:

- **acknowledged writes present**: every write the history saw acknowledged shows in the reference, at its
  revision, with its value (``acked-write``);
- **lists**: a paginated list read at revision R equals the state the reference events give at R (``list``);
- **prev_kv**: an event's previous value is the key's value just before it (``watch-prev-kv``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from quorumkv.testing.anomalies import changes_key
from quorumkv.testing.history import (
    Delete,
    Operation,
    Put,
    Txn,
    TxnResult,
    WatchEvent,
)
from quorumkv.testing.robustness.record import Recording, WatchEventRec, WatchStreamRec

#: Report at most this many findings per check (a broken stream can produce thousands).
_MAX_PER_CHECK = 5

CHECKS = ("watch-ordered", "watch-unique", "watch-atomic", "watch-bookmarkable", "watch-resumable",
          "watch-reliable", "watch-consistent", "watch-prev-kv", "acked-write", "list")


@dataclass(frozen=True)
class Finding:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


def _name(s: WatchStreamRec) -> str:
    return f"watcher {s.watcher} stream {s.stream} (from rev {s.start_revision} on {s.endpoint})"


def reference_events(streams: Iterable[WatchStreamRec]) -> tuple[dict[int, tuple[WatchEventRec, ...]], list[Finding]]:
    """Revision -> its events (the union of the streams) and the revisions streams disagree about.

    For each revision the longest delivery wins (a split or partial delivery is the stream's fault, reported by
    the per-stream checks); two deliveries that differ in content beyond one being a prefix of the other are a
    ``watch-consistent`` finding.
    """
    ref: dict[int, tuple[WatchEventRec, ...]] = {}
    findings: list[Finding] = []
    for s in streams:
        per_rev: dict[int, list[WatchEventRec]] = defaultdict(list)
        for e in s.events():
            if (e.revision, e.key) not in {(x.revision, x.key) for x in per_rev[e.revision]}:
                per_rev[e.revision].append(e)
        for rev, events in per_rev.items():
            mine = {(e.key, e.value) for e in events}
            have = ref.get(rev)
            if have is None:
                ref[rev] = tuple(events)
                continue
            theirs = {(e.key, e.value) for e in have}
            if not (mine <= theirs or theirs <= mine):
                if len(findings) < _MAX_PER_CHECK:
                    findings.append(Finding("watch-consistent", f"{_name(s)} delivered {sorted(mine)} at revision "
                                                                f"{rev}, another stream {sorted(theirs)}"))
            elif len(mine) > len(theirs):
                ref[rev] = tuple(events)
    return ref, findings


def _check_stream(s: WatchStreamRec, ref: dict[int, tuple[WatchEventRec, ...]], final_revision: int,
                  out: dict[str, list[Finding]]) -> None:
    def add(check: str, detail: str) -> None:
        if len(out[check]) < _MAX_PER_CHECK:
            out[check].append(Finding(check, f"{_name(s)}: {detail}"))

    last_rev = 0
    seen: set[tuple[int, str]] = set()
    response_of_rev: dict[int, int] = {}
    bookmark = 0
    delivered: dict[int, int] = defaultdict(int)
    for n, resp in enumerate(s.responses):
        if resp.progress:
            bookmark = max(bookmark, resp.header_revision)
            continue
        for e in resp.events:
            if e.revision < last_rev:
                add("watch-ordered", f"event at revision {e.revision} ({e.key!r}) after one at {last_rev}")
            last_rev = max(last_rev, e.revision)
            if (e.revision, e.key) in seen:
                add("watch-unique", f"event ({e.revision}, {e.key!r}) delivered twice")
                continue
            seen.add((e.revision, e.key))
            if e.revision <= bookmark:
                add("watch-bookmarkable", f"event at revision {e.revision} came after a progress notification "
                                          f"at revision {bookmark}")
            if e.revision < s.start_revision:
                add("watch-resumable", f"event at revision {e.revision} before the start revision")
            first = response_of_rev.setdefault(e.revision, n)
            if first != n:
                add("watch-atomic", f"revision {e.revision} split across responses {first} and {n}")
            delivered[e.revision] += 1
    # completeness: every reference revision in [start, upto] in full
    upto = max(last_rev, bookmark)
    if not s.ended and final_revision:
        upto = max(upto, final_revision)
    check = "watch-resumable" if s.stream > 0 else "watch-reliable"
    for rev in sorted(r for r in ref if s.start_revision <= r <= upto):
        want = len(ref[rev])
        got = delivered.get(rev, 0)
        if got == 0:
            add(check, f"revision {rev} ({', '.join(e.key for e in ref[rev])}) never delivered "
                       f"(stream reached {upto})")
        elif got < want:
            add("watch-atomic", f"revision {rev} delivered {got} of its {want} events")


def _written(op: Operation) -> list[tuple[str, str | None]]:
    """(key, value or None for a delete) of every change an acknowledged operation made."""
    inp = op.input
    if isinstance(inp, Txn):
        assert isinstance(op.output, TxnResult)
        branch = inp.success if op.output.succeeded else inp.failure
        out: list[tuple[str, str | None]] = []
        for sub in branch:
            if isinstance(sub, Put | Delete) and changes_key(op, sub.key):
                out.append((sub.key, sub.value if isinstance(sub, Put) else None))
        return out
    if isinstance(inp, Put | Delete) and changes_key(op, inp.key):
        return [(inp.key, inp.value if isinstance(inp, Put) else None)]
    return []


def check_acknowledged(rec: Recording, ref: dict[int, tuple[WatchEventRec, ...]], through: int) -> list[Finding]:
    """Every acknowledged write (revision <= ``through``, the reference's complete range) is in the reference."""
    findings: list[Finding] = []
    for op in rec.history:
        if op.output is None:
            continue
        changes = _written(op)
        if not changes or op.output.revision > through:
            continue
        events = {(e.key, e.value) for e in ref.get(op.output.revision, ())}
        for key, value in changes:
            if (key, value) not in events and len(findings) < _MAX_PER_CHECK:
                findings.append(Finding("acked-write", f"#{op.id} acknowledged {key!r} = {value!r} at revision "
                                                       f"{op.output.revision}, no watch saw it (there: "
                                                       f"{sorted(events, key=str)})"))
    return findings


def complete_through(rec: Recording, ref: dict[int, tuple[WatchEventRec, ...]]) -> int:
    """The revision up to which the reference is known complete: the furthest any first stream (started right
    after the initial revision) or its resumptions reached without a gap in the reference."""
    best = rec.history.initial_revision
    by_watcher: dict[int, list[WatchStreamRec]] = defaultdict(list)
    for s in rec.watches:
        by_watcher[s.watcher].append(s)
    for streams in by_watcher.values():
        streams.sort(key=lambda s: s.stream)
        if not streams or streams[0].start_revision > rec.history.initial_revision + 1:
            continue
        reach = rec.history.initial_revision
        for s in streams:
            if s.start_revision > reach + 1:
                break
            for resp in s.responses:
                if resp.progress:
                    reach = max(reach, resp.header_revision)
                for e in resp.events:
                    reach = max(reach, e.revision)
            if not s.ended and rec.final_revision:
                reach = max(reach, rec.final_revision)
        best = max(best, reach)
    return best


def check_lists(rec: Recording, ref: dict[int, tuple[WatchEventRec, ...]], through: int) -> list[Finding]:
    findings: list[Finding] = []
    base = {k: v for k, v in rec.history.initial_values.items() if k.startswith(rec.prefix)}
    for li in sorted(rec.lists, key=lambda x: x.revision):
        if li.revision > through or li.revision < rec.history.initial_revision:
            continue
        state = dict(base)
        for rev in sorted(r for r in ref if r <= li.revision):
            for e in ref[rev]:
                if e.value is None:
                    state.pop(e.key, None)
                else:
                    state[e.key] = (e.value, rev)
        if state != li.items and len(findings) < _MAX_PER_CHECK:
            missing = sorted(set(state) - set(li.items))
            extra = sorted(set(li.items) - set(state))
            differ = sorted(k for k in set(state) & set(li.items) if state[k] != li.items[k])
            findings.append(Finding("list", f"client {li.client}'s list at revision {li.revision} ({li.pages} pages "
                                            f"of {li.limit}) differs from the watch: missing {missing[:3]}, extra "
                                            f"{extra[:3]}, different {differ[:3]}"))
    return findings


def check_prev_kv(rec: Recording, ref: dict[int, tuple[WatchEventRec, ...]], through: int) -> list[Finding]:
    """Every event's ``prev_kv`` value is the key's value just before the event (replaying the reference from
    the initial state); only events that carry one (the watchers ask for ``prev_kv``)."""
    findings: list[Finding] = []
    state = {k: v for k, (v, _) in rec.history.initial_values.items() if k.startswith(rec.prefix)}
    for rev in sorted(r for r in ref if r <= through):
        for e in ref[rev]:
            before = state.get(e.key)
            if e.prev is not None and e.prev != before and len(findings) < _MAX_PER_CHECK:
                findings.append(Finding("watch-prev-kv", f"event ({rev}, {e.key!r}) carries prev_kv {e.prev!r}, the "
                                                         f"value before it was {before!r}"))
            if e.value is None:
                state.pop(e.key, None)
            else:
                state[e.key] = e.value
    return findings


def validate_watches(rec: Recording) -> tuple[list[Finding], int]:
    """Every watch/list/acknowledged-write finding, and the revision the watches are complete through."""
    ref, findings = reference_events(rec.watches)
    per: dict[str, list[Finding]] = defaultdict(list)
    for s in rec.watches:
        _check_stream(s, ref, rec.final_revision, per)
    for name in CHECKS:
        findings.extend(per.get(name, []))
    through = complete_through(rec, ref) if rec.watches else 0
    if rec.watches:
        findings.extend(check_acknowledged(rec, ref, through))
        findings.extend(check_lists(rec, ref, through))
        findings.extend(check_prev_kv(rec, ref, through))
    return findings, through


def history_watch(rec: Recording) -> list[WatchEvent]:
    """The reference events in the history's watch form (for the linearizability checker)."""
    ref, _ = reference_events(rec.watches)
    received: dict[tuple[int, str], int] = {}
    for s in rec.watches:
        for resp in s.responses:
            for e in resp.events:
                key = (e.revision, e.key)
                received[key] = min(received.get(key, resp.received), resp.received)
    return [WatchEvent(rev, e.key, e.value, received[(rev, e.key)]) for rev in sorted(ref) for e in ref[rev]]
