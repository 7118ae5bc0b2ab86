"""Peer links over TLS (in-process transports): a peer refused by --peer-cert-allowed-cn is logged by the
member that refused it, and a dial to a peer whose certificate our CA does not trust is diagnosed, each once
per address per minute."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator

import pytest

from quorumkv.security.peer import peer_tls
from quorumkv.testing.pki import PKI, make_pki
from quorumkv.transport import PeerTransport

from .kit import CLUSTER, FAST, eventually, hb


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def transports() -> AsyncIterator[list[PeerTransport]]:
    made: list[PeerTransport] = []
    yield made
    for t in made:
        await t.stop()


async def start(made: list[PeerTransport], member_id: int, pki: PKI, cert: str, *, ca: str = "",
                allowed_cn: str = "") -> tuple[PeerTransport, str, list[object]]:
    tls = peer_tls(pki.cert(cert), pki.key(cert), ca or str(pki.ca.path), client_cert_auth=True,
                   allowed_cn=allowed_cn, crl_file=str(pki.crl))
    received: list[object] = []
    t = PeerTransport(member_id, CLUSTER, received.append, lambda _id: None, random.Random(member_id),
                      options=FAST, server_credentials=tls.server_credentials,
                      channel_credentials=tls.channel_credentials)
    t.check_peer_cert, t.diagnose_tls = tls.check_peer_cert, tls.diagnose_tls
    made.append(t)
    (url,) = await t.start(["https://127.0.0.1:0"])
    return t, url, received


async def test_peers_talk_over_mtls(pki: PKI, transports: list[PeerTransport]) -> None:
    _, url_a, got_a = await start(transports, 1, pki, "peer", allowed_cn="quorumkv-peer")
    b, _, _ = await start(transports, 2, pki, "peer", allowed_cn="quorumkv-peer")
    b.add_peer(1, [url_a])
    b.send([hb(2, 1)])
    await eventually(lambda: bool(got_a), 10, "a heartbeat over TLS")


async def test_refused_cn_is_logged_by_the_refusing_member(pki: PKI, transports: list[PeerTransport],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    _, url_a, got_a = await start(transports, 1, pki, "peer", allowed_cn="quorumkv-peer")
    b, _, _ = await start(transports, 2, pki, "wrong-cn")
    b.add_peer(1, [url_a])
    b.send([hb(2, 1)])

    def refused() -> bool:
        return any(r.getMessage() == "rejected peer connection" for r in caplog.records)
    await eventually(refused, 10, "the refusal in a's log")
    record = next(r for r in caplog.records if r.getMessage() == "rejected peer connection")
    assert "CN 'intruder' is not allowed (--peer-cert-allowed-cn=quorumkv-peer)" in str(record.__dict__["error"])
    assert not got_a
    rejections = [r for r in caplog.records if r.getMessage() == "rejected peer connection"]
    assert len(rejections) == 1  # once per address per minute, though b keeps retrying


async def test_dial_to_an_untrusted_peer_is_diagnosed(pki: PKI, transports: list[PeerTransport],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    _, url_a, _ = await start(transports, 1, pki, "other-ca", ca=str(pki.other_ca.path))
    b, _, _ = await start(transports, 2, pki, "peer")
    b.add_peer(1, [url_a])
    b.send([hb(2, 1)])

    def diagnosed() -> bool:
        return any(r.getMessage() == "TLS handshake with peer failed" for r in caplog.records)
    await eventually(diagnosed, 10, "the diagnosis in b's log")
    record = next(r for r in caplog.records if r.getMessage() == "TLS handshake with peer failed")
    cause = str(record.__dict__["cause"])
    assert "signed by unknown authority" in cause and "'CN=some other CA'" in cause, cause
