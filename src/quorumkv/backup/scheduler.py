"""Scheduled snapshots inside the server process (``--etcd-snapshot-schedule-cron``).

One member per cluster takes a scheduled snapshot: the **leader**, checked at each firing. No key is
written to the user's keyspace (a lock key would show up in mirrors and in every snapshot), and no lease
traffic is needed; Raft already elects exactly one leader per term. Only around a leader change can two
members both decide to snapshot at one firing; both snapshots are complete and correctly named (names carry
the member name), so the worst case is one extra snapshot, which retention then removes.

The clock (``time``/``sleep``) and the schedule (``now -> next firing``) are injectable: tests drive a fake
clock; a six-field cron (croniter's seconds field, e.g. ``* * * * * */2``) is the real-time test hook.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from quorumkv.backup.local import SnapshotRecord, rfc3339
from quorumkv.backup.manager import SnapshotManager

__all__ = ["Clock", "SnapshotScheduler", "SystemClock", "cron_schedule"]

log = logging.getLogger("quorumkv.backup")

Schedule = Callable[[float], float]


class Clock(Protocol):
    def time(self) -> float: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def cron_schedule(expr: str) -> Schedule:
    """``now`` (Unix seconds) -> the next firing strictly after it, in the host's local time (as K3s)."""
    from croniter import croniter

    def next_fire(now: float) -> float:
        start = datetime.datetime.fromtimestamp(now).astimezone()
        return float(croniter(expr, start).get_next(float))

    return next_fire


class SnapshotMember(Protocol):
    """What the scheduler needs of the member: leadership and its own Snapshot stream."""

    @property
    def is_leader(self) -> bool: ...

    def snapshot(self) -> AsyncIterator[Any]: ...


class SnapshotScheduler:
    """Runs until cancelled: at every firing, if this member leads, snapshot, upload, apply retention."""

    def __init__(self, member: SnapshotMember, manager: SnapshotManager, *, clock: Clock | None = None,
                 schedule: Schedule | None = None) -> None:
        self.member = member
        self.manager = manager
        self.clock: Clock = clock or SystemClock()
        self.schedule = schedule or cron_schedule(manager.options.cron)
        self.taken: list[SnapshotRecord] = []
        self.skipped = 0
        self._current: asyncio.Future[SnapshotRecord] | None = None

    async def stop(self, timeout: float = 120.0) -> None:
        """Let a snapshot in progress finish (bounded by ``timeout``) so none is left half-recorded; the
        caller then cancels :meth:`run`."""
        if self._current is not None and not self._current.done():
            await asyncio.wait([self._current], timeout=timeout)

    async def run(self) -> None:
        while True:
            now = self.clock.time()
            fire = self.schedule(now)
            await self.clock.sleep(max(0.0, fire - now))
            if not self.member.is_leader:
                self.skipped += 1
                log.debug("scheduled snapshot skipped: not the leader")
                continue
            self._current = asyncio.ensure_future(self.take(fire))
            try:
                self.taken.append(await asyncio.shield(self._current))
            except Exception as exc:  # recorded and counted by the manager; the schedule goes on
                log.error("scheduled snapshot failed", extra={"error": str(exc)})

    async def take(self, created_unix: float) -> SnapshotRecord:
        """One snapshot through the member's own Snapshot stream, then finish/upload/prune off the loop."""
        mgr = self.manager
        prefix = mgr.options.name
        name = mgr.new_name(prefix, created_unix)
        part = mgr.local.part_path(name)
        loop = asyncio.get_running_loop()
        try:
            with open(part, "wb") as fh:
                async for chunk in self.member.snapshot():
                    fh.write(chunk.blob)
        except Exception as exc:  # the stream or the disk failed: recorded like any failed snapshot
            part.unlink(missing_ok=True)
            mgr.local.write_record(SnapshotRecord(
                name=name, location=(mgr.local.dir / name).resolve().as_uri(), node=mgr.options.node,
                created_at=rfc3339(created_unix), created_unix=created_unix, status="failed", message=str(exc)))
            if mgr.stats is not None:
                mgr.stats.snapshots_failed += 1
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        record = await loop.run_in_executor(
            None, lambda: mgr.complete(part, name, created_unix, prefix=prefix, prune=True))
        if mgr.s3 is not None:
            await loop.run_in_executor(None, mgr.retry_failed_uploads)
        return record
