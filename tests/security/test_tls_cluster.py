"""TLS end to end with real etcdctl: a 3-member cluster with mTLS on client and peer links; a certificate
replaced on disk served without a restart; each rejected dial explained by quorumkvctl and by the member whose
peer link fails."""

from __future__ import annotations

import shutil
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorumkv.testing.cluster import ClusterMember, start_quorumkv_cluster
from quorumkv.testing.pki import PKI, issue, make_pki
from quorumkv.testing.processes import ServerTLS, free_port, quorumkv_env, run_etcdctl, spawn_server

pytestmark = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs etcdctl 3.4 in PATH")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_of(pki: PKI, server: str = "server", peer: str = "peer") -> ServerTLS:
    return ServerTLS(str(pki.ca.path), pki.cert(server), pki.key(server), pki.cert(peer), pki.key(peer),
                     pki.cert("client"), pki.key("client"))


def tls_args(ca: str, cert: str, key: str) -> list[str]:
    return [f"--cacert={ca}", f"--cert={cert}", f"--key={key}"]


def test_three_members_with_client_and_peer_mtls(pki: PKI, tmp_path: Path) -> None:
    tls = tls_of(pki)
    with start_quorumkv_cluster(3, tmp_path, tls=tls) as cluster:
        assert all(url.startswith("https://") for url in cluster.client_urls)
        put = cluster.etcdctl("put", "k", "v")
        assert put.returncode == 0, put.stderr
        for member in cluster.members:  # every member serves the value over mTLS
            got = run_etcdctl(member.client_url, "get", "k", "--print-value-only", env=tls.etcdctl_env())
            assert got.stdout.strip() == "v", got.stderr
        health = cluster.etcdctl("endpoint", "health")
        assert health.returncode == 0 and (health.stdout + health.stderr).count("is healthy") == 3
        # without a client certificate the handshake is refused
        bare = run_etcdctl(cluster.members[0].client_url, "--dial-timeout=1s", "get", "k",
                           env={"ETCDCTL_CACERT": str(pki.ca.path)})
        assert bare.returncode != 0
        # the peers elect a new leader over TLS when the leader dies
        leader = cluster.leader()
        cluster.kill(leader)
        assert cluster.leader(exclude=leader) != leader
        put = cluster.etcdctl("put", "k", "v2")
        assert put.returncode == 0, put.stderr


def test_rotation_without_restart_and_ctl_names_the_cause(pki: PKI, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    crt, key = live / "server.crt", live / "server.key"
    shutil.copy(pki.cert("server"), crt)
    shutil.copy(pki.key("server"), key)
    tls = ServerTLS(str(pki.ca.path), str(crt), str(key), pki.cert("peer"), pki.key("peer"),
                    pki.cert("client"), pki.key("client"))
    with start_quorumkv_cluster(1, tmp_path, tls=tls) as cluster:
        server = cluster.members[0].process
        assert server is not None
        assert server.etcdctl("put", "a", "1").returncode == 0
        # the certificate expires (replaced on disk by an expired one): new connections fail, and quorumkvctl
        # says why instead of a bare deadline
        shutil.copy(pki.cert("expired"), crt)
        shutil.copy(pki.key("expired"), key)
        time.sleep(1.2)
        failed = server.etcdctl("--dial-timeout=1s", "get", "a")
        assert failed.returncode != 0
        ctl = run_etcdctl(server.client_url, "--dial-timeout=1s", "get", "a", client="quorumkvctl",
                          env=tls.etcdctl_env())
        assert ctl.returncode != 0
        assert "context deadline exceeded (TLS: the server's certificate 'expired'" in ctl.stderr
        assert "expired on" in ctl.stderr
        # renewed on disk: served without a restart
        renewed_crt, renewed_key = issue(pki.ca, tmp_path, "renewed", sans=("localhost", "127.0.0.1"))
        shutil.copy(renewed_key, key)
        shutil.copy(renewed_crt, crt)
        deadline = time.monotonic() + 10
        while True:
            got = server.etcdctl("get", "a", "--print-value-only")
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert got.stdout.strip() == "1", got.stderr
        assert server.alive()
        assert "reloaded TLS certificate" in server.log_path.read_text()


SUITES = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"


@pytest.fixture(scope="module")
def member(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterMember]:
    """One mTLS member with --cipher-suites, --client-crl-file and an https metrics listener."""
    metrics = f"https://127.0.0.1:{free_port()}"
    extra = ["--cipher-suites", SUITES, "--client-crl-file", str(pki.crl), "--listen-metrics-urls", metrics]
    with start_quorumkv_cluster(1, tmp_path_factory.mktemp("member"), tls=tls_of(pki), extra_args=extra) as c:
        c.members[0].metrics_url = metrics  # type: ignore[attr-defined]
        yield c.members[0]


@pytest.mark.parametrize(("ctl_cert", "ca", "expected"), [
    ("client", "other", "signed by unknown authority"),
    ("other-ca", "ca", "the server rejected our certificate"),
    ("no-client-usage", "ca", "lacks the clientAuth extended key usage"),
])
def test_ctl_names_handshake_failures(pki: PKI, member: ClusterMember, ctl_cert: str, ca: str,
                                      expected: str) -> None:
    ca_file = str(pki.other_ca.path if ca == "other" else pki.ca.path)
    env = {"ETCDCTL_CACERT": ca_file, "ETCDCTL_CERT": pki.cert(ctl_cert), "ETCDCTL_KEY": pki.key(ctl_cert)}
    ctl = run_etcdctl(member.client_url, "--dial-timeout=1s", "get", "k", client="quorumkvctl", env=env)
    assert ctl.returncode != 0
    assert expected in ctl.stderr, ctl.stderr


def test_revoked_client_certificate_is_refused(pki: PKI, member: ClusterMember) -> None:
    env = {"ETCDCTL_CACERT": str(pki.ca.path), "ETCDCTL_CERT": pki.cert("revoked"), "ETCDCTL_KEY": pki.key("revoked")}
    # refused right after the handshake, as etcd 3.4 does (the connection is closed), and logged with the cause
    got = run_etcdctl(member.client_url, "--dial-timeout=2s", "get", "k", env=env)
    assert got.returncode != 0 and "context deadline exceeded" in got.stderr, got.stderr
    deadline = time.monotonic() + 10
    while "is revoked by --client-crl-file" not in member.log_tail(200) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "is revoked by --client-crl-file" in member.log_tail(200)
    ok = run_etcdctl(member.client_url, "get", "k", env=tls_of(pki).etcdctl_env())
    assert ok.returncode == 0, ok.stderr


def _handshake(pki: PKI, port: int, cipher: str) -> str | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(pki.cert("client"), pki.key("client"))
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as sock:
            return str(sock.cipher()[0])
    except (ssl.SSLError, OSError):
        return None


def test_cipher_suites_limit_tls12(pki: PKI, member: ClusterMember) -> None:
    port = member.client_port
    assert _handshake(pki, port, "ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert _handshake(pki, port, "ECDHE-ECDSA-AES256-GCM-SHA384") is None  # not in --cipher-suites


def test_metrics_over_https(pki: PKI, member: ClusterMember) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca.path))
    ctx.load_cert_chain(pki.cert("client"), pki.key("client"))
    url = member.metrics_url  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"{url}/metrics", context=ctx, timeout=10) as resp:
        assert b"etcd_server_has_leader" in resp.read()


def test_auto_tls_serves_a_self_signed_certificate(tmp_path: Path) -> None:
    client, peer = f"https://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "quorumkv", "--data-dir", str(data), "--auto-tls",
            "--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}"]
    server = spawn_server("quorumkv", argv, client_url=client, peer_url=peer, data_dir=data,
                          log_path=tmp_path / "log", env=quorumkv_env())
    try:
        deadline = time.monotonic() + 30
        while True:
            got = run_etcdctl(client, "--insecure-transport=false", "--insecure-skip-tls-verify", "--dial-timeout=1s",
                              "put", "k", "v")
            if got.returncode == 0 or time.monotonic() > deadline or not server.alive():
                break
            time.sleep(0.3)
        assert got.returncode == 0, got.stderr + server.log_tail()
        assert (data / "fixtures" / "client" / "cert.pem").exists()
    finally:
        server.stop()
