"""Offline certificate inspection: each broken certificate of the test PKI gets its own one-line cause and fix,
the server refuses it before listening (exit 2), and ``quorumkv check certs`` prints the table."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from quorumkv.cli.server import EXIT_USAGE, main
from quorumkv.security.autotls import self_cert
from quorumkv.security.certs import Endpoint, check_endpoint, describe, load_certs
from quorumkv.security.ciphers import CipherSuiteError, openssl_names
from quorumkv.security.diagnose import DialTLS, diagnose_dial
from quorumkv.security.reload import CHECK_INTERVAL_S, reloading_ssl_context
from quorumkv.testing.pki import PKI, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def peer(pki: PKI, name: str, **kw: object) -> Endpoint:
    return Endpoint("peer", pki.cert(name), pki.key(name), str(pki.ca.path), str(pki.crl), True,
                    names=["127.0.0.1", "localhost"], **kw)  # type: ignore[arg-type]


def lines(ep: Endpoint) -> list[str]:
    return [p.line() for p in check_endpoint(ep)]


def test_good_certificates_have_no_problem(pki: PKI) -> None:
    assert lines(peer(pki, "peer")) == []
    assert lines(Endpoint("client", pki.cert("server"), pki.key("server"), str(pki.ca.path),
                          names=["127.0.0.1"])) == []


@pytest.mark.parametrize(("name", "kw", "expected"), [
    ("expired", {}, ["expired on", "valid from", "now is", "replace the file"]),
    ("future", {}, ["is not yet valid: valid from", "clock"]),
    ("wrong-san", {}, ["does not cover 127.0.0.1, localhost", "its SANs: DNS:example.com, IP:10.9.9.9",
                       "subjectAltName including IP:127.0.0.1, DNS:localhost"]),
    ("no-client-usage", {}, ["lacks the clientAuth extended key usage", "(it has serverAuth)"]),
    ("no-server-usage", {}, ["lacks the serverAuth extended key usage"]),
    ("other-ca", {}, ["signed by unknown authority", "'CN=some other CA'", "trusts only 'CN=quorumkv test CA' "
                      "(SHA-256 "]),
    ("wrong-cn", {"allowed_cn": "quorumkv-peer"}, ["CN 'intruder' is not the one --peer-cert-allowed-cn"]),
    ("revoked", {}, ["is revoked by", "ca.crl"]),
    ("mismatch", {}, ["--peer-key-file", "does not match the certificate"]),
])
def test_each_broken_certificate_names_its_problem_and_fix(pki: PKI, name: str, kw: dict[str, object],
                                                           expected: list[str]) -> None:
    found = lines(peer(pki, name, **kw))
    assert len(found) == 1, found
    for text in expected:
        assert text in found[0]
    if name == "other-ca":
        ca = describe(load_certs(str(pki.ca.path))[0])
        assert ca.fingerprint in found[0]


def test_unreadable_and_swapped_files(pki: PKI, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    found = lines(Endpoint("client", str(tmp_path / "junk.pem"), pki.cert("server")))
    assert "not a PEM certificate" in found[0]
    assert "it holds a certificate, not a key: swap the cert and key flags" in found[1]
    found = lines(Endpoint("client", str(tmp_path / "missing.crt"), pki.key("server")))
    assert "cannot read the certificate" in found[0]


def test_cipher_suites_map_to_openssl_and_unknown_ones_are_named() -> None:
    assert openssl_names(["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]) == ["ECDHE-RSA-AES128-GCM-SHA256"]
    with pytest.raises(CipherSuiteError, match=r"unknown cipher suite.*TLS_FOO"):
        openssl_names(["TLS_FOO", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])


def test_auto_tls_cert_covers_the_listen_hosts(tmp_path: Path) -> None:
    cert, key = self_cert(tmp_path / "fixtures" / "client", ["https://127.0.0.1:2379", "https://localhost:1"])
    info = describe(load_certs(cert)[0])
    assert set(info.sans) == {"IP:127.0.0.1", "DNS:localhost"}
    assert self_cert(tmp_path / "fixtures" / "client", ["https://127.0.0.1:2379"]) == (cert, key)  # reused


def _server_flags(pki: PKI, tmp_path: Path, peer_name: str) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--peer-cert-file", pki.cert(peer_name),
            "--peer-key-file", pki.key(peer_name), "--peer-trusted-ca-file", str(pki.ca.path),
            "--listen-peer-urls", "https://127.0.0.1:0", "--initial-advertise-peer-urls", "https://127.0.0.1:2380",
            "--initial-cluster", "default=https://127.0.0.1:2380", "--listen-client-urls", "http://127.0.0.1:0",
            "--advertise-client-urls", "http://127.0.0.1:2379"]


def test_server_refuses_a_bad_file_before_listening(pki: PKI, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_server_flags(pki, tmp_path, "expired")) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quorumkv: --peer-cert-file ")
    assert "expired on" in err[0] and "check certs" in err[0]
    assert not (tmp_path / "data").exists()  # nothing started


def test_unknown_cipher_suite_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cipher-suites", "TLS_NOPE"], runner=lambda c: 0) == EXIT_USAGE
    assert "unknown cipher suite(s) TLS_NOPE" in capsys.readouterr().err


def test_check_certs_prints_a_table_and_the_problems(pki: PKI, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "certs", *_server_flags(pki, tmp_path, "peer")]) == 0
    out = capsys.readouterr().out
    assert "CN=quorumkv-peer" in out and "serverAuth, clientAuth" in out and "SHA-256" in out
    assert "no problems found" in out
    assert main(["check", "certs", *_server_flags(pki, tmp_path, "wrong-san")]) == 1
    out = capsys.readouterr().out
    assert "ERROR --peer-cert-file" in out and "DNS:example.com, IP:10.9.9.9" in out


def test_https_listener_serves_a_replaced_certificate(pki: PKI, tmp_path: Path) -> None:
    """The metrics/client-HTTP listeners' context swaps in rotated files during the next handshake."""
    live_crt, live_key = tmp_path / "s.crt", tmp_path / "s.key"
    shutil.copy(pki.cert("server"), live_crt)
    shutil.copy(pki.key("server"), live_key)
    ctx = reloading_ssl_context(str(live_crt), str(live_key))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def served_cn() -> str:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, client.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return describe(x509.load_der_x509_certificate(der)).common_name

    try:
        assert served_cn() == "server"
        shutil.copy(pki.cert("wrong-cn"), live_crt)
        shutil.copy(pki.key("wrong-cn"), live_key)
        time.sleep(CHECK_INTERVAL_S + 0.1)
        assert served_cn() == "intruder"
    finally:
        thread.join(5)
        srv.close()


@pytest.mark.parametrize(("served", "expected"), [
    ("wrong-san", "is not valid for 127.0.0.1, the address dialled (its SANs: DNS:example.com, IP:10.9.9.9)"),
    ("expired", "expired on"),
    ("no-server-usage", "lacks the serverAuth extended key usage"),
    ("other-ca-leaf", "signed by unknown authority: issued by 'CN=some other CA'"),
])
def test_diagnose_dial_names_what_is_wrong_with_the_server(pki: PKI, served: str, expected: str) -> None:
    crt = pki.directory / f"{served}.crt"
    key = pki.directory / f"{served}.key"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        cause = diagnose_dial("127.0.0.1", port, DialTLS(str(pki.ca.path)), timeout_s=2)
    finally:
        thread.join(5)
        srv.close()
    assert cause is not None and expected in cause, cause
