"""With ``--listen-client-http-urls`` the ``https://`` client URLs serve gRPC only, through the TLS front
(``security/tls_front.py``): a refused client certificate is logged by the member with its cause, once per
client address per minute, and a verified certificate's CN is still the user when auth is on and no token is
given (etcd's --client-cert-auth rule)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorumkv.testing.pki import PKI, make_pki
from quorumkv.testing.processes import ServerProcess, free_port, run_etcdctl, start_quorumkv

pytestmark = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs etcdctl 3.4 in PATH")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def member(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    url = f"https://127.0.0.1:{free_port()}"
    flags = [f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
             f"--listen-client-http-urls=http://127.0.0.1:{free_port()}",
             f"--cert-file={pki.cert('server')}", f"--key-file={pki.key('server')}",
             f"--trusted-ca-file={pki.ca.path}", "--client-cert-auth", f"--client-crl-file={pki.crl}",
             "--bcrypt-cost=4"]
    server = start_quorumkv(tmp_path_factory.mktemp("member"), extra_args=flags, ready_timeout_s=None)
    try:
        server.client_url = url
        server.etcdctl_env = _env(pki, "client")
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


def _env(pki: PKI, cert: str) -> dict[str, str]:
    return {"ETCDCTL_CACERT": str(pki.ca.path), "ETCDCTL_CERT": pki.cert(cert), "ETCDCTL_KEY": pki.key(cert)}


def _lines(path: Path, start: int, expected: str) -> list[str]:
    with open(path, "rb") as f:
        f.seek(start)
        return [ln for ln in f.read().decode(errors="replace").splitlines() if expected in ln]


CASES = [
    ("other-ca", "client certificate 'other-ca-leaf' (SHA-256 "),
    ("expired", "client certificate 'expired' expired on"),
    ("revoked", "is revoked by --client-crl-file"),
]


@pytest.mark.parametrize(("cert", "expected"), CASES, ids=[c for c, _ in CASES])
def test_a_refused_client_certificate_is_logged_once_with_its_cause(pki: PKI, member: ServerProcess, cert: str,
                                                                    expected: str) -> None:
    start = member.log_path.stat().st_size
    for _ in range(2):  # two attempts (each etcdctl also retries within its dial timeout): one line
        got = run_etcdctl(member.client_url, "--dial-timeout=1s", "--command-timeout=1s", "get", "k",
                          env=_env(pki, cert))
        assert got.returncode != 0, got.stdout
    deadline = time.monotonic() + 15
    while not (lines := _lines(member.log_path, start, expected)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(lines) == 1, (lines, member.log_tail(40))
    assert '"msg":"rejected connection"' in lines[0] and '"remote-addr":"127.0.0.1:' in lines[0], lines[0]
    if cert == "other-ca":  # both CAs, with fingerprints
        assert "issued by 'CN=some other CA'" in lines[0]
        assert "trusts only 'CN=quorumkv test CA' (SHA-256 " in lines[0], lines[0]
    if cert == "expired":
        assert "valid from" in lines[0] and "now is" in lines[0], lines[0]


def test_the_verified_common_name_is_the_user(pki: PKI, member: ServerProcess) -> None:
    """The client certificate's CN is 'root': with auth on, calls without a token are root's."""
    for args in (("user", "add", "root:rootpw"), ("auth", "enable")):
        got = member.etcdctl(*args)
        assert got.returncode == 0, (args, got.stderr)
    try:
        put = member.etcdctl("put", "by-cn", "1")
        assert put.returncode == 0, put.stderr
        users = member.etcdctl("user", "list")  # root only
        assert users.returncode == 0 and "root" in users.stdout, users.stderr
        # a certificate with another CN (no such user) gets no root rights
        other = run_etcdctl(member.client_url, "user", "list", env=_env(pki, "server"), timeout_s=20)
        assert other.returncode != 0
    finally:
        member.etcdctl("--user", "root:rootpw", "auth", "disable")
