"""TLS (server certificate and client certificates) and user/password auth with token refresh, against a real
etcd 3.4 and quorumkv alike."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import time
from pathlib import Path

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.client import (
    AuthenticationError,
    Client,
    EtcdError,
    PermissionDeniedError,
    UnavailableError,
)
from quorumkv.testing.processes import ETCD_BIN, ServerProcess, free_port, run_etcdctl, start_etcd, start_quorumkv

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl 3.4 not on PATH")]


@pytest.fixture(params=("etcd", "quorumkv"))
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "etcd" and shutil.which(ETCD_BIN) is None:
        pytest.skip("etcd 3.4 not on PATH")
    return str(request.param)


def start(kind: str, base: Path, *args: str, ready_timeout_s: float | None = 30.0) -> ServerProcess:
    """A fresh server of ``kind``; bcrypt at its cheapest cost on both (etcd's default 10 is slow here)."""
    extra = ("--bcrypt-cost=4", *args)
    if kind == "etcd":
        return start_etcd(base, ready_timeout_s=ready_timeout_s, extra_args=extra)
    return start_quorumkv(base, ready_timeout_s=ready_timeout_s, extra_args=extra)


def enable_auth(ep: str) -> None:
    for args in (("user", "add", "root:rootpw"), ("user", "add", "bob:bobpw"), ("auth", "enable")):
        result = run_etcdctl(ep, *args)
        assert result.returncode == 0, result.stderr


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


def test_mutual_tls(tmp_path: Path, kind: str) -> None:
    cert, key = write_self_signed(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server = start(kind, tmp_path / kind, f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
                   f"--cert-file={cert}", f"--key-file={key}", "--client-cert-auth", f"--trusted-ca-file={cert}",
                   ready_timeout_s=None)
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


def test_user_password_auth(tmp_path: Path, kind: str) -> None:
    server = start(kind, tmp_path / kind)
    try:
        ep = server.client_url
        enable_auth(ep)
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


def test_an_expired_token_is_fetched_again(tmp_path: Path, kind: str) -> None:
    """Simple tokens die after --auth-token-ttl seconds without use: a token taken as old as the client's is
    refused with ``invalid auth token``, while the client logs in again by itself and the write goes through."""
    server = start(kind, tmp_path / kind, "--auth-token-ttl=1")
    try:
        ep = server.client_url
        enable_auth(ep)
        with grpc.insecure_channel(ep.removeprefix("http://")) as channel, \
                Client(ep, user="root", password="rootpw", timeout=10.0) as root:
            root.put("ttl/a", "1")
            kv_stub = pb_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            auth_stub = pb_grpc.AuthStub(channel)  # type: ignore[no-untyped-call]
            token = auth_stub.Authenticate(pb.AuthenticateRequest(name="root", password="rootpw"), timeout=10).token
            kv_stub.Range(pb.RangeRequest(key=b"ttl/a"), metadata=(("token", token),), timeout=10)
            time.sleep(3.5)  # both tokens expire (etcd sweeps expired simple tokens every second)
            with pytest.raises(grpc.RpcError) as expired:
                kv_stub.Range(pb.RangeRequest(key=b"ttl/a"), metadata=(("token", token),), timeout=10)
            assert "invalid auth token" in (expired.value.details() or "")
            root.put("ttl/b", "2")
            kv = root.get("ttl/b")
            assert kv is not None and kv.value == b"2"
    finally:
        server.stop()
