"""etcd's Lock and Election services, differentially against a real etcd 3.4.23: the same calls over gRPC
and the JSON gateway give the same answers and errors (lease IDs and revisions normalised), contenders wait
for their predecessors, an abandoned wait removes its key; ``quorumkvctl lock/elect`` print what
``etcdctl lock/elect`` print, and real etcdctl's lock/elect work against quorumkv. Every wait is bounded.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest

from quorumkv.api.authpb import auth_pb2
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.api.v3electionpb import v3election_pb2 as epb
from quorumkv.api.v3electionpb import v3election_pb2_grpc as epb_grpc
from quorumkv.api.v3lockpb import v3lock_pb2 as lpb
from quorumkv.api.v3lockpb import v3lock_pb2_grpc as lpb_grpc
from quorumkv.testing.processes import (
    ServerProcess,
    free_port,
    run_etcdctl,
    start_etcd,
    start_etcdctl,
    start_quorumkv,
)

pytestmark = pytest.mark.interop

WAIT_S = 30.0


class Side:
    """One server: gRPC stubs and its gateway URL."""

    def __init__(self, server: ServerProcess, gateway: str) -> None:
        self.server = server
        self.gateway = gateway
        self.channel = grpc.insecure_channel(server.client_url.removeprefix("http://"))
        self.kv = pb_grpc.KVStub(self.channel)
        self.lease = pb_grpc.LeaseStub(self.channel)
        self.lock = lpb_grpc.LockStub(self.channel)
        self.election = epb_grpc.ElectionStub(self.channel)

    def grant(self, ttl: int = 60) -> int:
        return int(self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl), timeout=WAIT_S).ID)

    def revision(self) -> int:
        return int(self.kv.Range(pb.RangeRequest(key=b"\x00"), timeout=WAIT_S).header.revision)

    def keys(self, prefix: bytes) -> list[bytes]:
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        return [kv.key for kv in self.kv.Range(pb.RangeRequest(key=prefix, range_end=end), timeout=WAIT_S).kvs]


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Side]]:
    import shutil

    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd/etcdctl not found on PATH")
    base = tmp_path_factory.mktemp("lockelect")
    started: list[ServerProcess] = []
    out: dict[str, Side] = {}
    try:
        etcd = start_etcd(base / "etcd")
        started.append(etcd)
        out["etcd"] = Side(etcd, etcd.client_url)
        hport = free_port()
        q = start_quorumkv(base / "q", extra_args=["--listen-client-http-urls", f"http://127.0.0.1:{hport}"])
        started.append(q)
        out["quorumkv"] = Side(q, f"http://127.0.0.1:{hport}")
        yield out
    finally:
        for side in out.values():
            side.channel.close()
        for s in started:
            s.stop()


class Norm:
    """Lease IDs (decimal, and hex inside keys) become placeholders; revisions count from ``base``."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.leases: dict[int, str] = {}

    def lease(self, lease_id: int) -> str:
        return self.leases.setdefault(lease_id, f"<L{len(self.leases)}>")

    def key(self, key: bytes) -> str:
        text = key.decode()
        for lease_id, name in self.leases.items():
            text = text.replace(format(lease_id, "x"), name)
        return text

    def rev(self, rev: int) -> int:
        return rev - self.base if rev else 0


def err(exc: grpc.RpcError) -> tuple[str, str]:
    return (exc.code().name, exc.details())


def call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except grpc.RpcError as exc:
        return err(exc)


def wait_until(cond: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def kv_view(n: Norm, kv: Any) -> tuple[Any, ...]:
    return (n.key(kv.key), kv.value, n.rev(kv.create_revision), n.rev(kv.mod_revision), kv.version,
            n.lease(kv.lease) if kv.lease else 0)


# ---------------------------------------------------------------------------------------------- gRPC: Lock

def lock_scenario(side: Side, name: bytes) -> list[Any]:
    n = Norm(side.revision())
    out: list[Any] = []
    l1, l2, l3, l4 = (side.grant() for _ in range(4))
    for lease_id in (l1, l2, l3, l4):
        n.lease(lease_id)
    r1 = side.lock.Lock(lpb.LockRequest(name=name, lease=l1), timeout=WAIT_S)
    out.append(("lock1", n.key(r1.key), n.rev(r1.header.revision)))
    again = side.lock.Lock(lpb.LockRequest(name=name, lease=l1), timeout=WAIT_S)  # the same lease: held
    out.append(("again", n.key(again.key), n.rev(again.header.revision)))
    f2 = side.lock.Lock.future(lpb.LockRequest(name=name, lease=l2), timeout=WAIT_S)
    out.append(("second waits", wait_until(f2.done, 1.0)))
    u = side.lock.Unlock(lpb.UnlockRequest(key=r1.key), timeout=WAIT_S)
    out.append(("unlock1", n.rev(u.header.revision)))
    r2 = f2.result(timeout=WAIT_S)
    out.append(("lock2", n.key(r2.key), n.rev(r2.header.revision)))
    f3 = side.lock.Lock.future(lpb.LockRequest(name=name, lease=l3), timeout=WAIT_S)
    out.append(("third waits", wait_until(f3.done, 1.0)))
    side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=l2), timeout=WAIT_S)  # the holder's lease ends
    r3 = f3.result(timeout=WAIT_S)
    out.append(("lock3", n.key(r3.key), n.rev(r3.header.revision)))
    # a waiter that gives up leaves no key behind
    f4 = side.lock.Lock.future(lpb.LockRequest(name=name, lease=l4), timeout=WAIT_S)
    wait_until(lambda: len(side.keys(name + b"/")) == 2, 10.0)
    out.append(("fourth queued", [n.key(k) for k in side.keys(name + b"/")]))
    f4.cancel()
    out.append(("fourth gone", wait_until(lambda: len(side.keys(name + b"/")) == 1)))
    out.append(("keys", [n.key(k) for k in side.keys(name + b"/")]))
    # errors
    out.append(("no lease", call(lambda: side.lock.Lock(lpb.LockRequest(name=name, lease=12345), timeout=WAIT_S))))
    out.append(("unlock empty", call(lambda: side.lock.Unlock(lpb.UnlockRequest(), timeout=WAIT_S))))
    gone = side.lock.Unlock(lpb.UnlockRequest(key=name + b"/nosuch"), timeout=WAIT_S)
    out.append(("unlock missing", n.rev(gone.header.revision)))
    # no lease: the server grants one of 60 s
    r0 = side.lock.Lock(lpb.LockRequest(name=name + b"-own"), timeout=WAIT_S)
    got = side.kv.Range(pb.RangeRequest(key=r0.key), timeout=WAIT_S).kvs[0]
    ttl = side.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=got.lease), timeout=WAIT_S)
    out.append(("own lease", r0.key == name + b"-own/" + format(got.lease, "x").encode(), ttl.grantedTTL))
    side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=got.lease), timeout=WAIT_S)
    for lease_id in (l1, l3, l4):
        side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=WAIT_S)
    return out


def test_lock_grpc_matches_etcd(sides: dict[str, Side]) -> None:
    got = {kind: lock_scenario(side, b"glock") for kind, side in sides.items()}
    assert got["quorumkv"] == got["etcd"]
    assert ("second waits", False) in got["etcd"]  # the scenario really contends


# ------------------------------------------------------------------------------------------ gRPC: Election

def election_scenario(side: Side, name: bytes) -> list[Any]:
    n = Norm(side.revision())
    out: list[Any] = []
    l1, l2 = side.grant(), side.grant()
    n.lease(l1)
    n.lease(l2)
    out.append(("no leader", call(lambda: side.election.Leader(epb.LeaderRequest(name=name), timeout=WAIT_S))))
    observed: list[Any] = []
    c1 = side.election.Campaign(epb.CampaignRequest(name=name, lease=l1, value=b"v1"), timeout=WAIT_S)
    lk1 = c1.leader
    out.append(("campaign1", n.rev(c1.header.revision), lk1.name, n.key(lk1.key), n.rev(lk1.rev),
                n.lease(lk1.lease)))
    stream = side.election.Observe(epb.LeaderRequest(name=name), timeout=WAIT_S)

    def observe_next() -> None:
        resp = next(stream)
        observed.append((n.rev(resp.header.revision), kv_view(n, resp.kv)))

    observe_next()
    ld = side.election.Leader(epb.LeaderRequest(name=name), timeout=WAIT_S)
    out.append(("leader", n.rev(ld.header.revision), kv_view(n, ld.kv)))
    again = side.election.Campaign(epb.CampaignRequest(name=name, lease=l1, value=b"v2"), timeout=WAIT_S)
    out.append(("campaign again", n.rev(again.header.revision), n.key(again.leader.key), n.rev(again.leader.rev)))
    observe_next()
    f2 = side.election.Campaign.future(epb.CampaignRequest(name=name, lease=l2, value=b"w1"), timeout=WAIT_S)
    out.append(("second waits", wait_until(f2.done, 1.0)))
    p = side.election.Proclaim(epb.ProclaimRequest(leader=lk1, value=b"v3"), timeout=WAIT_S)
    out.append(("proclaim", n.rev(p.header.revision)))
    observe_next()
    stale = epb.LeaderKey(name=name, key=lk1.key, rev=lk1.rev + 100, lease=l1)
    out.append(("proclaim stale", call(lambda: side.election.Proclaim(
        epb.ProclaimRequest(leader=stale, value=b"x"), timeout=WAIT_S))))
    out.append(("proclaim no leader", call(lambda: side.election.Proclaim(epb.ProclaimRequest(value=b"x"),
                                                                         timeout=WAIT_S))))
    out.append(("resign no leader", call(lambda: side.election.Resign(epb.ResignRequest(), timeout=WAIT_S))))
    rs = side.election.Resign(epb.ResignRequest(leader=stale), timeout=WAIT_S)  # not ours: nothing happens
    out.append(("resign stale", n.rev(rs.header.revision), [n.key(k) for k in side.keys(name + b"/")]))
    r1 = side.election.Resign(epb.ResignRequest(leader=lk1), timeout=WAIT_S)
    out.append(("resign", n.rev(r1.header.revision)))
    c2 = f2.result(timeout=WAIT_S)
    out.append(("campaign2", n.rev(c2.header.revision), n.key(c2.leader.key), n.rev(c2.leader.rev)))
    observe_next()
    ld2 = side.election.Leader(epb.LeaderRequest(name=name), timeout=WAIT_S)
    out.append(("leader2", kv_view(n, ld2.kv)))
    stream.cancel()
    out.append(("observed", observed))
    side.election.Resign(epb.ResignRequest(leader=c2.leader), timeout=WAIT_S)
    out.append(("none left", call(lambda: side.election.Leader(epb.LeaderRequest(name=name), timeout=WAIT_S))))
    for lease_id in (l1, l2):
        side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=WAIT_S)
    return out


def test_election_grpc_matches_etcd(sides: dict[str, Side]) -> None:
    got = {kind: election_scenario(side, b"gelect") for kind, side in sides.items()}
    assert got["quorumkv"] == got["etcd"]
    assert ("second waits", False) in got["etcd"]


# ------------------------------------------------------------------------------------------- gRPC: edges

def edges_scenario(side: Side, name: bytes) -> list[Any]:
    n = Norm(side.revision())
    out: list[Any] = []
    lease_id = side.grant()
    n.lease(lease_id)
    el, lk = side.election, side.lock
    no_key = epb.LeaderKey(name=name, rev=5, lease=lease_id)
    out.append(("proclaim no key", call(lambda: el.Proclaim(epb.ProclaimRequest(leader=no_key), timeout=WAIT_S))))
    out.append(("resign no key", call(lambda: el.Resign(epb.ResignRequest(leader=no_key), timeout=WAIT_S))))
    out.append(("resign empty leader", call(lambda: el.Resign(epb.ResignRequest(leader=epb.LeaderKey()),
                                                              timeout=WAIT_S))))
    # Proclaim only compares the key's create revision: rev 0 on an absent key puts it (under a new lease)
    ghost = epb.LeaderKey(name=name, key=name + b"/ghost", rev=0)
    p = el.Proclaim(epb.ProclaimRequest(leader=ghost, value=b"boo"), timeout=WAIT_S)
    got = side.kv.Range(pb.RangeRequest(key=name + b"/ghost"), timeout=WAIT_S).kvs
    out.append(("proclaim ghost", n.rev(p.header.revision), [(kv.value, kv.lease != 0) for kv in got]))
    if got:
        side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=got[0].lease), timeout=WAIT_S)
    out.append(("campaign bad lease", call(lambda: el.Campaign(
        epb.CampaignRequest(name=name, lease=999, value=b"v"), timeout=WAIT_S))))
    out.append(("lock negative lease", call(lambda: lk.Lock(lpb.LockRequest(name=name, lease=-5), timeout=WAIT_S))))
    # etcd 3.4: a waiter whose own key went with its lease still gets the lock once the holder leaves
    l1, l2 = side.grant(), side.grant()
    n.lease(l1)
    n.lease(l2)
    r1 = lk.Lock(lpb.LockRequest(name=name + b"w", lease=l1), timeout=WAIT_S)
    f2 = lk.Lock.future(lpb.LockRequest(name=name + b"w", lease=l2), timeout=WAIT_S)
    wait_until(lambda: len(side.keys(name + b"w/")) == 2, 10.0)
    side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=l2), timeout=WAIT_S)
    out.append(("waiter without key", wait_until(f2.done, 1.0)))
    lk.Unlock(lpb.UnlockRequest(key=r1.key), timeout=WAIT_S)
    r2 = f2.result(timeout=WAIT_S)
    out.append(("granted anyway", n.key(r2.key), n.rev(r2.header.revision), side.keys(name + b"w/")))
    # Unlock deletes any key
    side.kv.Put(pb.PutRequest(key=name + b"plain", value=b"v"), timeout=WAIT_S)
    lk.Unlock(lpb.UnlockRequest(key=name + b"plain"), timeout=WAIT_S)
    out.append(("plain unlocked", side.keys(name + b"plain")))
    # Observe with no leader: the first key put under the name, then its changes, then the next oldest
    stream = el.Observe(epb.LeaderRequest(name=name + b"o"), timeout=WAIT_S)
    time.sleep(0.5)  # the server looks for a leader before the keys are written (if not, the answer is the same)
    side.kv.Put(pb.PutRequest(key=name + b"o/zzz", value=b"first"), timeout=WAIT_S)
    side.kv.Put(pb.PutRequest(key=name + b"o/aaa", value=b"second"), timeout=WAIT_S)
    seen = []
    resp = next(stream)
    seen.append((n.rev(resp.header.revision), resp.kv.key, resp.kv.value))
    side.kv.Put(pb.PutRequest(key=name + b"o/zzz", value=b"third"), timeout=WAIT_S)
    resp = next(stream)
    seen.append((n.rev(resp.header.revision), resp.kv.key, resp.kv.value))
    side.kv.DeleteRange(pb.DeleteRangeRequest(key=name + b"o/zzz"), timeout=WAIT_S)
    resp = next(stream)
    seen.append((n.rev(resp.header.revision), resp.kv.key, resp.kv.value))
    stream.cancel()
    out.append(("observed", seen))
    side.kv.DeleteRange(pb.DeleteRangeRequest(key=name + b"o/aaa"), timeout=WAIT_S)
    for granted in (lease_id, l1):
        side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted), timeout=WAIT_S)
    return out


def test_edges_match_etcd(sides: dict[str, Side]) -> None:
    got = {kind: edges_scenario(side, b"edge") for kind, side in sides.items()}
    assert got["quorumkv"] == got["etcd"]


def auth_scenario(server: ServerProcess) -> list[Any]:
    url = server.client_url
    out: list[Any] = []
    with grpc.insecure_channel(url.removeprefix("http://")) as ch:
        admin = pb_grpc.AuthStub(ch)
        admin.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=WAIT_S)
        admin.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=WAIT_S)
        admin.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=WAIT_S)
        admin.UserAdd(pb.AuthUserAddRequest(name="bob", password="bobpw"), timeout=WAIT_S)
        admin.RoleAdd(pb.AuthRoleAddRequest(name="r"), timeout=WAIT_S)
        admin.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="r", perm=auth_pb2.Permission(
            permType=auth_pb2.Permission.READWRITE, key=b"bobs/", range_end=b"bobs0")), timeout=WAIT_S)
        admin.UserGrantRole(pb.AuthUserGrantRoleRequest(user="bob", role="r"), timeout=WAIT_S)
        admin.AuthEnable(pb.AuthEnableRequest(), timeout=WAIT_S)
        token = pb_grpc.AuthStub(ch).Authenticate(pb.AuthenticateRequest(name="bob", password="bobpw"),
                                                  timeout=WAIT_S).token
        md = (("token", token),)
        lease_id = pb_grpc.LeaseStub(ch).LeaseGrant(pb.LeaseGrantRequest(TTL=60), metadata=md, timeout=WAIT_S).ID
        lk, el = lpb_grpc.LockStub(ch), epb_grpc.ElectionStub(ch)

        def named(fn: Callable[[], Any]) -> Any:
            got = call(fn)
            return got if isinstance(got, tuple) else "ok"

        out.append(("no token", call(lambda: lk.Lock(lpb.LockRequest(name=b"bobs", lease=lease_id), timeout=WAIT_S))))
        out.append(("bad token", call(lambda: lk.Lock(lpb.LockRequest(name=b"bobs", lease=lease_id), timeout=WAIT_S,
                                                      metadata=(("token", "junk"),)))))
        out.append(("denied", call(lambda: lk.Lock(lpb.LockRequest(name=b"other", lease=lease_id), timeout=WAIT_S,
                                                   metadata=md))))
        out.append(("allowed", named(lambda: lk.Lock(lpb.LockRequest(name=b"bobs/x", lease=lease_id),
                                                     timeout=WAIT_S, metadata=md))))
        out.append(("denied leader", call(lambda: el.Leader(epb.LeaderRequest(name=b"other"), timeout=WAIT_S,
                                                            metadata=md))))
        out.append(("denied unlock", call(lambda: lk.Unlock(lpb.UnlockRequest(key=b"other/1"), timeout=WAIT_S,
                                                            metadata=md))))
        out.append(("campaign", named(lambda: el.Campaign(epb.CampaignRequest(name=b"bobs/e", lease=lease_id),
                                                          timeout=WAIT_S, metadata=md))))
        out.append(("leader", named(lambda: el.Leader(epb.LeaderRequest(name=b"bobs/e"), timeout=WAIT_S,
                                                      metadata=md))))
    return out


def test_auth_matches_etcd(tmp_path: Path) -> None:
    """With auth on, the services act as the caller: its token, its key permissions (etcd's errors, code
    Unknown)."""
    import shutil

    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd/etcdctl not found on PATH")
    got = {}
    for kind, start in (("etcd", start_etcd), ("quorumkv", start_quorumkv)):
        server = start(tmp_path / kind)
        try:
            got[kind] = auth_scenario(server)
        finally:
            server.stop()
    assert got["quorumkv"] == got["etcd"]
    assert ("denied", ("UNKNOWN", "etcdserver: permission denied")) in got["etcd"]


# ------------------------------------------------------------------------------------------------ gateway

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(url: str, body: Any, timeout: float = WAIT_S) -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=json.dumps(body).encode())
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def strip(obj: Any) -> Any:
    """Drop the header's IDs and term (they differ between servers)."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in ("cluster_id", "member_id", "raft_term")}
    return obj


def gateway_scenario(side: Side, name: bytes) -> list[Any]:
    n = Norm(side.revision())
    out: list[Any] = []
    g = side.gateway
    lease_id = side.grant()
    n.lease(lease_id)

    def norm_json(obj: Any) -> Any:
        text = json.dumps(strip(obj), sort_keys=True)
        for value in re.findall(r'"([A-Za-z0-9+/=]{8,})"', text):  # base64 keys with a lease hex inside
            try:
                decoded = base64.b64decode(value, validate=True)
            except ValueError:
                continue
            if name in decoded:
                text = text.replace(value, n.key(decoded))
        text = text.replace(str(lease_id), "<L0>")
        return re.sub(r'"revision": "(\d+)"', lambda m: f'"revision": "+{n.rev(int(m.group(1)))}"', text)

    status, body = post(g + "/v3/lock/lock", {"name": b64(name), "lease": str(lease_id)})
    out.append(("lock", status, norm_json(body)))
    key = base64.b64decode(body["key"])
    out.append(("bad lease", *post(g + "/v3/lock/lock", {"name": b64(name), "lease": "12345"})))
    out.append(("unlock empty", *post(g + "/v3/lock/unlock", {})))
    status, body = post(g + "/v3/lock/unlock", {"key": b64(key)})
    out.append(("unlock", status, norm_json(body)))
    out.append(("no leader", *post(g + "/v3/election/leader", {"name": b64(name)})))
    out.append(("proclaim no leader", *post(g + "/v3/election/proclaim", {})))
    status, body = post(g + "/v3/election/campaign", {"name": b64(name), "lease": str(lease_id), "value": b64(b"v")})
    out.append(("campaign", status, norm_json(body)))
    leader = body["leader"]
    status, body = post(g + "/v3/election/leader", {"name": b64(name)})
    out.append(("leader", status, norm_json(body)))
    # observe: the current leader first
    parts = urlsplit(g)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=WAIT_S)
    try:
        conn.request("POST", "/v3/election/observe", body=json.dumps({"name": b64(name)}).encode())
        resp = conn.getresponse()
        out.append(("observe", resp.status, norm_json(json.loads(resp.readline()))))
    finally:
        conn.close()
    # a campaign whose HTTP client goes away is withdrawn
    other = side.grant(60)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=1.0)
    try:
        conn.request("POST", "/v3/election/campaign",
                     body=json.dumps({"name": b64(name), "lease": str(other), "value": b64(b"w")}).encode())
        with pytest.raises(TimeoutError):
            conn.getresponse()
        out.append(("queued", len(side.keys(name + b"/"))))
    finally:
        conn.close()
    out.append(("withdrawn", wait_until(lambda: len(side.keys(name + b"/")) == 1)))
    status, body = post(g + "/v3/election/resign", {"leader": leader})
    out.append(("resign", status, norm_json(body)))
    side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=WAIT_S)
    side.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=other), timeout=WAIT_S)
    return out


def test_gateway_matches_etcd(sides: dict[str, Side]) -> None:
    got = {kind: gateway_scenario(side, b"hlock") for kind, side in sides.items()}
    assert got["quorumkv"] == got["etcd"]


# ------------------------------------------------------------------------------------- etcdctl/quorumkvctl

def ctl_normalize(text: str, side: Side, name: str) -> str:
    text = re.sub(rf"{name}/[0-9a-f]+", f"{name}/<LEASE>", text)
    return re.sub(r"rev=\d+", "rev=<REV>", text)


@pytest.mark.parametrize("client", ["etcdctl", "quorumkvctl"])
def test_ctl_lock_runs_command(sides: dict[str, Side], client: str) -> None:
    """``lock <name> -- cmd``: the command runs holding the lock, with ETCD_LOCK_KEY/ETCD_LOCK_REV; its exit
    status is the tool's; the lock is released after. Same output from every client on every server."""
    results = {}
    for kind, side in sides.items():
        name = f"cl-{client}"
        before = side.revision()
        res = run_etcdctl(side.server.client_url, "lock", name, "--", "sh", "-c",
                          'echo "key=$ETCD_LOCK_KEY rev=$ETCD_LOCK_REV"; exit 3', client=client, timeout_s=WAIT_S)
        rev = int(re.search(r"rev=(\d+)", res.stdout).group(1))  # type: ignore[union-attr]
        assert rev == before + 1
        results[kind] = (res.returncode, ctl_normalize(res.stdout, side, name), res.stderr, side.keys(name.encode()
                                                                                                       + b"/"))
    reference = run_etcdctl(sides["etcd"].server.client_url, "lock", "ref", "--", "sh", "-c", "exit 3")
    assert results["quorumkv"] == results["etcd"]
    assert results["etcd"][0] == reference.returncode == 1
    assert results["etcd"][2] == "Error: exit status 3\n"
    assert results["etcd"][3] == []


@pytest.mark.parametrize(("client", "kind"), [
    ("etcdctl", "quorumkv"),
    ("quorumkvctl", "quorumkv"),
    pytest.param("etcdctl", "etcd", marks=pytest.mark.slow),  # the reference the expectations come from
    pytest.param("quorumkvctl", "etcd", marks=pytest.mark.slow),
])
def test_ctl_lock_and_elect_hold_until_signal(sides: dict[str, Side], client: str, kind: str) -> None:
    """``lock <name>`` prints the key and holds it; a second locker waits; SIGTERM releases. ``elect`` prints
    the leader's key and value; ``elect -l`` follows leaders."""
    side = sides[kind]
    url = side.server.client_url
    name = f"hold-{client}"
    first = start_etcdctl(url, "lock", name, client=client)
    second = None
    observer = None
    candidate = None
    try:
        assert first.wait_lines(2, WAIT_S), first.stderr
        assert re.fullmatch(rf"{name}/[0-9a-f]+\n\n", first.stdout), (kind, first.stdout)
        second = start_etcdctl(url, "lock", name, client=client)
        assert not second.wait_lines(1, 1.0)  # held by the first
        assert first.stop() == 0
        assert second.wait_lines(2, WAIT_S), second.stderr
        assert second.stdout != first.stdout
        assert second.stop() == 0
        assert wait_until(lambda: side.keys(name.encode() + b"/") == [])
        ename = f"el-{client}"
        candidate = start_etcdctl(url, "elect", ename, "prop1", client=client)
        assert candidate.wait_lines(2, WAIT_S), candidate.stderr
        assert re.fullmatch(rf"{ename}/[0-9a-f]+\nprop1\n", candidate.stdout), (kind, candidate.stdout)
        observer = start_etcdctl(url, "elect", "-l", ename, client=client)
        assert observer.wait_lines(2, WAIT_S), observer.stderr
        assert observer.stdout == candidate.stdout
        assert candidate.stop() == 0
        assert wait_until(lambda: side.keys(ename.encode() + b"/") == [])
        bad = run_etcdctl(url, "elect", ename, client=client)
        assert (bad.returncode, bad.stderr) == (128, "Error: no proposal argument but -l not set\n")
    finally:
        for proc in (first, second, observer, candidate):
            if proc is not None:
                proc.stop()


def test_ctl_argument_errors_match(sides: dict[str, Side]) -> None:
    url = sides["etcd"].server.client_url
    for args in (["lock"], ["elect", "-l", "a", "b"]):  # ["elect", name]: in the hold test
        ref = run_etcdctl(url, *args)
        mine = run_etcdctl(url, *args, client="quorumkvctl")
        assert (mine.returncode, mine.stdout, mine.stderr) == (ref.returncode, ref.stdout, ref.stderr), args


def test_grpc_metrics_name_the_services(sides: dict[str, Side]) -> None:
    """grpc_server_* count the Lock and Election methods under etcd's service names and types."""
    for side in sides.values():
        side.lock.Unlock(lpb.UnlockRequest(key=b"metrics/none"), timeout=WAIT_S)
    found = {}
    for kind, side in sides.items():
        parts = urlsplit(side.gateway)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=WAIT_S)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        found[kind] = {  # etcd 3.4 lists these once called (quorumkv lists every method from the start)
            (m.group(1), m.group(2), m.group(3))
            for m in re.finditer(r'^grpc_server_started_total\{grpc_method="(\w+)",grpc_service="(v3\w+pb\.\w+)",'
                                 r'grpc_type="(\w+)"\} (\S+)$', text, re.MULTILINE) if float(m.group(4)) > 0
        }
        unlocks = re.search(r'^grpc_server_handled_total\{grpc_code="OK",grpc_method="Unlock",'
                            r'grpc_service="v3lockpb.Lock",grpc_type="unary"\} (\S+)$', text, re.MULTILINE)
        assert unlocks is not None and float(unlocks.group(1)) >= 1, kind
    assert found["quorumkv"] == found["etcd"]
    assert ("Unlock", "v3lockpb.Lock", "unary") in found["etcd"]


def test_client_raw_calls_reach_the_services(sides: dict[str, Side]) -> None:
    """``quorumkv.client``'s raw_call names the Lock and Election services; etcd's errors come back as EtcdError."""
    from quorumkv.client import Client, EtcdError

    got = {}
    for kind, side in sides.items():
        with Client([side.server.client_url.removeprefix("http://")], timeout=WAIT_S) as client:
            lease_id = client.raw_call("Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=60)).ID
            resp = client.raw_call("Lock", "Lock", lpb.LockRequest(name=b"raw", lease=lease_id))
            client.raw_call("Lock", "Unlock", lpb.UnlockRequest(key=resp.key))
            with pytest.raises(EtcdError) as info:
                client.raw_call("Election", "Leader", epb.LeaderRequest(name=b"raw"), idempotent=True)
            client.raw_call("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))
            got[kind] = (resp.key == b"raw/" + format(lease_id, "x").encode(), str(info.value))
    assert got["quorumkv"] == got["etcd"]
    assert got["etcd"][0]
