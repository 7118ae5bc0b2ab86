"""etcd's auth against a real etcd 3.4: the same etcdctl auth/user/role session, then the same allowed and denied
puts, gets, txns (compare-only denial included), watches and lease revokes per user, give the same output.

Three servers: etcd and quorumkv driven by etcdctl (the whole script), and a second quorumkv driven by quorumkvctl
(the admin part: its output must match etcdctl's against etcd line for line).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from quorumkv.cli.ctl.app import main as ctl_main
from quorumkv.testing.processes import (
    ServerProcess,
    free_port,
    run_etcdctl,
    start_etcd,
    start_etcdctl,
    start_quorumkv,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("require_etcd_binaries")]

ROOT = ("--user", "root:rootpw")
ALICE = ("--user", "alice:apw")  # reader: READ on /r/ (prefix), [a, c), k (from-key); READWRITE on k1
BOB = ("--user", "bob:bpw")  # writer: READWRITE on /w/ (prefix), READ on /r/a

#: The admin session: every auth/user/role command of etcdctl 3.4, good and bad.
ADMIN: list[tuple[str, ...]] = [
    ("user", "add", "root:rootpw"),
    ("user", "add", "root:x"),
    ("user", "add", ":x"),
    ("role", "add", "reader"),
    ("role", "add", "reader"),
    ("role", "add", ""),
    ("role", "add"),
    ("role", "grant-permission", "reader", "read", "/r/", "--prefix"),
    ("role", "grant-permission", "reader", "read", "a", "c"),
    ("role", "grant-permission", "reader", "read", "k", "--from-key"),
    ("role", "grant-permission", "reader", "readwrite", "k1"),
    ("role", "grant-permission", "reader", "read", "b", "a"),  # empty range: etcd keeps it
    ("role", "revoke-permission", "reader", "b", "a"),
    ("role", "grant-permission", "reader", "bad", "k"),
    ("role", "grant-permission", "reader", "read"),
    ("role", "grant-permission", "reader", "read", "x", "y", "--prefix"),
    ("role", "grant-permission", "reader", "read", "x", "--prefix", "--from-key"),
    ("role", "grant-permission", "nope", "read", "x"),
    ("role", "add", "writer"),
    ("role", "grant-permission", "writer", "readwrite", "/w/", "--prefix"),
    ("role", "grant-permission", "writer", "read", "/r/a"),
    ("role", "grant-permission", "writer", "write", "/r/a"),  # the same key again: its type is replaced
    ("role", "grant-permission", "writer", "read", "/r/a"),
    ("role", "get", "reader"),
    ("role", "get", "writer"),
    ("role", "get", "nope"),
    ("user", "add", "alice:apw"),
    ("user", "add", "bob", "--new-user-password=bpw"),
    ("user", "add", "carol:cpw"),
    ("user", "grant-role", "alice", "reader"),
    ("user", "grant-role", "alice", "reader"),
    ("user", "grant-role", "bob", "writer"),
    ("user", "grant-role", "bob", "nope"),
    ("user", "grant-role", "nope", "writer"),
    ("user", "grant-role", "carol", "writer"),
    ("user", "revoke-role", "carol", "writer"),
    ("user", "revoke-role", "carol", "writer"),
    ("user", "get", "alice"),
    ("user", "get", "bob", "--detail"),
    ("user", "get", "carol"),
    ("user", "get", "nope"),
    ("user", "list"),
    ("role", "list"),
    ("-w", "json", "role", "get", "reader"),
    ("-w", "json", "user", "get", "alice"),
    ("-w", "json", "user", "list"),
    ("-w", "json", "role", "add", "tmp"),
    ("-w", "json", "role", "delete", "tmp"),
    ("user", "delete", "carol"),
    ("user", "delete", "carol"),
    ("auth", "enable"),  # root has no root role yet: etcdctl adds the role and grants it
    ("auth", "enable"),
    ("put", "foo", "bar"),
    (*ROOT, "auth", "enable"),
    (*ROOT, "role", "get", "root"),
    (*ROOT, "user", "revoke-role", "root", "root"),
    (*ROOT, "user", "delete", "root"),
    (*ROOT, "role", "delete", "root"),
    (*ALICE, "user", "get", "alice"),
    (*ALICE, "user", "get", "bob"),
    (*ALICE, "role", "get", "reader"),
    (*ALICE, "role", "get", "writer"),
    (*ALICE, "user", "list"),
    (*ALICE, "role", "add", "x"),
    (*ALICE, "auth", "disable"),
    ("--user", "alice:wrong", "get", "/r/a"),
    ("--user", "nobody:x", "get", "/r/a"),
    ("--user", "root", "--password", "rootpw", "user", "list"),
]

#: Per user: allowed and denied operations (run by etcdctl only; `L` is replaced by the current lease ID).
CHECKS: list[tuple[str, ...]] = [
    (*ROOT, "put", "/r/a", "1"),
    (*ROOT, "put", "/w/a", "1"),
    (*ROOT, "put", "k5", "v"),
    (*ALICE, "get", "/r/a"),
    (*ALICE, "get", "/r/", "--prefix"),
    (*ALICE, "get", "a", "c"),
    (*ALICE, "get", "a", "d"),
    (*ALICE, "get", "k", "--from-key"),
    (*ALICE, "get", "", "--prefix"),
    (*ALICE, "get", "/w/a"),
    (*ALICE, "put", "/r/a", "2"),
    (*ALICE, "put", "k1", "v"),
    (*ALICE, "put", "k2", "v"),
    (*ALICE, "del", "/r/a"),
    (*BOB, "put", "/w/b", "2"),
    (*BOB, "put", "/w/c", "3", "--prev-kv"),
    (*BOB, "get", "/w/", "--prefix"),
    (*BOB, "get", "/r/a"),
    (*BOB, "get", "/r/b"),
    (*BOB, "del", "/w/", "--prefix", "--prev-kv"),
    (*BOB, "del", "/r/a"),
    (*ROOT, "get", "", "--prefix", "--keys-only"),
    (*ALICE, "endpoint", "hashkv"),
    (*ALICE, "defrag"),
    (*ALICE, "alarm", "list"),
    (*ALICE, "compaction", "1"),
    (*ROOT, "put", "/w/a", "1"),
    (*ROOT, "user", "passwd", "bob", "--interactive=false"),
    (*BOB, "get", "/w/a"),
    ("--user", "bob:bpw2", "get", "/w/a"),
    (*ROOT, "role", "revoke-permission", "writer", "/r/a"),
    ("--user", "bob:bpw2", "get", "/r/a"),
    (*ROOT, "role", "delete", "writer"),
    (*ROOT, "user", "get", "bob"),
    (*ROOT, "auth", "disable"),
    ("auth", "disable"),
    ("put", "foo", "bar"),
    ("get", "/r/a"),
]

#: txns as (user, stdin); compare-only denial: bob may write /w/ but not read /x.
TXNS: list[tuple[tuple[str, str], str]] = [
    (BOB, 'value("/r/a") = "1"\n\nput /w/t 1\n\n\n'),
    (BOB, 'value("/x") = "1"\n\nput /w/t 1\n\n\n'),
    (BOB, 'value("/w/a") = "1"\n\nget /r/b\n\n\n'),
    (BOB, 'value("/w/a") = "1"\n\n\nput /x 1\n\n'),
    (BOB, 'value("/w/a") = "1"\n\nput /w/t 2\n\ndel /r/a\n\n'),
    (ALICE, 'value("/r/a") = "1"\n\nget /r/a\n\n\n'),
    (ALICE, 'value("/r/a") = "1"\n\nput /r/a 2\n\n\n'),
]

Q1_GATEWAY = ""

_NOISE = [
    (re.compile(r'"ts":"[^"]*",'), ""),
    (re.compile(r"client-[0-9a-f-]{36}"), "client"),
    (re.compile(r"(passthrough:///http://|endpoint://client/)127\.0\.0\.1:\d+"), "EP"),
    (re.compile(r"127\.0\.0\.1:\d+"), "EP"),
    (re.compile(r"\b[0-9a-f]{14,16}\b"), "ID"),
    (re.compile(r'"(cluster_id|member_id)":\d+'), r'"\1":ID'),
]


def normalize(text: str) -> str:
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    return text


@dataclass
class Transcript:
    server: ServerProcess
    client: str
    lines: list[str] = field(default_factory=list)

    def run(self, *args: str, stdin: str = "") -> None:
        if self.client == "quorumkvctl":  # in this process: the same code as the command, without its start-up
            rc, out, err = _ctl_in_process(self.server.client_url, args)
        else:
            proc = run_etcdctl(self.server.client_url, *args, stdin=stdin, client=self.client, timeout_s=30)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        self.lines.append(normalize(f"$ {' '.join(args)}\n{out}{err}rc={rc}"))


def _ctl_in_process(endpoint: str, args: tuple[str, ...]) -> tuple[int, str, str]:
    out, err = io.TextIOWrapper(io.BytesIO(), write_through=True), io.TextIOWrapper(io.BytesIO(), write_through=True)
    with redirect_stdout(out), redirect_stderr(err):
        rc = ctl_main([f"--endpoints={endpoint}", *args])
    return rc, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()  # type: ignore[attr-defined]


def _admin(t: Transcript) -> None:
    for args in ADMIN:
        t.run(*args)


def _checks(t: Transcript) -> None:
    for args in CHECKS:
        t.run(*args, stdin="bpw2\n" if "passwd" in args else "")


def _txns(t: Transcript) -> None:
    t.run(*ROOT, "put", "/r/a", "1")
    t.run(*ROOT, "put", "/w/a", "1")
    for user, stdin in TXNS:
        t.run(*user, "txn", stdin=stdin)


def _watches(t: Transcript) -> None:
    url = t.server.client_url
    denied = start_etcdctl(url, *ALICE, "watch", "/w/a")
    code = denied.wait_exit(15)
    t.lines.append(f"$ watch /w/a as alice\n{denied.stdout}{normalize(denied.stderr)}rc={code}")
    allowed = start_etcdctl(url, *ALICE, "watch", "/r/", "--prefix")
    try:
        for _ in range(100):  # bounded: until the watch is in place (its stream answers before a put)
            run_etcdctl(url, *ROOT, "put", "/r/w", "x")
            if allowed.wait_lines(3, 0.3):
                break
        lines = allowed.stdout.splitlines()[:3]
        assert lines[:1] == ["PUT"], (t.server.log_tail(), allowed.stderr)  # the allowed watch sees the put
        t.lines.append(f"$ watch /r/ --prefix as alice\n{lines}")
    finally:
        allowed.stop()


def _leases(t: Transcript) -> None:
    url = t.server.client_url
    grant = run_etcdctl(url, *ROOT, "lease", "grant", "100")
    lease = grant.stdout.split()[1]
    t.run(*ROOT, "put", "/r/lk", "v", f"--lease={lease}")
    t.run(*BOB, "lease", "revoke", lease)  # bob cannot write /r/lk
    t.run(*BOB, "put", "/w/lk", "v", f"--lease={lease}")  # nor attach more keys to that lease
    t.run(*ALICE, "lease", "revoke", lease)
    t.run(*ROOT, "lease", "revoke", lease)
    mine = run_etcdctl(url, *BOB, "lease", "grant", "100").stdout.split()[1]
    t.run(*BOB, "put", "/w/lk", "v", f"--lease={mine}")
    t.run(*ALICE, "lease", "revoke", mine)
    t.run(*BOB, "lease", "revoke", mine)


def _full(t: Transcript) -> None:
    _admin(t)
    _txns(t)
    _watches(t)
    _leases(t)
    _checks(t)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """etcd, quorumkv (driven by etcdctl) and quorumkv (driven by quorumkvctl)."""
    base: Path = tmp_path_factory.mktemp("auth-diff")
    args = ["--bcrypt-cost", "4"]
    started: list[ServerProcess] = []
    try:
        started.append(start_etcd(base / "etcd", extra_args=args))
        global Q1_GATEWAY
        Q1_GATEWAY = f"http://127.0.0.1:{free_port()}"  # quorumkv serves the JSON gateway on its own listener
        started.append(start_quorumkv(base / "q1", extra_args=[*args, "--listen-client-http-urls", Q1_GATEWAY]))
        started.append(start_quorumkv(base / "q2", extra_args=args))
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def transcripts(servers: list[ServerProcess]) -> dict[str, list[str]]:
    ref = Transcript(servers[0], "etcdctl")
    _full(ref)
    got = Transcript(servers[1], "etcdctl")
    _full(got)
    ctl = Transcript(servers[2], "quorumkvctl")
    _admin(ctl)
    return {"etcd": ref.lines, "quorumkv": got.lines, "quorumkvctl": ctl.lines}


def test_etcdctl_auth_session_and_permissions_match_etcd(transcripts: dict[str, list[str]]) -> None:
    ref, got = transcripts["etcd"], transcripts["quorumkv"]
    assert [(w, h) for w, h in zip(ref, got, strict=True) if w != h] == []


def test_quorumkvctl_auth_session_matches_etcdctl_against_etcd(transcripts: dict[str, list[str]]) -> None:
    ref, got = transcripts["etcd"][: len(ADMIN)], transcripts["quorumkvctl"]
    assert [(w, h) for w, h in zip(ref, got, strict=True) if w != h] == []


def _gateway(url: str, path: str, body: dict[str, object], token: str | None = None) -> tuple[int, dict[str, object]]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, data = resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        status, data = exc.code, json.loads(exc.read() or b"{}")
    data.pop("header", None)
    if isinstance(data.get("token"), str):
        data["token"] = "TOKEN"
    for kv in data.get("kvs", []) if isinstance(data.get("kvs"), list) else []:
        for k in ("create_revision", "mod_revision", "version"):
            kv.pop(k, None)
    return status, data


def _gateway_session(url: str) -> list[tuple[int, dict[str, object]]]:
    out = [_gateway(url, "/v3/auth/authenticate", {"name": "root", "password": "rootpw"}),
           _gateway(url, "/v3/auth/enable", {})]
    status, body = _gateway(url, "/v3/auth/authenticate", {"name": "root", "password": "rootpw"})
    import json
    import urllib.request

    raw = urllib.request.Request(url + "/v3/auth/authenticate", method="POST",
                                 data=json.dumps({"name": "root", "password": "rootpw"}).encode())
    with urllib.request.urlopen(raw, timeout=10) as resp:
        token = str(json.loads(resp.read())["token"])
    out += [(status, body),
            _gateway(url, "/v3/auth/authenticate", {"name": "root", "password": "nope"}),
            _gateway(url, "/v3/kv/range", {"key": "L3IvYQ=="}, token),  # /r/a
            _gateway(url, "/v3/kv/range", {"key": "L3IvYQ=="}),
            _gateway(url, "/v3/kv/range", {"key": "L3IvYQ=="}, "bogus"),
            _gateway(url, "/v3/auth/user/list", {}, token),
            _gateway(url, "/v3/auth/role/get", {"role": "reader"}, token),
            _gateway(url, "/v3/auth/user/get", {"name": "alice"}, token),
            _gateway(url, "/v3/auth/disable", {}, token)]
    return out


def test_gateway_auth_routes_and_authorization_header_match_etcd(transcripts: dict[str, list[str]],
                                                                 servers: list[ServerProcess]) -> None:
    want = _gateway_session(servers[0].client_url)
    assert want[4][1].get("kvs"), want  # the session reads with a token as etcd answers it
    assert _gateway_session(Q1_GATEWAY) == want


def test_bad_input_gets_etcds_errors_and_changes_nothing(transcripts: dict[str, list[str]],
                                                         servers: list[ServerProcess]) -> None:
    import grpc

    from quorumkv.api.authpb import auth_pb2
    from quorumkv.api.etcdserverpb import rpc_pb2 as pb
    from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc

    def attempt(server: ServerProcess) -> list[object]:
        out: list[object] = []
        with grpc.insecure_channel(server.client_url.removeprefix("http://"),
                                   options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
            auth = pb_grpc.AuthStub(ch)
            for call, req in ((auth.UserAdd, pb.AuthUserAddRequest(name="u" * 2_000_000, password="x")),
                              (auth.UserAdd, pb.AuthUserAddRequest(name="", password="x")),
                              (auth.RoleAdd, pb.AuthRoleAddRequest(name="r" * 2_000_000)),
                              (auth.RoleGrantPermission, pb.AuthRoleGrantPermissionRequest(
                                  name="nope", perm=auth_pb2.Permission(key=b"a", range_end=b"b"))),
                              (auth.Authenticate, pb.AuthenticateRequest(name="root", password="rootpw"))):
                try:
                    call(req, timeout=10)
                    out.append("ok")
                except grpc.RpcError as err:
                    out.append((err.code(), err.details()))  # type: ignore[attr-defined]
            out.append(sorted(auth.UserList(pb.AuthUserListRequest(), timeout=10).users))
            out.append(sorted(auth.RoleList(pb.AuthRoleListRequest(), timeout=10).roles))
        return out

    want = attempt(servers[0])
    assert want[0] == (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
    assert attempt(servers[1]) == want
