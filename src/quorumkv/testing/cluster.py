"""Start, fault and stop multi-member clusters of real etcd 3.4 or quorumkv processes on loopback.

:func:`start_etcd_cluster` and :func:`start_quorumkv_cluster` start ``n`` members with etcd's clustering
flags (``--name --initial-cluster --initial-cluster-state new --initial-cluster-token --listen-peer-urls
--initial-advertise-peer-urls --listen-client-urls --advertise-client-urls --data-dir``, plus
``--heartbeat-interval`` / ``--election-timeout``) on free 127.0.0.1 ports, wait until every member serves a
linearizable read, and return a :class:`Cluster`: the members (name, client URL, peer URL, pid, data dir, log),
``kill`` (SIGKILL), ``stop`` (SIGTERM), ``restart`` (same flags, same ports, same data dir), ``leader()`` (from
the Maintenance/Status RPC of every running member) and ``close()``.  Only processes this module started are
ever signalled, each by its own pid.

Fault injection between quorumkv members (``with_proxies=True``)
------------------------------------------------------------------

Every *directed* link i→j gets its own :class:`~quorumkv.testing.faultproxy.FaultProxy` (``n*(n-1)`` proxies,
on one shared background event loop) whose target is member j's peer listener.  Member i must dial member j
through proxy (i→j); for that the harness sets, in member i's environment only:

``QUORUMKV_TEST_PEER_DIAL_MAP``
    Test-only.  Comma-separated ``advertisedPeerURL=dialURL`` pairs, for example
    ``http://127.0.0.1:40002=http://127.0.0.1:45117,http://127.0.0.1:40003=http://127.0.0.1:45118``.
    When the member opens a connection to a peer whose advertised peer URL (as written in
    ``--initial-cluster`` / the membership) equals a key, it dials the mapped URL instead; URLs that are not
    keys are dialled unchanged.  Keys match exactly as the harness writes them (``http://127.0.0.1:PORT``, no
    trailing slash; :func:`parse_peer_dial_map` reads the format).  Nothing else changes: the member still
    listens on and advertises its own URLs, and the peer sees connections coming from the proxy.  Unset in
    production; a server should warn loudly when it is set.

So "member i's bytes to j" always flow forward through proxy (i→j), and whatever j answers on a connection
that i opened flows *backward* through the same proxy.  With that:

- ``partition(a, b)`` cuts every link between the two groups, both proxies of each pair (blackhole by
  default, or ``how="drop"`` to reset connections instead); ``isolate(name)`` partitions one member from
  all others; ``heal()`` sets every proxy back to pass-through.
- ``one_way(src, dst)``: between this pair only bytes from ``src`` to ``dst`` flow: proxy (src→dst) passes
  only forward (src's requests reach dst, dst's replies on that connection are lost) and proxy (dst→src)
  passes only backward (dst's requests are lost, src's replies reach dst).  Note that HTTP/2 (gRPC) needs
  some bytes both ways (SETTINGS acks, window updates), so over gRPC a one-way link soon stalls or fails a
  connection: this models a broken link faithfully, not "message delivery one way".
- ``link(i, j)`` is the proxy itself, for delays (``cluster.link("m1", "m2").delay(50, jitter_ms=20)``).

Client traffic is never proxied: tests and clients talk to every member's client URL directly.

etcd cannot honour the dial map, so ``start_etcd_cluster`` has no proxies; it is the reference the harness
itself is tested against.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.faultproxy import EventLoopThread, FaultProxy
from quorumkv.testing.processes import (
    ETCD_BIN,
    ServerNotReady,
    ServerProcess,
    ServerTLS,
    free_port,
    quorumkv_env,
    run_etcdctl,
    spawn_server,
)

__all__ = [
    "PEER_DIAL_MAP_ENV",
    "Cluster",
    "ClusterMember",
    "MemberStatus",
    "NoLeader",
    "format_peer_dial_map",
    "parse_peer_dial_map",
    "start_etcd_cluster",
    "start_quorumkv_cluster",
]

PEER_DIAL_MAP_ENV = "QUORUMKV_TEST_PEER_DIAL_MAP"
#: etcd's defaults; tests usually pass shorter ones (faster elections).
DEFAULT_HEARTBEAT_MS = 100
DEFAULT_ELECTION_MS = 1000
#: etcdctl --command-timeout for :meth:`Cluster.etcdctl` when the caller sets none (etcdctl's own is 5 s).
CLUSTER_COMMAND_TIMEOUT = "30s"
MAX_MEMBERS = 9
_START_ATTEMPTS = 3
_STATUS_TIMEOUT_S = 1.0
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


class NoLeader(RuntimeError):
    """No member was acknowledged as leader by a majority of the cluster in time."""


def format_peer_dial_map(mapping: Mapping[str, str]) -> str:
    """``{advertised peer URL: URL to dial}`` in the ``QUORUMKV_TEST_PEER_DIAL_MAP`` format."""
    for key, value in mapping.items():
        for url in (key, value):
            if not url or "," in url or "=" in url:
                raise ValueError(f"peer dial map URL {url!r} is empty or contains ',' or '='")
    return ",".join(f"{key}={value}" for key, value in mapping.items())


def parse_peer_dial_map(text: str) -> dict[str, str]:
    """Read ``QUORUMKV_TEST_PEER_DIAL_MAP`` (``advertisedPeerURL=dialURL,...``); empty text is an empty map.

    Raises ValueError on a malformed pair (no ``=``, an empty side, a key given twice).
    """
    out: dict[str, str] = {}
    for pair in text.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{PEER_DIAL_MAP_ENV}: malformed pair {pair!r} (expected advertisedPeerURL=dialURL)")
        if key in out:
            raise ValueError(f"{PEER_DIAL_MAP_ENV}: {key} is mapped twice")
        out[key] = value
    return out


@dataclass(frozen=True)
class MemberStatus:
    """One member's answer to Maintenance/Status."""

    name: str
    member_id: int
    #: The member this one believes is leader (0: none).
    leader_id: int
    raft_term: int
    raft_index: int


def patient_etcdctl(endpoint: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """:func:`run_etcdctl`, with ``--command-timeout`` = ``CLUSTER_COMMAND_TIMEOUT`` unless the caller sets one.

    etcdctl's own 5 s is shorter than an election on a slow disk can take; cluster tests check behaviour, not
    latency (tests that expect a timeout pass their own ``--command-timeout``).
    """
    if not any(a.startswith("--command-timeout") for a in args):
        args = (f"--command-timeout={CLUSTER_COMMAND_TIMEOUT}", *args)
        kwargs.setdefault("timeout_s", 60.0)
    return run_etcdctl(endpoint, *args, **kwargs)


@dataclass
class ClusterMember:
    """One member: its fixed identity (name, URLs, data dir, command line) and its current process, if any."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    argv: list[str]
    env: dict[str, str] | None
    process: ServerProcess | None = None
    #: How many times a process was started for this member.
    starts: int = 0
    #: Filled from Status/readiness responses; stable across restarts (etcd derives it from URLs and token).
    member_id: int | None = None
    #: etcdctl's TLS environment when the cluster runs with ``tls``.
    etcdctl_env: dict[str, str] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    @property
    def client_port(self) -> int:
        return urlsplit(self.client_url).port or 0

    @property
    def peer_port(self) -> int:
        return urlsplit(self.peer_url).port or 0

    @property
    def grpc_target(self) -> str:
        return f"{urlsplit(self.client_url).hostname or '127.0.0.1'}:{self.client_port}"

    def log_tail(self, max_lines: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="backslashreplace").splitlines()
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"
        return "\n".join(lines[-max_lines:])


@dataclass
class Cluster:
    """A running cluster started by :func:`start_etcd_cluster` / :func:`start_quorumkv_cluster`."""

    kind: str
    members: list[ClusterMember]
    base_dir: Path
    token: str
    #: (src name, dst name) → the proxy member src dials member dst through (empty without proxies).
    proxies: dict[tuple[str, str], FaultProxy] = field(default_factory=dict)
    _loop_thread: EventLoopThread | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------------------------------ lookup

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> ClusterMember:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no member named {name!r} (members: {', '.join(self.names)})")

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoints(self) -> str:
        """Every member's client URL, comma-separated (``etcdctl --endpoints``)."""
        return ",".join(self.client_urls)

    @property
    def quorum(self) -> int:
        return len(self.members) // 2 + 1

    def running(self) -> list[ClusterMember]:
        return [m for m in self.members if m.alive]

    def etcdctl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """:func:`patient_etcdctl` with ``--endpoints`` = every member (running or not, as a client would)."""
        if self.members and self.members[0].etcdctl_env is not None:
            kwargs["env"] = {**self.members[0].etcdctl_env, **dict(kwargs.get("env") or {})}
        return patient_etcdctl(self.endpoints, *args, **kwargs)

    # ------------------------------------------------------------------------------------------ processes

    def _spawn(self, member: ClusterMember) -> ServerProcess:
        member.starts += 1
        process = spawn_server(
            self.kind,
            member.argv,
            client_url=member.client_url,
            peer_url=member.peer_url,
            data_dir=member.data_dir,
            log_path=member.log_path,
            name=member.name,
            env=member.env,
        )
        process.etcdctl_env = member.etcdctl_env
        member.process = process
        return process

    def kill(self, name: str) -> int | None:
        """SIGKILL the member's process (a crash) and reap it; its exit code."""
        member = self.member(name)
        return member.process.kill9() if member.process is not None else None

    def stop(self, name: str, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the member's process (clean shutdown; SIGKILL after ``timeout_s``); its exit code."""
        member = self.member(name)
        return member.process.stop(signal.SIGTERM, timeout_s) if member.process is not None else None

    def restart(self, name: str, *, wait_ready: bool = True, ready_timeout_s: float = 30.0) -> ClusterMember:
        """Start the member again with the same flags, ports and data dir (stopping it first if running).

        With ``wait_ready`` waits until it serves a linearizable read (it needs a quorum for that).
        """
        member = self.member(name)
        if member.alive:
            self.stop(name)
        process = self._spawn(member)
        if wait_ready:
            process.wait_ready(ready_timeout_s)
            member.member_id = process.member_id
        return member

    def wait_ready(self, names: Sequence[str] | None = None, timeout_s: float = 30.0) -> None:
        """Wait (bounded overall) until each named running member (default: all) serves a linearizable read."""
        deadline = time.monotonic() + timeout_s
        for name in names if names is not None else self.names:
            member = self.member(name)
            if member.process is None:
                raise ServerNotReady(f"member {name} has no process")
            member.process.wait_ready(max(deadline - time.monotonic(), 0.1))
            member.member_id = member.process.member_id

    # ------------------------------------------------------------------------------------------ status, leader

    def status(self, name: str, timeout_s: float = _STATUS_TIMEOUT_S) -> MemberStatus | None:
        """The member's Maintenance/Status answer, or None if it is not running or does not answer in time."""
        member = self.member(name)
        if not member.alive:
            return None
        try:
            with _channel(member) as channel:
                stub = pb_grpc.MaintenanceStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped
                response = stub.Status(rpc_pb2.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None
        member_id = int(response.header.member_id)
        member.member_id = member_id
        return MemberStatus(name, member_id, int(response.leader), int(response.raftTerm), int(response.raftIndex))

    def statuses(self) -> list[MemberStatus]:
        """Status of every running member that answers."""
        return [s for s in (self.status(m.name) for m in self.members) if s is not None]

    def find_leader(self) -> str | None:
        """The leader right now, or None.

        The leader is a running member that names itself leader, at the highest term among such claims, and
        that a majority of the *whole* cluster (itself included) names as leader.  An old leader cut off in a
        minority can still claim leadership for a while; it never has a majority.
        """
        statuses = self.statuses()
        claims = [s for s in statuses if s.leader_id != 0 and s.leader_id == s.member_id]
        for claim in sorted(claims, key=lambda s: s.raft_term, reverse=True):
            backers = sum(1 for s in statuses if s.leader_id == claim.member_id and s.raft_term == claim.raft_term)
            if backers >= self.quorum:
                return claim.name
        return None

    def leader(self, timeout_s: float = 15.0, *, exclude: str | None = None) -> str:
        """Poll (bounded) until :meth:`find_leader` names a leader (other than ``exclude``); its name.

        Raises :class:`NoLeader` with the last statuses seen when ``timeout_s`` passes.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find_leader()
            if found is not None and found != exclude:
                return found
            if time.monotonic() >= deadline:
                raise NoLeader(
                    f"no leader{f' other than {exclude}' if exclude else ''} acknowledged by {self.quorum} of "
                    f"{len(self.members)} {self.kind} members within {timeout_s}s; statuses: {self.statuses()}"
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------------------------------ faults

    def link(self, src: str, dst: str) -> FaultProxy:
        """The proxy member ``src`` dials member ``dst`` through."""
        if not self.proxies:
            raise RuntimeError("this cluster has no proxies: start it with with_proxies=True")
        self.member(src)  # KeyError for an unknown name
        self.member(dst)
        try:
            return self.proxies[(src, dst)]
        except KeyError:
            raise KeyError(f"no link {src}->{dst}") from None

    def partition(self, group_a: Sequence[str], group_b: Sequence[str], *, how: str = "blackhole") -> None:
        """Cut every link between the two groups, in both directions (``how``: "blackhole" or "drop")."""
        if how not in ("blackhole", "drop"):
            raise ValueError(f"how must be 'blackhole' or 'drop', not {how!r}")
        overlap = set(group_a) & set(group_b)
        if overlap:
            raise ValueError(f"members in both groups: {sorted(overlap)}")
        for a in group_a:
            for b in group_b:
                for proxy in (self.link(a, b), self.link(b, a)):
                    if how == "blackhole":
                        proxy.blackhole()
                    else:
                        proxy.drop_connections()

    def isolate(self, name: str, *, how: str = "blackhole") -> None:
        """Cut ``name`` off from every other member (clients still reach it)."""
        self.partition([name], [n for n in self.names if n != name], how=how)

    def one_way(self, src: str, dst: str) -> None:
        """Between ``src`` and ``dst`` only bytes from ``src`` to ``dst`` flow (see the module docstring)."""
        if src == dst:
            raise ValueError("one_way needs two different members")
        self.link(src, dst).one_way("forward")
        self.link(dst, src).one_way("backward")

    def heal(self) -> None:
        """Every proxy back to pass-through."""
        for proxy in self.proxies.values():
            proxy.pass_through()

    # ------------------------------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop every member (SIGTERM, SIGKILL after 10 s; only our pids) and every proxy. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # One at a time: an etcd member that gets SIGTERM while the others are stopping too spends seconds
        # trying to hand leadership over (6 s for three at once, against 0.1 s one after the other).
        for member in self.members:
            if member.process is not None:
                member.process.stop(signal.SIGTERM, timeout_s=10.0)
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                proxy.stop()
        if self._loop_thread is not None:
            self._loop_thread.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """One line per member (name, pid, URLs, data dir), for failure messages."""
        return "\n".join(
            f"{m.name}: pid {m.pid} alive={m.alive} client {m.client_url} peer {m.peer_url} data {m.data_dir}"
            for m in self.members
        )


def _channel(member: ClusterMember) -> grpc.Channel:
    tls = member.etcdctl_env
    if tls is None:
        return grpc.insecure_channel(member.grpc_target, options=_CHANNEL_OPTIONS)
    ca, cert, key = (Path(tls[k]).read_bytes() for k in ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY"))
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(member.grpc_target, creds, options=_CHANNEL_OPTIONS)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(empty log)"


def _start_proxy(loop_thread: EventLoopThread, ports: list[int], target: int, src: str, dst: str,
                 host: str = "127.0.0.1") -> FaultProxy:
    """A proxy to ``host:ports[target]`` whose own (OS-chosen) port is none of the members' planned ``ports``."""
    for _ in range(10):
        proxy = FaultProxy(host, ports[target], name=f"{src}->{dst}").start(loop_thread)
        if proxy.port not in ports:
            return proxy
        proxy.stop()
    raise RuntimeError("could not place a proxy on a port no member plans to use")


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    for _ in range(count * 20):
        port = free_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"could not find {count} distinct free ports")


def _member_argv(
    command: Sequence[str],
    name: str,
    data_dir: Path,
    client_url: str,
    peer_url: str,
    initial_cluster: str,
    token: str,
    heartbeat_ms: int,
    election_ms: int,
    extra_args: Sequence[str],
) -> list[str]:
    return [
        *command,
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", initial_cluster,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--heartbeat-interval", str(heartbeat_ms),
        "--election-timeout", str(election_ms),
        *extra_args,
    ]  # fmt: skip


def _start_cluster(
    kind: str,
    n: int,
    tmp_path: Path,
    command: Sequence[str],
    *,
    base_env: Mapping[str, str] | None,
    with_proxies: bool,
    extra_args: Sequence[str],
    heartbeat_ms: int,
    election_ms: int,
    token: str | None,
    names: Sequence[str] | None,
    ready_timeout_s: float | None,
    tls: ServerTLS | None = None,
    hosts: Sequence[str] | None = None,
) -> Cluster:
    if not 1 <= n <= MAX_MEMBERS:
        raise ValueError(f"a cluster has 1..{MAX_MEMBERS} members, not {n}")
    if hosts is not None and (len(hosts) != n or not all(h.startswith("127.") for h in hosts)):
        raise ValueError(f"need {n} loopback (127.x) member addresses, got {list(hosts)}")
    if not 1 <= n <= MAX_MEMBERS:
        raise ValueError(f"a cluster has 1..{MAX_MEMBERS} members, not {n}")
    member_names = list(names) if names is not None else [f"m{i + 1}" for i in range(n)]
    if len(member_names) != n or len(set(member_names)) != n:
        raise ValueError(f"need {n} distinct member names, got {member_names}")
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    attempts = _START_ATTEMPTS if ready_timeout_s is not None else 1
    for attempt in range(attempts):
        base = Path(tempfile.mkdtemp(prefix=f"{kind}-cluster-", dir=tmp_path))
        cluster_token = token or f"{kind}-test-{base.name}"
        ports = _free_ports(2 * n)
        scheme = "https" if tls is not None else "http"
        member_hosts = list(hosts) if hosts is not None else ["127.0.0.1"] * n
        client_urls = [f"{scheme}://{h}:{p}" for h, p in zip(member_hosts, ports[:n], strict=True)]
        peer_urls = [f"{scheme}://{h}:{p}" for h, p in zip(member_hosts, ports[n:], strict=True)]
        initial_cluster = ",".join(f"{name}={url}" for name, url in zip(member_names, peer_urls, strict=True))
        cluster = Cluster(kind=kind, members=[], base_dir=base, token=cluster_token)
        try:
            if with_proxies:
                cluster._loop_thread = EventLoopThread(name=f"{kind}-cluster-proxies")
                for i, src in enumerate(member_names):
                    for j, dst in enumerate(member_names):
                        if i != j:
                            cluster.proxies[(src, dst)] = _start_proxy(cluster._loop_thread, ports, n + j, src, dst,
                                                                    member_hosts[j])
            for i, name in enumerate(member_names):
                member_dir = base / name
                member_dir.mkdir()
                env: dict[str, str] | None = dict(base_env) if base_env is not None else None
                if with_proxies:
                    dial_map = {
                        peer_urls[j]: cluster.proxies[(name, other)].url
                        for j, other in enumerate(member_names)
                        if other != name
                    }
                    env = dict(env or {})
                    env[PEER_DIAL_MAP_ENV] = format_peer_dial_map(dial_map)
                argv = _member_argv(
                    command, name, member_dir / "data", client_urls[i], peer_urls[i], initial_cluster,
                    cluster_token, heartbeat_ms, election_ms, [*(tls.server_args() if tls else []), *extra_args],
                )  # fmt: skip
                cluster.members.append(
                    ClusterMember(
                        name=name,
                        client_url=client_urls[i],
                        peer_url=peer_urls[i],
                        data_dir=member_dir / "data",
                        log_path=member_dir / f"{kind}.log",
                        argv=argv,
                        env=env,
                        etcdctl_env=tls.etcdctl_env() if tls is not None else None,
                    )
                )
            for member in cluster.members:
                cluster._spawn(member)
            if ready_timeout_s is not None:
                cluster.wait_ready(timeout_s=ready_timeout_s)
        except ServerNotReady as exc:
            cluster.close()
            port_clash = any("address already in use" in m.log_tail(200).lower() for m in cluster.members)
            if port_clash and attempt + 1 < attempts:
                continue  # another process took a port between free_port() and the bind: fresh ports
            # Members that exited on their own (not stopped by close()), grouped by exit code and last log line.
            exited: dict[tuple[int, str], list[str]] = {}
            for m in cluster.members:
                code = m.process.returncode if m.process is not None else None
                if code not in (None, 0, -signal.SIGTERM, -signal.SIGKILL):
                    assert code is not None
                    exited.setdefault((code, _last_line(m.log_tail(5))), []).append(m.name)
            summary = "; ".join(f"{', '.join(who)} exited {code}: {line}" for (code, line), who in exited.items())
            summary = f" ({summary})" if summary else ""
            logs = "\n".join(f"--- {m.name} ({m.log_path}) ---\n{m.log_tail(15)}" for m in cluster.members)
            raise ServerNotReady(f"{kind} cluster of {n} did not become ready{summary}: {exc}\n{logs}") from exc
        except BaseException:
            cluster.close()
            raise
        return cluster
    raise AssertionError("unreachable")


def start_etcd_cluster(
    n: int,
    tmp_path: Path,
    *,
    extra_args: Sequence[str] = (),
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
    election_ms: int = DEFAULT_ELECTION_MS,
    token: str | None = None,
    names: Sequence[str] | None = None,
    ready_timeout_s: float | None = 30.0,
    tls: ServerTLS | None = None,
    hosts: Sequence[str] | None = None,
) -> Cluster:
    """Start ``n`` real etcd 3.4 members (names ``m1..mn`` unless ``names``), data and logs under ``tmp_path``.

    Waits until every member serves a linearizable read unless ``ready_timeout_s`` is None. ``hosts``: one
    127.x address per member (default: all on 127.0.0.1).
    Raises :class:`ServerNotReady` (with each member's log tail) if the cluster does not come up.
    """
    etcd = shutil.which(ETCD_BIN) or ETCD_BIN
    return _start_cluster(
        "etcd", n, tmp_path, [etcd], base_env=None, with_proxies=False, extra_args=extra_args,
        heartbeat_ms=heartbeat_ms, election_ms=election_ms, token=token, names=names,
        ready_timeout_s=ready_timeout_s, tls=tls, hosts=hosts,
    )  # fmt: skip


def start_quorumkv_cluster(
    n: int,
    tmp_path: Path,
    with_proxies: bool = False,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
    election_ms: int = DEFAULT_ELECTION_MS,
    token: str | None = None,
    names: Sequence[str] | None = None,
    ready_timeout_s: float | None = 30.0,
    tls: ServerTLS | None = None,
    hosts: Sequence[str] | None = None,
) -> Cluster:
    """Start ``n`` ``python -m quorumkv`` members with etcd's clustering flags (see :func:`start_etcd_cluster`).

    With ``with_proxies`` every directed peer link goes through its own :class:`FaultProxy` (module docstring).
    """
    return _start_cluster(
        "quorumkv", n, tmp_path, [sys.executable, "-m", "quorumkv"], base_env=quorumkv_env(env),
        with_proxies=with_proxies, extra_args=extra_args, heartbeat_ms=heartbeat_ms, election_ms=election_ms,
        token=token, names=names, ready_timeout_s=ready_timeout_s, tls=tls, hosts=hosts,
    )  # fmt: skip
