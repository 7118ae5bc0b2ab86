"""Each robustness validator accepts clean recordings and catches its planted anomaly (quorumkv.testing)."""

from __future__ import annotations

import random

import pytest

from quorumkv.testing.robustness.anomalies import PLANTS, clean_recording
from quorumkv.testing.robustness.record import Recording
from quorumkv.testing.robustness.runner import validate

SEEDS = range(3)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_clean_recording_passes_every_validator(seed: int) -> None:
    verdict = validate(clean_recording(seed))
    assert verdict.outcome == "PASS", [str(f) for f in verdict.findings]
    assert verdict.stats["lists"] == 1 and verdict.stats["watch_streams"] == 3


@pytest.mark.parametrize("name", sorted(PLANTS))
@pytest.mark.parametrize("seed", SEEDS)
def test_each_planted_anomaly_is_caught_by_its_check(name: str, seed: int) -> None:
    plant, check = PLANTS[name]
    rec = clean_recording(seed)
    try:
        planted = plant(rec, random.Random(seed))
    except ValueError:
        pytest.skip(f"{name}: no place in seed {seed}")
    verdict = validate(planted)
    assert verdict.outcome == "FAIL", f"{name} not caught"
    assert check in {f.check for f in verdict.findings}, [str(f) for f in verdict.findings]


def test_every_planted_anomaly_finds_a_place_in_some_seed() -> None:
    for name, (plant, _) in PLANTS.items():
        placed = 0
        for seed in SEEDS:
            try:
                plant(clean_recording(seed), random.Random(seed))
                placed += 1
            except ValueError:
                pass
        assert placed >= 2, f"{name} placed in only {placed} of {len(SEEDS)} seeds"


def test_a_recording_survives_its_json_round_trip() -> None:
    rec = clean_recording(3)
    again = Recording.from_json(rec.to_json())
    assert again.to_obj() == rec.to_obj()
    assert validate(again).outcome == "PASS"


def test_a_bare_history_is_read_as_a_recording_and_anything_else_refused() -> None:
    rec = clean_recording(1)
    bare = Recording.from_json(rec.history.to_json())
    assert bare.watches == [] and len(bare.history) == len(rec.history)
    assert validate(bare).outcome == "PASS"
    with pytest.raises(ValueError, match="not a robustness recording"):
        Recording.from_json('{"format": "something-else"}')
