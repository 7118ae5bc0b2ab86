"""gRPC-level tests of what etcdctl 3.4 cannot send: Range options, nested and LEASE-compare txns, the txn
duplicate-key rule, watch IDs/progress/fragments/filters, request limits and the Lease service.

Each test starts an in-process member (``start_member``) and talks to it with grpc.aio stubs. Expected
answers come from the model (``quorumkv.testing.model``) or from etcd 3.4's documented behaviour. The
``interop`` tests at the end send the same requests to a real etcd 3.4 and to quorumkv and compare the
answers (minus cluster/member IDs and raft term).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.app import RunningMember, start_member
from quorumkv.server.settings import ServerSettings
from quorumkv.testing import model
from quorumkv.testing.model import Model
from quorumkv.testing.processes import free_port, start_etcd

R = pb.RangeRequest
C = pb.Compare
TIMEOUT_S = 10.0


@dataclass
class Client:
    channel: grpc.aio.Channel
    kv: pb_grpc.KVStub
    watch: pb_grpc.WatchStub
    lease: pb_grpc.LeaseStub

    @classmethod
    def connect(cls, url: str) -> Client:
        ch = grpc.aio.insecure_channel(url.removeprefix("http://"))
        return cls(ch, pb_grpc.KVStub(ch), pb_grpc.WatchStub(ch), pb_grpc.LeaseStub(ch))


MemberFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def member_factory(tmp_path: Path) -> AsyncIterator[MemberFactory]:
    started: list[tuple[RunningMember, Client]] = []

    async def start(**overrides: Any) -> Client:
        url = f"http://127.0.0.1:{free_port()}"
        settings = ServerSettings(data_dir=str(tmp_path / f"m{len(started)}"), advertise_client_urls=[url],
                                  **overrides)
        member = await start_member(settings, [url])
        client = Client.connect(url)
        started.append((member, client))
        return client

    yield start
    for member, client in started:
        await client.channel.close()
        await member.close(grace_s=0.1)


@pytest.fixture
async def qkv(member_factory: MemberFactory) -> Client:
    return await member_factory()


def bare(msg: Any) -> Any:
    """The message without what differs between servers: cluster/member ID and raft term."""
    out = type(msg)()
    out.CopyFrom(msg)
    if out.HasField("header"):
        out.header.cluster_id = out.header.member_id = out.header.raft_term = 0
    return out


async def outcome(call: Awaitable[Any]) -> tuple[str, Any, str]:
    try:
        return "ok", bare(await call), ""
    except grpc.aio.AioRpcError as exc:
        return "error", exc.code().name, exc.details() or ""


GRPC_CODE = {model.COMPACTED: "OUT_OF_RANGE", model.FUTURE_REV: "OUT_OF_RANGE", model.LEASE_NOT_FOUND: "NOT_FOUND",
             model.KEY_NOT_FOUND: "INVALID_ARGUMENT"}


def model_outcome(call: Callable[[], Any]) -> tuple[str, Any, str]:
    try:
        return "ok", call(), ""
    except model.ModelError as exc:
        return "error", GRPC_CODE[exc.message], exc.message


def op_put(key: bytes, value: bytes = b"v", **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))


def op_del(key: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=end))


def op_get(key: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=end))


def op_txn(success: list[pb.RequestOp] = (), failure: list[pb.RequestOp] = (),  # type: ignore[assignment]
           compare: list[pb.Compare] = ()) -> pb.RequestOp:  # type: ignore[assignment]
    return pb.RequestOp(request_txn=pb.TxnRequest(compare=compare, success=success, failure=failure))


# -- a key space without ties in any sort target (so etcd's unstable sort gives one answer) -------------------

VERSIONS = {b"k0": 3, b"k1": 1, b"k2": 5, b"k3": 2, b"k4": 4, b"k5": 6}
WRITE_ORDER = [b"k4", b"k1", b"k5", b"k0", b"k3", b"k2"]


def populate_requests() -> list[pb.PutRequest]:
    reqs = []
    for round_ in range(max(VERSIONS.values())):
        for key in WRITE_ORDER:
            if round_ < VERSIONS[key]:
                reqs.append(pb.PutRequest(key=key, value=bytes([0x70 - 7 * round_ - key[1]]) + key))
    return reqs


def range_requests() -> list[pb.RangeRequest]:
    reqs = [
        R(key=b"k", range_end=b"l", sort_order=o, sort_target=t, limit=lim)
        for o, t, lim in itertools.product([R.NONE, R.ASCEND, R.DESCEND],
                                           [R.KEY, R.VERSION, R.CREATE, R.MOD, R.VALUE], [0, 1, 2, 4, 6])
    ]
    reqs += [
        R(key=b"k", range_end=b"l", count_only=True),
        R(key=b"k", range_end=b"l", count_only=True, limit=1),
        R(key=b"k", range_end=b"l", count_only=True, min_mod_revision=15),
        R(key=b"k", range_end=b"l", keys_only=True, limit=3, sort_order=R.DESCEND, sort_target=R.MOD),
        R(key=b"k", range_end=b"l", min_mod_revision=15),
        R(key=b"k", range_end=b"l", max_mod_revision=15, limit=2),
        R(key=b"k", range_end=b"l", min_create_revision=4, max_create_revision=6),
        R(key=b"k", range_end=b"l", max_create_revision=3, sort_order=R.DESCEND, sort_target=R.VERSION),
        R(key=b"k", range_end=b"l", min_mod_revision=10, max_mod_revision=20, limit=1, sort_target=R.CREATE),
        R(key=b"k", range_end=b"l", revision=8, sort_order=R.DESCEND, sort_target=R.VALUE, limit=2),
        R(key=b"k", range_end=b"l", revision=8, min_mod_revision=5, count_only=True),
        R(key=b"k2", range_end=b"\x00", limit=2, sort_target=R.VERSION),
        R(key=b"k3"),
        R(key=b"k", range_end=b"l", revision=99),
    ]
    return reqs


async def test_range_options_match_the_model(qkv: Client) -> None:
    oracle = Model()
    for put in populate_requests():
        got = await qkv.kv.Put(put)
        assert bare(got) == oracle.put(put)
    for req in range_requests():
        assert await outcome(qkv.kv.Range(req)) == model_outcome(lambda req=req: oracle.range(req)), req


async def test_invalid_sort_option(qkv: Client) -> None:
    # etcd 3.4.23 ignores an unknown sort order and panics on an unknown sort target; quorumkv answers with
    # the error etcd defines for both (and later etcd releases send).
    for req in (R(key=b"a", sort_order=7), R(key=b"a", sort_target=9)):
        assert await outcome(qkv.kv.Range(req)) == ("error", "INVALID_ARGUMENT", "etcdserver: invalid sort option")


async def test_txn_lease_compare_and_nested_responses(qkv: Client) -> None:
    oracle = Model(min_lease_ttl=2)
    grant = pb.LeaseGrantRequest(ID=0x77, TTL=60)
    assert bare(await qkv.lease.LeaseGrant(grant)) == oracle.lease_grant(grant)
    for put in (pb.PutRequest(key=b"a", value=b"1", lease=0x77), pb.PutRequest(key=b"b", value=b"2")):
        assert bare(await qkv.kv.Put(put)) == oracle.put(put)
    txns = [
        pb.TxnRequest(compare=[C(key=b"a", target=C.LEASE, result=C.EQUAL, lease=0x77)],
                      success=[op_put(b"c", b"3")], failure=[op_get(b"a")]),
        pb.TxnRequest(compare=[C(key=b"b", target=C.LEASE, result=C.EQUAL, lease=0x77)],
                      success=[op_put(b"c", b"4")], failure=[op_get(b"b")]),
        pb.TxnRequest(compare=[C(key=b"missing", target=C.LEASE, result=C.EQUAL, lease=0)],
                      success=[op_get(b"missing")]),
        pb.TxnRequest(compare=[C(key=b"a", range_end=b"c", target=C.LEASE, result=C.GREATER, lease=0)],
                      success=[op_get(b"a")], failure=[op_get(b"b")]),
        # nested: compares decided before any op; reads see the txn's own earlier writes; one revision
        pb.TxnRequest(
            compare=[C(key=b"a", target=C.VALUE, result=C.EQUAL, value=b"1")],
            success=[
                op_put(b"a", b"new", prev_kv=True),
                op_txn(compare=[C(key=b"a", target=C.VALUE, result=C.EQUAL, value=b"1")],
                       success=[op_get(b"a"), op_txn(success=[op_del(b"b")], failure=[op_get(b"b")])],
                       failure=[op_put(b"x", b"wrong")]),
                op_get(b"a", b"z"),
            ],
        ),
        pb.TxnRequest(success=[op_txn(failure=[op_put(b"x")],
                                      compare=[C(key=b"x", target=C.VERSION, result=C.GREATER, version=0)])]),
    ]
    for txn in txns:
        assert await outcome(qkv.kv.Txn(txn)) == model_outcome(lambda txn=txn: oracle.txn(txn)), txn
    nested = (await qkv.kv.Txn(txns[-1])).responses[0].response_txn
    assert nested.HasField("header") and nested.header.revision == 0  # etcd leaves it empty


# -- the txn duplicate-key rule (etcd's checkIntervals), table-driven ------------------------------------------

DUP_CASES: list[tuple[str, pb.TxnRequest, bool]] = [
    ("two puts of one key", pb.TxnRequest(success=[op_put(b"a"), op_put(b"a")]), False),
    ("puts of one key in success and failure", pb.TxnRequest(success=[op_put(b"a")], failure=[op_put(b"a")]),
     True),
    ("put and delete of the key", pb.TxnRequest(success=[op_del(b"a"), op_put(b"a")]), False),
    ("put inside a deleted range", pb.TxnRequest(success=[op_put(b"ab"), op_del(b"a", b"b")]), False),
    ("put outside a deleted range", pb.TxnRequest(success=[op_put(b"b"), op_del(b"a", b"b")]), True),
    ("two deletes of one key", pb.TxnRequest(success=[op_del(b"a"), op_del(b"a", b"b")]), True),
    ("get and put of one key", pb.TxnRequest(success=[op_get(b"a"), op_put(b"a")]), True),
    ("then and else of one nested txn", pb.TxnRequest(success=[op_txn([op_put(b"a")], [op_put(b"a")])]), True),
    ("nested then put and parent put", pb.TxnRequest(success=[op_txn([op_put(b"a")]), op_put(b"a")]), False),
    ("nested else put and parent put", pb.TxnRequest(success=[op_put(b"a"), op_txn([], [op_put(b"a")])]),
     False),
    ("nested delete and parent put", pb.TxnRequest(success=[op_txn([op_del(b"a", b"b")]), op_put(b"ab")]),
     False),
    ("parent delete and nested put", pb.TxnRequest(success=[op_del(b"a", b"b"), op_txn([], [op_put(b"ab")])]),
     False),
    ("two nested txns put one key", pb.TxnRequest(success=[op_txn([op_put(b"a")]), op_txn([op_put(b"a")])]),
     False),
    ("nested then vs other nested else",
     pb.TxnRequest(success=[op_txn([op_put(b"a")]), op_txn([], [op_put(b"a")])]), False),
    ("nested txn repeats key in both branches after a sibling",
     pb.TxnRequest(success=[op_txn([op_put(b"a")]), op_txn([op_put(b"a")], [op_put(b"a")])]), False),
    ("grand-child delete and parent put",
     pb.TxnRequest(success=[op_txn([op_txn([op_del(b"a")])]), op_put(b"a")]), False),
    # etcd checks [key, "\0") literally: a "from key" delete overlaps no put (etcd 3.4.23 accepts these)
    ("from-key delete and put after it", pb.TxnRequest(success=[op_del(b"a", b"\x00"), op_put(b"b")]), True),
    ("nested from-key delete and parent put",
     pb.TxnRequest(success=[op_txn([op_del(b"a", b"\x00")]), op_put(b"a")]), True),
    ("nested puts of different keys", pb.TxnRequest(success=[op_txn([op_put(b"a")], [op_put(b"b")]),
                                                             op_put(b"c")]), True),
]
DUPLICATE = ("error", "INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")


@pytest.mark.parametrize(("txn", "allowed"), [(t, ok) for _, t, ok in DUP_CASES], ids=[n for n, _, _ in DUP_CASES])
async def test_txn_duplicate_key_rule(qkv: Client, txn: pb.TxnRequest, allowed: bool) -> None:
    got = await outcome(qkv.kv.Txn(txn))
    if allowed:
        assert got[0] == "ok", got
    else:
        assert got == DUPLICATE


# -- request limits ------------------------------------------------------------------------------------------


async def test_too_many_txn_ops(qkv: Client) -> None:
    too_many = ("error", "INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
    gets = [op_get(b"k%d" % i) for i in range(129)]
    assert (await outcome(qkv.kv.Txn(pb.TxnRequest(success=gets[:128]))))[0] == "ok"
    assert await outcome(qkv.kv.Txn(pb.TxnRequest(success=gets))) == too_many
    assert await outcome(qkv.kv.Txn(pb.TxnRequest(failure=gets))) == too_many
    compares = [C(key=b"k", target=C.VERSION, result=C.EQUAL)] * 129
    assert await outcome(qkv.kv.Txn(pb.TxnRequest(compare=compares))) == too_many
    # etcd: a nested txn may use only what its parent leaves of the budget (128 - 100 = 28 < 30)
    nested = pb.TxnRequest(success=[*gets[:99], op_txn(gets[:30])])
    assert await outcome(qkv.kv.Txn(nested)) == too_many
    assert (await outcome(qkv.kv.Txn(pb.TxnRequest(success=[*gets[:99], op_txn(gets[:28])]))))[0] == "ok"


async def test_request_too_large(member_factory: MemberFactory) -> None:
    client = await member_factory(max_request_bytes=64 * 1024)
    big = pb.PutRequest(key=b"big", value=b"x" * (100 * 1024))  # over the limit, under the gRPC cap (+512 KiB)
    assert await outcome(client.kv.Put(big)) == ("error", "INVALID_ARGUMENT", "etcdserver: request is too large")
    assert (await outcome(client.kv.Put(pb.PutRequest(key=b"ok", value=b"x" * 1024))))[0] == "ok"
    resp = await client.kv.Range(R(key=b"big"))
    assert resp.count == 0 and resp.header.revision == 2


# -- watch ---------------------------------------------------------------------------------------------------


class WatchCall:
    def __init__(self, client: Client) -> None:
        self.call = client.watch.Watch()

    async def create(self, **kw: Any) -> None:
        await self.call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(**kw)))

    async def read(self) -> pb.WatchResponse:
        async with asyncio.timeout(TIMEOUT_S):
            resp: pb.WatchResponse = await self.call.read()
        return resp

    async def events(self, n: int) -> list[tuple[int, bytes, int]]:
        out: list[tuple[int, bytes, int]] = []
        while len(out) < n:
            resp = await self.read()
            out += [(ev.type, ev.kv.key, ev.kv.mod_revision) for ev in resp.events]
        return out


async def test_watch_ids_progress_and_filters(qkv: Client) -> None:
    w = WatchCall(qkv)
    await w.create(key=b"a", range_end=b"b", watch_id=7)
    created = await w.read()
    assert (created.created, created.watch_id, created.canceled) == (True, 7, False)
    await w.create(key=b"x", watch_id=7)
    dup = await w.read()
    assert (dup.created, dup.canceled, dup.watch_id) == (True, True, -1)
    assert dup.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
    await w.create(key=b"b", range_end=b"a")
    bad = await w.read()
    assert (bad.created, bad.canceled, bad.watch_id, bad.cancel_reason) == (
        True, True, -1, "mvcc: watcher range is empty")
    await w.create(key=b"a", range_end=b"b", filters=[pb.WatchCreateRequest.NOPUT])
    noput = (await w.read()).watch_id
    await w.create(key=b"a", range_end=b"b", filters=[pb.WatchCreateRequest.NODELETE])
    nodelete = (await w.read()).watch_id
    assert len({7, noput, nodelete}) == 3

    await qkv.kv.Put(pb.PutRequest(key=b"a1", value=b"v"))  # rev 2
    await qkv.kv.DeleteRange(pb.DeleteRangeRequest(key=b"a1"))  # rev 3
    await qkv.kv.Put(pb.PutRequest(key=b"zz", value=b"v"))  # rev 4, outside every range
    seen: dict[int, list[tuple[int, bytes, int]]] = {7: [], noput: [], nodelete: []}
    while sum(map(len, seen.values())) < 4:
        resp = await w.read()
        seen[resp.watch_id] += [(ev.type, ev.kv.key, ev.kv.mod_revision) for ev in resp.events]
    put, delete = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
    assert seen == {7: [(put, b"a1", 2), (delete, b"a1", 3)], noput: [(delete, b"a1", 3)],
                    nodelete: [(put, b"a1", 2)]}

    await w.call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    progress = await w.read()
    assert (progress.watch_id, progress.header.revision, len(progress.events)) == (-1, 4, 0)
    assert not progress.created and not progress.canceled

    await w.call.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=7)))
    canceled = await w.read()
    assert (canceled.watch_id, canceled.canceled) == (7, True)
    w.call.cancel()


async def test_watch_fragments_a_large_revision(member_factory: MemberFactory) -> None:
    client = await member_factory(max_request_bytes=64 * 1024)
    value = b"v" * (20 * 1024)
    keys = [b"f1", b"f2", b"f3"]
    for key in keys:
        await client.kv.Put(pb.PutRequest(key=key, value=value))
    fragmented, whole = WatchCall(client), WatchCall(client)
    await fragmented.create(key=b"f", range_end=b"g", prev_kv=True, fragment=True)
    await whole.create(key=b"f", range_end=b"g", prev_kv=True)
    assert (await fragmented.read()).created and (await whole.read()).created
    # one revision whose events (with prev_kv) exceed max_request_bytes
    await client.kv.Txn(pb.TxnRequest(success=[op_put(k, value.upper()) for k in keys]))
    parts = [await fragmented.read()]
    while parts[-1].fragment:
        parts.append(await fragmented.read())
    assert len(parts) > 1 and not parts[-1].fragment
    assert all(p.header.revision == 5 for p in parts)
    assert [ev.kv.key for p in parts for ev in p.events] == keys
    single = await whole.read()
    assert not single.fragment and [ev.kv.key for ev in single.events] == keys
    assert [ev.prev_kv.value for ev in single.events] == [value] * 3
    fragmented.call.cancel()
    whole.call.cancel()


# -- lease service -------------------------------------------------------------------------------------------


async def test_lease_service(qkv: Client) -> None:
    granted = await qkv.lease.LeaseGrant(pb.LeaseGrantRequest(ID=1001, TTL=60))
    assert (granted.ID, granted.TTL, granted.header.revision) == (1001, 60, 1)
    assert await outcome(qkv.lease.LeaseGrant(pb.LeaseGrantRequest(ID=1001, TTL=60))) == (
        "error", "FAILED_PRECONDITION", "etcdserver: lease already exists")
    assert await outcome(qkv.lease.LeaseGrant(pb.LeaseGrantRequest(ID=1002, TTL=9_000_000_001))) == (
        "error", "OUT_OF_RANGE", "etcdserver: too large lease TTL")
    auto = await qkv.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=1))
    assert auto.ID > 0 and auto.TTL == 2  # raised to the minimum TTL
    leases = await qkv.lease.LeaseLeases(pb.LeaseLeasesRequest())
    assert sorted(lease.ID for lease in leases.leases) == sorted([1001, auto.ID])

    keepalive = qkv.lease.LeaseKeepAlive()
    for lease_id, ttl in ((1001, 60), (auto.ID, 2), (424242, 0)):
        await keepalive.write(pb.LeaseKeepAliveRequest(ID=lease_id))
        async with asyncio.timeout(TIMEOUT_S):
            resp = await keepalive.read()
        assert (resp.ID, resp.TTL) == (lease_id, ttl)
    keepalive.cancel()

    await qkv.kv.Put(pb.PutRequest(key=b"leased", value=b"v", lease=1001))
    ttl = await qkv.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=1001, keys=True))
    assert (ttl.grantedTTL, list(ttl.keys)) == (60, [b"leased"]) and 55 <= ttl.TTL <= 60
    revoked = await qkv.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=1001))
    assert revoked.header.revision == 3
    assert (await qkv.kv.Range(R(key=b"leased"))).count == 0
    assert await outcome(qkv.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=1001))) == (
        "error", "NOT_FOUND", "etcdserver: requested lease not found")


# -- differential: the same requests to etcd 3.4 and quorumkv --------------------------------------------------


@pytest.fixture
async def etcd_client(tmp_path: Path) -> AsyncIterator[Client]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd not on PATH (apt-get install etcd-server)")
    server = await asyncio.get_running_loop().run_in_executor(None, start_etcd, tmp_path / "etcd")
    client = Client.connect(server.client_url)
    try:
        yield client
    finally:
        await client.channel.close()
        server.stop()


async def same_answers(etcd: Client, qkv: Client, calls: list[Callable[[Client], Awaitable[Any]]]) -> int:
    for i, call in enumerate(calls):
        want, got = await outcome(call(etcd)), await outcome(call(qkv))
        assert got == want, f"call {i}:\netcd:     {want}\nquorumkv: {got}"
    return len(calls)


def put_call(req: pb.PutRequest) -> Callable[[Client], Awaitable[Any]]:
    return lambda c: c.kv.Put(req)


def range_call(req: pb.RangeRequest) -> Callable[[Client], Awaitable[Any]]:
    return lambda c: c.kv.Range(req)


def txn_call(req: pb.TxnRequest) -> Callable[[Client], Awaitable[Any]]:
    return lambda c: c.kv.Txn(req)


@pytest.mark.interop
async def test_range_options_same_as_etcd(etcd_client: Client, qkv: Client) -> None:
    calls = [put_call(p) for p in populate_requests()] + [range_call(r) for r in range_requests()]
    assert await same_answers(etcd_client, qkv, calls) > 100


@pytest.mark.interop
async def test_txns_same_as_etcd(etcd_client: Client, qkv: Client) -> None:
    """The duplicate-key table, nested txns, LEASE compares and the nested ops budget."""
    gets = [op_get(b"g%d" % i) for i in range(100)]
    calls: list[Callable[[Client], Awaitable[Any]]] = [
        lambda c: c.lease.LeaseGrant(pb.LeaseGrantRequest(ID=0x77, TTL=60)),
        put_call(pb.PutRequest(key=b"a", value=b"1", lease=0x77)),
        put_call(pb.PutRequest(key=b"b", value=b"2")),
        *(txn_call(t) for _, t, _ in DUP_CASES),
        txn_call(pb.TxnRequest(compare=[C(key=b"a", range_end=b"c", target=C.LEASE, result=C.EQUAL, lease=0x77)],
                               success=[op_get(b"a")], failure=[op_get(b"b"), op_txn([op_put(b"c")])])),
        txn_call(pb.TxnRequest(compare=[C(key=b"zz", target=C.VALUE, result=C.EQUAL, value=b"")],
                               failure=[op_txn([op_del(b"c"), op_get(b"a", b"\x00")],
                                               compare=[C(key=b"c", target=C.CREATE, result=C.GREATER)])])),
        txn_call(pb.TxnRequest(success=[*gets[:99], op_txn(gets[:30])])),
        txn_call(pb.TxnRequest(success=[*gets[:99], op_txn(gets[:28])])),
        lambda c: c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=0x77)),
        range_call(R(key=b"\x00", range_end=b"\x00")),
    ]
    await same_answers(etcd_client, qkv, calls)


def test_compact_zero_on_a_never_compacted_store_succeeds_once(tmp_path: Path) -> None:
    """etcd's compact revision starts at -1: Compact(0) is accepted once, then it is 'already compacted'."""
    import asyncio

    from quorumkv import errors
    from quorumkv.errors import EtcdError
    from quorumkv.server.server import QuorumServer
    from quorumkv.server.settings import ServerSettings

    async def main() -> None:
        srv = QuorumServer(ServerSettings(data_dir=str(tmp_path / "d")))
        await srv.start()
        try:
            first = await srv.compact(pb.CompactionRequest(revision=0))
            assert first.header.revision == 1
            try:
                await srv.compact(pb.CompactionRequest(revision=0))
            except EtcdError as exc:
                assert exc.message == errors.COMPACTED.message
            else:
                raise AssertionError("a second Compact(0) must fail as compacted")
        finally:
            await srv.stop()

    asyncio.run(main())
