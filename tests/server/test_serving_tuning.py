"""Serving-process tuning of the ``quorumkv`` command: the event loop choice, the garbage collector settings,
and the single generic gRPC handler (see docs/performance.md for what each one measured)."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from quorumkv import app as run
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.servicers import add_servicers


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_event_loop_is_uvloop_unless_asked_or_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.delenv(run.EVENT_LOOP_ENV, raising=False)
    loop = run.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    monkeypatch.setenv(run.EVENT_LOOP_ENV, "asyncio")
    loop = run.new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop) and isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
    monkeypatch.delenv(run.EVENT_LOOP_ENV)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: the import fails
    loop = run.new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold(
        monkeypatch: pytest.MonkeyPatch, restore_gc: None) -> None:
    monkeypatch.setenv(run.GC_ENV, "default")
    before = gc.get_threshold()
    run.tune_gc()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    monkeypatch.delenv(run.GC_ENV)
    run.tune_gc()
    assert gc.get_threshold() == (run.GC_THRESHOLD0, *before[1:])
    assert gc.get_freeze_count() > 1000  # modules, descriptors and the like: out of the collector's sight


class _FakeGrpcServer:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_all_methods_are_served_by_one_generic_handler() -> None:
    fake, other = _FakeGrpcServer(), _FakeGrpcServer()
    add_servicers([fake, other], server=object())  # type: ignore[list-item, arg-type]
    # no per-method registration: grpc.aio would keep a pending call per method and asyncio.wait on all of them
    assert fake.registered == [] and len(fake.generic) == 1
    table = fake.generic[0]
    # every server that shares the port serves the same servicer objects (one hub, one set of counters)
    assert other.registered == [] and other.generic == [table]
    expected = [f"/{svc.full_name}/{m.name}" for name in ("KV", "Watch", "Lease", "Maintenance", "Cluster", "Auth")
                for svc in [pb.DESCRIPTOR.services_by_name[name]] for m in svc.methods]
    assert len(expected) > 20
    for method in expected:
        handler = table.service(_Details(method))
        assert handler is not None, method
    put = table.service(_Details("/etcdserverpb.KV/Put"))
    # the table's deserializer decodes etcd's PutRequest (wrapped so that undecodable bytes get grpc-go's answer)
    assert put.request_deserializer(pb.PutRequest(key=b"k").SerializeToString()) == pb.PutRequest(key=b"k")
    assert not put.request_streaming
    # unknown methods get grpc-go's "unknown method" answer (tests/api/test_strict_input.py), not a servicer
    for unknown in ("/etcdserverpb.KV/NoSuchMethod", "/etcdserverpb.Auth/NoSuchMethod"):
        answer = table.service(_Details(unknown))
        assert answer is None or answer.request_deserializer is None, unknown
