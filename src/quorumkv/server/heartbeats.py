"""etcd's leader heartbeat contention check (``etcd_server_heartbeat_send_failures_total``).

A leader sends each follower a heartbeat every ``--heartbeat-interval``. When the gap since the previous heartbeat
to the same follower exceeds twice that interval, the leader was too busy (typically a slow disk holding up the
Raft loop) and followers may start an election: etcd counts it and warns ("leader failed to send out heartbeat
on time"). Same rule here, on the messages the member hands to its peer transport.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from quorumkv.lease.lessor import Clock
from quorumkv.raft.messages import MessageType

log = logging.getLogger("quorumkv.server")


class HeartbeatDetector:
    """Counts heartbeats sent later than ``2 x interval_s`` after the previous one to the same member."""

    def __init__(self, interval_s: float, clock: Clock) -> None:
        self.max_gap_s = 2 * interval_s
        self.clock = clock
        self.last_sent: dict[int, float] = {}
        self.failures = 0

    def observe(self, messages: Iterable[Any]) -> None:
        now: float | None = None
        for m in messages:
            if m.type != MessageType.HEARTBEAT:
                continue
            if now is None:
                now = self.clock.monotonic()
            last = self.last_sent.get(m.to)
            self.last_sent[m.to] = now
            if last is not None and now - last > self.max_gap_s:
                self.failures += 1
                log.warning("leader failed to send out heartbeat on time; took too long, leader is overloaded "
                            "likely from slow disk", extra={"to": f"{m.to:x}",
                                                            "heartbeat-interval": f"{self.max_gap_s / 2:g}s",
                                                            "expected-duration": f"{self.max_gap_s:g}s",
                                                            "exceeded-duration": f"{now - last - self.max_gap_s:.3f}s"})

    def reset(self) -> None:
        """Leadership changed: gaps from an earlier term are not late heartbeats."""
        self.last_sent.clear()
