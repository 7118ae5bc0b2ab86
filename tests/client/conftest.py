"""Fixtures for the client tests: every client API test runs against a real etcd 3.4 and quorumkv.

One server of each kind per test module (``server``); each test gets its own key prefix (``ns``) so tests that
share a server never see each other's keys.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator

import pytest

from quorumkv.client import Client
from quorumkv.testing.processes import ETCD_BIN, ServerProcess, start_etcd, start_quorumkv

KINDS = ("etcd", "quorumkv")
#: Both servers send periodic progress notifications every second (default 10 minutes).
SERVER_ARGS = ("--experimental-watch-progress-notify-interval=1s",)
_counter = itertools.count()


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    kind: str = request.param
    if kind == "etcd" and shutil.which(ETCD_BIN) is None:
        pytest.skip("etcd 3.4 not on PATH (scripts/test.sh installs it)")
    base = tmp_path_factory.mktemp(f"client-{kind}")
    proc = start_etcd(base, extra_args=SERVER_ARGS) if kind == "etcd" else start_quorumkv(base, extra_args=SERVER_ARGS)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.client_url, timeout=15.0) as c:
        yield c


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses (``t<N>/``)."""
    return f"t{next(_counter)}-{request.node.name[:40]}/"
