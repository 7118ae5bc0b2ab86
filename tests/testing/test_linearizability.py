"""The linearizability checker on hand-written histories: what it must accept, what it must reject, and why.

Times are plain integers (the checker only compares them). Revisions follow etcd: a fresh store is at 1, every
write that changes something takes the next revision, a read reports the store revision it saw.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

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
    Request,
    Response,
    Txn,
    TxnResult,
    WatchEvent,
)
from quorumkv.testing.history_gen import GenParams, generate_history
from quorumkv.testing.linearizability import CheckResult, check, main


def op(i: int, client: int, call: int, ret: int, inp: Request, out: Response | None) -> Operation:
    return Operation(i, client, call, ret, inp, out, None if out is not None else "DEADLINE_EXCEEDED")


def ok(ops: list[Operation], **kw: object) -> CheckResult:
    result = check(History(ops, **kw))  # type: ignore[arg-type]
    assert result.outcome == "ok", str(result)
    return result


def bad(ops: list[Operation], **kw: object) -> CheckResult:
    result = check(History(ops, **kw))  # type: ignore[arg-type]
    assert result.outcome == "violation", str(result)
    return result


def ids(result: CheckResult) -> set[int]:
    return {o.id for o in result.operations}


# -- accepted -------------------------------------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    ok([])


def test_sequential_history_with_every_kind_of_operation() -> None:
    result = ok([
        op(0, 0, 0, 1, Put("a", "1"), PutResult(2)),
        op(1, 0, 2, 3, Get("a"), GetResult("1", 2, 2)),
        op(2, 0, 4, 5, Txn((Compare("a", "value", "1"),), (Put("a", "2"),), (Get("a"),)),
           TxnResult(True, (PutResult(3),), 3)),
        op(3, 0, 6, 7, Txn((Compare("a", "mod_revision", 2),), (Put("a", "3"),), (Get("a"),)),
           TxnResult(False, (GetResult("2", 3, 3),), 3)),
        op(4, 0, 8, 9, Delete("a"), DeleteResult(1, 4)),
        op(5, 0, 10, 11, Delete("a"), DeleteResult(0, 4)),  # deleting nothing takes no revision
        op(6, 0, 12, 13, Get("a"), GetResult(None, 0, 4)),
        op(7, 0, 14, 15, Txn((Compare("a", "mod_revision", 0),), (Put("a", "4"),), ()),
           TxnResult(True, (PutResult(5),), 5)),
    ])
    assert result.linearization == (0, 1, 2, 3, 4, 5, 6, 7)


def test_concurrent_operations_may_take_effect_in_either_order() -> None:
    # Two overlapping puts; the read after both saw b's value, so b went second although it was invoked first.
    result = ok([
        op(0, 0, 0, 10, Put("k", "b"), PutResult(3)),
        op(1, 1, 1, 9, Put("k", "a"), PutResult(2)),
        op(2, 2, 11, 12, Get("k"), GetResult("b", 3, 3)),
    ])
    assert result.linearization == (1, 0, 2)


def test_read_concurrent_with_a_write_may_see_the_old_or_the_new_value() -> None:
    write = op(0, 0, 0, 10, Put("k", "new"), PutResult(3))
    base = op(9, 9, -10, -5, Put("k", "old"), PutResult(2))
    ok([base, write, op(1, 1, 2, 8, Get("k"), GetResult("old", 2, 2))])
    ok([base, write, op(1, 1, 2, 8, Get("k"), GetResult("new", 3, 3))])


def test_initial_state_is_taken_from_the_history() -> None:
    ok([op(0, 0, 0, 1, Get("k"), GetResult("x", 7, 9))], initial_revision=9, initial_values={"k": ("x", 7)})
    bad([op(0, 0, 0, 1, Get("k"), GetResult("x", 7, 9))])


def test_failed_reads_are_dropped() -> None:
    ok([
        op(0, 0, 0, 1, Put("k", "1"), PutResult(2)),
        op(1, 1, 2, 3, Get("k"), None),
        op(2, 1, 4, 5, Get("k"), GetResult("1", 2, 2)),
    ])


# -- maybe-applied writes ---------------------------------------------------------------------------------------


def test_maybe_applied_put_that_shows_up_later() -> None:
    # The client timed out at t=5, the write took effect later; a read long after sees it.
    ok([
        op(0, 0, 0, 5, Put("k", "late"), None),
        op(1, 1, 6, 7, Get("k"), GetResult(None, 0, 1)),
        op(2, 1, 8, 9, Put("j", "x"), PutResult(2)),
        op(3, 1, 50, 51, Get("k"), GetResult("late", 3, 3)),
    ])


def test_maybe_applied_put_that_never_shows_up() -> None:
    ok([
        op(0, 0, 0, 5, Put("k", "lost"), None),
        op(1, 1, 6, 7, Get("k"), GetResult(None, 0, 1)),
        op(2, 1, 8, 9, Put("k", "x"), PutResult(2)),
        op(3, 1, 10, 11, Get("k"), GetResult("x", 2, 2)),
    ])


def test_unseen_maybe_write_explains_a_revision_gap() -> None:
    # Revision 2 was taken by *something*: only the failed put can have taken it (its value was overwritten).
    history = [
        op(0, 0, 0, 5, Put("k", "ghost"), None),
        op(1, 1, 6, 7, Put("k", "x"), PutResult(3)),
        op(2, 1, 8, 9, Get("k"), GetResult("x", 3, 3)),
    ]
    ok(history)
    result = bad(history[1:])  # without the failed put, revision 2 is unaccounted for
    assert "revision 3" in result.explanation


def test_maybe_applied_put_cannot_take_effect_before_it_was_invoked() -> None:
    result = bad([
        op(0, 1, 0, 1, Get("k"), GetResult("v", 2, 2)),
        op(1, 0, 5, 6, Put("k", "v"), None),  # invoked after the read that saw its value had returned
    ])
    assert ids(result) == {0, 1}


def test_maybe_applied_delete_and_txn() -> None:
    ok([
        op(0, 0, 0, 1, Put("k", "1"), PutResult(2)),
        op(1, 0, 2, 3, Delete("k"), None),
        op(2, 1, 4, 5, Txn((Compare("k", "value", "1"),), (Put("k", "2"),), (Get("k"),)), None),
        op(3, 1, 6, 7, Get("k"), GetResult(None, 0, 3)),  # the delete took effect, the txn then failed
    ])
    ok([
        op(0, 0, 0, 1, Put("k", "1"), PutResult(2)),
        op(2, 1, 4, 5, Txn((Compare("k", "value", "1"),), (Put("k", "2"),), (Get("k"),)), None),
        op(3, 1, 6, 7, Get("k"), GetResult("2", 3, 3)),
    ])


# -- planted anomalies --------------------------------------------------------------------------------------------


def test_stale_read_is_rejected() -> None:
    result = bad([
        op(0, 0, 0, 1, Put("k", "old"), PutResult(2)),
        op(1, 0, 2, 3, Put("k", "new"), PutResult(3)),
        op(2, 1, 4, 5, Get("k"), GetResult("old", 2, 2)),  # invoked after "new" was acknowledged
    ])
    assert 2 in ids(result) and 1 in ids(result)
    assert "#2" in result.explanation


def test_stale_read_with_a_current_header_revision_is_rejected() -> None:
    bad([
        op(0, 0, 0, 1, Put("k", "old"), PutResult(2)),
        op(1, 0, 2, 3, Put("k", "new"), PutResult(3)),
        op(2, 1, 4, 5, Get("k"), GetResult("old", 2, 3)),
    ])


def test_lost_acknowledged_write_is_rejected() -> None:
    result = bad([
        op(0, 0, 0, 1, Put("k", "a"), PutResult(2)),
        op(1, 0, 2, 3, Put("k", "b"), PutResult(3)),  # acknowledged ...
        op(2, 1, 4, 5, Put("j", "x"), PutResult(4)),
        op(3, 1, 6, 7, Get("k"), GetResult("a", 2, 4)),  # ... but gone
    ])
    assert {1, 3} <= ids(result)


def test_read_of_a_value_nobody_wrote_is_rejected() -> None:
    result = bad([
        op(0, 0, 0, 1, Put("k", "a"), PutResult(2)),
        op(1, 1, 2, 3, Get("k"), GetResult("zzz", 2, 2)),
    ])
    assert "'zzz'" in result.explanation


def test_revision_going_backwards_is_rejected() -> None:
    bad([
        op(0, 0, 0, 1, Put("a", "1"), PutResult(2)),
        op(1, 0, 2, 3, Put("b", "1"), PutResult(3)),
        op(2, 1, 4, 5, Get("a"), GetResult("1", 2, 2)),  # right value, but the store was already at 3
    ])


def test_duplicated_write_is_rejected() -> None:
    # The put was applied twice: its unique value shows up again at a later mod_revision.
    bad([
        op(0, 0, 0, 1, Put("k", "v"), PutResult(2)),
        op(1, 0, 2, 3, Put("k", "w"), PutResult(3)),
        op(2, 1, 4, 5, Get("k"), GetResult("v", 4, 4)),
    ])
    # ... or it silently took a second revision.
    bad([
        op(0, 0, 0, 1, Put("k", "v"), PutResult(2)),
        op(1, 0, 2, 3, Put("j", "w"), PutResult(4)),
    ])


def test_cross_key_anomaly_needs_the_global_revision() -> None:
    # Per key, both keys look fine; the revision shows the read of b ran before the write to a was
    # acknowledged ... while it was invoked after. A per-key check would accept this.
    bad([
        op(0, 0, 0, 1, Put("b", "1"), PutResult(2)),
        op(1, 0, 2, 3, Put("a", "1"), PutResult(3)),
        op(2, 1, 4, 5, Get("b"), GetResult("1", 2, 2)),
    ])


def test_txn_that_claims_the_wrong_branch_is_rejected() -> None:
    result = bad([
        op(0, 0, 0, 1, Put("k", "1"), PutResult(2)),
        op(1, 0, 2, 3, Txn((Compare("k", "value", "other"),), (Put("k", "2"),), (Get("k"),)),
           TxnResult(True, (PutResult(3),), 3)),
    ])
    assert "compare is false" in result.explanation


def test_delete_that_reports_the_wrong_count_is_rejected() -> None:
    bad([op(0, 0, 0, 1, Delete("k"), DeleteResult(1, 2))])


def test_violation_explanation_names_the_stuck_operation_and_the_store() -> None:
    result = bad([
        op(0, 0, 0, 1, Put("k", "old"), PutResult(2)),
        op(1, 0, 2, 3, Put("k", "new"), PutResult(3)),
        op(2, 1, 4, 5, Get("k"), GetResult("old", 2, 3)),
    ])
    text = result.explanation
    assert text.startswith(
        "not linearizable: the linearizable prefix that gets furthest covers 1 of 3 operations and leaves the store "
        "at revision 2 (3 operations)."
    )
    # Placing the write would leave no place for the read of the older value, which came later in real time.
    assert "Stuck: #1 c0 put('k', 'new') -> rev 3" in text
    assert "it would give 'k' mod_revision 3, but #2 (still pending) read it at mod_revision 2" in text
    assert "(#2 c1 get('k') -> 'old'@mod 2, rev 3 [0.000000s, 0.000000s] cannot go first: it was invoked after" in text
    assert "Store after the prefix: revision 2, 'k'='old'@mod 2." in text
    assert "Last writes of these keys in the prefix (newest first):\n  - #0 c0 put('k', 'old')" in text
    assert result.linearization == (0,)
    assert ids(result) == {0, 1, 2}


# -- the watch --------------------------------------------------------------------------------------------------


def test_watch_resolves_maybe_writes() -> None:
    ops = [
        op(0, 0, 0, 5, Put("k", "applied"), None),
        op(1, 1, 0, 5, Put("k", "never"), None),
        op(2, 2, 10, 11, Put("k", "x"), PutResult(3)),
    ]
    watch = [WatchEvent(2, "k", "applied", 6), WatchEvent(3, "k", "x", 11)]
    result = ok(ops, watch=watch, watch_through=3)
    assert "1 took effect" in result.explanation and "1 never did" in result.explanation
    assert result.linearization == (0, 2)
    # A read saw "applied" at revision 2 but the watch says "never" took revision 2: no linearization.
    bad([*ops, op(3, 3, 7, 8, Get("k"), GetResult("applied", 2, 2))],
        watch=[WatchEvent(2, "k", "never", 6), WatchEvent(3, "k", "x", 11)], watch_through=3)
    ok([*ops, op(3, 3, 7, 8, Get("k"), GetResult("applied", 2, 2))], watch=watch, watch_through=3)
    # A watch event bounds when the write took effect: before the watcher received it.
    bad([op(0, 0, 0, 50, Put("k", "v"), None), op(1, 1, 10, 11, Get("k"), GetResult(None, 0, 1))],
        watch=[WatchEvent(2, "k", "v", 5)], watch_through=2)


def test_incomplete_watch_never_drops_a_write() -> None:
    ops = [op(0, 0, 0, 5, Put("k", "ghost"), None), op(1, 1, 6, 7, Put("k", "x"), PutResult(3))]
    ok(ops, watch=[], watch_through=0)


# -- budget, generated histories, serialisation, CLI --------------------------------------------------------------


def test_budget_exceeded_is_unknown_not_a_verdict() -> None:
    history = generate_history(random.Random(5), GenParams(operations=300, clients=5, keys=3))
    result = check(history, max_nodes=50)
    assert result.outcome == "unknown"
    assert result.explanation.startswith("unknown (budget exceeded): 50 steps")
    assert check(history).ok


def test_large_history_with_failures_checks_quickly() -> None:
    # A few thousand operations from 10 clients with timeouts; the bench script prints the timings.
    history = generate_history(
        random.Random(11),
        GenParams(operations=3000, clients=10, keys=5, maybe_fraction=0.05, failed_read_fraction=0.02),
    )
    result = check(history, max_seconds=60)
    assert result.ok, str(result)
    assert result.checked > 2900


def test_json_round_trip(tmp_path: Path) -> None:
    history = generate_history(random.Random(3), GenParams(operations=60, maybe_fraction=0.2, watch=True))
    again = History.from_json(history.to_json())
    assert again == history
    path = tmp_path / "h.json"
    path.write_text(history.to_json())
    assert main([str(path)]) == 0
    broken = history.replace_output(
        next(o.id for o in history if isinstance(o.input, Get) and o.output is not None),
        GetResult("never-written", 1, 1),
    )
    path.write_text(broken.to_json())
    assert main([str(path)]) == 1
    path.write_text(history.to_json())
    assert main([str(path), "--max-nodes", "1"]) == 2


def test_invalid_histories_are_refused() -> None:
    with pytest.raises(ValueError, match="not unique"):
        check(History([op(0, 0, 0, 1, Put("k", "1"), PutResult(2)), op(0, 0, 2, 3, Put("k", "2"), PutResult(3))]))
    with pytest.raises(ValueError, match="returns before"):
        check(History([op(0, 0, 5, 1, Put("k", "1"), PutResult(2))]))
    with pytest.raises(ValueError, match="a get answered with PutResult"):
        check(History([op(0, 0, 0, 1, Get("k"), PutResult(2))]))
