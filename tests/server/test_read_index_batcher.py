"""The linearizable read coalescer (server/read_index.py) over a fake node whose ReadIndex requests the test
answers by hand: one round in flight at a time, later reads wait for the next round, failures are etcd's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from quorumkv import errors
from quorumkv.errors import EtcdError
from quorumkv.server.read_index import ReadIndexBatcher

pytestmark = pytest.mark.timeout(30)


class FakeNode:
    def __init__(self, lead: int = 1) -> None:
        self.lead = lead
        self.requests: list[asyncio.Future[None]] = []

    def read_index(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.requests.append(fut)
        return fut


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


def test_reads_queued_while_a_round_is_in_flight_share_the_next_round() -> None:
    async def body() -> None:
        node, b = FakeNode(), ReadIndexBatcher(timeout_s=30)
        first = [asyncio.create_task(b.wait(node)) for _ in range(3)]  # type: ignore[arg-type]
        await settle()
        assert len(node.requests) == 1 and b.in_flight
        later = [asyncio.create_task(b.wait(node)) for _ in range(20)]  # type: ignore[arg-type]
        await settle()
        assert len(node.requests) == 1, "a read joined or started a round while one was in flight"
        assert not any(t.done() for t in first + later)
        node.requests[0].set_result(None)
        await settle()
        assert all(t.done() and t.exception() is None for t in first)
        assert not any(t.done() for t in later), "reads that came after the round started were served by it"
        assert len(node.requests) == 2  # the next round starts at once, for all of them
        node.requests[1].set_result(None)
        await settle()
        assert all(t.done() and t.exception() is None for t in later)
        assert b.rounds == 2 and not b.in_flight
    run(body)


def test_a_round_that_times_out_fails_its_reads_and_the_next_round_starts() -> None:
    async def body() -> None:
        node, b = FakeNode(), ReadIndexBatcher(timeout_s=0.2)
        stuck = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        await settle()
        queued = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        with pytest.raises(EtcdError) as exc:
            await asyncio.wait_for(stuck, 10)
        assert exc.value is errors.TIMEOUT
        assert b.slow_rounds == 1
        assert node.requests[0].cancelled(), "the abandoned request must be cancelled so the node stops asking"
        await settle()
        assert len(node.requests) == 2 and not queued.done()
        node.requests[1].set_result(None)
        await asyncio.wait_for(queued, 10)
    run(body)


def test_a_leader_change_fails_the_round_in_flight_with_leader_changed() -> None:
    async def body() -> None:
        node, b = FakeNode(lead=1), ReadIndexBatcher(timeout_s=30)
        t = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        await settle()
        b.leader_changed(1)  # not a change
        await settle()
        assert not t.done()
        node.lead = 2
        b.leader_changed(2)
        with pytest.raises(EtcdError) as exc:
            await t
        assert exc.value is errors.LEADER_CHANGED
        t2 = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        await settle()
        node.lead = 0
        b.leader_changed(0)
        with pytest.raises(EtcdError) as exc:
            await t2
        assert exc.value is errors.NO_LEADER
        assert b.failed_rounds == 2
    run(body)


def test_a_round_asked_without_a_leader_is_asked_again_of_the_new_leader() -> None:
    async def body() -> None:
        node, b = FakeNode(lead=0), ReadIndexBatcher(timeout_s=30)
        t = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        await settle()
        node.lead = 3
        b.leader_changed(3)
        await settle()
        assert len(node.requests) == 2 and node.requests[0].cancelled() and not t.done()
        node.requests[1].set_result(None)
        await asyncio.wait_for(t, 10)
    run(body)


def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    async def body() -> None:
        node, b = FakeNode(), ReadIndexBatcher(timeout_s=30)
        a = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        c = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        await settle()
        a.cancel()
        await settle()
        node.requests[0].set_result(None)
        await asyncio.wait_for(c, 10)
        assert a.cancelled()
        # a caller that gave up before its round started costs no round
        d = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        d.cancel()
        await settle()
        assert len(node.requests) == 1
    run(body)


def test_stopping_fails_every_waiting_read() -> None:
    async def body() -> None:
        node, b = FakeNode(), ReadIndexBatcher(timeout_s=30)
        t1 = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        await settle()
        t2 = asyncio.create_task(b.wait(node))  # type: ignore[arg-type]
        await settle()
        b.fail_all(errors.STOPPED)
        for t in (t1, t2):
            with pytest.raises(EtcdError) as exc:
                await t
            assert exc.value is errors.STOPPED
    run(body)
