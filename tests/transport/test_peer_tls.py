"""Peer links over TLS (in-process transports): a peer refused by --peer-cert-allowed-cn is logged by the
member that refused it, and a dial to a peer whose certificate our CA does not trust is diagnosed, each once
per address per minute."""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
from pathlib import Path

import pytest

from quorumkv.security.peer import peer_tls
from quorumkv.security.reload import CHECK_INTERVAL_S
from quorumkv.testing.pki import PKI, issue
from quorumkv.transport import PeerTransport

from .kit import CLUSTER, FAST, eventually, hb


async def start(made: list[PeerTransport], member_id: int, pki: PKI, cert: str, *, ca: str = "",
                allowed_cn: str = "", crl: bool = True) -> tuple[PeerTransport, str, list[object]]:
    tls = peer_tls(pki.cert(cert), pki.key(cert), ca or str(pki.ca.path), client_cert_auth=True,
                   allowed_cn=allowed_cn, crl_file=str(pki.crl) if crl else "")
    received: list[object] = []
    t = PeerTransport(member_id, CLUSTER, received.append, lambda _id: None, random.Random(member_id),
                      options=FAST, server_credentials=tls.server_credentials, server_front=tls.server_front,
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
    await asyncio.sleep(0.6)  # b redials (a new connection, a new port, each time)
    rejections = [r for r in caplog.records if r.getMessage() == "rejected peer connection"]
    assert len(rejections) == 1  # once per address per minute, though b keeps retrying


@pytest.mark.parametrize("crl", [True, False], ids=["peer-crl-file", "no-crl"])
async def test_revoked_peer_is_refused_only_with_peer_crl_file(pki: PKI, transports: list[PeerTransport],
                                                               caplog: pytest.LogCaptureFixture, crl: bool) -> None:
    """--peer-crl-file: a peer whose certificate the CRL revokes is refused (and logged by the refusing member);
    without the CRL the same certificate is accepted."""
    caplog.set_level(logging.WARNING)
    _, url_a, got_a = await start(transports, 1, pki, "peer", crl=crl)
    b, _, _ = await start(transports, 2, pki, "revoked", crl=False)
    b.add_peer(1, [url_a])
    b.send([hb(2, 1)])
    if not crl:
        await eventually(lambda: bool(got_a), 10, "a heartbeat from the revoked certificate without a CRL")
        return

    def refused() -> bool:
        return any(r.getMessage() == "rejected peer connection" for r in caplog.records)
    await eventually(refused, 10, "the refusal in a's log")
    record = next(r for r in caplog.records if r.getMessage() == "rejected peer connection")
    assert "revoked" in str(record.__dict__["error"]), record.__dict__["error"]
    assert not got_a


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


async def test_peer_listener_rotates_without_restart(pki: PKI, transports: list[PeerTransport], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The peer listener's certificate expires on disk (a new dialler is refused, and says why), then is
    renewed on disk: the same listener serves the new one."""
    caplog.set_level(logging.WARNING)
    crt, key = tmp_path / "peer.crt", tmp_path / "peer.key"
    shutil.copy(pki.cert("peer"), crt)
    shutil.copy(pki.key("peer"), key)
    tls = peer_tls(str(crt), str(key), str(pki.ca.path), client_cert_auth=True)
    got: list[object] = []
    a = PeerTransport(1, CLUSTER, got.append, lambda _id: None, random.Random(1), options=FAST,
                      server_credentials=tls.server_credentials, channel_credentials=tls.channel_credentials,
                      server_front=tls.server_front)
    transports.append(a)
    (url_a,) = await a.start(["https://127.0.0.1:0"])
    shutil.copy(pki.cert("expired"), crt)
    shutil.copy(pki.key("expired"), key)
    await asyncio.sleep(CHECK_INTERVAL_S + 0.1)
    b, _, _ = await start(transports, 2, pki, "peer")
    b.add_peer(1, [url_a])
    b.send([hb(2, 1)])

    def diagnosed() -> bool:
        return any(r.getMessage() == "TLS handshake with peer failed" and "expired on" in str(r.__dict__["cause"])
                   for r in caplog.records)
    await eventually(diagnosed, 10, "b's diagnosis of a's expired certificate")
    assert not got
    renewed_crt, renewed_key = issue(pki.ca, tmp_path, "renewed-peer", sans=("localhost", "127.0.0.1"))
    shutil.copy(renewed_key, key)
    shutil.copy(renewed_crt, crt)

    def delivered() -> bool:
        b.send([hb(2, 1)])
        return bool(got)
    await eventually(delivered, 15, "a heartbeat over the renewed certificate")
