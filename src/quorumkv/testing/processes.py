"""Start and stop real ``etcd`` / quorumkv server processes and drive the real ``etcdctl`` against them.

Used by the interop and differential tests (``tests/interop``).  Everything here talks to 127.0.0.1 only:
servers listen on free loopback ports, ``etcdctl`` is only ever pointed at loopback endpoints and runs with
proxy variables removed from its environment.

:func:`normalize` turns ``etcdctl`` output into a form that compares equal between two servers that behaved
the same way: volatile identifiers (cluster/member IDs, lease IDs, raft term/index, URLs, DB sizes, versions,
durations, client log timestamps) become stable placeholders.  Revisions, keys, values, counts, error
messages and event order are left untouched, so a behavioural difference still shows up as a difference.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import quorumkv

__all__ = [
    "CLIENTS",
    "ETCDCTL_BIN",
    "ETCD_BIN",
    "BackgroundEtcdctl",
    "ServerNotReady",
    "ServerProcess",
    "ServerTLS",
    "client_command",
    "client_env",
    "etcdctl_env",
    "free_port",
    "normalize",
    "quorumkv_env",
    "run_etcdctl",
    "start_etcd",
    "start_etcdctl",
    "start_quorumkv",
]

ETCD_BIN = os.environ.get("QUORUMKV_ETCD_BIN", "etcd")
ETCDCTL_BIN = os.environ.get("QUORUMKV_ETCDCTL_BIN", "etcdctl")

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "no_proxy")
#: Key read by :meth:`ServerProcess.wait_ready`; a read never changes the revision.
READINESS_PROBE_KEY = "quorumkv-readiness-probe"


class ServerNotReady(RuntimeError):
    """A server did not become ready in time (or exited); the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment minus anything that could redirect etcd/etcdctl or send traffic to a proxy."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ETCD_", "ETCDCTL_")) and key.lower() not in _PROXY_VARS
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,127.0.0.0/8,localhost,::1"
    if extra:
        env.update(extra)
    return env


def etcdctl_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an ``etcdctl`` child: API v3, no proxies, no inherited ``ETCDCTL_*`` settings."""
    env = _clean_env(extra)
    env["ETCDCTL_API"] = "3"
    return env


def _is_loopback_ip(host: str) -> bool:
    """Any 127.0.0.0/8 address (tests give members distinct loopback IPs)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_loopback(endpoint: str) -> None:
    for one in endpoint.split(","):
        host = urlsplit(one if "://" in one else f"http://{one}").hostname or ""
        if host not in _LOOPBACK_HOSTS and not _is_loopback_ip(host):
            raise ValueError(f"refusing to run etcdctl against non-loopback endpoint {one!r}")


#: The command-line clients the scenario runner can drive: etcdctl 3.4 itself, or quorumkvctl (this checkout).
CLIENTS = ("etcdctl", "quorumkvctl")


def client_command(client: str = "etcdctl") -> list[str]:
    """argv prefix that runs ``client``: the etcdctl binary, or ``python -m quorumkv.cli.ctl``."""
    if client == "etcdctl":
        return [ETCDCTL_BIN]
    if client == "quorumkvctl":
        return [sys.executable, "-m", "quorumkv.cli.ctl"]
    raise ValueError(f"unknown client {client!r} (expected one of {CLIENTS})")


def client_env(client: str = "etcdctl", extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`etcdctl_env`, plus ``PYTHONPATH=<repo>/src`` for quorumkvctl (no install needed)."""
    env = etcdctl_env(extra)
    if client == "quorumkvctl":
        src = str(quorumkv_src_dir())
        previous = env.get("PYTHONPATH")
        env["PYTHONPATH"] = src if not previous else f"{src}{os.pathsep}{previous}"
    return env


def _etcdctl_argv(
    endpoint: str, args: Sequence[str], write_out: str | None, client: str = "etcdctl"
) -> list[str]:
    _check_loopback(endpoint)
    argv = [*client_command(client), f"--endpoints={endpoint}"]
    if write_out is not None:
        argv.append(f"--write-out={write_out}")
    argv.extend(args)
    return argv


def _decode(data: bytes) -> str:
    """Output bytes as text; undecodable bytes stay visible (and comparable) as ``\\xNN`` escapes."""
    return data.decode("utf-8", errors="backslashreplace")


def run_etcdctl(
    endpoint: str,
    *args: str,
    stdin: str | bytes | None = None,
    timeout_s: float = 20.0,
    env: Mapping[str, str] | None = None,
    write_out: str | None = None,
    client: str = "etcdctl",
) -> subprocess.CompletedProcess[str]:
    """Run ``etcdctl --endpoints=ENDPOINT [--write-out=W] ARGS...`` with ``ETCDCTL_API=3``.

    Arguments may carry arbitrary non-NUL bytes as surrogate-escaped ``str`` (see :func:`os.fsdecode`).
    stdout/stderr are decoded as UTF-8 with invalid bytes shown as ``\\xNN``.  Never raises on a non-zero
    exit; raises :class:`subprocess.TimeoutExpired` when ``timeout_s`` passes (the child is killed).
    """
    argv = _etcdctl_argv(endpoint, args, write_out, client)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        argv,
        input=data if data is not None else b"",
        capture_output=True,
        timeout=timeout_s,
        env=client_env(client, env),
        check=False,
    )
    return subprocess.CompletedProcess(argv, proc.returncode, _decode(proc.stdout), _decode(proc.stderr))


class BackgroundEtcdctl:
    """A long-running ``etcdctl`` (e.g. ``watch``) whose output is collected by reader threads."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        self.argv = argv
        self._popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env)
        )
        self.pid = self._popen.pid
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._out = bytearray()
        self._err = bytearray()
        self._last_change = time.monotonic()
        assert self._popen.stdout is not None and self._popen.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump, args=(self._popen.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self._popen.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: IO[bytes], sink: bytearray) -> None:
        while True:
            chunk = os.read(stream.fileno(), 65536)
            with self._changed:
                if chunk:
                    sink.extend(chunk)
                self._last_change = time.monotonic()
                self._changed.notify_all()
            if not chunk:
                stream.close()
                return

    @property
    def stdout(self) -> str:
        with self._lock:
            return _decode(bytes(self._out))

    @property
    def stderr(self) -> str:
        with self._lock:
            return _decode(bytes(self._err))

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def wait_lines(self, count: int, timeout_s: float) -> bool:
        """Wait (bounded) until stdout holds at least ``count`` complete lines; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._out.count(b"\n") < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._popen.poll() is not None and not self._readers_alive()):
                    return self._out.count(b"\n") >= count
                self._changed.wait(min(remaining, 0.05))
        return True

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> bool:
        """Wait (bounded) until no output has arrived for ``quiet_s`` seconds; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                idle = time.monotonic() - self._last_change
            if idle >= quiet_s:
                return True
            time.sleep(min(quiet_s - idle, max(deadline - time.monotonic(), 0.0), 0.05) or 0.01)
        return False

    def wait_exit(self, timeout_s: float) -> int | None:
        """Wait (bounded) for the process to exit on its own; its exit code, or None on timeout."""
        try:
            code = self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._join_readers(timeout_s=5.0)
        return code

    def _readers_alive(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def _join_readers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for reader in self._readers:
            reader.join(max(deadline - time.monotonic(), 0.0))

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 5.0) -> int:
        """Signal this process (only this pid), escalate to SIGKILL after ``timeout_s``; its exit code."""
        if self._popen.poll() is None:
            self._popen.send_signal(sig)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout=timeout_s)
        self._join_readers(timeout_s=5.0)
        return self._popen.returncode


def start_etcdctl(
    endpoint: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    write_out: str | None = None,
    client: str = "etcdctl",
) -> BackgroundEtcdctl:
    """Start ``etcdctl ARGS...`` in the background (e.g. ``watch``); see :meth:`BackgroundEtcdctl.stop`.

    ``client="quorumkvctl"`` runs quorumkvctl from this checkout instead.
    """
    return BackgroundEtcdctl(_etcdctl_argv(endpoint, args, write_out, client), client_env(client, env))


@dataclass(frozen=True)
class ServerTLS:
    """mTLS on a server's client and peer links (files from :func:`quorumkv.testing.pki.make_pki`): the server
    flags, and the ``ETCDCTL_CACERT/CERT/KEY`` environment etcdctl (and quorumkvctl) dial with."""

    ca: str
    server_cert: str
    server_key: str
    peer_cert: str
    peer_key: str
    client_cert: str
    client_key: str

    def server_args(self) -> list[str]:
        return ["--cert-file", self.server_cert, "--key-file", self.server_key, "--trusted-ca-file", self.ca,
                "--client-cert-auth", "--peer-cert-file", self.peer_cert, "--peer-key-file", self.peer_key,
                "--peer-trusted-ca-file", self.ca, "--peer-client-cert-auth"]

    def etcdctl_env(self) -> dict[str, str]:
        return {"ETCDCTL_CACERT": self.ca, "ETCDCTL_CERT": self.client_cert, "ETCDCTL_KEY": self.client_key}


@dataclass
class ServerProcess:
    """One server process started by this module (a real etcd or quorumkv), listening on loopback."""

    kind: str
    pid: int
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    name: str = "default"
    #: Filled in by :meth:`wait_ready` from a response header.
    cluster_id: int | None = None
    member_id: int | None = None
    #: Lease IDs seen in this server's output, in order of first appearance (see :func:`normalize`).
    lease_ids: list[int] = field(default_factory=list)
    #: Extra etcdctl environment (``ServerTLS.etcdctl_env()``) for the readiness probe and :meth:`etcdctl`.
    etcdctl_env: dict[str, str] | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _log_file: IO[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def client_port(self) -> int:
        return urlsplit(self.client_url).port or 0

    @property
    def peer_port(self) -> int:
        return urlsplit(self.peer_url).port or 0

    @property
    def returncode(self) -> int | None:
        """The exit code if the process has exited, else None."""
        return self._popen.poll() if self._popen is not None else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_tail(self, max_lines: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="backslashreplace").splitlines()
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"
        return "\n".join(lines[-max_lines:])

    def etcdctl(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """:func:`run_etcdctl` against this server's client URL."""
        if self.etcdctl_env is not None:
            kwargs["env"] = {**self.etcdctl_env, **dict(kwargs.get("env") or {})}  # type: ignore[call-overload]
        return run_etcdctl(self.client_url, *args, **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Poll (bounded) until a linearizable read succeeds; records cluster_id/member_id from its header.

        The probe is a ``get`` of :data:`READINESS_PROBE_KEY`, so it never changes the store's revision.
        Raises :class:`ServerNotReady` with the tail of the server log on timeout or if the process exits.
        """
        deadline = time.monotonic() + timeout_s
        last = "no attempt made"
        while True:
            if not self.alive():
                raise ServerNotReady(
                    f"{self.kind} server (pid {self.pid}) exited with code {self.returncode} before becoming "
                    f"ready on {self.client_url}; last probe: {last}\n--- log tail ({self.log_path}) ---\n"
                    f"{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerNotReady(
                    f"{self.kind} server (pid {self.pid}) not ready on {self.client_url} after {timeout_s}s; "
                    f"last probe: {last}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            if _tcp_connectable(self.client_url, timeout_s=min(0.5, remaining)):
                try:
                    probe = run_etcdctl(
                        self.client_url,
                        "--dial-timeout=1s",
                        "--command-timeout=2s",
                        "get",
                        READINESS_PROBE_KEY,
                        write_out="json",
                        timeout_s=max(min(5.0, remaining), 0.5),
                        env=self.etcdctl_env,
                    )
                except subprocess.TimeoutExpired:
                    last = "etcdctl get timed out"
                else:
                    if probe.returncode == 0:
                        try:
                            header = json.loads(probe.stdout)["header"]
                            self.cluster_id = int(header["cluster_id"])
                            self.member_id = int(header["member_id"])
                        except (ValueError, KeyError, TypeError) as exc:
                            last = f"unparsable get -w json output ({exc}): {probe.stdout!r}"
                        else:
                            return
                    else:
                        last = f"etcdctl get exited {probe.returncode}: {probe.stderr.strip()[-500:]}"
            else:
                last = "TCP connect refused"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        """Send ``sig`` to this server's pid only; SIGKILL it if it has not exited after ``timeout_s``.

        Idempotent. Returns the exit code (None if the process could not be reaped, which should not happen).
        """
        popen = self._popen
        code: int | None = None
        if popen is not None:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(sig)
                try:
                    popen.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        popen.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        popen.wait(timeout=timeout_s)
            code = popen.poll()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def kill9(self) -> int | None:
        """SIGKILL this server's pid (a crash, no clean shutdown) and reap it."""
        return self.stop(signal.SIGKILL, timeout_s=10.0)


def _tcp_connectable(url: str, timeout_s: float) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=timeout_s):
            return True
    except OSError:
        return False


def spawn_server(
    kind: str,
    argv: Sequence[str],
    *,
    client_url: str,
    peer_url: str,
    data_dir: Path,
    log_path: Path,
    name: str = "default",
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start ``argv`` with stdout+stderr going to ``log_path``; wrap it as a :class:`ServerProcess`."""
    log_file = open(log_path, "ab")  # closed by ServerProcess.stop
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else _clean_env(),
            # Own session: a Ctrl-C aimed at pytest does not hit the server before the fixture stops it.
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    return ServerProcess(
        kind=kind,
        pid=popen.pid,
        client_url=client_url,
        peer_url=peer_url,
        data_dir=data_dir,
        log_path=log_path,
        name=name,
        _popen=popen,
        _log_file=log_file,
    )


def _member_flags(name: str, data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    return [
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"{name}={peer_url}",
    ]  # fmt: skip


def _start(
    kind: str,
    tmp_dir: Path,
    name: str,
    command: Sequence[str],
    extra_args: Sequence[str],
    env: dict[str, str],
    ready_timeout_s: float | None,
    data_dir: Path | None = None,
) -> ServerProcess:
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    attempts = 3 if ready_timeout_s is not None else 1
    for attempt in range(attempts):
        client_port, peer_port = free_port(), free_port()
        while peer_port == client_port:
            peer_port = free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        base = Path(tempfile.mkdtemp(prefix=f"{kind}-{name}-", dir=tmp_dir))
        member_data_dir = Path(data_dir) if data_dir is not None else base / f"{name}.data"
        log_path = base / f"{kind}.log"
        server = spawn_server(
            kind,
            [*command, *_member_flags(name, member_data_dir, client_url, peer_url), *extra_args],
            client_url=client_url,
            peer_url=peer_url,
            data_dir=member_data_dir,
            log_path=log_path,
            name=name,
            env=env,
        )
        if ready_timeout_s is None:
            return server
        try:
            server.wait_ready(ready_timeout_s)
        except ServerNotReady:
            server.stop()
            # Another process may have grabbed a port between free_port() and the bind: retry on fresh ports.
            if attempt + 1 < attempts and "address already in use" in server.log_tail(200).lower():
                continue
            raise
        return server
    raise AssertionError("unreachable")


def start_etcd(
    tmp_dir: Path,
    name: str = "default",
    extra_args: Sequence[str] = (),
    *,
    ready_timeout_s: float | None = 30.0,
    data_dir: Path | None = None,
) -> ServerProcess:
    """Start a real single-member etcd on free loopback ports, data and log under ``tmp_dir``.

    Waits until it serves reads unless ``ready_timeout_s`` is None (then call
    :meth:`ServerProcess.wait_ready` yourself). ``data_dir`` (default: a fresh directory under ``tmp_dir``)
    reuses an existing data dir, e.g. one made by ``etcdctl snapshot restore``.
    """
    etcd = shutil.which(ETCD_BIN) or ETCD_BIN
    return _start("etcd", Path(tmp_dir), name, [etcd], extra_args, _clean_env(), ready_timeout_s,
                  data_dir=data_dir)


def quorumkv_src_dir() -> Path:
    """The directory holding the ``quorumkv`` package this module was imported from (``<repo>/src``)."""
    return Path(quorumkv.__file__).resolve().parent.parent


def start_quorumkv(
    tmp_dir: Path,
    name: str = "default",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    ready_timeout_s: float | None = 30.0,
    data_dir: Path | None = None,
) -> ServerProcess:
    """Start ``python -m quorumkv`` with etcd's flags on free loopback ports, data and log under ``tmp_dir``.

    The child gets ``PYTHONPATH=<repo>/src`` so it runs this checkout's code without an install.
    ``data_dir`` (default: a fresh directory under ``tmp_dir``) reuses an existing data dir, e.g. to restart
    a member on the data a killed process left behind; every start gets fresh ports and its own log file.
    """
    command = [sys.executable, "-m", "quorumkv"]
    return _start("quorumkv", Path(tmp_dir), name, command, extra_args, quorumkv_env(env), ready_timeout_s,
                  data_dir=data_dir)


def quorumkv_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a quorumkv child: :func:`_clean_env` plus ``PYTHONPATH=<repo>/src`` (no install needed)."""
    child_env = _clean_env(extra)
    src = str(quorumkv_src_dir())
    previous = child_env.get("PYTHONPATH")
    child_env["PYTHONPATH"] = src if not previous else f"{src}{os.pathsep}{previous}"
    return child_env


# --------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------

_CLIENT_LOG_RE = re.compile(r'^\{"level":.*\}$', re.MULTILINE)
#: Where etcdctl prints a lease ID in decimal: JSON "id"/"lease", fields "Lease"/"PrevLease", and "ID" only
#: when followed by a TTL (lease grant / keep-alive), never a member's "ID".
_DEC_LEASE_CTX_RE = re.compile(
    r'("(?:id|lease)":|"(?:Prev)?Lease" : |"ID":(?=\d+,"TTL")|"ID" : (?=\d+\n"TTL"))(\d+)'
)
_HEX_LEASE_CTX_RE = re.compile(r"\blease ([0-9a-f]{16})\b")
_LEASE_LIST_RE = re.compile(r"^found (\d+) leases\n((?:[0-9a-f]{16}\n?)*)", re.MULTILINE)
_RAFT_TERM_RE = re.compile(r'("raft_term"\s*:\s*|"raftTerm"\s*:\s*|"RaftTerm"\s*:\s*)([1-9]\d*)')
_STATUS_NUM_RE = re.compile(
    r'("(?:dbSize|dbSizeInUse|DBSize|DBSizeInUse|raftIndex|RaftIndex|raftAppliedIndex|RaftAppliedIndex)"'
    r"\s*:\s*)(\d+)"
)
_VERSION_STR_RE = re.compile(r'("(?:version|Version)"\s*:\s*)"\d+\.\d+\.\d+[^"]*"')
_TOOK_JSON_RE = re.compile(r'("took"\s*:\s*)"[^"]*"')
_TOOK_SIMPLE_RE = re.compile(r"(successfully committed proposal: took = )\S+")
_STATUS_SIMPLE_RE = re.compile(
    r"^(<CLIENT-URL>, \S+, )\d+\.\d+\.\d+\S*, \d+(?:\.\d+)? [kMGTPE]?B, (true|false), (true|false), "
    r"\d+, \d+, \d+, ",
    re.MULTILINE,
)
_TTL_SIMPLE_RE = re.compile(r"granted with TTL\((\d+)s\), remaining\((-?\d+)s\)")
_TTL_JSON_RE = re.compile(r'"ttl":(-?\d+),"granted-ttl":(\d+)')
_TTL_FIELDS_RE = re.compile(r'^"TTL" : (-?\d+)\n"GrantedTTL" : (\d+)$', re.MULTILINE)
_ATTACHED_KEYS_RE = re.compile(r"attached keys\(\[(.*)\]\)")
_JSON_KEYS_RE = re.compile(r'"keys":\[([^\]]*)\]')
_JSON_LEASES_RE = re.compile(r'"leases":\[([^\]]*)\]')
_FIELDS_KEY_RUN_RE = re.compile(r'(?:^"Key" : .*\n){2,}', re.MULTILINE)
#: Table columns whose values are volatile, and the placeholder each becomes.
_TABLE_COLUMNS = {
    "VERSION": "<VERSION>",
    "DB SIZE": "<DB-SIZE>",
    "RAFT TERM": "<TERM>",
    "RAFT INDEX": "<RAFT-INDEX>",
    "RAFT APPLIED INDEX": "<RAFT-INDEX>",
    "TOOK": "<DURATION>",
    "HASH": "<HASH>",
}
#: ``endpoint hashkv``: the hash algorithm is the server's own (quorumkv's is not etcd's CRC-32C of bbolt).
_HASH_JSON_RE = re.compile(r'("hash"\s*:\s*)\d+')
_HASH_SIMPLE_RE = re.compile(r"^(<CLIENT-URL>, )\d+$", re.MULTILINE)
#: A remaining TTL at most this many seconds below the granted TTL is "as expected" (timing noise).
TTL_SLACK_S = 5


def _replace_number(text: str, number: int, placeholder: str) -> str:
    return re.sub(rf"(?<![0-9]){number}(?![0-9])", placeholder, text)


def _replace_hex(text: str, hex_id: str, placeholder: str) -> str:
    return re.sub(rf"(?<![0-9a-fA-F]){hex_id}(?![0-9a-fA-F])", placeholder, text)


#: IDs at least this large are replaced wherever they occur; smaller ones (a candidate might number its
#: cluster 1) only where etcdctl prints IDs, so they cannot swallow revisions, counts or values.
_GLOBAL_ID_MIN = 1 << 32
_DEC_ID_CTX = (
    r'("(?:cluster_id|member_id|leader)":|"(?:ClusterID|MemberID|Leader)" : '
    r'|"ID":(?=\d+,"name")|"ID" : (?=\d+\n"Name"))'
)


def _replace_server_id(text: str, number: int, placeholder: str) -> str:
    if number >= _GLOBAL_ID_MIN:
        text = _replace_number(text, number, placeholder)
        text = _replace_hex(text, f"{number:016x}", placeholder)
        return _replace_hex(text, f"{number:x}", placeholder)
    hex_id = f"{number:x}"
    text = re.sub(rf"{_DEC_ID_CTX}{number}(?![0-9])", rf"\g<1>{placeholder}", text)
    # member list (simple): "ID, started, name, ..."; endpoint status (simple): "URL, ID, version, ..."
    text = re.sub(rf"^{hex_id}(?=, (?:un)?started, )", placeholder, text, flags=re.MULTILINE)
    text = re.sub(rf"^(\S+, ){hex_id}(?=, \d+\.\d+\.\d+)", rf"\g<1>{placeholder}", text, flags=re.MULTILINE)
    # tables: a cell that is exactly the ID (tables are re-rendered later, so widths do not matter)
    return re.sub(rf"(?<=\|)( +){hex_id}( +)(?=\|)", rf"\g<1>{placeholder}\g<2>", text)


def _normalize_client_log(match: re.Match[str]) -> str:
    """clientv3's JSON warning lines: keep level/msg/error (gRPC code + text), drop ts and client UUID."""
    line = match.group(0)
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    for key in ("ts", "target"):
        if key in record:
            record[key] = f"<{key.upper()}>"
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def _lease_placeholder(server: ServerProcess, lease_id: int) -> str:
    if lease_id not in server.lease_ids:
        server.lease_ids.append(lease_id)
    return f"<LEASE-{server.lease_ids.index(lease_id) + 1}>"


def _normalize_leases(text: str, server: ServerProcess) -> str:
    # Learn lease IDs from the places etcdctl prints them, in order of appearance.
    found: list[tuple[int, int]] = []
    found.extend((m.start(1), int(m.group(1), 16)) for m in _HEX_LEASE_CTX_RE.finditer(text))
    for m in _LEASE_LIST_RE.finditer(text):
        offset = m.start(2)
        for line in m.group(2).splitlines(keepends=True):
            if line.strip():
                found.append((offset, int(line.strip(), 16)))
            offset += len(line)
    found.extend((m.start(2), int(m.group(2))) for m in _DEC_LEASE_CTX_RE.finditer(text) if m.group(2) != "0")
    for _, lease_id in sorted(found):
        _lease_placeholder(server, lease_id)
    # Replace every known ID: hex (%016x, as etcdctl prints them) anywhere, decimal only in JSON/fields
    # lease contexts, so a small candidate lease ID can never swallow a revision or a count.
    for lease_id in server.lease_ids:
        text = _replace_hex(text, f"{lease_id:016x}", _lease_placeholder(server, lease_id))

    def dec(m: re.Match[str]) -> str:
        lease_id = int(m.group(2))
        if lease_id in server.lease_ids:
            return m.group(1) + _lease_placeholder(server, lease_id)
        return m.group(0)

    text = _DEC_LEASE_CTX_RE.sub(dec, text)

    # `lease list` order is Go map order (random): sort the listed IDs.
    def sort_list(m: re.Match[str]) -> str:
        body = m.group(0)
        head, _, rest = body.partition("\n")
        items = [line for line in rest.splitlines() if line]
        return head + "\n" + "".join(item + "\n" for item in sorted(items))

    return re.sub(r"^found \d+ leases\n(?:<LEASE-\d+>\n?)*", sort_list, text, flags=re.MULTILINE)


def _ttl_token(remaining: int, granted: int) -> str | None:
    if granted > 0 and 0 <= granted - remaining <= TTL_SLACK_S:
        return f"<TTL~{granted}>"
    return None


def _normalize_ttls(text: str) -> str:
    def simple(m: re.Match[str]) -> str:
        token = _ttl_token(int(m.group(2)), int(m.group(1)))
        return m.group(0) if token is None else f"granted with TTL({m.group(1)}s), remaining({token})"

    def as_json(m: re.Match[str]) -> str:
        token = _ttl_token(int(m.group(1)), int(m.group(2)))
        return m.group(0) if token is None else f'"ttl":"{token}","granted-ttl":{m.group(2)}'

    def fields(m: re.Match[str]) -> str:
        token = _ttl_token(int(m.group(1)), int(m.group(2)))
        return m.group(0) if token is None else f'"TTL" : {token}\n"GrantedTTL" : {m.group(2)}'

    text = _TTL_SIMPLE_RE.sub(simple, text)
    text = _TTL_JSON_RE.sub(as_json, text)
    return _TTL_FIELDS_RE.sub(fields, text)


def _sort_unordered(text: str) -> str:
    """Leases and the keys attached to a lease come from Go maps (random order): sort them."""
    text = _ATTACHED_KEYS_RE.sub(lambda m: f"attached keys([{' '.join(sorted(m.group(1).split()))}])", text)
    text = _JSON_KEYS_RE.sub(lambda m: '"keys":[' + ",".join(sorted(m.group(1).split(","))) + "]", text)
    text = _JSON_LEASES_RE.sub(
        lambda m: '"leases":[' + ",".join(sorted(re.findall(r"\{[^{}]*\}", m.group(1)))) + "]", text
    )
    return _FIELDS_KEY_RUN_RE.sub(lambda m: "".join(sorted(m.group(0).splitlines(keepends=True))), text)


def _normalize_tables(text: str) -> str:
    """Re-render ASCII tables with volatile columns replaced (widths would otherwise leak the values)."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("+-"):
            out.append(lines[i])
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith(("+", "|")):
            j += 1
        block = lines[i:j]
        rows = [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in block if line[:1] == "|"]
        if rows:
            header = rows[0]
            for row in rows[1:]:
                for col, title in enumerate(header):
                    if col < len(row) and title in _TABLE_COLUMNS and row[col]:
                        row[col] = _TABLE_COLUMNS[title]
            widths = [max(len(row[c]) if c < len(row) else 0 for row in rows) for c in range(len(header))]
            border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
            rendered = [border]
            for n, row in enumerate(rows):
                cells = [(row[c] if c < len(row) else "").ljust(widths[c]) for c in range(len(widths))]
                rendered.append("| " + " | ".join(cells) + " |")
                if n == 0:
                    rendered.append(border)
            rendered.append(border)
            out.extend(rendered)
        else:
            out.extend(block)
        i = j
    return "\n".join(out)


def normalize(text: str, server: ServerProcess) -> str:
    """Replace ``server``'s volatile identifiers in ``text`` (etcdctl output) with stable placeholders.

    Replaced: the server's client/peer URLs and addresses, its cluster and member IDs (decimal and hex),
    lease IDs (``<LEASE-n>``, numbered per server in order of first appearance, remembered across calls in
    ``server.lease_ids``), non-zero raft terms, raft indexes, DB sizes, server version strings, health-check
    durations, timestamps and client UUIDs in etcdctl's JSON log lines, a remaining lease TTL within
    :data:`TTL_SLACK_S` of the granted TTL, and the order of collections etcd returns in Go map order
    (``lease list``, keys attached to a lease).

    Kept verbatim: revisions, keys, values, versions of keys, counts, flags, error messages, exit codes
    and event order.
    """
    for url, placeholder in ((server.client_url, "<CLIENT-URL>"), (server.peer_url, "<PEER-URL>")):
        text = text.replace(url, placeholder)
    text = text.replace(f"127.0.0.1:{server.client_port}", "<CLIENT-ADDR>")
    text = text.replace(f"127.0.0.1:{server.peer_port}", "<PEER-ADDR>")
    text = _CLIENT_LOG_RE.sub(_normalize_client_log, text)
    for number, placeholder in ((server.cluster_id, "<CLUSTER-ID>"), (server.member_id, "<MEMBER-ID>")):
        if number is not None:
            text = _replace_server_id(text, number, placeholder)
    text = _normalize_leases(text, server)
    text = _RAFT_TERM_RE.sub(r"\1<TERM>", text)
    text = _STATUS_NUM_RE.sub(
        lambda m: m.group(1) + ("<DB-SIZE>" if "Size" in m.group(1) else "<RAFT-INDEX>"), text
    )
    text = _VERSION_STR_RE.sub(r'\1"<VERSION>"', text)
    text = _TOOK_JSON_RE.sub(r'\1"<DURATION>"', text)
    text = _TOOK_SIMPLE_RE.sub(r"\1<DURATION>", text)
    text = _STATUS_SIMPLE_RE.sub(
        r"\1<VERSION>, <DB-SIZE>, \2, \3, <TERM>, <RAFT-INDEX>, <RAFT-INDEX>, ", text
    )
    text = _HASH_JSON_RE.sub(r"\1<HASH>", text)
    text = _HASH_SIMPLE_RE.sub(r"\1<HASH>", text)
    text = _normalize_ttls(text)
    text = _sort_unordered(text)
    return _normalize_tables(text)
