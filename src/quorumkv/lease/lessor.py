"""The lessor: tracks when leases expire. It decides, the log carries out.

Only the leader's lessor keeps expiry clocks (a single member is always leader). Expiry is read from an
injected ``Clock``; an expired lease is revoked by proposing a LeaseRevoke entry, so the deletion of its keys
is an ordinary applied revision that watchers see. Apply never consults the lessor's clock.

With checkpointing (etcd's ``--experimental-enable-lease-checkpoint``), the leader also proposes, every
``checkpoint_interval_s`` per lease, a LeaseCheckpoint entry carrying the lease's remaining TTL (whole seconds,
rounded up). Apply stores that number with the lease; a new leader (after an election or a restart) starts the
lease's clock from it instead of from the full TTL.

Invariants:
- ``expiry_s`` of every known lease is ``clock.monotonic()`` at grant/renew/promotion plus its TTL (at
  promotion: its checkpointed remaining TTL, when it has one);
- a lease appears in ``expired()`` at most once until it is renewed or forgotten (revocation in flight);
- with checkpointing, a lease has a checkpoint scheduled (``checkpoint_at_s``) only while more than one interval
  of its TTL remains, and appears in ``due_checkpoints()`` at most once per scheduling.
"""

from __future__ import annotations

import math
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
    #: When the next checkpoint of this lease is due (None: none scheduled).
    checkpoint_at_s: float | None = None


class Lessor:
    def __init__(self, clock: Clock, checkpoint_interval_s: float | None = None) -> None:
        self.clock = clock
        self.leases: dict[int, LeaseState] = {}
        #: None: no checkpoints (etcd's default); else seconds between two checkpoints of one lease.
        self.checkpoint_interval_s = checkpoint_interval_s

    def promote(self, leases: dict[int, int], extend_s: float = 0.0,
                remaining: dict[int, int] | None = None) -> None:
        """Start tracking ``leases`` (id -> ttl) from now, as a new leader does: each clock starts from the
        lease's checkpointed remaining TTL in ``remaining`` if it has one, else from its full TTL."""
        now = self.clock.monotonic()
        remaining = remaining or {}
        self.leases = {}
        for lid, ttl in leases.items():
            st = LeaseState(ttl, now + (remaining.get(lid) or ttl) + extend_s)
            self._schedule(st, now)
            self.leases[lid] = st

    def _schedule(self, st: LeaseState, now: float) -> None:
        """etcd's scheduleCheckpointIfNeeded: one interval from now, if more than an interval remains."""
        interval = self.checkpoint_interval_s
        if interval is not None and st.expiry_s - now > interval:
            st.checkpoint_at_s = now + interval
        else:
            st.checkpoint_at_s = None

    def granted(self, lease_id: int, ttl_s: int) -> None:
        now = self.clock.monotonic()
        st = LeaseState(ttl_s, now + ttl_s)
        self._schedule(st, now)
        self.leases[lease_id] = st

    def revoked(self, lease_id: int) -> None:
        self.leases.pop(lease_id, None)

    def renew(self, lease_id: int) -> int | None:
        """Reset the lease's clock; returns its TTL, or None if the lease is unknown (or being revoked)."""
        st = self.leases.get(lease_id)
        if st is None or st.revoking:
            return None
        now = self.clock.monotonic()
        st.expiry_s = now + st.ttl_s
        self._schedule(st, now)
        return st.ttl_s

    def checkpointed(self, lease_id: int) -> None:
        """A checkpoint of the lease was applied (or failed): schedule its next one (a leader's lessor only)."""
        st = self.leases.get(lease_id)
        if st is not None and not st.revoking:
            self._schedule(st, self.clock.monotonic())

    def due_checkpoints(self, limit: int = 1000) -> list[tuple[int, int]]:
        """``(lease id, remaining TTL seconds rounded up)`` of leases whose checkpoint is due (etcd's
        findDueScheduledCheckpoints): not expired, and less than the full TTL remaining. Each is unscheduled
        until ``checkpointed`` is called for it."""
        if self.checkpoint_interval_s is None:
            return []
        now = self.clock.monotonic()
        out: list[tuple[int, int]] = []
        for lid, st in self.leases.items():
            if st.checkpoint_at_s is None or st.checkpoint_at_s > now:
                continue
            st.checkpoint_at_s = None
            if st.revoking or st.expiry_s <= now:
                continue
            remaining = math.ceil(st.expiry_s - now)
            if remaining >= st.ttl_s:
                continue
            out.append((lid, remaining))
            if len(out) >= limit:
                break
        return out

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
