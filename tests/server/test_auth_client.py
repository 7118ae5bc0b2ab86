"""quorumkv's own Python client (user/password) against quorumkv's auth, as tests/client/test_tls_auth.py checks it
against etcd."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from quorumkv.client import AuthenticationError, Client, EtcdError, PermissionDeniedError
from quorumkv.testing.processes import run_etcdctl, start_quorumkv

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl 3.4 not on PATH")]


def test_user_password_auth_with_the_python_client(tmp_path: Path) -> None:
    server = start_quorumkv(tmp_path / "q", extra_args=["--bcrypt-cost", "4"])
    try:
        ep = server.client_url
        for args in (("user", "add", "root:rootpw"), ("user", "add", "bob:bobpw"), ("auth", "enable")):
            result = run_etcdctl(ep, *args)
            assert result.returncode == 0, result.stderr
        with Client(ep, user="root", password="rootpw") as root:
            root.put("secret", "42")
            kv = root.get("secret")
            assert kv is not None and kv.value == b"42"
        with Client(ep, user="bob", password="bobpw") as bob, pytest.raises(PermissionDeniedError):
            bob.get("secret")
        with Client(ep, user="root", password="wrong") as wrong, pytest.raises(AuthenticationError):
            wrong.get("secret")
        with Client(ep) as anonymous, pytest.raises(EtcdError, match="user name is empty"):
            anonymous.get("secret")
    finally:
        server.stop()


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
