"""Plant one anomaly into a linearizable history, to prove a linearizability check can fail.

Each ``plant_*`` function rewrites the outputs of one or a few operations so that the result is *certainly* not
linearizable (the reason is in each docstring), and returns None when the history offers no place for it. The
returned :class:`Planted` names the operations a good explanation should mention (at least one of them).

Used by the checker's own tests and by fault tests that record a real history: check it, then check it again
with :func:`plant_stale_read` and expect a violation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from quorumkv.testing.history import (
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
)


@dataclass(frozen=True)
class Planted:
    history: History
    #: Operations an explanation of the violation should name (at least one of them).
    culprits: frozenset[int]
    description: str


def changes_key(op: Operation, key: str) -> bool:
    """Whether ``op`` returned and changed ``key`` (a put, a delete that deleted, a txn branch doing either)."""
    out = op.output
    if out is None:
        return False
    if isinstance(op.input, Put):
        return op.input.key == key
    if isinstance(op.input, Delete) and isinstance(out, DeleteResult):
        return op.input.key == key and out.deleted > 0
    if isinstance(op.input, Txn) and isinstance(out, TxnResult):
        branch = op.input.success if out.succeeded else op.input.failure
        return any(
            (isinstance(o, Put) and o.key == key)
            or (isinstance(o, Delete) and isinstance(r, DeleteResult) and o.key == key and r.deleted > 0)
            for o, r in zip(branch, out.results, strict=False)
        )
    return False


def changes_something(op: Operation) -> bool:
    """Whether ``op`` returned and took a revision."""
    inp = op.input
    keys = [o.key for o in (*inp.success, *inp.failure)] if isinstance(inp, Txn) else [inp.key]
    return any(changes_key(op, k) for k in keys)


def _revision(op: Operation) -> int:
    assert op.output is not None
    return op.output.revision


def _gets(history: History) -> list[Operation]:
    return [op for op in history if isinstance(op.input, Get) and isinstance(op.output, GetResult)]


def _key(op: Operation) -> str:
    assert isinstance(op.input, Get)
    return op.input.key


def plant_stale_read(history: History, rng: random.Random) -> Planted | None:
    """A read answers what an earlier read of the same key answered, although a write that changed the key after
    that earlier read completed before this read was invoked.

    Certain on any history: the write's revision is above the earlier read's header revision (else that read
    would have seen it), so with the earlier header the read would have to precede the write; with the read's
    own (later) header the key's mod_revision is by then at least the write's, above the old value's.
    """
    options: list[tuple[Operation, Operation, bool]] = []
    gets = _gets(history)
    writes = [w for w in history if changes_something(w)]
    for g in gets:
        assert isinstance(g.output, GetResult)
        # the highest revision of a write to the key that completed before g was invoked
        done = [_revision(w) for w in writes if w.ret < g.call and changes_key(w, _key(g))]
        if not done:
            continue
        newest = max(done)
        for g0 in gets:
            assert isinstance(g0.output, GetResult)
            if _key(g0) != _key(g) or g0.ret >= g.call or g0.output.revision >= newest:
                continue
            if (g0.output.value, g0.output.mod_revision) != (g.output.value, g.output.mod_revision):
                options.append((g, g0, g0.output.value is not None))
    if not options:
        return None
    g, g0, has_value = rng.choice(options)
    assert isinstance(g.output, GetResult) and isinstance(g0.output, GetResult)
    keep_header = has_value and rng.random() < 0.5
    stale = replace(g0.output, revision=g.output.revision) if keep_header else g0.output
    return Planted(
        history.replace_output(g.id, stale),
        frozenset({g.id}),
        f"#{g.id} now answers what #{g0.id} read" + (" (with its own header revision)" if keep_header else ""),
    )


def plant_lost_write(history: History, rng: random.Random) -> Planted | None:
    """An acknowledged put vanishes: every read that saw its value sees the key's previous state instead.

    Certain when every write to that key returned (the choice is restricted to such keys): the key's state at
    each revision is then fixed by the writes' revisions, and the readers' header revisions stay.
    """
    options: dict[int, list[Operation]] = {}
    for w in history:
        if not (isinstance(w.input, Put) and isinstance(w.output, PutResult)):
            continue
        key = w.input.key
        if any(o.output is None and not isinstance(o.input, Get) and key in _keys(o) for o in history):
            continue
        readers = [g for g in _gets(history) if _key(g) == key and g.output == _read_of(g, w)]
        if readers:
            options[w.id] = readers
    if not options:
        return None
    w = history.by_id(rng.choice(sorted(options)))
    assert isinstance(w.input, Put)
    value, mod = _state_before(history, w.input.key, _revision(w))
    planted = history
    for g in options[w.id]:
        assert isinstance(g.output, GetResult)
        planted = planted.replace_output(g.id, GetResult(value, mod, g.output.revision))
    culprits = frozenset({w.id, *(g.id for g in options[w.id])})
    return Planted(planted, culprits, f"#{w.id}'s put is lost for {len(options[w.id])} reads")


def _keys(op: Operation) -> list[str]:
    inp = op.input
    return [o.key for o in (*inp.success, *inp.failure)] if isinstance(inp, Txn) else [inp.key]


def _read_of(g: Operation, w: Operation) -> GetResult | None:
    """What ``g`` answers if it saw ``w``'s put."""
    assert isinstance(w.input, Put) and isinstance(g.output, GetResult)
    return GetResult(w.input.value, _revision(w), g.output.revision)


def _state_before(history: History, key: str, revision: int) -> tuple[str | None, int]:
    """``key``'s (value, mod_revision) just before ``revision``, from the returned writes."""
    state: tuple[str | None, int] = (None, 0)
    if key in history.initial_values:
        state = history.initial_values[key]
    for op in sorted((o for o in history if changes_key(o, key)), key=_revision):
        if _revision(op) >= revision:
            break
        inp = op.input
        if isinstance(inp, Put):
            state = (inp.value, _revision(op))
        elif isinstance(inp, Delete):
            state = (None, 0)
        else:
            assert isinstance(inp, Txn) and isinstance(op.output, TxnResult)
            for o in inp.success if op.output.succeeded else inp.failure:
                if isinstance(o, Put) and o.key == key:
                    state = (o.value, _revision(op))
                elif isinstance(o, Delete) and o.key == key:
                    state = (None, 0)
    return state


def plant_unwritten_value(history: History, rng: random.Random) -> Planted | None:
    """A read answers a value no operation wrote. Certain on any history."""
    gets = _gets(history)
    if not gets:
        return None
    g = rng.choice(gets)
    assert isinstance(g.output, GetResult)
    planted = history.replace_output(g.id, replace(g.output, value="never-written-by-anyone"))
    return Planted(planted, frozenset({g.id}), f"#{g.id} reads a value nobody wrote")


def plant_revision_backwards(history: History, rng: random.Random) -> Planted | None:
    """A read reports a header revision below that of a write acknowledged before the read was invoked.

    Certain on any history: the write precedes the read and leaves the store at least at its revision.
    """
    options = [(g, w) for g in _gets(history) for w in history if changes_something(w) and w.ret < g.call]
    if not options:
        return None
    g, w = rng.choice(options)
    assert isinstance(g.output, GetResult)
    planted = history.replace_output(g.id, replace(g.output, revision=_revision(w) - 1))
    return Planted(planted, frozenset({g.id}), f"#{g.id} reports revision {_revision(w) - 1} after #{w.id}")


def plant_duplicated_write(history: History, rng: random.Random) -> Planted | None:
    """A put applied a second time: a later read sees its unique value at a later mod_revision.

    Certain when no other operation puts the same value into the key (the choice is restricted to such puts).
    """
    writers: dict[tuple[str, str], int] = {}
    for o in history:
        for sub in (*o.input.success, *o.input.failure) if isinstance(o.input, Txn) else (o.input,):
            if isinstance(sub, Put):
                writers[(sub.key, sub.value)] = writers.get((sub.key, sub.value), 0) + 1
    options = [
        (g, w)
        for w in history
        if isinstance(w.input, Put) and isinstance(w.output, PutResult) and writers[(w.input.key, w.input.value)] == 1
        for g in _gets(history)
        if _key(g) == w.input.key and g.call > w.ret and isinstance(g.output, GetResult)
        and g.output.revision > w.output.revision
    ]
    if not options:
        return None
    g, w = rng.choice(options)
    assert isinstance(w.input, Put) and isinstance(g.output, GetResult)
    planted = history.replace_output(g.id, GetResult(w.input.value, g.output.revision, g.output.revision))
    return Planted(planted, frozenset({g.id}), f"#{g.id} sees #{w.id}'s value again at revision {g.output.revision}")


PLANTS: dict[str, Callable[[History, random.Random], Planted | None]] = {
    "stale read": plant_stale_read,
    "lost acknowledged write": plant_lost_write,
    "read of a value nobody wrote": plant_unwritten_value,
    "revision going backwards": plant_revision_backwards,
    "duplicated write": plant_duplicated_write,
}
