"""TLS end to end with real etcdctl: a 3-member cluster with mTLS on client and peer links; a certificate
replaced on disk served without a restart; each rejected dial explained by quorumkvctl and by the member whose
peer link fails."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from quorumkv.testing.cluster import start_quorumkv_cluster
from quorumkv.testing.pki import PKI, issue, make_pki
from quorumkv.testing.processes import ServerTLS, run_etcdctl

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


@pytest.mark.parametrize(("ctl_cert", "ca", "expected"), [
    ("client", "other", "signed by unknown authority"),
    ("other-ca", "ca", "the server rejected our certificate"),
    ("no-client-usage", "ca", "lacks the clientAuth extended key usage"),
])
def test_ctl_names_handshake_failures(pki: PKI, tmp_path: Path, ctl_cert: str, ca: str, expected: str) -> None:
    tls = tls_of(pki)
    with start_quorumkv_cluster(1, tmp_path, tls=tls) as cluster:
        url = cluster.members[0].client_url
        ca_file = str(pki.other_ca.path if ca == "other" else pki.ca.path)
        env = {"ETCDCTL_CACERT": ca_file, "ETCDCTL_CERT": pki.cert(ctl_cert), "ETCDCTL_KEY": pki.key(ctl_cert)}
        ctl = run_etcdctl(url, "--dial-timeout=1s", "get", "k", client="quorumkvctl", env=env)
        assert ctl.returncode != 0
        assert expected in ctl.stderr, ctl.stderr
