"""Process isolation: the member runs as a supervised ``python -m quorumkv`` child.

Design choices (see ``docs/embedding.md``):

* The child gets every setting as a flag (:func:`config_to_args`) and an environment without ``ETCD_*``
  variables or ``QUORUMKV_<FLAG>`` ones, so the host's environment cannot change or override the config.
* It runs in its own session (``start_new_session``), so a terminal's Ctrl-C or a signal to the host's process
  group does not reach it; :meth:`ProcessHandle.close` stops it with SIGTERM, then SIGKILL.
* It dies with the host through Linux's ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` set in ``preexec_fn``. The
  kernel sends that signal when the *thread* that forked the child exits, so children are always spawned by
  the supervisor thread, which outlives them. Elsewhere only :func:`atexit` cleanup applies.
* Ready means ``Maintenance.Status`` answers on a client endpoint while the child is alive; before spawning,
  the endpoints must not already accept connections, so another server cannot be mistaken for the child.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

import quorumkv
from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from quorumkv.embed._args import config_to_args
from quorumkv.embed._handle import EmbedError, Handle, Isolation
from quorumkv.server.config import ServerConfig
from quorumkv.server.config_sources import COMPAT_FLAGS, FLAG_SPECS, env_names

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "STABLE_AFTER_S",
    "ProbeTarget",
    "ProcessHandle",
    "default_log_path",
    "read_log_tail",
]

log = logging.getLogger("quorumkv.embed")

#: Restart backoff doubles from the first value up to the second.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 8.0
#: A child that has served this long resets the restart budget and the backoff.
STABLE_AFTER_S = 60.0
_PROBE_INTERVAL_S = 0.1
_PROBE_DEADLINE_S = 0.5
_LOG_TAIL_LINES = 25
_PR_SET_PDEATHSIG = 1

State = Literal["starting", "ready", "backoff", "failed", "closed"]

_open_handles: weakref.WeakSet[ProcessHandle] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for handle in list(_open_handles):
        handle.close(timeout_s=5.0)


atexit.register(_close_all_at_exit)


def default_log_path(config: ServerConfig) -> Path:
    """``<data-dir>.log`` beside the data dir: ``/var/lib/kv/m1.quorumkv`` -> ``/var/lib/kv/m1.quorumkv.log``."""
    data_dir = Path(config.data_dir).absolute()
    return data_dir.parent / f"{data_dir.name}.log"


def _config_env_names() -> frozenset[str]:
    """Every ``QUORUMKV_*``/``ETCD_*`` variable the CLI reads as a setting (flags and the config file)."""
    flags = [*(s.flag for s in FLAG_SPECS), *(c.flag for c in COMPAT_FLAGS), "config-file"]
    return frozenset(name for flag in flags for name in env_names(flag))


def _child_env() -> dict[str, str]:
    """The host's environment minus every ``ETCD_*`` and setting-bearing ``QUORUMKV_*`` variable.

    Those would override (``ETCD_CONFIG_FILE`` would replace) the flags built from the config. This quorumkv's
    package root is put first on ``PYTHONPATH`` so the child runs the same code as the host.
    """
    settings = _config_env_names()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_") and k not in settings}
    package_root = str(Path(quorumkv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` arming SIGTERM-on-parent-death (Linux), or None where prctl is unavailable.

    The ctypes function is resolved here, in the parent, so the forked child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent_pid:  # the host died before prctl took effect
            os._exit(1)

    return preexec


def _accepts_connections(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def read_log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path`` (at most 16 KiB read), or a note that it cannot be read."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class ProbeTarget:
    """Where the readiness probe dials: a ``host:port``, TLS credentials for https, the TLS name to verify."""

    endpoint: str
    credentials: grpc.ChannelCredentials | None = None
    server_name: str | None = None

    def channel(self) -> grpc.Channel:
        """A new channel to :attr:`endpoint` (the caller closes it)."""
        if self.credentials is None:
            return grpc.insecure_channel(self.endpoint)
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(self.endpoint, self.credentials, options=options)


class ProcessHandle(Handle):
    """A member in a supervised child process.

    Invariants: children are spawned only by the supervisor thread while holding ``_cond`` and only when
    ``_closing`` is unset, so after :meth:`close` sets it under ``_cond`` no new child can appear; at most one
    child exists at a time; ``_state`` is ``failed``/``closed`` forever once reached.
    """

    def __init__(
        self,
        config: ServerConfig,
        endpoints: list[str],
        *,
        log_path: Path,
        ready_timeout_s: float,
        restart_on_crash: bool,
        max_restarts: int,
        probes: list[ProbeTarget],
    ) -> None:
        super().__init__(config.name, endpoints)
        self._argv = [sys.executable, "-m", "quorumkv", *config_to_args(config)]
        self._env = _child_env()
        self._cwd = os.getcwd()
        self._log_path = log_path
        self._ready_timeout_s = ready_timeout_s
        self._restart_on_crash = restart_on_crash
        self._max_restarts = max_restarts
        self._probes = list(probes)
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._state: State = "starting"
        self._failure = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._restarts = 0
        self._consecutive = 0
        self._spawns = 0
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"quorumkv-embed-supervisor-{config.name}", daemon=True
        )

    @property
    def isolation(self) -> Isolation:
        return "process"

    @property
    def is_running(self) -> bool:
        with self._cond:
            return self._state == "ready" and self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        with self._cond:
            proc = self._proc
            return proc.pid if proc is not None and self._state != "closed" and proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def restarts(self) -> int:
        with self._cond:
            return self._restarts

    @property
    def argv(self) -> list[str]:
        """The child's command line (a fresh list)."""
        return list(self._argv)

    def start(self) -> None:
        """Start the supervisor, which spawns the first child; returns at once (see :meth:`wait_ready`)."""
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        _open_handles.add(self)
        self._supervisor.start()

    # -- supervisor thread -------------------------------------------------------------------------------

    def _note(self, message: str) -> None:
        """Append a supervisor line to the child's log file (best effort)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            with open(self._log_path, "a", encoding="utf-8") as fh:
                fh.write(f"--- quorumkv.embed {stamp}: {message}\n")
        except OSError:
            pass

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._spawns += 1
        self._note(f"starting child #{self._spawns}: {' '.join(self._argv)}")
        with open(self._log_path, "ab") as out:
            return subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(os.getpid()),
            )

    def _fail(self, message: str) -> None:
        """Record a terminal failure (caller holds ``_cond``)."""
        self._state = "failed"
        self._failure = message
        self._note(message)
        log.error("%s", message)
        self._cond.notify_all()

    def _probe(self, channels: list[grpc.Channel]) -> bool:
        for channel in channels:
            try:
                stub = rpc_pb2_grpc.MaintenanceStub(channel)  # type: ignore[no-untyped-call]
                stub.Status(rpc_pb2.StatusRequest(), timeout=_PROBE_DEADLINE_S)
                return True
            except grpc.RpcError:
                continue
        return False

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """Poll until the child answers (True), exits, is too slow (killed) or close() began (False).

        Every round dials on fresh channels: a channel made before the child listens goes through gRPC's
        reconnect backoff (1 s growing 1.6x: the child was seen ready up to 6 s late), and grpc-core's client
        was seen to leave such a channel's later connection unstarted until its 20 s connect timeout (no
        preface sent) when the server does not speak first, as the client port's front does not."""
        channels: list[grpc.Channel] = []
        deadline = time.monotonic() + self._ready_timeout_s
        try:
            while not self._closing.is_set() and proc.poll() is None:
                for channel in channels:
                    channel.close()
                channels = [probe.channel() for probe in self._probes]
                if self._probe(channels) and proc.poll() is None:
                    return True
                if time.monotonic() > deadline:
                    self._note(f"child pid {proc.pid} not ready within {self._ready_timeout_s:g}s; killing it")
                    proc.kill()
                    proc.wait()
                    return False
                self._closing.wait(_PROBE_INTERVAL_S)
            return False
        finally:
            for channel in channels:
                channel.close()

    def _supervise(self) -> None:
        backoff = BACKOFF_INITIAL_S
        ever_ready = False
        while True:
            with self._cond:
                if self._closing.is_set():
                    return
                busy = [ep for ep in self._endpoints if _accepts_connections(ep)]
                if busy and not ever_ready:
                    self._fail(
                        f"quorumkv member {self.name!r}: client endpoint(s) {', '.join(busy)} already accept "
                        "connections (another server is listening); choose free --listen-client-urls"
                    )
                    return
                proc: subprocess.Popen[bytes] | None = None
                if not busy:
                    try:
                        proc = self._proc = self._spawn()
                    except OSError as exc:
                        self._fail(f"quorumkv member {self.name!r}: cannot start {self._argv[0]}: {exc}")
                        return
                    self._state = "starting"
            started = time.monotonic()
            if proc is not None and self._await_ready(proc):
                with self._cond:
                    if not self._closing.is_set():
                        self._state = "ready"
                        ever_ready = True
                        self._cond.notify_all()
                proc.wait()
            if self._closing.is_set():
                return
            with self._cond:
                if proc is None:
                    what = f"client endpoint(s) {', '.join(busy)} busy before restart"
                else:
                    what = f"child pid {proc.pid} exited with code {proc.returncode}"
                if not ever_ready:
                    self._fail(f"quorumkv member {self.name!r} failed to start: {what}")
                    return
                if time.monotonic() - started >= STABLE_AFTER_S:
                    self._consecutive = 0
                    backoff = BACKOFF_INITIAL_S
                if not self._restart_on_crash:
                    self._fail(f"quorumkv member {self.name!r} stopped: {what} (restart_on_crash=False)")
                    return
                if self._consecutive >= self._max_restarts:
                    self._fail(
                        f"quorumkv member {self.name!r} stopped: {what}; gave up after {self._consecutive} "
                        f"consecutive restart(s) (max_restarts={self._max_restarts})"
                    )
                    return
                self._consecutive += 1
                self._restarts += 1
                self._state = "backoff"
                self._note(f"{what}; restarting in {backoff:g}s (restart {self._consecutive}/{self._max_restarts})")
                log.warning("embedded member %r: %s; restarting in %gs", self.name, what, backoff)
            if self._closing.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    # -- caller side -------------------------------------------------------------------------------------

    def _describe(self, headline: str) -> str:
        return f"{headline}\n--- last lines of {self._log_path} ---\n{read_log_tail(self._log_path)}"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        with self._cond:
            settled = self._cond.wait_for(lambda: self._state in ("ready", "failed", "closed"), timeout_s)
            state, failure = self._state, self._failure
        if state == "ready":
            return
        if state == "closed":
            raise EmbedError(f"quorumkv member {self.name!r} (process) is closed")
        if not settled:
            raise EmbedError(self._describe(f"quorumkv member {self.name!r} (process) not ready within {timeout_s:g}s"))
        raise EmbedError(self._describe(failure))

    def close(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the child, wait up to ``timeout_s``, then SIGKILL; stop the supervisor. Idempotent."""
        with self._cond:
            if self._state == "closed":
                return
            self._closing.set()
            proc = self._proc
            self._cond.notify_all()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._note(f"child pid {proc.pid} did not stop within {timeout_s:g}s of SIGTERM; sending SIGKILL")
                proc.kill()
                proc.wait()
        if self._supervisor.ident is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout_s + 5.0)
        with self._cond:
            if proc is not None:
                self._note(f"closed; child pid {proc.pid} exited with code {proc.returncode}")
            self._state = "closed"
            self._cond.notify_all()
        _open_handles.discard(self)
