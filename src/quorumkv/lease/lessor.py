"""The lessor: tracks when leases expire. It decides, the log carries out.

Only the leader's lessor keeps expiry clocks (a single member is always leader). Expiry is read from an
injected ``Clock``; an expired lease is revoked by proposing a LeaseRevoke entry, so the deletion of its keys
is an ordinary applied revision that watchers see. Apply never consults the lessor's clock.

Invariants:
- ``expiry_s`` of every known lease is ``clock.monotonic()`` at grant/renew/promotion plus its TTL;
- a lease appears in ``expired()`` at most once until it is renewed or forgotten (revocation in flight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        import time

        return time.monotonic()


@dataclass
class LeaseState:
    ttl_s: int
    expiry_s: float
    revoking: bool = False


class Lessor:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.leases: dict[int, LeaseState] = {}

    def promote(self, leases: dict[int, int], extend_s: float = 0.0) -> None:
        """Start tracking ``leases`` (id -> ttl) from now, as a new leader does (remaining TTLs reset)."""
        now = self.clock.monotonic()
        self.leases = {lid: LeaseState(ttl, now + ttl + extend_s) for lid, ttl in leases.items()}

    def granted(self, lease_id: int, ttl_s: int) -> None:
        self.leases[lease_id] = LeaseState(ttl_s, self.clock.monotonic() + ttl_s)

    def revoked(self, lease_id: int) -> None:
        self.leases.pop(lease_id, None)

    def renew(self, lease_id: int) -> int | None:
        """Reset the lease's clock; returns its TTL, or None if the lease is unknown (or being revoked)."""
        st = self.leases.get(lease_id)
        if st is None or st.revoking:
            return None
        st.expiry_s = self.clock.monotonic() + st.ttl_s
        return st.ttl_s

    def remaining_s(self, lease_id: int) -> int | None:
        st = self.leases.get(lease_id)
        if st is None:
            return None
        # etcd reports int64(Remaining().Seconds()): truncated, so 9 just after a grant of 10.
        return max(0, int(st.expiry_s - self.clock.monotonic()))

    def expired(self, limit: int = 1000) -> list[int]:
        """Leases past expiry not already being revoked; marks them as being revoked."""
        now = self.clock.monotonic()
        out = []
        for lid, st in self.leases.items():
            if not st.revoking and st.expiry_s <= now:
                st.revoking = True
                out.append(lid)
                if len(out) >= limit:
                    break
        return out

    def revoke_failed(self, lease_id: int) -> None:
        st = self.leases.get(lease_id)
        if st is not None:
            st.revoking = False
