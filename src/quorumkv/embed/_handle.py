"""The :class:`Handle` interface shared by both isolation modes, and :class:`EmbedError`."""

from __future__ import annotations

import abc
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from quorumkv.client import AsyncClient, Client

__all__ = ["EmbedError", "Handle", "Isolation"]

Isolation = Literal["in-process", "process"]


class EmbedError(RuntimeError):
    """An embedded member failed to start, stopped unexpectedly or did not stop in time.

    The message names the member and the cause; for a child process it ends with the tail of the child's log.
    """


class Handle(abc.ABC):
    """A started embedded member.

    Invariants: :meth:`close` is idempotent and, once it returns, the member no longer serves, its client
    ports are closed and its data-dir lock is released; no restart happens after :meth:`close` began.
    Usable as a context manager (``with start(cfg) as handle: ...`` closes on exit).
    """

    def __init__(self, name: str, endpoints: list[str]) -> None:
        self._name = name
        self._endpoints = list(endpoints)

    @property
    @abc.abstractmethod
    def isolation(self) -> Isolation:
        """``"in-process"`` or ``"process"``."""

    @property
    def name(self) -> str:
        """The member name (``--name``)."""
        return self._name

    @property
    def client_endpoints(self) -> list[str]:
        """``host:port`` addresses a local gRPC client dials, one per listen client URL (a fresh list)."""
        return list(self._endpoints)

    @property
    @abc.abstractmethod
    def is_running(self) -> bool:
        """True while the member is up and serving client requests."""

    @property
    def pid(self) -> int | None:
        """The child's process id in process mode while one exists; None in-process or after close."""
        return None

    @property
    def log_path(self) -> Path | None:
        """The file the child's stdout/stderr go to (process mode); None in-process (the host's logging)."""
        return None

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted a crashed child (always 0 in-process)."""
        return 0

    def client(self, **options: Any) -> Client:
        """A :class:`quorumkv.client.Client` for this member's client endpoints (close it yourself, or use
        ``with handle.client() as c:``). ``options`` go to the client (``timeout``, ``ca_cert``, ``user``, ...);
        for https listeners pass the TLS options the member expects."""
        from quorumkv.client import Client

        return Client(self.client_endpoints, **options)

    def async_client(self, **options: Any) -> AsyncClient:
        """An :class:`quorumkv.client.AsyncClient` for this member (create it inside the event loop that uses it)."""
        from quorumkv.client import AsyncClient

        return AsyncClient(self.client_endpoints, **options)

    @abc.abstractmethod
    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the member serves client requests, at most ``timeout_s`` seconds.

        Raises :class:`EmbedError` if it failed to start (the original error's message is included), gave up
        restarting, was closed, or is not ready in time.
        """

    @abc.abstractmethod
    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the member gracefully within about ``timeout_s`` seconds; idempotent."""

    def __enter__(self) -> Handle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self.isolation} endpoints={self._endpoints}>"
