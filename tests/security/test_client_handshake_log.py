"""A client certificate refused on the gRPC client port (``--client-cert-auth``) is logged by the member with its
exact cause and fix, once per client address per minute (the TLS front, ``security/tls_front.py``), and the client's
handshake fails (real etcdctl and quorumkvctl); a good certificate still works and its CN still reaches auth."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from quorumkv.api.servicers import caller
from quorumkv.security.tls_front import TLSFront, verified_common_name
from quorumkv.testing.cluster import ClusterMember, start_quorumkv_cluster
from quorumkv.testing.pki import PKI, make_pki, write_crl
from quorumkv.testing.processes import ServerTLS, run_etcdctl

needs_etcdctl = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs etcdctl 3.4 in PATH")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def member(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterMember]:
    tls = ServerTLS(str(pki.ca.path), pki.cert("server"), pki.key("server"), pki.cert("peer"), pki.key("peer"),
                    pki.cert("client"), pki.key("client"))
    with start_quorumkv_cluster(1, tmp_path_factory.mktemp("member"), tls=tls,
                                extra_args=["--client-crl-file", str(pki.crl)]) as cluster:
        yield cluster.members[0]


#: (client certificate, what the member's log line must say)
CASES = [
    (None, "the client sent no certificate, but --client-cert-auth requires one"),
    ("other-ca", "is signed by unknown authority: issued by 'CN=some other CA'"),
    ("expired", "client certificate 'expired' expired on"),
    ("future", "client certificate 'future' is not yet valid: valid from"),
    ("no-client-usage", "lacks the clientAuth extended key usage"),
    ("revoked", "is revoked by --client-crl-file"),
]


def _env(pki: PKI, cert: str | None) -> dict[str, str]:
    env = {"ETCDCTL_CACERT": str(pki.ca.path)}
    if cert is not None:
        env.update(ETCDCTL_CERT=pki.cert(cert), ETCDCTL_KEY=pki.key(cert))
    return env


@needs_etcdctl
@pytest.mark.parametrize(("cert", "expected"), CASES, ids=[c or "none" for c, _ in CASES])
def test_each_refused_client_certificate_is_logged_once_with_its_cause(pki: PKI, member: ClusterMember,
                                                                       cert: str | None, expected: str) -> None:
    start = member.log_path.stat().st_size
    for _ in range(2):  # two attempts (each etcdctl also retries within its dial timeout): one line
        got = run_etcdctl(member.client_url, "--dial-timeout=1s", "--command-timeout=1s", "put", "k", "v",
                          env=_env(pki, cert))
        assert got.returncode != 0, got.stdout
        assert "context deadline exceeded" in got.stderr, got.stderr
    deadline = time.monotonic() + 15
    while True:
        with open(member.log_path, "rb") as f:
            f.seek(start)
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if expected in ln]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(lines) == 1, (lines, member.log_tail(60))
    assert '"msg":"rejected connection"' in lines[0] and '"remote-addr":"127.0.0.1:' in lines[0], lines[0]
    if cert == "other-ca":  # both CAs named, with fingerprints
        assert "trusts only 'CN=quorumkv test CA' (SHA-256 " in lines[0] and "authority key id" in lines[0]
    if cert in ("expired", "future"):
        assert "valid from" in lines[0] and "now is" in lines[0]
    # quorumkvctl fails too, and names why from its side
    ctl = run_etcdctl(member.client_url, "--dial-timeout=1s", "--command-timeout=1s", "get", "k", client="quorumkvctl",
                      env=_env(pki, cert))
    assert ctl.returncode != 0 and "context deadline exceeded (TLS: " in ctl.stderr, ctl.stderr


@needs_etcdctl
def test_a_good_client_certificate_still_works(pki: PKI, member: ClusterMember) -> None:
    for client in ("etcdctl", "quorumkvctl"):
        put = run_etcdctl(member.client_url, "put", "good", client, env=_env(pki, "client"), client=client)
        assert put.returncode == 0, put.stderr
        got = run_etcdctl(member.client_url, "get", "good", "--print-value-only", env=_env(pki, "client"),
                          client=client)
        assert got.stdout.strip() == client, got.stderr


class _Ctx:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return self._peer


def test_only_connections_through_the_front_carry_a_common_name() -> None:
    assert verified_common_name("unix:") is None
    assert verified_common_name("ipv4:127.0.0.1:5000") is None
    assert verified_common_name("unix:/tmp/not-registered.peer") is None
    assert caller(_Ctx("unix:")) == (None, None)


def test_the_front_passes_the_verified_common_name_to_grpc(pki: PKI, tmp_path: Path) -> None:
    """In process: TLS front -> plaintext gRPC server on a unix socket; the call through the front is made by the
    certificate's CN ('root'), a call straight to the private socket by nobody; a CRL written later (the file is
    re-read when it changes) refuses the same certificate on the next connection."""
    crl = tmp_path / "client.crl"
    shutil.copy(str(pki.empty_crl), crl)

    async def main() -> tuple[str, str, int, int]:
        sock_dir = tempfile.mkdtemp(prefix="qkv-front-test-")
        os.chmod(sock_dir, 0o700)
        path = os.path.join(sock_dir, "0s.sock")
        server = grpc.aio.server()

        async def who(request: bytes, context: Any) -> bytes:
            return (caller(context)[1] or "<nobody>").encode()

        handler = grpc.unary_unary_rpc_method_handler(who)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Who", {"Am": handler})])
        server.add_insecure_port(f"unix:{path}")
        await server.start()
        front = TLSFront(pki.cert("server"), pki.key("server"), str(pki.ca.path), client_cert_auth=True,
                         crl_file=str(crl))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        loop = asyncio.get_running_loop()

        async def accept() -> None:
            while True:
                conn, _ = await loop.sock_accept(listener)
                conn.setblocking(False)
                await front.serve(conn, path)

        acceptor = loop.create_task(accept())
        try:
            creds = grpc.ssl_channel_credentials(pki.ca.path.read_bytes(), Path(pki.key("client")).read_bytes(),
                                                 Path(pki.cert("client")).read_bytes())
            port = listener.getsockname()[1]
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
                via_front = await ch.unary_unary("/t.Who/Am")(b"", timeout=10)
            async with grpc.aio.insecure_channel(f"unix:{path}") as ch:
                direct = await ch.unary_unary("/t.Who/Am")(b"", timeout=10)
            bad = grpc.ssl_channel_credentials(pki.ca.path.read_bytes(), Path(pki.key("expired")).read_bytes(),
                                               Path(pki.cert("expired")).read_bytes())
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", bad) as ch:
                with pytest.raises(grpc.aio.AioRpcError):
                    await ch.unary_unary("/t.Who/Am")(b"", timeout=3)
            refused_expired = front.refusals
            write_crl(pki.ca, crl, [Path(pki.cert("client"))])
            await asyncio.sleep(1.2)  # the files are looked at once a second at most
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
                with pytest.raises(grpc.aio.AioRpcError):
                    await ch.unary_unary("/t.Who/Am")(b"", timeout=3)
            return via_front.decode(), direct.decode(), refused_expired, front.refusals - refused_expired
        finally:
            acceptor.cancel()
            listener.close()
            front.close()
            await server.stop(0)
            shutil.rmtree(sock_dir, ignore_errors=True)

    via_front, direct, refused_expired, refused_revoked = asyncio.run(main())
    assert via_front == "root"
    assert direct == "<nobody>"
    assert refused_expired >= 1
    assert refused_revoked >= 1


def _message(ders: list[bytes], tls13: bool) -> bytes:
    entries = b"".join(len(d).to_bytes(3, "big") + d + (b"\x00\x00" if tls13 else b"") for d in ders)
    body = (b"\x00" if tls13 else b"") + len(entries).to_bytes(3, "big") + entries
    return b"\x0b" + len(body).to_bytes(3, "big") + body


def test_certificate_message_parsing(pki: PKI) -> None:
    from quorumkv.security.diagnose import certificate_message_chain

    ders = [ssl.PEM_cert_to_DER_cert(Path(pki.cert("client")).read_text()), ssl.PEM_cert_to_DER_cert(
        pki.ca.path.read_text())]
    for tls13 in (True, False):
        assert certificate_message_chain(_message(ders, tls13), tls13) == ders
        assert certificate_message_chain(_message([], tls13), tls13) == []
    assert certificate_message_chain(b"\x0b\x00\x00\x09\x00\x00\x01", True) == []  # truncated: nothing


def _server_error(pki: PKI, client_ctx: ssl.SSLContext) -> ssl.SSLError:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.cert("server"), pki.key("server"))
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def client() -> None:
        with contextlib.suppress(OSError):
            client_ctx.wrap_socket(a).close()

    t = threading.Thread(target=client)
    t.start()
    try:
        with pytest.raises(ssl.SSLError) as exc:
            server_ctx.wrap_socket(b, server_side=True)
        return exc.value
    finally:
        t.join(10)
        a.close()
        b.close()


def test_handshake_failures_other_than_certificates_are_named(pki: PKI) -> None:
    from quorumkv.security.diagnose import client_handshake_refusal

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")  # not the server's suite
    text = client_handshake_refusal([], _server_error(pki, ctx), "")
    assert text is not None and "no cipher suite this member accepts" in text


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize(("cert", "expected"), [("expired", "certificate has expired"),
                                                ("other-ca", "unable to get local issuer certificate")])
def test_an_https_client_refused_on_the_shared_port_is_logged_too(pki: PKI, member: ClusterMember, cert: str,
                                                                  expected: str) -> None:
    """curl (HTTP/1.1 over TLS, the gateway's side of the port) with a bad client certificate: refused, and the
    member logs one line naming OpenSSL's cause."""
    import subprocess

    start = member.log_path.stat().st_size
    for _ in range(2):
        got = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(pki.ca.path), "--cert",
                              pki.cert(cert), "--key", pki.key(cert), f"{member.client_url}/version"],
                             capture_output=True, text=True, timeout=30, check=False)
        assert got.returncode != 0, got.stdout
    deadline = time.monotonic() + 15
    while True:
        with open(member.log_path, "rb") as f:
            f.seek(start)
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if "HTTPS client" in ln]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(lines) == 1 and expected in lines[0] and '"msg":"rejected connection"' in lines[0], (
        lines, member.log_tail(30))
