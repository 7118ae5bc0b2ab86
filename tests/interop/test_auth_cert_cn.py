"""``--client-cert-auth`` with auth enabled: a request without a token is made by the user named by the common name
of its verified client certificate (etcd's rule), checked against a real etcd 3.4 with the same commands."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import pytest

from quorumkv.testing.processes import ServerProcess, free_port, run_etcdctl, start_etcd, start_quorumkv

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("require_etcd_binaries")]


def _self_signed(directory: Path, common_name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


SETUP = [("user", "add", "root:rootpw"), ("role", "add", "reader"),
         ("role", "grant-permission", "reader", "read", "/r/", "--prefix"),
         ("user", "add", "alice", "--no-password"), ("user", "grant-role", "alice", "reader"), ("auth", "enable"),
         ("--user", "root:rootpw", "put", "/r/a", "1")]
CHECKS = [("get", "/r/a", "--print-value-only"), ("put", "/r/a", "2"), ("get", "/w/a"),
          ("--user", "root:rootpw", "get", "/r/a", "--print-value-only"), ("--user", "alice:x", "get", "/r/a")]


def _session(server: ServerProcess, url: str, cert: Path, key: Path) -> list[tuple[int, str]]:
    tls = (f"--cacert={cert}", f"--cert={cert}", f"--key={key}")
    deadline = time.monotonic() + 30
    while run_etcdctl(url, *tls, "endpoint", "health", timeout_s=10).returncode != 0:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.3)
    for args in SETUP:
        result = run_etcdctl(url, *tls, *args, timeout_s=20)
        assert result.returncode == 0, (args, result.stderr)
    out = []
    for args in CHECKS:
        result = run_etcdctl(url, *tls, *args, timeout_s=20)
        last = result.stderr.strip().splitlines()[-1:] if result.returncode else []
        out.append((result.returncode, result.stdout.strip() + "".join(last)))
    return out


def test_the_client_certificate_common_name_is_the_user(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "alice")
    results = []
    for kind in ("etcd", "quorumkv"):
        url = f"https://127.0.0.1:{free_port()}"
        flags = (f"--listen-client-urls={url}", f"--advertise-client-urls={url}", f"--cert-file={cert}",
                 f"--key-file={key}", "--client-cert-auth", f"--trusted-ca-file={cert}", "--bcrypt-cost=4")
        start = start_etcd if kind == "etcd" else start_quorumkv
        server = start(tmp_path / kind, ready_timeout_s=None, extra_args=flags)
        try:
            results.append(_session(server, url, cert, key))
        finally:
            server.stop()
    assert results[0][0] == (0, "1") and results[0][1][1].endswith("permission denied")
    assert results[1] == results[0]
