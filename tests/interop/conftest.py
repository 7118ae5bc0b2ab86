"""Fixtures for the interop / differential tests that drive the real etcd and etcdctl 3.4 binaries."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quorumkv.testing.processes import ETCD_BIN, ETCDCTL_BIN, ServerProcess, start_etcd, start_quorumkv

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
#: The module whose existence means "the quorumkv server is built"; until then quorumkv candidates skip.
QUORUMKV_SERVER_MODULE = REPO_ROOT / "src" / "quorumkv" / "app.py"
CANDIDATE_ENV = "QUORUMKV_DIFF_CANDIDATE"
CANDIDATE_KINDS = ("etcd", "quorumkv")

ServerFactory = Callable[[str], ServerProcess]


def missing_binaries() -> list[str]:
    return [name for name in (ETCD_BIN, ETCDCTL_BIN) if shutil.which(name) is None]


@pytest.fixture
def require_etcd_binaries() -> None:
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not found on PATH; install them with: "
            "apt-get install etcd-server etcd-client (scripts/test.sh does this)"
        )


@pytest.fixture
def candidate_kind() -> str:
    """The server compared against the reference etcd: env QUORUMKV_DIFF_CANDIDATE=etcd|quorumkv."""
    kind = os.environ.get(CANDIDATE_ENV, "quorumkv").strip() or "quorumkv"
    if kind not in CANDIDATE_KINDS:
        raise pytest.UsageError(f"{CANDIDATE_ENV}={kind!r}: expected one of {', '.join(CANDIDATE_KINDS)}")
    if kind == "quorumkv" and not QUORUMKV_SERVER_MODULE.exists():
        pytest.skip("quorumkv server not built yet")
    return kind


@pytest.fixture
def server_factory(tmp_path: Path, require_etcd_binaries: None) -> Iterator[ServerFactory]:
    """Start servers by kind ("etcd" or "quorumkv") under tmp_path; every one is stopped at teardown."""
    started: list[ServerProcess] = []
    counter = iter(range(1_000_000))

    def start(kind: str) -> ServerProcess:
        base = tmp_path / f"{kind}-{next(counter)}"
        if kind == "etcd":
            server = start_etcd(base)
        elif kind == "quorumkv":
            server = start_quorumkv(base)
        else:
            raise ValueError(f"unknown server kind {kind!r}")
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
