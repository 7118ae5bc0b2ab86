"""A peer certificate refused on the peer listener (``https://`` --listen-peer-urls) is logged by the member that
refuses it (the TLS front, ``security/tls_front.py``) with its exact cause, once per address (and kind of cause)
per minute, while the dialler keeps retrying; a good peer still connects (``test_peer_tls.py``)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from pathlib import Path

import grpc
import pytest

from quorumkv.security.peer import peer_tls
from quorumkv.testing.pki import PKI
from quorumkv.transport import PeerTransport

from .kit import CLUSTER, FAST, eventually, hb

REFUSED = "rejected peer connection"


async def _listener(made: list[PeerTransport], pki: PKI, allowed_cn: str) -> tuple[PeerTransport, str, list[object]]:
    """Member 1: mTLS peer listener through the front, with --peer-crl-file (and --peer-cert-allowed-cn)."""
    tls = peer_tls(pki.cert("peer"), pki.key("peer"), str(pki.ca.path), client_cert_auth=True,
                   allowed_cn=allowed_cn, crl_file=str(pki.crl))
    got: list[object] = []
    t = PeerTransport(1, CLUSTER, got.append, lambda _id: None, random.Random(1), options=FAST,
                      server_credentials=tls.server_credentials, channel_credentials=tls.channel_credentials,
                      server_front=tls.server_front)
    t.check_peer_cert = tls.check_peer_cert
    made.append(t)
    (url,) = await t.start(["https://127.0.0.1:0"])
    return t, url, got


async def _dialler(made: list[PeerTransport], pki: PKI, cert: str | None) -> PeerTransport:
    """Member 2, dialling with ``cert`` (None: no certificate at all); it trusts member 1's CA."""
    ca = pki.ca.path.read_bytes()
    creds = (grpc.ssl_channel_credentials(ca) if cert is None else grpc.ssl_channel_credentials(
        ca, Path(pki.key(cert)).read_bytes(), Path(pki.cert(cert)).read_bytes()))
    t = PeerTransport(2, CLUSTER, lambda _m: None, lambda _id: None, random.Random(2), options=FAST,
                      channel_credentials=creds)
    made.append(t)
    await t.start(["http://127.0.0.1:0"])
    return t


#: (the dialler's certificate, what the listener's log line must say)
CASES = [
    (None, "the peer sent no certificate, but --peer-client-cert-auth requires one signed by --peer-trusted-ca-file"),
    ("other-ca", "peer certificate 'other-ca-leaf' (SHA-256 "),
    ("expired", "peer certificate 'expired' expired on"),
    ("future", "peer certificate 'future' is not yet valid: valid from"),
    ("no-client-usage", "lacks the clientAuth extended key usage"),
    ("wrong-cn", "certificate CN 'intruder' is not allowed (--peer-cert-allowed-cn=quorumkv-peer)"),
    ("revoked", "(serial "),
]


@pytest.mark.parametrize(("cert", "expected"), CASES, ids=[c or "none" for c, _ in CASES])
async def test_each_refused_peer_certificate_is_logged_once_by_the_refusing_member(
        pki: PKI, transports: list[PeerTransport], caplog: pytest.LogCaptureFixture, cert: str | None,
        expected: str) -> None:
    caplog.set_level(logging.WARNING)
    a, url_a, got_a = await _listener(transports, pki, "quorumkv-peer" if cert == "wrong-cn" else "")
    b = await _dialler(transports, pki, cert)
    b.add_peer(1, [url_a])

    def refusals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == REFUSED]

    def redialled() -> bool:  # refused after the handshake (CN, CRL): the peer service's once-a-minute rule
        b.send([hb(2, 1)])
        return cert in ("wrong-cn", "revoked") or (a._front is not None and a._front.refusals >= 3)
    await eventually(lambda: bool(refusals()), 15, "the refusal in the listener's log")
    await eventually(redialled, 15, "the dialler's retries")
    await asyncio.sleep(0.5)  # more retries: still one line
    lines = refusals()
    assert len(lines) == 1, [r.__dict__.get("error") for r in lines]
    error = str(lines[0].__dict__["error"])
    assert expected in error, error
    assert str(lines[0].__dict__["remote-addr"]).startswith("127.0.0.1:")  # the dialler's TCP address
    if cert == "other-ca":  # both CAs, with fingerprints
        assert "issued by 'CN=some other CA'" in error and "--peer-trusted-ca-file" in error
        assert "trusts only 'CN=quorumkv test CA' (SHA-256 " in error
    if cert in ("expired", "future"):
        assert "valid from" in error and "now is" in error
    if cert == "revoked":
        assert "revoked" in error
    assert not got_a


async def test_a_good_peer_is_not_logged_and_its_heartbeat_arrives(pki: PKI, transports: list[PeerTransport],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    _, url_a, got_a = await _listener(transports, pki, "quorumkv-peer")
    b = await _dialler(transports, pki, "peer")
    b.add_peer(1, [url_a])

    def delivered() -> bool:
        b.send([hb(2, 1)])
        return bool(got_a)
    await eventually(delivered, 15, "a heartbeat through the front")
    assert not [r for r in caplog.records if r.getMessage() == REFUSED]


async def test_cipher_suites_limit_the_peer_listeners_tls12(pki: PKI, transports: list[PeerTransport],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """--cipher-suites reaches the peer listener's front: a TLS 1.2 peer offering only another suite is refused
    (and the refusal names it); the listed suite is accepted."""
    caplog.set_level(logging.WARNING)
    tls = peer_tls(pki.cert("peer"), pki.key("peer"), str(pki.ca.path), client_cert_auth=True,
                   ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    a = PeerTransport(1, CLUSTER, lambda _m: None, lambda _id: None, random.Random(1), options=FAST,
                      server_credentials=tls.server_credentials, channel_credentials=tls.channel_credentials,
                      server_front=tls.server_front)
    transports.append(a)
    (url,) = await a.start(["https://127.0.0.1:0"])
    port = int(url.rsplit(":", 1)[1])

    def handshake(cipher: str) -> str | None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(pki.cert("peer"), pki.key("peer"))
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(cipher)
        ctx.set_alpn_protocols(["h2"])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as sock:
                return str(sock.cipher()[0])
        except (ssl.SSLError, OSError):
            return None

    assert await asyncio.to_thread(handshake, "ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert await asyncio.to_thread(handshake, "ECDHE-ECDSA-AES256-GCM-SHA384") is None
    await eventually(lambda: any(r.getMessage() == REFUSED for r in caplog.records), 10, "the refusal")
    error = next(str(r.__dict__["error"]) for r in caplog.records if r.getMessage() == REFUSED)
    assert "the peer offers no cipher suite this member accepts (--cipher-suites" in error, error
