"""Passwords through etcdctl against quorumkv's auth (the Python client's auth tests, against etcd and quorumkv
alike, are in tests/client/test_tls_auth.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from quorumkv.testing.processes import run_etcdctl, start_quorumkv

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl 3.4 not on PATH")]


def test_passwords_longer_than_bcrypts_72_bytes_work_as_on_etcd(tmp_path: Path) -> None:
    server = start_quorumkv(tmp_path / "q", extra_args=["--bcrypt-cost", "4"])
    try:
        ep, long = server.client_url, "x" * 100
        for args in (("user", "add", "root:rootpw"), ("user", "add", f"long:{long}"), ("auth", "enable")):
            assert run_etcdctl(ep, *args).returncode == 0, args
        for password, code in ((long, 0), ("x" * 72, 0), ("x" * 71, 2)):  # etcd 3.4.23 answers the same
            assert run_etcdctl(ep, "--user", f"long:{password}", "user", "get", "long").returncode == code
    finally:
        server.stop()
