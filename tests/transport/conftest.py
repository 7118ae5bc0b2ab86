"""Fixtures of the transport tests."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from quorumkv.testing.pki import PKI, make_pki
from quorumkv.transport import PeerTransport, TransportOptions

from .kit import CLUSTER, FAST, Endpoint, MakeEndpoint


@pytest.fixture
async def make_endpoint() -> AsyncIterator[MakeEndpoint]:
    """``await make_endpoint(member_id, cluster_id=CLUSTER, url=None, options=FAST)``: a started transport on a
    loopback port; all are stopped at teardown."""
    made: list[PeerTransport] = []

    async def make(member_id: int, cluster_id: int = CLUSTER, url: str | None = None,
                   options: TransportOptions = FAST, start: bool = True) -> Endpoint:
        ep = Endpoint(member_id)
        ep.transport = PeerTransport(
            member_id, cluster_id, ep.received.append, ep.unreachable.append, random.Random(member_id),
            on_snapshot_status=lambda peer, ok: ep.snapshot_status.append((peer, ok)), options=options,
        )
        made.append(ep.transport)
        if start:
            (ep.url,) = await ep.transport.start([url or "http://127.0.0.1:0"])
        return ep

    yield make
    for t in made:
        await t.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A test PKI (CA, server, peer and client certificates) shared by a module's TLS tests."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def transports() -> AsyncIterator[list[PeerTransport]]:
    """A list the test appends the transports it makes to; all are stopped at teardown."""
    made: list[PeerTransport] = []
    yield made
    for t in made:
        await t.stop()
