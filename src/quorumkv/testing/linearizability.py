"""A linearizability checker for etcd KV histories (:mod:`quorumkv.testing.history`).

The question: is there a total order of the operations that (1) respects real time — an operation that returned
before another was invoked comes first — and (2) is a legal sequential run of etcd's KV, *including its global
revision*: every successful write takes the next revision, every read reports the store revision it saw, every
``mod_revision`` is the revision of the write that produced the value? A stale read, a lost or duplicated write,
a value nobody wrote or a revision going backwards makes the answer no.

Search: Wing & Gong's algorithm with Lowe's memoization, in the shape Porcupine uses. Call and return events sit
in one time-ordered doubly linked list; the search repeatedly picks an operation whose call precedes every
pending return (so real time allows it next), applies it to the model state, removes it from the list, and
backtracks when it reaches the return of an operation it could not place. A cache of (set of linearized
operations, model state) pairs already explored keeps it from redoing work.

Failed operations. A failed read is dropped (it changed nothing and nobody saw it). A failed write is *maybe
applied*: its return time is infinity, so it can be placed anywhere after its call, or never (the search stops
as soon as every operation that did return is placed; a maybe write left over is one that "never happened").
Placing a maybe write where it changes nothing (a delete of a missing key, a txn that takes a read-only branch)
is refused: that is the same as not placing it, and refusing keeps the search from branching on it.

Why the full history and no partition by key. Porcupine checks every key separately, which is sound when the
model's keys are independent. Here they are not: the revision is one counter for the whole store, so a write to
``a`` moves the revision a read of ``b`` reports. Checking per key would lose exactly the cross-key anomalies the
revision exposes (a read of ``b`` that missed a completed write to ``a``), so the whole history is searched at
once. The revisions are what make that affordable:

* every returned operation pins the store revision it must be placed at (a put that returned revision r must
  go where the store is at r-1, a read that reported r where it is at r), so at most a few candidates fit;
* *floors*: revisions never decrease, and neither does a key's mod_revision while it exists, so a step that
  moves the store past the revision some still-pending returned operation must see, or gives a key a
  mod_revision above the one a pending read reports for it, is a dead end at once, not many steps later;
* *observed maybe writes*: values are unique per key (the recorder writes unique values; the checker only uses
  this where it holds). If a read returned a failed put's value with mod_revision r, that put took effect, at
  revision r, before that read returned — so it gets revision r and that read's return time;
* *the watch* (when the history has one): a failed write whose value a watch event shows is pinned the same
  way; with a watch complete through the last revision, a failed write whose effect never shows is dropped
  (this is how etcd's robustness tests resolve failed requests);
* *symmetry*: failed puts of one key whose values nobody ever read or compared are interchangeable, and so are
  failed deletes of one key; only the earliest-invoked unplaced one of each group is tried.

Before the search, a linear pass reports violations visible on their own (a read of a value nobody wrote or at
a mod_revision its writer did not get, two requests with the same revision, a revision going backwards across
real time) with a direct explanation.

A search budget (``max_nodes`` steps, ``max_seconds``) turns a pathological history into an ``unknown``
verdict instead of a hang. A violation comes with an explanation: the linearizable prefix that got furthest, the
store at its end, the operation that could not be placed before it returned, why each candidate was refused,
and the last writes of the keys involved.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from quorumkv.testing.history import (
    Compare,
    Delete,
    DeleteResult,
    Get,
    GetResult,
    History,
    Operation,
    Put,
    PutResult,
    Txn,
    TxnResult,
    is_write,
    request_keys,
)

Outcome = Literal["ok", "violation", "unknown"]

#: Default search budget: steps tried (each candidate applied to a state is one) and wall time. The memo cache
#: grows by at most one entry per step, about (operations / 8 + 400) bytes each: ~800 MB at worst for 1M steps
#: over 3,000 operations. Histories of realistic failure rates need a few steps per operation.
DEFAULT_MAX_NODES = 1_000_000
DEFAULT_MAX_SECONDS = 60.0

_INF = 1 << 62
_MISSING = -1  # value id of a missing key
_UNSEEN = -2  # value id shared by maybe puts whose values no operation mentions (see _symmetry_classes)

# op kinds
_PUT, _GET, _DEL, _TXN = 0, 1, 2, 3
# txn branch op kinds (same numbering as the top-level kinds)
_NO_HINT = -1


@dataclass(frozen=True)
class CheckResult:
    """The verdict. ``operations``: the operations a violation involves (empty otherwise)."""

    outcome: Outcome
    explanation: str
    operations: tuple[Operation, ...] = ()
    #: ok: a witness order (operation ids, applied maybe-writes included); violation/unknown: the furthest
    #: linearizable prefix the search found.
    linearization: tuple[int, ...] = ()
    checked: int = 0
    nodes: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def __str__(self) -> str:
        return f"{self.outcome}: {self.explanation}"


@dataclass
class _Op:
    """An operation compiled for the search (keys and values as small ints)."""

    index: int
    source: Operation
    kind: int
    key: int  # PUT/GET/DEL
    value: int  # PUT: value id; GET: value id read (or _MISSING)
    finite: bool  # must be placed (it returned, or a read saw its effect); else a maybe write
    ret: int
    answered: bool = True  # its output is known (False: a failed write; ``revision``/``branch`` are hints)
    # outputs (finite) or hints (maybe writes): expected revision after the op; -1 = unconstrained
    revision: int = _NO_HINT
    mod: int = 0  # GET: mod_revision read
    deleted: int = 0  # DEL: deleted count
    # TXN
    compares: tuple[tuple[int, bool, int], ...] = ()  # (key, is_value_compare, expected value id or revision)
    success: tuple[tuple[int, int, int], ...] = ()  # (kind, key, value id)
    failure: tuple[tuple[int, int, int], ...] = ()
    branch: int = _NO_HINT  # 1 succeeded / 0 failed / -1 unknown
    results: tuple[tuple[int, int], ...] = ()  # per branch op: PUT (0, 0); GET (value id, mod); DEL (deleted, 0)
    need: int | None = None  # store revision this op must be placed at (finite ops with a known output)
    observed_by: list[Operation] = field(default_factory=list)  # returned ops that saw its effect
    dropped: bool = False  # a maybe write the watch shows never took effect
    cls: int = -1  # symmetry class of an unplaced-able maybe write (see _symmetry_classes), -1: none
    written: int = _MISSING  # PUT: the value id it writes (``value`` may become _UNSEEN)


class _Tables:
    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.values: dict[str, int] = {}
        self.key_names: list[str] = []
        self.value_names: list[str] = []

    def key(self, name: str) -> int:
        k = self.keys.get(name)
        if k is None:
            k = self.keys[name] = len(self.key_names)
            self.key_names.append(name)
        return k

    def value(self, name: str | None) -> int:
        if name is None:
            return _MISSING
        v = self.values.get(name)
        if v is None:
            v = self.values[name] = len(self.value_names)
            self.value_names.append(name)
        return v

    def show_value(self, vid: int) -> str:
        if vid == _UNSEEN:
            return "(a value no read saw)"
        return "missing" if vid == _MISSING else repr(self.value_names[vid])


def _branch_ops(ops: Sequence[Put | Get | Delete], t: _Tables) -> tuple[tuple[int, int, int], ...]:
    out: list[tuple[int, int, int]] = []
    for op in ops:
        if isinstance(op, Put):
            out.append((_PUT, t.key(op.key), t.value(op.value)))
        elif isinstance(op, Get):
            out.append((_GET, t.key(op.key), 0))
        else:
            out.append((_DEL, t.key(op.key), 0))
    return tuple(out)


def _compile(op: Operation, index: int, t: _Tables) -> _Op:
    inp, out = op.input, op.output
    finite = out is not None
    ret = op.ret if finite else _INF
    if isinstance(inp, Put):
        c = _Op(index, op, _PUT, t.key(inp.key), t.value(inp.value), finite, ret, finite)
        c.written = c.value
        if isinstance(out, PutResult):
            c.revision = out.revision
            c.need = out.revision - 1
        elif out is not None:
            raise ValueError(f"operation #{op.id}: a put answered with {type(out).__name__}")
        return c
    if isinstance(inp, Get):
        if not isinstance(out, GetResult):
            raise ValueError(f"operation #{op.id}: a get answered with {type(out).__name__}")
        c = _Op(index, op, _GET, t.key(inp.key), t.value(out.value), finite, ret)
        c.mod, c.revision, c.need = out.mod_revision, out.revision, out.revision
        return c
    if isinstance(inp, Delete):
        c = _Op(index, op, _DEL, t.key(inp.key), 0, finite, ret, finite)
        if isinstance(out, DeleteResult):
            c.deleted, c.revision = out.deleted, out.revision
            c.need = out.revision - 1 if out.deleted > 0 else out.revision
        elif out is not None:
            raise ValueError(f"operation #{op.id}: a delete answered with {type(out).__name__}")
        return c
    assert isinstance(inp, Txn)
    c = _Op(index, op, _TXN, 0, 0, finite, ret, finite)
    c.compares = tuple(_compile_compare(cmp, t) for cmp in inp.compare)
    c.success = _branch_ops(inp.success, t)
    c.failure = _branch_ops(inp.failure, t)
    if out is not None:
        if not isinstance(out, TxnResult):
            raise ValueError(f"operation #{op.id}: a txn answered with {type(out).__name__}")
        c.branch = 1 if out.succeeded else 0
        c.revision = out.revision
        branch = c.success if out.succeeded else c.failure
        results: list[tuple[int, int]] = []
        changed = False
        for (kind, _, _), r in zip(branch, out.results, strict=False):
            if kind == _PUT:
                changed = True
                results.append((0, 0))
            elif kind == _GET:
                if not isinstance(r, GetResult):
                    raise ValueError(f"operation #{op.id}: a txn get answered with {type(r).__name__}")
                results.append((t.value(r.value), r.mod_revision))
            else:
                if not isinstance(r, DeleteResult):
                    raise ValueError(f"operation #{op.id}: a txn delete answered with {type(r).__name__}")
                changed = changed or r.deleted > 0
                results.append((r.deleted, 0))
        if len(out.results) != len(branch):
            results.append((-2, -2))  # a length mismatch: never matches (the step function compares lengths)
        c.results = tuple(results)
        c.need = out.revision - 1 if changed else out.revision
    return c


def _compile_compare(cmp: Compare, t: _Tables) -> tuple[int, bool, int]:
    if cmp.target == "value":
        assert isinstance(cmp.expected, str)
        return (t.key(cmp.key), True, t.value(cmp.expected))
    assert isinstance(cmp.expected, int)
    return (t.key(cmp.key), False, cmp.expected)


State = tuple[int, ...]  # (revision, value id of key 0, mod of key 0, value id of key 1, mod of key 1, ...)


def _step(state: State, op: _Op, t: _Tables | None = None) -> State | str | None:
    """The state after ``op`` if it can take effect in ``state`` (with its recorded output), else None.

    With ``t`` (explain mode) a refusal is a human-readable reason instead of None.
    """
    rev = state[0]
    kind = op.kind
    if kind == _GET:
        if rev != op.revision:
            return f"it reported revision {op.revision}, the store is at {rev}" if t else None
        i = 1 + 2 * op.key
        if state[i] != op.value or state[i + 1] != op.mod:
            if t is None:
                return None
            return (
                f"it read {t.show_value(op.value)} (mod_revision {op.mod}), the store holds "
                f"{t.show_value(state[i])} (mod_revision {state[i + 1]})"
            )
        return state
    if kind == _PUT:
        if op.revision != _NO_HINT and op.revision != rev + 1:
            if t is None:
                return None
            what = "it returned" if op.answered else "a read saw its value at"
            return f"{what} revision {op.revision}, the store is at {rev} (its next write takes {rev + 1})"
        s = list(state)
        i = 1 + 2 * op.key
        s[0] = rev + 1
        s[i] = op.value
        s[i + 1] = rev + 1
        return tuple(s)
    if kind == _DEL:
        i = 1 + 2 * op.key
        present = state[i] != _MISSING
        if not op.answered:
            if not present:
                return "the key is missing: deleting it changes nothing" if t else None
        elif present:
            if op.deleted != 1 or op.revision != rev + 1:
                if t is None:
                    return None
                return (
                    f"it returned deleted={op.deleted} at revision {op.revision}; the store at {rev} holds the key, "
                    f"so a delete would answer deleted=1 at revision {rev + 1}"
                )
        elif op.deleted != 0 or op.revision != rev:
            if t is None:
                return None
            return (
                f"it returned deleted={op.deleted} at revision {op.revision}; the key is missing at {rev}, so a delete "
                f"would answer deleted=0 at revision {rev}"
            )
        if not present:
            return state
        s = list(state)
        s[0] = rev + 1
        s[i] = _MISSING
        s[i + 1] = 0
        return tuple(s)
    # TXN
    cond = True
    for key, is_value, expected in op.compares:
        i = 1 + 2 * key
        if is_value:
            if state[i] != expected:  # a missing key never equals a value (expected is never _MISSING)
                cond = False
                break
        elif state[i + 1] != expected:
            cond = False
            break
    if op.branch != _NO_HINT and op.branch != int(cond):
        if t is None:
            return None
        said = "succeeded" if op.branch else "failed"
        how = "it" if op.answered else "a read of its value says it"
        return f"{how} {said}, but its compare is {str(cond).lower()} on the store at {rev}"
    s = list(state)
    changed = False
    results: list[tuple[int, int]] = []
    for kind2, key, value in op.success if cond else op.failure:
        i = 1 + 2 * key
        if kind2 == _PUT:
            s[i] = value
            s[i + 1] = rev + 1
            changed = True
            results.append((0, 0))
        elif kind2 == _GET:
            results.append((s[i], s[i + 1]))
        elif s[i] != _MISSING:
            s[i] = _MISSING
            s[i + 1] = 0
            changed = True
            results.append((1, 0))
        else:
            results.append((0, 0))
    new_rev = rev + 1 if changed else rev
    if op.answered:
        if op.revision != new_rev or tuple(results) != op.results:
            if t is None:
                return None
            return (
                f"on the store at {rev} it would answer {_show_results(results, op, cond, t)} at revision {new_rev}, "
                f"it returned {_show_results(list(op.results), op, cond, t)} at revision {op.revision}"
            )
    else:
        if not changed:
            return "its branch changes nothing here" if t else None
        if op.revision != _NO_HINT and op.revision != new_rev:
            if t is None:
                return None
            return f"a read saw its write at revision {op.revision}, here it would take {new_rev}"
    s[0] = new_rev
    return tuple(s)


def _show_results(results: list[tuple[int, int]], op: _Op, cond: bool, t: _Tables) -> str:
    shown: list[str] = []
    for (kind, _, _), (a, b) in zip(op.success if cond else op.failure, results, strict=False):
        if kind == _PUT:
            shown.append("ok")
        elif kind == _GET:
            shown.append(f"{t.show_value(a)}@mod {b}")
        else:
            shown.append(f"deleted {a}")
    return "[" + ", ".join(shown) + "]"


def _observations(ops: list[_Op]) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(key, value id) -> [(mod_revision, index of the observing op)] for every returned read of a value."""
    seen: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for c in ops:
        if not c.answered:
            continue
        if c.kind == _GET and c.value != _MISSING:
            seen[(c.key, c.value)].append((c.mod, c.index))
        elif c.kind == _TXN:
            for (kind, key, _), (a, b) in zip(c.success if c.branch else c.failure, c.results, strict=False):
                if kind == _GET and a != _MISSING:
                    seen[(key, a)].append((b, c.index))
    return seen


def _writers(ops: list[_Op]) -> dict[tuple[int, int], int]:
    """(key, value id) -> how many operations put it (a value is "unique" when exactly one does)."""
    writers: dict[tuple[int, int], int] = defaultdict(int)
    for c in ops:
        if c.kind == _PUT:
            writers[(c.key, c.value)] += 1
        elif c.kind == _TXN:
            for kind, key, value in (*c.success, *c.failure):
                if kind == _PUT:
                    writers[(key, value)] += 1
    return writers


def _use_watch(ops: list[_Op], history: History, t: _Tables) -> None:
    """Resolve maybe writes with the recorded watch (etcd's robustness tests do the same).

    A watch event for a maybe put's unique value pins it: it took effect at the event's revision, before the
    watcher received the event. When the watch is complete through every revision the history reports, a maybe
    write none of whose effects appears never took effect, and is dropped. Both only add constraints, so a
    watch that lied could cause a reported violation (itself a bug), never a wrong "ok".
    """
    if history.watch is None:
        return
    answered_revs = [c.revision for c in ops if c.answered and c.revision != _NO_HINT]
    complete = history.watch_through > 0 and history.watch_through >= max(answered_revs, default=0)
    puts: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    deletes: dict[int, set[int]] = defaultdict(set)
    for ev in history.watch:
        if ev.key not in t.keys:
            continue
        key = t.keys[ev.key]
        if ev.value is None:
            deletes[key].add(ev.revision)
        elif ev.value in t.values:
            puts[(key, t.values[ev.value])].append((ev.revision, ev.received))
    # delete events no returned operation accounts for
    for c in ops:
        if not c.answered:
            continue
        if c.kind == _DEL and c.deleted > 0:
            deletes[c.key].discard(c.revision)
        elif c.kind == _TXN:
            for (kind, key, _), (a, _) in zip(c.success if c.branch else c.failure, c.results, strict=False):
                if kind == _DEL and a > 0:
                    deletes[key].discard(c.revision)
    writers = _writers(ops)
    for c in ops:
        if c.answered:
            continue
        if c.kind == _PUT:
            seen = puts.get((c.key, c.value))
            if seen and writers[(c.key, c.value)] == 1:
                _pin_to_events(c, seen)
            elif not seen and complete:
                c.dropped = True
        elif c.kind == _DEL:
            if complete and not deletes.get(c.key):
                c.dropped = True
        elif c.kind == _TXN:
            branches: dict[int, list[tuple[int, int]]] = {}
            for flag, branch in ((1, c.success), (0, c.failure)):
                for kind, key, value in branch:
                    if kind == _PUT and writers[(key, value)] == 1 and puts.get((key, value)):
                        branches.setdefault(flag, []).extend(puts[(key, value)])
            if len(branches) == 1:
                flag, seen = next(iter(branches.items()))
                c.branch = flag
                _pin_to_events(c, seen)
            elif not branches and complete:
                # a branch is out if one of its puts never shows up; a branch without a put must delete something
                possible = [
                    flag
                    for flag, branch in ((1, c.success), (0, c.failure))
                    if not any(kind == _PUT and not puts.get((key, value)) for kind, key, value in branch)
                    and (
                        any(kind == _PUT for kind, _, _ in branch)
                        or any(kind == _DEL and deletes.get(key) for kind, key, _ in branch)
                    )
                ]
                if not possible:
                    c.dropped = True
                elif len(possible) == 1:
                    c.branch = possible[0]


def _pin_to_events(c: _Op, seen: list[tuple[int, int]]) -> None:
    revisions = {rev for rev, _ in seen}
    if len(revisions) == 1:
        c.revision = next(iter(revisions))
        c.need = c.revision - 1
    else:
        c.need = None  # one write seen at several revisions: the search will find no linearization
    c.finite = True
    c.ret = min(c.ret, *(received for _, received in seen))


def _use_observations(ops: list[_Op]) -> None:
    """Pin maybe writes whose (unique) value a returned read saw: applied, at that mod_revision, before that read
    returned. Sound only for values written by a single operation, so only those are used."""
    writers = _writers(ops)
    seen = _observations(ops)
    for c in ops:
        if c.answered or c.dropped:
            continue
        if c.kind == _PUT:
            obs = seen.get((c.key, c.value), []) if writers[(c.key, c.value)] == 1 else []
            if obs:
                _pin(c, obs, ops)
        elif c.kind == _TXN:
            for branch_flag, branch in ((1, c.success), (0, c.failure)):
                for kind, key, value in branch:
                    if kind == _PUT and writers[(key, value)] == 1 and seen.get((key, value)):
                        if c.branch not in (_NO_HINT, branch_flag):
                            continue  # puts of both branches seen: no linearization; leave it to the search
                        c.branch = branch_flag
                        _pin(c, seen[(key, value)], ops)


def _pin(c: _Op, obs: list[tuple[int, int]], ops: list[_Op]) -> None:
    mods = {mod for mod, _ in obs}
    if len(mods) == 1 and c.revision in (_NO_HINT, next(iter(mods))) and (c.need is not None or not c.finite):
        c.revision = next(iter(mods))
        c.need = c.revision - 1
    else:
        c.need = None  # seen at several mod_revisions: not linearizable; the search will say so
    c.finite = True
    c.ret = min(c.ret, *(ops[i].ret for _, i in obs))
    c.observed_by = [*c.observed_by, *(ops[i].source for _, i in obs if ops[i].source not in c.observed_by)]


def _symmetry_classes(ops: list[_Op]) -> int:
    """Group interchangeable maybe writes; returns the number of classes (``_Op.cls``).

    Two maybe puts of the same key whose values no operation ever mentions (no read returned them, no compare
    names them) have the same effect on everything that follows: the key holds *some* value nobody can match,
    at the revision the put took. Such puts get the shared value ``_UNSEEN`` and one class per key, and so do
    maybe deletes of one key. The search then only tries a class's earliest-invoked unplaced member (any
    linearization using a later member can swap it for the earlier one, which was invoked before), which turns
    "which of these M writes filled this revision?" from M branches into one per key.
    """
    mentioned: set[tuple[int, int]] = set()
    for c in ops:
        if c.kind == _GET:
            mentioned.add((c.key, c.value))
        elif c.kind == _TXN:
            mentioned.update((key, expected) for key, is_value, expected in c.compares if is_value)
            branch = c.success if c.branch else c.failure
            pairs = zip(branch, c.results, strict=False)
            mentioned.update((key, a) for (kind, key, _), (a, _) in pairs if kind == _GET)
    writers = _writers(ops)
    classes: dict[tuple[int, int], int] = {}
    for c in ops:
        if c.finite or c.answered or c.dropped:
            continue
        if c.kind == _PUT and writers[(c.key, c.value)] == 1 and (c.key, c.value) not in mentioned:
            c.value = _UNSEEN
            c.cls = classes.setdefault((_PUT, c.key), len(classes))
        elif c.kind == _DEL:
            c.cls = classes.setdefault((_DEL, c.key), len(classes))
    return len(classes)


def check(
    history: History,
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    precheck: bool = True,
) -> CheckResult:
    """Whether ``history`` is linearizable with respect to etcd's KV (global revision included).

    ``precheck``: first look for violations visible without a search (a read of a value nobody wrote, a
    revision going backwards, …), which get a more direct explanation; the search finds them too.
    """
    started = time.monotonic()
    ids = [op.id for op in history.operations]
    if len(set(ids)) != len(ids):
        raise ValueError("operation ids are not unique")
    for op in history.operations:
        if op.ret < op.call:
            raise ValueError(f"operation #{op.id} returns before it is invoked")
    t = _Tables()
    for key in sorted(history.initial_values):
        t.key(key)
    kept = [op for op in history.operations if not (op.failed and not is_write(op.input))]
    compiled = [_compile(op, i, t) for i, op in enumerate(kept)]
    _use_watch(compiled, history, t)
    _use_observations(compiled)
    ops = [c for c in compiled if not c.dropped]
    for i, c in enumerate(ops):
        c.index = i
    _symmetry_classes(ops)
    maybe = [c for c in compiled if not c.answered]
    summary = f"{len(history.operations)} operations"
    if len(kept) < len(history.operations):
        summary += f"; {len(history.operations) - len(kept)} failed reads dropped"
    if maybe:
        summary += (
            f"; {len(maybe)} failed writes: {sum(1 for c in maybe if c.finite)} took effect (seen by a read or "
            f"the watch), {sum(1 for c in maybe if c.dropped)} never did (the watch says), "
            f"{sum(1 for c in maybe if not c.finite and not c.dropped)} undecided"
        )
    quick = _quick_check(ops, t, history) if precheck else None
    if quick is not None:
        text, involved = quick
        return CheckResult(
            "violation",
            f"not linearizable ({summary}): {text}",
            tuple(sorted(involved, key=lambda o: (o.call, o.id))),
            (),
            len(ops),
            0,
            time.monotonic() - started,
        )
    init: list[int] = [history.initial_revision]
    for name in t.key_names:
        if name in history.initial_values:
            value, mod = history.initial_values[name]
            init += [t.value(value), mod]
        else:
            init += [_MISSING, 0]
    return _Search(ops, t, tuple(init), history, max_nodes, max_seconds, started, summary).run()


def _quick_check(ops: list[_Op], t: _Tables, history: History) -> tuple[str, list[Operation]] | None:
    """Violations visible without a search (each certain on its own), with a direct explanation.

    A read of a value nobody wrote, or at a mod_revision its only writer did not get, or above its own header
    revision; two requests that both took the same revision; an operation that reports a revision below one
    that returned before it was invoked.
    """
    origin = history.origin
    show = t.show_value
    # (reader, key, value id, mod_revision, header revision) for every returned read
    reads: list[tuple[_Op, int, int, int, int]] = []
    for c in ops:
        if c.answered and c.kind == _GET:
            reads.append((c, c.key, c.value, c.mod, c.revision))
        elif c.answered and c.kind == _TXN:
            branch = c.success if c.branch else c.failure
            for (kind, key, _), (a, b) in zip(branch, c.results, strict=False):
                if kind == _GET:
                    reads.append((c, key, a, b, c.revision))
    # who may have put (key, value): (op or None for the initial state, revision or _NO_HINT if unknown)
    writers: dict[tuple[int, int], list[tuple[_Op | None, int]]] = defaultdict(list)
    for name, (initial, initial_mod) in history.initial_values.items():
        writers[(t.keys[name], t.value(initial))].append((None, initial_mod))
    for c in ops:
        if c.kind == _PUT:
            writers[(c.key, c.written)].append((c, c.revision if c.answered else _NO_HINT))
        elif c.kind == _TXN:
            for flag, branch in ((1, c.success), (0, c.failure)):
                if c.answered and c.branch != flag:
                    continue
                for kind, key, value in branch:
                    if kind == _PUT:
                        writers[(key, value)].append((c, c.revision if c.answered else _NO_HINT))
    for r, key, value, mod, header in reads:
        if value == _MISSING:
            continue
        what = f"{r.source.describe(origin)} read {show(value)} of {t.key_names[key]!r} at mod_revision {mod}"
        if mod <= 0 or mod > header:
            return f"{what}, which no store state at revision {header} can hold.", [r.source]
        found = writers.get((key, value), [])
        if not found:
            return f"{what}, but no operation wrote {show(value)} into {t.key_names[key]!r}.", [r.source]
        if all(rev != _NO_HINT for _, rev in found) and all(rev != mod for _, rev in found):
            shown = "; ".join(
                f"{w.source.describe(origin)} wrote it at revision {rev}" if w else f"the initial state at {rev}"
                for w, rev in found
            )
            return f"{what}, but {shown}.", [r.source, *(w.source for w, _ in found if w)]
    taken: dict[int, _Op] = {}
    for c in ops:
        if c.answered and c.need is not None and c.need == c.revision - 1:
            other = taken.setdefault(c.revision, c)
            if other is not c:
                return (
                    f"{other.source.describe(origin)} and {c.source.describe(origin)} both took revision "
                    f"{c.revision}.",
                    [other.source, c.source],
                )
    events = sorted(
        [(c.source.call, 0, c.index) for c in ops if c.answered and c.need is not None]
        + [(c.ret, 1, c.index) for c in ops if c.answered]
    )
    highest: _Op | None = None
    for _, is_ret, i in events:
        c = ops[i]
        if is_ret:
            if highest is None or c.revision > highest.revision:
                highest = c
        elif highest is not None and c.need is not None and c.need < highest.revision:
            return (
                f"{highest.source.describe(origin)} returned revision {highest.revision} before "
                f"{c.source.describe(origin)} was invoked, which needs the store at revision {c.need}: "
                "the revision went backwards.",
                [highest.source, c.source],
            )
    return None


def _puts(c: _Op, key: int, value: int) -> bool:
    """Whether ``c`` may put ``value`` into ``key``."""
    if c.kind == _PUT:
        return c.key == key and c.written == value
    if c.kind == _TXN:
        return any(kind == _PUT and k == key and v == value for kind, k, v in (*c.success, *c.failure))
    return False


class _Search:
    def __init__(
        self,
        ops: list[_Op],
        t: _Tables,
        init: State,
        history: History,
        max_nodes: int,
        max_seconds: float,
        started: float,
        summary: str,
    ) -> None:
        self.ops, self.t, self.init, self.history, self.summary = ops, t, init, history, summary
        self.max_nodes, self.max_seconds, self.started = max_nodes, max_seconds, started
        # Event list: entry 0 is the head sentinel; entries 1.. are calls and returns in time order.
        events: list[tuple[int, int, int]] = []  # (time, 0 call / 1 return, op index)
        for c in ops:
            events.append((c.source.call, 0, c.index))
            if c.finite:
                events.append((c.ret, 1, c.index))
        events.sort()
        n = len(events)
        self.op_of = [-1] + [e[2] for e in events]
        self.is_call = [False] + [e[1] == 0 for e in events]
        self.next = list(range(1, n + 2))
        self.next[n] = 0  # 0 doubles as "end of list"
        self.prev = [0, *range(0, n)]
        self.call_entry = [0] * len(ops)
        self.ret_entry = [0] * len(ops)
        for pos, (_, is_ret, i) in enumerate(events, start=1):
            if is_ret:
                self.ret_entry[i] = pos
            else:
                self.call_entry[i] = pos
        # Floors: revisions only grow, and so does a key's mod_revision while it exists. Tracker 0 holds the
        # store revision each returned op must be placed at; tracker 1+k the mod_revisions of key k that
        # returned reads report (an existing value read with mod_revision m needs k's mod_revision <= m until
        # then). A step that moves the store past the lowest pending value of a tracker is a dead end.
        constraints: list[list[tuple[int, int]]] = [[] for _ in ops]  # op -> [(tracker, value)]
        for c in ops:
            if not c.finite:
                continue
            if c.need is not None:
                constraints[c.index].append((0, c.need))
            if c.kind == _GET and c.value != _MISSING:
                constraints[c.index].append((1 + c.key, c.mod))
            elif c.kind == _TXN and c.answered:
                branch = c.success if c.branch else c.failure
                for (kind, key, _), (a, b) in zip(branch, c.results, strict=False):
                    if kind == _GET and a != _MISSING:
                        constraints[c.index].append((1 + key, b))
        trackers = 1 + len(t.key_names)
        values: list[set[int]] = [set() for _ in range(trackers)]
        for marks in constraints:
            for tid, v in marks:
                values[tid].add(v)
        self.fl_values = [[*sorted(vs), _INF] for vs in values]
        ranks = [{v: r for r, v in enumerate(vs)} for vs in self.fl_values]
        self.fl_count = [[0] * (len(vs) - 1) + [1] for vs in self.fl_values]  # the _INF sentinel stays
        self.marks = [tuple((tid, ranks[tid][v]) for tid, v in marks) for marks in constraints]
        for marks2 in self.marks:
            for tid, r in marks2:
                self.fl_count[tid][r] += 1
        self.fl_ptr = [0] * trackers
        for tid in range(trackers):
            while self.fl_count[tid][self.fl_ptr[tid]] == 0:
                self.fl_ptr[tid] += 1
        # keys an op may put (their new mod_revision is checked against the key's floor)
        self.put_keys = [
            tuple(sorted({key for kind, key, _ in (*c.success, *c.failure) if kind == _PUT}))
            if c.kind == _TXN
            else ((c.key,) if c.kind == _PUT else ())
            for c in ops
        ]
        # Longest prefix seen at a dead end, for the explanation.
        # The dead end reported: the one stuck at the latest return (every branch gets stuck at the latest where
        # the real obstruction is; earlier dead ends are wrong turns), then the one with the longest prefix.
        self.best_score = (-1, -1)
        self.best_depth = 0
        self.best_order: list[int] = []
        self.best_state: State = init
        self.best_blocked = -1
        self.best_candidates: list[int] = []

    def _take(self, i: int) -> None:
        for tid, r in self.marks[i]:
            count = self.fl_count[tid]
            count[r] -= 1
            if r == self.fl_ptr[tid]:
                p = r
                while count[p] == 0:
                    p += 1
                self.fl_ptr[tid] = p

    def _give(self, i: int) -> None:
        for tid, r in self.marks[i]:
            self.fl_count[tid][r] += 1
            if r < self.fl_ptr[tid]:
                self.fl_ptr[tid] = r

    def _below_floors(self, state: State, i: int) -> bool:
        """Whether ``state`` (just after op ``i``) keeps every tracker at or below its lowest pending value."""
        if state[0] > self.fl_values[0][self.fl_ptr[0]]:
            return False
        for k in self.put_keys[i]:
            if state[2 + 2 * k] > self.fl_values[1 + k][self.fl_ptr[1 + k]]:
                return False
        return True

    def run(self) -> CheckResult:
        ops = self.ops
        nxt, prv = self.next, self.prev
        op_of, is_call = self.op_of, self.is_call
        call_entry, ret_entry = self.call_entry, self.ret_entry
        rev_floor_values, fl_ptr = self.fl_values[0], self.fl_ptr
        finite = [c.finite for c in ops]
        need_of = [c.need if c.finite else None for c in ops]
        cls_of = [c.cls for c in ops]
        cls_members: list[list[int]] = [[] for _ in range(max(cls_of, default=-1) + 1)]
        for c in sorted(ops, key=lambda c: call_entry[c.index]):
            if c.cls >= 0:
                cls_members[c.cls].append(c.index)
        cls_ptr = [0] * len(cls_members)
        bits = [1 << i for i in range(len(ops))]
        remaining = sum(finite)
        state = self.init
        linearized = 0
        cache: set[tuple[int, State]] = set()
        stack: list[tuple[int, State]] = []
        order: list[int] = []
        nodes = 0
        deadline = self.started + self.max_seconds
        max_nodes = self.max_nodes
        entry = nxt[0]
        while True:
            if remaining == 0:
                return self._result("ok", f"linearizable ({self.summary})", order, nodes)
            if is_call[entry]:
                i = op_of[entry]
                # Revision filters (exact, see the module docstring): a returned op fits only where the store is
                # at its need; a maybe write (it must change something, so it takes the next revision) only
                # where that does not pass the lowest need still pending.
                want = need_of[i]
                if want is not None:
                    if state[0] != want:
                        entry = nxt[entry]
                        continue
                elif not finite[i]:
                    if state[0] >= rev_floor_values[fl_ptr[0]]:
                        entry = nxt[entry]
                        continue
                    k = cls_of[i]
                    if k >= 0 and cls_members[k][cls_ptr[k]] != i:
                        entry = nxt[entry]  # not its class's earliest unplaced member
                        continue
                nodes += 1
                if nodes >= max_nodes or (nodes & 0x3FF == 0 and time.monotonic() > deadline):
                    return self._unknown(nodes)
                new = _step(state, ops[i])
                if new is not None:
                    assert not isinstance(new, str)
                    if not finite[i] and new == state:
                        entry = nxt[entry]
                        continue
                    self._take(i)
                    if not self._below_floors(new, i):
                        self._give(i)  # a pending op needs an older revision / mod_revision
                    else:
                        key = (linearized | bits[i], new)
                        if key in cache:
                            self._give(i)
                        else:
                            cache.add(key)
                            stack.append((entry, state))
                            order.append(i)
                            state = new
                            linearized |= bits[i]
                            # lift: unlink the call and (if any) the return
                            nxt[prv[entry]] = nxt[entry]
                            prv[nxt[entry]] = prv[entry]
                            if finite[i]:
                                r = ret_entry[i]
                                nxt[prv[r]] = nxt[r]
                                prv[nxt[r]] = prv[r]
                                remaining -= 1
                            elif cls_of[i] >= 0:
                                cls_ptr[cls_of[i]] += 1
                            entry = nxt[0]
                            continue
                entry = nxt[entry]
            else:
                # The return of an op we could not place: dead end.
                if (ops[op_of[entry]].ret, len(stack)) > self.best_score:
                    self._remember(order, state, op_of[entry], entry)
                if not stack:
                    return self._violation(nodes)
                entry, state = stack.pop()
                i = op_of[entry]
                order.pop()
                linearized ^= bits[i]
                self._give(i)
                # unlift, in reverse order of the lift
                if finite[i]:
                    r = ret_entry[i]
                    nxt[prv[r]] = r
                    prv[nxt[r]] = r
                    remaining += 1
                elif cls_of[i] >= 0:
                    cls_ptr[cls_of[i]] -= 1
                nxt[prv[entry]] = entry
                prv[nxt[entry]] = entry
                assert call_entry[i] == entry
                entry = nxt[entry]

    # -- reporting ---------------------------------------------------------------------------------------------

    def _remember(self, order: list[int], state: State, blocked: int, at_entry: int) -> None:
        self.best_depth = len(order)
        self.best_score = (self.ops[blocked].ret, len(order))
        self.best_order = order[:]
        self.best_state = state
        self.best_blocked = blocked
        candidates: list[int] = []
        e = self.next[0]
        while e != at_entry and e != 0:
            if self.is_call[e]:
                candidates.append(self.op_of[e])
            e = self.next[e]
        self.best_candidates = candidates

    def _ids(self, order: list[int]) -> tuple[int, ...]:
        return tuple(self.ops[i].source.id for i in order)

    def _result(self, outcome: Outcome, text: str, order: list[int], nodes: int) -> CheckResult:
        return CheckResult(
            outcome,
            text,
            linearization=self._ids(order),
            checked=len(self.ops),
            nodes=nodes,
            elapsed_s=time.monotonic() - self.started,
        )

    def _unknown(self, nodes: int) -> CheckResult:
        elapsed = time.monotonic() - self.started
        text = (
            f"unknown (budget exceeded): {nodes} steps in {elapsed:.1f}s (budget {self.max_nodes} steps, "
            f"{self.max_seconds:.1f}s); the furthest linearizable prefix found covers {self.best_depth} "
            f"of {len(self.ops)} operations ({self.summary})"
        )
        return CheckResult(
            "unknown", text, (), self._ids(self.best_order), len(self.ops), nodes, elapsed
        )

    def _state_text(self, state: State, keys: Sequence[int]) -> str:
        t = self.t
        parts = []
        for k in keys:
            vid, mod = state[1 + 2 * k], state[2 + 2 * k]
            shown = "missing" if vid == _MISSING else f"{t.show_value(vid)}@mod {mod}"
            parts.append(f"{t.key_names[k]!r}={shown}")
        return ", ".join(parts)

    def _op_keys(self, c: _Op) -> list[int]:
        return [self.t.keys[k] for k in request_keys(c.source.input)]

    def _pending_floor(self, done: set[int], tid: int, exclude: int) -> tuple[int, int] | None:
        """The lowest (value, op index) of tracker ``tid`` over ops not in ``done`` (and not ``exclude``)."""
        best: tuple[int, int] | None = None
        for c in self.ops:
            if c.index in done or c.index == exclude:
                continue
            for t_id, rank in self.marks[c.index]:
                if t_id == tid and (best is None or self.fl_values[tid][rank] < best[0]):
                    best = (self.fl_values[tid][rank], c.index)
        return best

    def _why_not(self, state: State, c: _Op, done: set[int], involved: dict[int, None]) -> str:
        """Why ``c`` cannot be placed next in ``state`` (the explain-mode twin of the search's filters)."""
        why = _step(state, c, self.t)
        if isinstance(why, str):
            return why
        new = state if why is None else why
        if not c.answered and new == state:
            return "a maybe-applied write that changes nothing here"
        low = self._pending_floor(done, 0, c.index)
        if low is not None and new[0] > low[0]:
            involved[low[1]] = None
            return (
                f"it would move the store to revision {new[0]}, but #{self.ops[low[1]].source.id} (still pending) "
                f"must see revision {low[0]}"
            )
        for k in self.put_keys[c.index]:
            low = self._pending_floor(done, 1 + k, c.index)
            if low is not None and new[2 + 2 * k] > low[0]:
                involved[low[1]] = None
                return (
                    f"it would give {self.t.key_names[k]!r} mod_revision {new[2 + 2 * k]}, but "
                    f"#{self.ops[low[1]].source.id} (still pending) read it at mod_revision {low[0]}"
                )
        return "every way on from here dead-ends (explored)"

    def _writers_of_read_values(self, involved: dict[int, None], origin: int) -> list[str]:
        """Who wrote each value the involved reads returned (added to ``involved``); "nobody" is worth saying."""
        lines: list[str] = []
        for i in list(involved):
            c = self.ops[i]
            reads: list[tuple[int, int]] = []
            if c.kind == _GET and c.answered and c.value != _MISSING:
                reads.append((c.key, c.value))
            elif c.kind == _TXN and c.answered:
                branch = c.success if c.branch else c.failure
                reads += [(k, a) for (kind, k, _), (a, _) in zip(branch, c.results, strict=False)
                          if kind == _GET and a != _MISSING]
            for key, value in reads:
                writers = [w.index for w in self.ops if _puts(w, key, value)]
                shown = f"{self.t.show_value(value)} of {self.t.key_names[key]!r} (read by #{c.source.id})"
                if not writers and (self.t.key_names[key], self.t.value_names[value]) not in {
                    (k, v) for k, (v, _) in self.history.initial_values.items()
                }:
                    lines.append(f"No operation wrote {shown}.")
                for w in writers:
                    if w not in involved:
                        involved[w] = None
                        lines.append(f"{shown} was written by {self.ops[w].source.describe(origin)}")
        return lines

    def _violation(self, nodes: int) -> CheckResult:
        ops = self.ops
        origin = self.history.origin
        state = self.best_state
        done = set(self.best_order)
        blocked = ops[self.best_blocked]
        if blocked.answered:
            deadline = "before it returns"
        else:
            seen_by = ", ".join(f"#{o.id}" for o in blocked.observed_by) or "the watch"
            deadline = f"before {seen_by} saw its effect"
        lines = [
            f"not linearizable: the linearizable prefix that gets furthest covers {len(self.best_order)} of {len(ops)} "
            f"operations and leaves the store at revision {state[0]} ({self.summary}).",
            f"Stuck: {blocked.source.describe(origin)} must take effect {deadline}, but nothing can be placed "
            "next:",
        ]
        involved: dict[int, None] = {blocked.index: None}
        for i in self.best_candidates:
            c = ops[i]
            why = self._why_not(state, c, done, involved)
            if c.finite:
                involved[i] = None
            lines.append(f"  - {c.source.describe(origin)}: {why}")
        explained = {blocked.index, *self.best_candidates}
        # Pending ops invoked later can hold the store back: writes would carry it past the revision they must
        # see (a read of an old state is the usual culprit), or past a key's mod_revision they read.
        held = sorted(
            (c.source.call, c.index)
            for c in ops
            if c.index not in done and c.index not in explained and c.finite and c.need is not None
            and c.need <= state[0]
        )
        for _, i in held[:3]:
            involved[i] = None
            explained.add(i)
            lines.append(
                f"  (pending {ops[i].source.describe(origin)} must see the store at revision {ops[i].need}, "
                "so nothing may move it further before that)"
            )
        for i in list(involved):
            if i not in explained:
                lines.append(
                    f"  ({ops[i].source.describe(origin)} cannot go first: it was invoked after "
                    f"#{blocked.source.id} returned)"
                )
        keys: dict[int, None] = {}
        for i in involved:
            keys.update(dict.fromkeys(self._op_keys(ops[i])))
        lines.append(f"Store after the prefix: revision {state[0]}, {self._state_text(state, list(keys))}.")
        recent: list[int] = []
        for i in reversed(self.best_order):
            if is_write(ops[i].source.input) and any(k in keys for k in self._op_keys(ops[i])):
                recent.append(i)
                if len(recent) >= 4:
                    break
        if recent:
            lines.append("Last writes of these keys in the prefix (newest first):")
            lines.extend(f"  - {ops[i].source.describe(origin)}" for i in recent)
            involved.update(dict.fromkeys(recent))
        lines.extend(self._writers_of_read_values(involved, origin))
        sources = {ops[i].source.id: ops[i].source for i in involved}
        for i in list(involved):
            sources.update((o.id, o) for o in ops[i].observed_by)
        involved_ops = tuple(sorted(sources.values(), key=lambda o: (o.call, o.id)))
        return CheckResult(
            "violation",
            "\n".join(lines),
            involved_ops,
            self._ids(self.best_order),
            len(ops),
            nodes,
            time.monotonic() - self.started,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m quorumkv.testing.linearizability HISTORY.json``: check a saved history; exit 0 ok, 1 violation,
    2 unknown."""
    parser = argparse.ArgumentParser(prog="python -m quorumkv.testing.linearizability", description=main.__doc__)
    parser.add_argument("history", type=Path)
    parser.add_argument("--max-nodes", type=int, default=DEFAULT_MAX_NODES)
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    args = parser.parse_args(argv)
    history = History.from_json(args.history.read_text())
    result = check(history, max_nodes=args.max_nodes, max_seconds=args.max_seconds)
    print(result)
    print(f"({result.checked} operations, {result.nodes} steps, {result.elapsed_s:.2f}s)")
    return {"ok": 0, "violation": 1, "unknown": 2}[result.outcome]


if __name__ == "__main__":
    sys.exit(main())
