"""In-process isolation: the member's asyncio loop runs in a dedicated daemon thread of the host.

The host's own event loop (if any) is never touched; the member shares the host's GIL and CPU.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from quorumkv.app import HttpOptions, RunningMember, TLSFiles, start_member
from quorumkv.embed._handle import EmbedError, Handle, Isolation
from quorumkv.server.config import ServerConfig
from quorumkv.server.settings import ServerSettings

__all__ = ["InProcessHandle"]

log = logging.getLogger("quorumkv.embed")


class InProcessHandle(Handle):
    """A member served by an event loop in thread ``quorumkv-embed-<name>``.

    Invariants: ``_settled`` is set exactly when the member is serving or its startup failed (then
    ``_error`` holds the original exception); the loop thread ends only after the gRPC server and the
    member (and its data-dir lock) are closed.
    """

    def __init__(self, config: ServerConfig, endpoints: list[str]) -> None:
        super().__init__(config.name, endpoints)
        self._config = config
        self._lock = threading.Lock()
        self._settled = threading.Event()
        self._error: BaseException | None = None
        self._member: RunningMember | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"quorumkv-embed-{config.name}", daemon=True)

    @property
    def isolation(self) -> Isolation:
        return "in-process"

    @property
    def is_running(self) -> bool:
        return self._member is not None and self._thread.is_alive() and not self._closing

    def start(self) -> None:
        """Start the loop thread; returns at once (see :meth:`wait_ready`)."""
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported through wait_ready(); the thread must not die noisily
            if not self._settled.is_set():
                self._error = exc
            else:
                log.error("embedded member %r stopped with an error", self.name, exc_info=exc)
        finally:
            self._settled.set()

    async def _serve(self) -> None:
        stop = asyncio.Event()
        with self._lock:
            self._loop, self._stop = asyncio.get_running_loop(), stop
            if self._closing:
                return
        cfg = self._config
        tls = TLSFiles(
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            trusted_ca_file=cfg.trusted_ca_file,
            client_cert_auth=cfg.client_cert_auth,
        )
        member = await start_member(ServerSettings.from_config(cfg), list(cfg.listen_client_urls), tls,
                                    HttpOptions.from_config(cfg))
        self._member = member
        self._settled.set()
        try:
            await stop.wait()
        finally:
            await member.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        if not self._settled.wait(timeout_s):
            raise EmbedError(f"quorumkv member {self.name!r} (in-process) not ready within {timeout_s:g}s")
        if self._error is not None:
            raise EmbedError(
                f"quorumkv member {self.name!r} (in-process) failed to start: {self._error}"
            ) from self._error
        if self._closing:
            raise EmbedError(f"quorumkv member {self.name!r} (in-process) is closed")

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the gRPC server and the member, then join the loop thread (raises :class:`EmbedError` on timeout)."""
        with self._lock:
            self._closing = True
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already finished
        if self._thread.ident is None or self._thread is threading.current_thread():
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise EmbedError(f"quorumkv member {self.name!r} (in-process) did not stop within {timeout_s:g}s")
