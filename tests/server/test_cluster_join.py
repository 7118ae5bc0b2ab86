"""Managed cluster lifecycle end to end (docs/ha.md): real members on distinct loopback addresses, real etcdctl.

- ``--cluster-init`` then two joins over TLS, each through a different member (the second through a follower);
  kill -9 of the leader;
  wrong token (after ``token rotate``), token with a wrong CA hash and a mismatched must-match setting are each
  refused with a clear line and leave the cluster as it was; then the member that joined through the follower
  comes back by itself after the follower and the leader restart;
- a single member converted with ``--cluster-init`` keeps its history revision by revision, its compaction and
  its leases; a learner that never catches up is evicted; a member joins and holds the same history;
- a member removed from the cluster moves its data aside and rejoins with the same name;
- a snapshot restored with the token on a new host recovers the cluster CA (bootstrap record) and takes joins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quorumkv.cli.token import main as token_main
from quorumkv.security.cluster_pki import bootstrap_key, open_bootstrap, parse_token
from quorumkv.server.config_sources import load_config
from quorumkv.server.join import JoinError, _call_join, fetch_ca, must_match, prepare_member
from quorumkv.server.settings import ServerSettings
from quorumkv.testing.processes import ServerProcess, free_port, quorumkv_env, run_etcdctl, spawn_server

pytestmark = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs etcdctl 3.4 in PATH")


#: Timing flags every member of these clusters shares (must-match settings).
FAST = ["--heartbeat-interval", "50", "--election-timeout", "500"]
READY_S = 60.0


@dataclass
class Member:
    name: str
    ip: str
    tmp: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: ServerProcess | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.tmp / f"{self.name}.data"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def client_url(self) -> str:
        return f"https://{self.ip}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.tmp / f"{self.name}.{self.starts}.log"

    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def flags(self, scheme: str = "http") -> list[str]:
        client = f"{scheme}://{self.ip}:{self.client_port}"
        peer = f"{scheme}://{self.ip}:{self.peer_port}"
        return ["--name", self.name, "--data-dir", str(self.data_dir), "--listen-client-urls", client,
                "--advertise-client-urls", client, "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer, *FAST]

    def env(self) -> dict[str, str]:
        return {"ETCDCTL_CACERT": str(self.tls_dir / "ca.crt"), "ETCDCTL_CERT": str(self.tls_dir / "client.crt"),
                "ETCDCTL_KEY": str(self.tls_dir / "client.key")}

    def start(self, *extra: str, ready: bool = True, plain: bool = False) -> ServerProcess:
        self.starts += 1
        self.process = spawn_server(
            "quorumkv", [sys.executable, "-m", "quorumkv", *self.flags(), *extra],
            client_url=f"http://{self.ip}:{self.client_port}" if plain else self.client_url,
            peer_url=f"https://{self.ip}:{self.peer_port}", data_dir=self.data_dir, log_path=self.log_path,
            name=self.name, env=quorumkv_env())
        if not plain:
            self.process.etcdctl_env = self.env()
        if ready:
            self.process.wait_ready(READY_S)
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob(f"{self.name}.*.log")))

    def ctl(self, *args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
        return run_etcdctl(self.client_url, "--command-timeout=10s", *args, env=self.env(), timeout_s=timeout_s)

    def ctl_json(self, *args: str) -> dict[str, object]:
        out = run_etcdctl(self.client_url, "--command-timeout=10s", *args, env=self.env(), write_out="json")
        assert out.returncode == 0, out.stderr
        data: dict[str, object] = json.loads(out.stdout)
        return data

    def members(self) -> list[dict[str, object]]:
        ms = self.ctl_json("member", "list")["members"]
        assert isinstance(ms, list)
        return ms

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while self.process.alive():
            assert time.monotonic() < deadline, f"{self.name} did not exit:\n{self.process.log_tail()}"
            time.sleep(0.1)
        code = self.process.returncode
        self.process.stop()
        assert code is not None
        return code


def retry_ctl(member: Member, *args: str, attempts: int = 30) -> subprocess.CompletedProcess[str]:
    """etcdctl through ``member`` until it succeeds (an election may be under way), bounded."""
    out = member.ctl(*args)
    for _ in range(attempts):
        if out.returncode == 0:
            break
        time.sleep(0.5)
        out = member.ctl(*args)
    return out


def wait_voters(member: Member, count: int, timeout_s: float = 60.0) -> list[dict[str, object]]:
    """Member list (through ``member``) once it has ``count`` voters and no learner, bounded."""
    deadline = time.monotonic() + timeout_s
    ms: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        try:
            ms = member.members()
        except AssertionError:
            ms = []
        if len(ms) == count and not any(m.get("isLearner") for m in ms):
            return ms
        time.sleep(0.3)
    raise AssertionError(f"expected {count} voters, got {ms}")


def hashkvs(members: list[Member], timeout_s: float = 30.0) -> list[tuple[int, int]]:
    """(revision, HashKV) of every member, polled until they agree (bounded); the last reading either way."""
    deadline = time.monotonic() + timeout_s
    seen: list[tuple[int, int]] = []
    while time.monotonic() < deadline:
        seen = []
        for m in members:
            out = run_etcdctl(m.client_url, "--command-timeout=10s", "endpoint", "hashkv", env=m.env(),
                              write_out="json")
            if out.returncode != 0:
                seen.append((-1, -1))
                continue
            entry = json.loads(out.stdout)[0]["HashKV"]
            seen.append((int(entry["header"]["revision"]), int(entry["hash"])))
        if len(set(seen)) == 1 and seen[0][0] > 0:
            return seen
        time.sleep(0.5)
    return seen


class RoundRobinFront:
    """A TCP front on a loopback address that hands each connection to the next member's client port."""

    def __init__(self, ip: str, members: list[Member]) -> None:
        self.ip = ip
        self.members = members
        self.connections = 0
        self._sock = socket.create_server((ip, 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            target = self.members[self.connections % len(self.members)]
            self.connections += 1
            try:
                upstream = socket.create_connection((target.ip, target.client_port), timeout=5)
            except OSError:
                conn.close()
                continue
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            src.settimeout(120)
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


def _ips(n: int) -> list[str]:
    net = random.randint(2, 250)
    return [f"127.83.{net}.{k}" for k in range(1, n + 1)]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(cert: x509.Certificate) -> set[str]:
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in alt.get_values_for_type(x509.DNSName)} | {
        str(v) for v in alt.get_values_for_type(x509.IPAddress)}


def _refused(member: Member, *extra: str) -> str:
    """Start ``member`` (expected to be refused) and return its log once it exited non-zero."""
    member.start(*extra, ready=False)
    code = member.wait_exit(60.0)
    log = member.log()
    assert code != 0, log
    return log


def _leader(members: list[Member]) -> Member:
    """The member that reports itself leader (etcdctl endpoint status), bounded."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for m in members:
            out = run_etcdctl(m.client_url, "--command-timeout=5s", "endpoint", "status", env=m.env(),
                              write_out="json")
            if out.returncode == 0:
                status = json.loads(out.stdout)[0]["Status"]
                if status["leader"] == status["header"]["member_id"]:
                    return m
        time.sleep(0.3)
    raise AssertionError("no member reports itself leader")


def _get(member: Member, key: str) -> str:
    out = retry_ctl(member, "get", key, "--print-value-only")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.slow
def test_init_two_joins_through_different_members_and_follower_join_reconnect(tmp_path: Path) -> None:
    ip = _ips(5)
    a, b, c, d = (Member(n, ip[k], tmp_path) for k, n in enumerate("abcd"))
    front = RoundRobinFront(ip[4], [a, b, c])
    san = f"kv.example.test,{front.ip}"  # the front's address is a name every member's certificate carries
    try:
        a.start("--cluster-init", "--tls-san", san)
        token = a.token()
        ca_pem = (a.tls_dir / "ca.crt").read_bytes()
        assert token.startswith("K10" + hashlib.sha256(ca_pem).hexdigest() + "::server:"), token
        # the certificates: usages and names
        server, peer, client = (_cert(a.tls_dir / f) for f in ("server.crt", "peer.crt", "client.crt"))
        assert _ekus(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
        assert _ekus(peer) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert _ekus(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
        assert {ip[0], "kv.example.test"} <= _sans(server) and {ip[0], "kv.example.test"} <= _sans(peer)
        assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "quorumkv-admin"
        # the http:// client URL is served over TLS: a plaintext client is refused, the admin certificate works
        plain = run_etcdctl(f"http://{ip[0]}:{a.client_port}", "--dial-timeout=1s", "--command-timeout=2s",
                            "get", "x")
        assert plain.returncode != 0
        assert a.ctl("put", "k1", "v1").returncode == 0

        b.start("--server", a.client_url, "--token", token, "--tls-san", san)
        wait_voters(a, 2)
        status = b.ctl_json("endpoint", "status")
        assert isinstance(status, list) and not status[0]["Status"]["leader"] == status[0]["Status"]["header"][
            "member_id"], "b should be a follower"
        # c joins through the follower b; b's token file holds the same token
        assert b.token() == token
        c.start("--server", b.client_url, "--token-file", str(b.data_dir / "token"), "--tls-san", san)
        members = wait_voters(a, 3)
        assert sorted(str(m["name"]) for m in members) == ["a", "b", "c"]
        assert all(str(u).startswith("https://") for m in members for u in m["peerURLs"])  # type: ignore[attr-defined]
        assert c.ctl("put", "k2", "v2").returncode == 0
        assert c.ctl("put", "k3", "v3").returncode == 0

        # a refused join prints one line naming the cause and leaves the cluster as it was
        bad_hash = "K10" + "0" * 64 + "::server:" + token.rsplit(":", 1)[1]
        log = _refused(d, "--server", a.client_url, "--token", bad_hash)
        assert "quorumkv: refusing to join through" in log and "Nothing was sent" in log
        assert "d" not in {m["name"] for m in wait_voters(a, 3)}
        # d joins through a round-robin TCP front whose address is a --tls-san of every member
        d.start("--server", f"https://{front.ip}:{front.port}", "--token", token)
        assert sorted(str(m["name"]) for m in wait_voters(a, 4)) == ["a", "b", "c", "d"]
        assert front.connections >= 2  # the CA read, then the join call

        # kill -9 of the leader: the others elect a new one and keep serving; the killed member comes back
        leader = _leader([a, b, c, d])
        assert leader.process is not None
        leader.process.kill9()
        other = c if leader is not c else d
        assert retry_ctl(other, "put", "k3b", "v3b", attempts=60).returncode == 0
        leader.start(ready=False)
        # the follower b and a restart; c (joined through b) finds them by itself
        b.stop()
        a.stop()
        a.start(ready=False)
        b.start(ready=False)
        assert retry_ctl(c, "put", "k4", "v4", attempts=60).returncode == 0
        for m in (a, b, c, d):
            assert [_get(m, k) for k in ("k1", "k2", "k3", "k3b", "k4")] == ["v1", "v2", "v3", "v3b", "v4"]
        seen = hashkvs([a, b, c, d])
        assert len(set(seen)) == 1, seen
    finally:
        front.close()
        for m in (d, c, b, a):
            m.stop()


def _history(url: str, env: dict[str, str] | None, first: int, last: int) -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = {}
    for rev in range(first, last + 1):
        got = run_etcdctl(url, "--command-timeout=10s", "get", "", "--from-key", f"--rev={rev}", env=env,
                          write_out="json")
        assert got.returncode == 0, got.stderr
        kvs = json.loads(got.stdout).get("kvs", [])
        out[rev] = [(kv["key"], kv["value"]) for kv in kvs]
    return out


def test_single_member_becomes_a_cluster_keeping_history_and_a_stalled_learner_is_evicted(tmp_path: Path) -> None:
    ip = _ips(3)
    a, b = Member("a", ip[0], tmp_path), Member("b", ip[1], tmp_path)
    http_url = f"http://{ip[0]}:{a.client_port}"
    try:
        a.start(plain=True)

        def ctl(*args: str, write_out: str | None = None) -> subprocess.CompletedProcess[str]:
            out = run_etcdctl(http_url, "--command-timeout=10s", *args, write_out=write_out)
            assert out.returncode == 0, out.stderr
            return out

        ctl("put", "k", "1")
        ctl("put", "k", "2")
        ctl("put", "j", "x")
        ctl("del", "j")
        lease = ctl("lease", "grant", "900").stdout.split()[1]
        ctl("put", "l", "leased", f"--lease={lease}")
        ctl("compact", "3")
        ctl("put", "k", "3")
        last = int(json.loads(ctl("get", "k", write_out="json").stdout)["header"]["revision"])
        before = _history(http_url, None, 3, last)
        a.stop()

        a.start("--cluster-init", "--learner-stall-timeout", "3s")
        assert "join token written to" in a.log()
        assert _history(a.client_url, a.env(), 3, last) == before
        compacted = a.ctl("get", "k", "--rev=2")
        assert compacted.returncode != 0 and "compacted" in compacted.stderr
        ttl = a.ctl("lease", "timetolive", lease, "--keys")
        assert ttl.returncode == 0 and "attached keys([l])" in ttl.stdout, ttl.stdout + ttl.stderr
        members = a.members()
        assert [str(u) for u in members[0]["peerURLs"]] == [f"https://{ip[0]}:{a.peer_port}"]  # type: ignore

        # a learner that never catches up (nobody listens on its peer URL) is evicted after the stall bound

        ca = fetch_ca(ip[0], a.client_port)

        def ghost(name: str, deadline: float) -> dict[str, Any]:
            return _call_join(a.client_url, ca, {
                "secret": parse_token(a.token()).secret, "name": name,
                "peer_urls": [f"https://{ip[2]}:{free_port()}"], "client_urls": [f"https://{ip[2]}:{free_port()}"],
                "tls_san": [], "settings": must_match(ServerSettings(
                    heartbeat_interval_ms=50, election_timeout_ms=500, snapshot_count=100_000))}, deadline)

        answer = ghost("ghost", time.monotonic() + 30)
        assert "BEGIN CERTIFICATE" in answer["certs"]["peer_cert"]
        assert any(m["name"] == "ghost" and m.get("isLearner") for m in a.members())
        # one learner at a time: another joiner is deferred while the ghost is a learner
        with pytest.raises(JoinError, match="one member joins at a time"):
            ghost("ghost2", time.monotonic())
        # b asks to join, with the bare secret (no CA pinning: a warning): admitted once the ghost has been
        # evicted (stall bound 3 s)
        b.start("--server", a.client_url, "--token", parse_token(a.token()).secret)
        assert "stall eviction" in a.log()
        assert "the cluster CA is not verified" in b.log() and b.token() == a.token()
        members = wait_voters(a, 2)
        assert sorted(str(m["name"]) for m in members) == ["a", "b"]
        assert _history(b.client_url, b.env(), 3, last) == before

        # refused joins (through either member) name the cause and leave the cluster as it was
        def refused(through: Member, *flags: str) -> str:
            d = Member("d", ip[2], tmp_path)
            config = load_config({k.lstrip("-"): v for k, v in zip(d.flags()[::2], d.flags()[1::2], strict=True)}
                                 | {"server": through.client_url} | dict(zip(flags[::2], flags[1::2], strict=True)),
                                 {}).config
            with pytest.raises(JoinError) as err:
                prepare_member(config)
            shutil.rmtree(d.data_dir, ignore_errors=True)
            return str(err.value)

        token = a.token()
        assert token_main(["rotate", "--data-dir", str(a.data_dir)]) == 0  # the running member re-reads it
        new_token = a.token()
        assert new_token != token and new_token.split("::")[0] == token.split("::")[0]
        assert "the token's secret is wrong" in refused(a, "token", token)  # the old secret, rotated away on a
        bad_hash = "K10" + "0" * 64 + "::server:" + new_token.rsplit(":", 1)[1]
        assert "is not the one the token names" in refused(a, "token", bad_hash)
        assert "--snapshot-count differs: the cluster uses 100000, the joining member 5000" in refused(
            b, "token", token, "snapshot-count", "5000")
        assert "--election-timeout differs: the cluster uses 500, the joining member 1000" in refused(
            b, "token", token, "election-timeout", "1000")
        assert "refused a join: wrong token secret" in a.log()
        assert sorted(str(m["name"]) for m in wait_voters(a, 2)) == ["a", "b"]
        assert a.ctl("put", "after", "join").returncode == 0  # members keep working after the rotation
        assert _get(b, "after") == "join"
        seen = hashkvs([a, b])
        assert len(set(seen)) == 1, seen
    finally:
        for m in (b, a):
            m.stop()


@pytest.mark.slow
def test_removed_members_move_their_data_aside_and_rejoin(tmp_path: Path) -> None:
    ip = _ips(3)
    a, b, c = (Member(n, ip[k], tmp_path) for k, n in enumerate("abc"))

    def ids(members: list[dict[str, object]]) -> dict[str, int]:
        return {str(m["name"]): int(str(m["ID"])) for m in members}

    try:
        a.start("--cluster-init")
        b.start("--server", a.client_url, "--token", a.token())
        wait_voters(a, 2)
        c.start("--server", b.client_url, "--token", a.token())
        old = ids(wait_voters(a, 3))
        assert a.ctl("put", "before", "1").returncode == 0
        # b is removed while it runs: it applies its removal, moves its data aside and rejoins as "b"
        removed = a.ctl("member", "remove", f"{old['b']:x}")
        assert removed.returncode == 0, removed.stderr
        assert a.ctl("put", "while-b-away", "2").returncode == 0
        deadline = time.monotonic() + 90
        while (now := ids(wait_voters(a, 3, timeout_s=90)))["b"] == old["b"]:
            assert time.monotonic() < deadline, "b did not rejoin"
            time.sleep(0.5)
        assert list(tmp_path.glob("b.data.removed-*")), "b's old data dir was not moved aside"
        # c is stopped, removed, and the others restart (nothing of the removal left in memory); c comes back on
        # its old data: refused as removed by its peers, it moves the data aside and rejoins as "c"
        c.stop()
        removed = a.ctl("member", "remove", f"{now['c']:x}")
        assert removed.returncode == 0, removed.stderr
        assert retry_ctl(a, "put", "while-c-away", "3").returncode == 0
        a.stop()
        b.stop()
        a.start(ready=False)
        b.start(ready=False)
        assert retry_ctl(a, "put", "after-restart", "4", attempts=60).returncode == 0
        c.start(ready=False)
        deadline = time.monotonic() + 120
        while (final := ids(wait_voters(a, 3, timeout_s=120))).get("c", now["c"]) == now["c"]:
            assert time.monotonic() < deadline, "c did not rejoin"
            time.sleep(0.5)
        assert list(tmp_path.glob("c.data.removed-*")), "c's old data dir was not moved aside"
        assert len(set(final.values())) == 3
        for m in (a, b, c):
            got = [_get(m, k) for k in ("before", "while-b-away", "while-c-away", "after-restart")]
            assert got == ["1", "2", "3", "4"], m.name
        seen = hashkvs([a, b, c])
        assert len(set(seen)) == 1, seen
    finally:
        for m in (c, b, a):
            m.stop()


def test_quorum_loss_cluster_reset_then_wiped_members_rejoin_with_the_token(tmp_path: Path) -> None:
    """K3s's recovery: 2 of 3 managed members lost with their data; ``--cluster-reset`` on the survivor keeps
    every acknowledged write; the lost servers come back on empty data dirs with ``--server`` and the token and
    join as new members; a second start with ``--cluster-reset`` is refused by the guard."""
    ip = _ips(3)
    a, b, c = (Member(n, ip[k], tmp_path) for k, n in enumerate("abc"))
    try:
        a.start("--cluster-init")
        token = a.token()
        b.start("--server", a.client_url, "--token", token)
        wait_voters(a, 2)
        c.start("--server", b.client_url, "--token", token)
        wait_voters(a, 3)
        acked = []
        for i in range(20):
            out = retry_ctl(a if i % 2 else c, "put", f"k{i:02d}", f"v{i}")
            assert out.returncode == 0, out.stderr
            acked.append(f"k{i:02d}")
        # a holds the last acknowledged write before everything dies (the survivor must have it to keep it)
        deadline = time.monotonic() + 30
        while a.ctl("get", "k19", "--consistency=s", "--print-value-only").stdout.strip() != "v19":
            assert time.monotonic() < deadline, "a never saw the last write"
            time.sleep(0.2)
        for m in (b, c, a):
            assert m.process is not None
            m.process.kill9()
        shutil.rmtree(b.data_dir)
        shutil.rmtree(c.data_dir)
        # the survivor resets to a cluster of itself and serves at once
        a.start("--cluster-reset")
        assert [m["name"] for m in wait_voters(a, 1)] == ["a"]
        assert retry_ctl(a, "put", "after-reset", "r").returncode == 0
        # the lost servers join again, as new members, with the same token
        b.start("--server", a.client_url, "--token", token)
        wait_voters(a, 2, timeout_s=120)
        c.start("--server", b.client_url, "--token", token)
        final = wait_voters(a, 3, timeout_s=120)
        assert sorted(str(m["name"]) for m in final) == ["a", "b", "c"]
        for m in (a, b, c):
            for i, key in enumerate(acked):
                assert _get(m, key) == f"v{i}", (m.name, key)
            assert _get(m, "after-reset") == "r"
        seen = hashkvs([a, b, c])
        assert len(set(seen)) == 1, seen
        # the guard: starting again with --cluster-reset is refused and says how to go on
        a.stop()
        log = _refused(a, "--cluster-reset")
        assert "reset-flag" in log and "remove --cluster-reset" in log, log
    finally:
        for m in (c, b, a):
            m.stop()


def test_restore_with_the_token_on_a_new_host_recovers_the_cluster_ca(tmp_path: Path) -> None:
    """K3s's ``--cluster-reset --cluster-reset-restore-path=<snapshot> --token=<token>`` on a brand-new host: the
    snapshot carries the CA encrypted with the token (``/bootstrap/<id>``); the new member restores the data,
    recovers the CA (the token's CA hash) and a new server joins it with the same token. A wrong token is
    refused with one line and leaves nothing behind."""
    ip = _ips(4)
    a, x, y = Member("a", ip[0], tmp_path), Member("x", ip[1], tmp_path), Member("y", ip[2], tmp_path)
    z = Member("z", ip[3], tmp_path)
    snap = tmp_path / "snap.db"
    try:
        a.start("--cluster-init")
        token = a.token()
        for i in range(5):
            assert retry_ctl(a, "put", f"k{i}", f"v{i}").returncode == 0
        deadline = time.monotonic() + 30
        while not a.ctl("get", "/bootstrap/", "--prefix", "--keys-only").stdout.strip():
            assert time.monotonic() < deadline, "no bootstrap record was stored"
            time.sleep(0.2)
        out = a.ctl("snapshot", "save", str(snap))
        assert out.returncode == 0, out.stderr
        a.stop()
        # a wrong token: one line, nothing written
        wrong = token.rsplit(":", 1)[0] + ":not-the-secret"
        log = _refused(x, "--cluster-reset", "--cluster-reset-restore-path", str(snap), "--token", wrong)
        assert "the snapshot's cluster CA cannot be decrypted with this token" in log, log
        assert not x.data_dir.exists() or not any(x.data_dir.iterdir()), list(x.data_dir.iterdir())
        # the right token on a new host (another address, empty data dir)
        x.start("--cluster-reset", "--cluster-reset-restore-path", str(snap), "--token", token)
        assert [m["name"] for m in wait_voters(x, 1)] == ["x"]
        for i in range(5):
            assert _get(x, f"k{i}") == f"v{i}"
        assert hashlib.sha256((x.tls_dir / "ca.crt").read_bytes()).hexdigest() == parse_token(token).ca_hash
        assert x.token() == token
        # a replacement server joins the restored member with the same token
        y.start("--server", x.client_url, "--token", token)
        final = wait_voters(x, 2, timeout_s=120)
        assert sorted(str(m["name"]) for m in final) == ["x", "y"]
        assert _get(y, "k4") == "v4"
        assert (y.tls_dir / "ca.crt").read_bytes() == (x.tls_dir / "ca.crt").read_bytes()
        # token rotate on a running member: its record is re-encrypted with the new secret, the old one deleted
        assert token_main(["rotate", "--data-dir", str(x.data_dir), "--new-token", "rotated-secret"]) == 0
        deadline = time.monotonic() + 30
        while True:
            keys = x.ctl("get", "/bootstrap/", "--prefix", "--keys-only").stdout.split()
            if keys == [bootstrap_key("rotated-secret").decode()]:
                break
            assert time.monotonic() < deadline, keys
            time.sleep(0.2)
        record = x.ctl("get", keys[0], "--print-value-only").stdout.strip().encode()
        assert open_bootstrap("rotated-secret", record)[0] == (x.tls_dir / "ca.crt").read_bytes()
        # the same restore on the old server's own host (its tls/ and token are kept; no --token needed)
        ca_before = (a.tls_dir / "ca.crt").read_bytes()
        a.start("--cluster-reset", "--cluster-reset-restore-path", str(snap))
        assert _get(a, "k3") == "v3"
        assert (a.tls_dir / "ca.crt").read_bytes() == ca_before and a.token() == token
        # with --cluster-init too, the snapshot's CA is recovered (not a new one made)
        z.start("--cluster-reset", "--cluster-reset-restore-path", str(snap), "--token", token, "--cluster-init")
        assert _get(z, "k2") == "v2"
        assert (z.tls_dir / "ca.crt").read_bytes() == ca_before and z.token() == token
    finally:
        for m in (z, y, x, a):
            m.stop()


def test_restore_with_a_token_of_a_snapshot_without_a_cluster_ca(tmp_path: Path) -> None:
    """A snapshot of a cluster made without --cluster-init holds no bootstrap record: ``--token`` alone is refused
    (it could not be honoured), with ``--cluster-init`` the restored member makes a new CA for that token."""
    ip = _ips(2)
    plain, x = Member("p", ip[0], tmp_path), Member("x", ip[1], tmp_path)
    snap = tmp_path / "plain.db"
    try:
        plain.start(plain=True)
        url = f"http://{plain.ip}:{plain.client_port}"
        assert run_etcdctl(url, "put", "k", "v").returncode == 0
        out = run_etcdctl(url, "snapshot", "save", str(snap))
        assert out.returncode == 0, out.stderr
        plain.stop()
        token = "K10::server:some-secret"
        log = _refused(x, "--cluster-reset", "--cluster-reset-restore-path", str(snap), "--token", token)
        assert "the snapshot holds no cluster CA" in log and "--cluster-init" in log, log
        assert not x.data_dir.exists() or not any(x.data_dir.iterdir())
        x.start("--cluster-reset", "--cluster-reset-restore-path", str(snap), "--token", token, "--cluster-init")
        assert _get(x, "k") == "v"
        assert parse_token(x.token()).secret == "some-secret"
        assert parse_token(x.token()).ca_hash == hashlib.sha256((x.tls_dir / "ca.crt").read_bytes()).hexdigest()
    finally:
        for m in (x, plain):
            m.stop()
