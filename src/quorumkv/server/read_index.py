"""Linearizable reads, batched: one ReadIndex round at a time per member confirms every read queued before it.

A linearizable read must see every write acknowledged before the read arrived. The member asks Raft for a read
index (``Node.read_index``: the leader records its commit index, confirms with a heartbeat round that a majority
still follows it, and the member then waits until it has applied that index) and serves the read from its own
applied state -- on a follower too, which asks the leader for the index (the core forwards ``MsgReadIndex``).

One round costs a heartbeat to every peer and their answers, whatever the number of reads it confirms, so the
member keeps at most ONE round in flight (as etcd's ``linearizableReadLoop``): reads that arrive while a round is
in flight wait for the next round, which starts as soon as that one ends, and one ReadIndex request confirms them
all. A read never joins a round already in flight: that round's index may predate a write acknowledged before the
read arrived. Reads arriving in the same event-loop iteration share the round started at its end.

A round that does not complete within the request timeout fails its reads (``etcdserver: request timed out``,
or ``leader changed`` / ``no leader`` when leadership moved meanwhile), and a change of leader fails the round in
flight at once with ``leader changed``, as etcd does; the reads waiting for the next round are unaffected.
"""

from __future__ import annotations

import asyncio
import logging

from quorumkv import errors
from quorumkv.server.node import Node

log = logging.getLogger("quorumkv.server")


class _Round:
    __slots__ = ("index_future", "lead", "reads", "timer")

    def __init__(self, reads: list[asyncio.Future[None]], index_future: asyncio.Future[None], lead: int,
                 timer: asyncio.TimerHandle) -> None:
        self.reads = reads
        self.index_future = index_future
        self.lead = lead
        self.timer = timer


class ReadIndexBatcher:
    """The member's linearizable read coalescer (see the module docstring). Runs on the event loop."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        #: ReadIndex rounds started (each one request to Raft, one heartbeat round on the leader).
        self.rounds = 0
        #: Rounds that timed out (etcd_server_slow_read_indexes_total).
        self.slow_rounds = 0
        #: Rounds failed by a change of leader (etcd_server_read_indexes_failed_total).
        self.failed_rounds = 0
        self._waiting: list[asyncio.Future[None]] = []
        self._round: _Round | None = None
        self._node: Node | None = None
        self._scheduled = False

    @property
    def in_flight(self) -> bool:
        return self._round is not None

    async def wait(self, node: Node) -> None:
        """Return once everything committed before the call is applied on this member; raise etcd's error if
        the round fails. Cancelling the caller only abandons its own wait."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiting.append(fut)
        self._node = node
        if self._round is None and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)
        await fut

    def leader_changed(self, lead: int) -> None:
        """The member saw a new leader (or lost it): the round in flight, if it asked another leader, fails."""
        r = self._round
        if r is None or lead == r.lead:
            return
        if r.lead == 0:
            # the round was asked while no leader was known (its request went nowhere): ask the new one now
            self._waiting[:0] = r.reads
            r.reads = []
            self._finish(r, None)
            return
        self.failed_rounds += 1
        self._finish(r, errors.NO_LEADER if lead == 0 else errors.LEADER_CHANGED)

    def fail_all(self, err: BaseException) -> None:
        """The member is stopping: every read waiting here fails with ``err``."""
        r = self._round
        if r is not None:
            self._finish(r, err, restart=False)
        waiting, self._waiting = self._waiting, []
        _settle(waiting, err)

    # -- internals --------------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._scheduled = False
        node = self._node
        if self._round is not None or node is None:
            return
        reads = [f for f in self._waiting if not f.done()]  # callers that gave up need no round
        self._waiting = []
        if not reads:
            return
        self.rounds += 1
        loop = asyncio.get_running_loop()
        try:
            index_future = asyncio.ensure_future(node.read_index())  # (a future: as is)
        except Exception as exc:  # e.g. the node stopped: fail these reads, never leave them hanging
            _settle(reads, exc)
            return
        timer = loop.call_later(self.timeout_s, self._expire)
        r = self._round = _Round(reads, index_future, node.lead, timer)
        index_future.add_done_callback(lambda f: self._on_index(r, f))

    def _on_index(self, r: _Round, f: asyncio.Future[None]) -> None:
        if f.cancelled():
            return  # we gave the round up (timeout, leader change): already finished
        self._finish(r, f.exception())

    def _expire(self) -> None:
        r = self._round
        if r is None:
            return
        self.slow_rounds += 1
        node = self._node
        lead = node.lead if node is not None else 0
        log.warning("timed out waiting for read index response (local node might have slow network)",
                    extra={"timeout": f"{self.timeout_s}s"})
        if lead == 0:
            err = errors.NO_LEADER
        elif lead != r.lead:
            err = errors.LEADER_CHANGED
        else:
            err = errors.TIMEOUT
        self._finish(r, err)

    def _finish(self, r: _Round, err: BaseException | None, *, restart: bool = True) -> None:
        if self._round is not r:
            return
        self._round = None
        r.timer.cancel()
        if not r.index_future.done():
            r.index_future.cancel()  # the node drops a cancelled request instead of asking again
        _settle(r.reads, err)
        if restart and self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)


def _settle(reads: list[asyncio.Future[None]], err: BaseException | None) -> None:
    for f in reads:
        if f.done():
            continue
        if err is None:
            f.set_result(None)
        else:
            f.set_exception(err)
