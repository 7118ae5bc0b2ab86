"""Watches of the sync and async clients, against etcd 3.4 and quorumkv."""

from __future__ import annotations

import threading

import pytest

from quorumkv.client import AsyncClient, Client, CompactedError, Event, Watch
from quorumkv.testing.processes import ServerProcess

WAIT_S = 15.0


def take(watch: Watch, n: int) -> list[Event]:
    """The next ``n`` events (bounded wait)."""
    out: list[Event] = []
    for _ in range(200):
        if len(out) >= n:
            break
        response = watch.get(timeout=WAIT_S)
        assert response is not None, f"watch delivered only {len(out)} of {n} events"
        out.extend(response.events)
    return out


def test_watch_prefix_sees_puts_and_deletes_in_order(client: Client, ns: str) -> None:
    with client.watch_prefix(ns, prev_kv=True) as w:
        assert w.created.wait(WAIT_S)
        client.put(ns + "a", "1")
        client.put(ns + "b", "2")
        client.put(ns + "a", "3")
        client.delete(ns + "a")
        client.put("elsewhere-" + ns, "x")
        events = take(w, 4)
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        ("PUT", (ns + "a").encode(), b"1"), ("PUT", (ns + "b").encode(), b"2"),
        ("PUT", (ns + "a").encode(), b"3"), ("DELETE", (ns + "a").encode(), b""),
    ]  # fmt: skip
    assert events[2].prev_kv is not None and events[2].prev_kv.value == b"1"
    assert events[3].prev_kv is not None and events[3].prev_kv.value == b"3"
    revs = [e.kv.mod_revision for e in events]
    assert revs == sorted(revs) and len(set(revs)) == 4


def test_watch_from_start_revision_replays_history(client: Client, ns: str) -> None:
    first = client.put(ns + "k", "1").header.revision
    client.put(ns + "k", "2")
    client.put(ns + "k", "3")
    with client.watch(ns + "k", start_revision=first + 1) as w:
        events = take(w, 2)
        assert w.next_revision == first + 3
    assert [e.kv.value for e in events] == [b"2", b"3"]


def test_watch_iterator_stops_when_loop_is_left(client: Client, ns: str) -> None:
    start = client.put(ns + "base", "-").header.revision
    writer = threading.Timer(0.3, lambda: [client.put(f"{ns}{i}", str(i)) for i in range(3)])
    writer.start()
    seen: list[bytes] = []
    watch = client.watch_prefix(ns, start_revision=start + 1)
    for event in watch:
        seen.append(event.kv.value)
        if len(seen) == 3:
            break
    writer.join(WAIT_S)
    assert seen == [b"0", b"1", b"2"]
    watch.close()
    assert watch.get(timeout=0.1) is None


def test_compacted_start_revision_raises_with_compact_revision(client: Client, ns: str) -> None:
    first = client.put(ns + "c", "1").header.revision
    latest = client.put(ns + "c", "2").header.revision
    client.compact(latest)
    with client.watch(ns + "c", start_revision=first) as w, pytest.raises(CompactedError) as err:
        take(w, 1)
    assert err.value.compact_revision == latest


def test_progress_notifications(client: Client, ns: str) -> None:
    with client.watch(ns + "quiet", progress_notify=True) as w:
        assert w.created.wait(WAIT_S)
        head = client.put(ns + "other", "x").header.revision
        progress = None
        for _ in range(20):
            w.request_progress()
            response = w.get(timeout=3.0)
            if response is not None and response.progress_notify and response.header.revision >= head:
                progress = response
                break
        assert progress is not None and progress.events == ()
        assert w.next_revision == progress.header.revision + 1


def test_filters_drop_puts(client: Client, ns: str) -> None:
    with client.watch(ns + "f", filters=("NOPUT",)) as w:
        assert w.created.wait(WAIT_S)
        client.put(ns + "f", "1")
        client.delete(ns + "f")
        events = take(w, 1)
    assert [e.type for e in events] == ["DELETE"]


async def test_async_watch(server: ServerProcess, ns: str) -> None:
    async with AsyncClient(server.client_url) as aclient:
        start = (await aclient.put(ns + "a", "0")).header.revision
        await aclient.put(ns + "a", "1")
        seen = []
        async with aclient.watch_prefix(ns, start_revision=start) as w:
            async for event in w:
                seen.append(event.kv.value)
                if len(seen) == 2:
                    break
        assert seen == [b"0", b"1"]
        await aclient.compact(start + 1)
        with pytest.raises(CompactedError) as err:
            async for _ in aclient.watch(ns + "a", start_revision=start):
                pass
        assert err.value.compact_revision == start + 1
