"""Property tests of the checker: histories generated from a sequential run of the KV model oracle
(:mod:`quorumkv.testing.model`, independent of the checker), with random overlap between clients and with
failed operations, are accepted; the same histories with one planted anomaly are rejected."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quorumkv.testing.anomalies import PLANTS
from quorumkv.testing.history import Get
from quorumkv.testing.history_gen import GenParams, generate_history
from quorumkv.testing.linearizability import check

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def params(draw: st.DrawFn, *, maybe: bool = True, min_ops: int = 1) -> GenParams:
    return GenParams(
        operations=draw(st.integers(min_ops, 80)),
        clients=draw(st.integers(1, 8)),
        keys=draw(st.integers(1, 4)),
        maybe_fraction=draw(st.sampled_from([0.0, 0.1, 0.3, 0.6])) if maybe else 0.0,
        failed_read_fraction=draw(st.sampled_from([0.0, 0.2])) if maybe else 0.0,
        weights=draw(st.sampled_from([(4, 4, 1, 2), (1, 1, 1, 1), (5, 1, 0, 0), (0, 1, 1, 5)])),
        max_spread=draw(st.integers(0, 8)),
        watch=draw(st.booleans()),
    )


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), p=params())
def test_generated_histories_are_linearizable(seed: int, p: GenParams) -> None:
    history = generate_history(random.Random(seed), p)
    result = check(history)
    assert result.ok, str(result)
    # Every operation that returned is in the witness; failed reads are not.
    returned = {op.id for op in history if op.output is not None}
    assert returned <= set(result.linearization)
    assert not {op.id for op in history if op.output is None and isinstance(op.input, Get)} & set(
        result.linearization
    )


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), p=params())
def test_generated_histories_are_linearizable_without_their_watch(seed: int, p: GenParams) -> None:
    history = generate_history(random.Random(seed), replace(p, watch=True))
    assert check(history.without_watch()).ok


# -- planted anomalies (quorumkv.testing.anomalies: each plant is a certain violation, reasons there) -----------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    seed=st.integers(0, 2**32 - 1),
    p=params(min_ops=10),
    anomaly=st.sampled_from(sorted(PLANTS)),
    precheck=st.booleans(),
)
def test_planted_anomalies_are_rejected(seed: int, p: GenParams, anomaly: str, precheck: bool) -> None:
    rng = random.Random(seed)
    history = generate_history(rng, p)
    assert check(history).ok
    planted = PLANTS[anomaly](history, rng)
    assume(planted is not None)
    assert planted is not None
    result = check(planted.history, precheck=precheck)
    assert result.outcome == "violation", f"{anomaly} ({planted.description}) accepted:\n{result}"
    if precheck or not any(op.failed for op in history):
        # The explanation names the planted operation (with many maybe-writes the search's account of where it
        # got stuck can start elsewhere; the verdict is what counts there).
        named = planted.culprits & {o.id for o in result.operations}
        assert named, f"{anomaly} ({planted.description}): none of {set(planted.culprits)} named:\n{result}"


def test_every_plant_applies_to_a_typical_history() -> None:
    """The plants are not vacuous: on one ordinary generated history each of them finds a place and is caught."""
    history = generate_history(random.Random(7), GenParams(operations=200, clients=6, keys=3))
    assert check(history).ok
    for name, plant in PLANTS.items():
        planted = plant(history, random.Random(1))
        assert planted is not None, name
        assert check(planted.history).outcome == "violation", name
        assert check(planted.history, precheck=False).outcome == "violation", name
