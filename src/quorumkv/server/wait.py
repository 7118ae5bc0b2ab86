"""The member's wait registry (etcd's ``wait.Wait``): one future per proposed request ID.

The proposer registers the future on the event loop before the entry is handed to the node, and the node engine
only reports ``{request_id: response}`` once the entry is applied here, so exactly one object owns every waiter
whatever engine runs. ``__contains__`` is also called from the Raft thread (the applier asks whether a response is
wanted); it reads a dict, which is safe without a lock.
"""

from __future__ import annotations

import asyncio


class WaitRegistry:
    """Futures keyed by request ID (IDs come from the member's one ``IdGenerator``)."""

    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[object]] = {}

    def register(self, request_id: int) -> asyncio.Future[object]:
        """A new future for ``request_id`` (on the running event loop)."""
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        return fut

    def trigger(self, request_id: int, response: object) -> None:
        """Resolve ``request_id``'s future with ``response`` (raised if it is an exception); unknown or already
        settled IDs (the caller gave up) are ignored."""
        fut = self._futures.pop(request_id, None)
        if fut is None or fut.done():
            return
        if isinstance(response, BaseException):
            fut.set_exception(response)
        else:
            fut.set_result(response)

    def cancel(self, request_id: int) -> None:
        """The caller stopped waiting: forget the future (a later response is dropped)."""
        self._futures.pop(request_id, None)

    def fail_all(self, err: BaseException) -> None:
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(err)
        self._futures.clear()

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._futures

    def __len__(self) -> int:
        return len(self._futures)
