"""The Lessor on a fake clock: grant, renew, expiry, revocation bookkeeping, remaining TTL."""

from __future__ import annotations

import pytest

from quorumkv.lease.lessor import Lessor
from quorumkv.testing.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lessor(clock: FakeClock) -> Lessor:
    return Lessor(clock)


def test_remaining_ttl_counts_down_with_the_clock(lessor: Lessor, clock: FakeClock) -> None:
    lessor.granted(1, 10)
    assert lessor.remaining_s(1) == 10
    clock.advance(3)
    assert lessor.remaining_s(1) == 7
    clock.advance(0.5)
    assert lessor.remaining_s(1) == 6  # truncated, as etcd's int64(Remaining().Seconds())
    clock.advance(6.25)
    assert lessor.remaining_s(1) == 0
    clock.advance(100)
    assert lessor.remaining_s(1) == 0  # never negative


def test_unknown_lease(lessor: Lessor) -> None:
    assert lessor.remaining_s(42) is None
    assert lessor.renew(42) is None
    assert lessor.expired() == []


def test_expiry_happens_exactly_at_the_ttl(lessor: Lessor, clock: FakeClock) -> None:
    lessor.granted(1, 5)
    lessor.granted(2, 8)
    clock.advance(4.999)
    assert lessor.expired() == []
    clock.advance(0.001)
    assert lessor.expired() == [1]
    clock.advance(3)
    assert lessor.expired() == [2]


def test_an_expired_lease_is_reported_once_until_revocation_fails(lessor: Lessor, clock: FakeClock) -> None:
    lessor.granted(1, 5)
    clock.advance(6)
    assert lessor.expired() == [1]
    assert lessor.expired() == []  # revocation in flight
    assert lessor.renew(1) is None  # a lease being revoked cannot be kept alive
    lessor.revoke_failed(1)
    assert lessor.expired() == [1]
    lessor.revoked(1)
    assert lessor.expired() == [] and lessor.remaining_s(1) is None


def test_renew_resets_the_clock(lessor: Lessor, clock: FakeClock) -> None:
    lessor.granted(1, 10)
    clock.advance(8)
    assert lessor.renew(1) == 10
    assert lessor.remaining_s(1) == 10
    clock.advance(9)
    assert lessor.expired() == []
    clock.advance(1)
    assert lessor.expired() == [1]


def test_expired_respects_the_limit(lessor: Lessor, clock: FakeClock) -> None:
    for lid in range(1, 6):
        lessor.granted(lid, 1)
    clock.advance(2)
    first = lessor.expired(limit=2)
    assert len(first) == 2
    rest = lessor.expired()
    assert sorted(first + rest) == [1, 2, 3, 4, 5]


def test_promote_restarts_every_lease_from_now(lessor: Lessor, clock: FakeClock) -> None:
    lessor.granted(1, 5)
    clock.advance(4)
    lessor.promote({1: 5, 2: 30}, extend_s=2)
    assert lessor.remaining_s(1) == 7 and lessor.remaining_s(2) == 32
    clock.advance(0.1)
    assert lessor.remaining_s(1) == 6
    clock.advance(6.4)
    assert lessor.expired() == []
    clock.advance(0.5)
    assert lessor.expired() == [1]


def test_fake_clock_only_goes_forward() -> None:
    clock = FakeClock(start_s=5.0)
    clock.advance(1.5)
    assert clock.monotonic() == 6.5
    with pytest.raises(ValueError):
        clock.advance(-1)
