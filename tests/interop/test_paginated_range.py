"""Paginated lists (Range with ``limit``, each page from just after the last key, at the first page's revision)
answer as etcd 3.4 does: every page's kvs, ``more`` and ``count`` (quorumkv takes a later page's count from the
page before it, ``store.PageCounts``), with deletes, updates and writes made while the list is read."""

from __future__ import annotations

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from quorumkv.testing.processes import ServerProcess
from tests.interop.conftest import ServerFactory

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("require_etcd_binaries")]

PREFIX = b"/list/"
END = b"/list0"


def _key(i: int) -> bytes:
    return PREFIX + b"%03d" % i


def _session(server: ServerProcess) -> list[tuple[object, ...]]:
    """The same writes and lists on ``server``; every page's (revision-free) answer."""
    out: list[tuple[object, ...]] = []
    with grpc.insecure_channel(server.client_url.removeprefix("http://"),
                               options=[("grpc.enable_http_proxy", 0)]) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        for i in range(40):
            kv.Put(rpc_pb2.PutRequest(key=_key(i), value=b"v%d" % i), timeout=30)
        kv.Put(rpc_pb2.PutRequest(key=b"/lisu", value=b"after the range"), timeout=30)
        for i in range(0, 40, 3):  # deleted keys inside the pages, a deleted last key of a page
            kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=_key(i)), timeout=30)
        for i in range(1, 40, 5):
            kv.Put(rpc_pb2.PutRequest(key=_key(i), value=b"again"), timeout=30)
        fixed = kv.Range(rpc_pb2.RangeRequest(key=b"probe"), timeout=30).header.revision
        base = fixed - 55  # etcd's and quorumkv's revisions are the same (one per write above)

        def listing(limit: int, revision: int, keys_only: bool, write_between: bool) -> None:
            req = rpc_pb2.RangeRequest(key=PREFIX, range_end=END, limit=limit, revision=revision,
                                       keys_only=keys_only)
            for page in range(60):
                resp = kv.Range(req, timeout=30)
                out.append((limit, revision - base if revision else 0, keys_only, page, resp.count, resp.more,
                            [(x.key, x.create_revision - base, x.mod_revision - base, x.version, x.value)
                             for x in resp.kvs]))
                if not resp.more:
                    return
                if write_between:  # the list's revision is fixed: later writes change nothing it reads
                    kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=resp.kvs[0].key), timeout=30)
                    kv.Put(rpc_pb2.PutRequest(key=resp.kvs[-1].key + b"\x00", value=b"new"), timeout=30)
                req.key = resp.kvs[-1].key + b"\x00"
                req.revision = resp.header.revision

        listing(7, 0, False, False)
        listing(1, fixed, True, False)
        listing(10, fixed - 20, False, False)  # before the deletes and updates
        listing(5, 0, False, True)
        listing(4, fixed, False, False)  # again at the same revision: same pages
    return out


def test_paginated_lists_match_etcd(server_factory: ServerFactory) -> None:
    etcd = _session(server_factory("etcd"))
    quorumkv = _session(server_factory("quorumkv"))
    assert len(etcd) > 20
    for want, got in zip(etcd, quorumkv, strict=True):
        assert got == want
