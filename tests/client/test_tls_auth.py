"""TLS (server certificate and client certificates) and user/password auth, against a real etcd 3.4.

quorumkv has no auth yet, so these run against etcd only.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import time
from pathlib import Path

import pytest

from quorumkv.client import (
    AuthenticationError,
    Client,
    EtcdError,
    PermissionDeniedError,
    UnavailableError,
)
from quorumkv.testing.processes import ETCD_BIN, free_port, run_etcdctl, start_etcd

pytestmark = pytest.mark.skipif(shutil.which(ETCD_BIN) is None, reason="etcd 3.4 not on PATH")


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """A CA-capable certificate for 127.0.0.1 and its key, as PEM files (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quorumkv-client-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
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


def test_mutual_tls(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server = start_etcd(tmp_path / "etcd", ready_timeout_s=None, extra_args=(
        f"--listen-client-urls={url}", f"--advertise-client-urls={url}", f"--cert-file={cert}",
        f"--key-file={key}", "--client-cert-auth", f"--trusted-ca-file={cert}"))  # fmt: skip
    try:
        with Client(url, ca_cert=cert, cert=cert, key=key, timeout=2.0) as client:
            for _ in range(60):
                try:
                    client.status()
                    break
                except EtcdError:
                    time.sleep(0.25)
            client.put("tls", "ok")
            kv = client.get("tls")
            assert kv is not None and kv.value == b"ok"
        with Client(url, ca_cert=cert, timeout=3.0, max_retries=0) as no_client_cert, pytest.raises(UnavailableError):
            no_client_cert.get("tls")
        with Client(f"127.0.0.1:{port}", timeout=3.0, max_retries=0) as plaintext, pytest.raises(UnavailableError):
            plaintext.get("tls")
        with pytest.raises(ValueError):
            Client(url, cert=cert)
    finally:
        server.stop()


def test_user_password_auth(tmp_path: Path) -> None:
    server = start_etcd(tmp_path / "etcd")
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
        with Client(ep) as anonymous, pytest.raises(EtcdError):
            anonymous.get("secret")
    finally:
        server.stop()
