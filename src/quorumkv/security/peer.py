"""TLS of the peer links from etcd's ``--peer-*`` flags: what the peer transport needs, in one place.

- ``server_front``: makes the peer listener's TLS front (``security/tls_front.py``): it terminates TLS on the
  ``https://`` listen peer URLs (the files re-read when they change, ``--peer-trusted-ca-file``,
  ``--peer-client-cert-auth``, ``--cipher-suites``) and logs each handshake it refuses with the cause;
- ``server_credentials``/``channel_credentials``: callables making gRPC credentials that re-read rotated files
  (the channel ones dial peers; the server ones serve a transport given no front);
- ``check_peer_cert``: why a verified peer certificate is refused anyway (``--peer-cert-allowed-cn``,
  ``--peer-crl-file``), checked on each incoming stream and call (verdicts cached per certificate);
- ``diagnose_tls``: why dialling a peer fails (run in a thread after a failed https dial, logged by the
  transport once per address per minute).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from quorumkv.security.certs import load_crl
from quorumkv.security.diagnose import DialTLS, diagnose_dial, peer_certificate_refusal
from quorumkv.security.reload import ReloadingChannelCredentials, ReloadingServerCredentials
from quorumkv.security.tls_front import PEER, TLSFront

__all__ = ["PeerTLS", "peer_tls"]


@dataclass
class PeerTLS:
    server_credentials: Callable[[], grpc.ServerCredentials]
    channel_credentials: Callable[[], grpc.ChannelCredentials]
    check_peer_cert: Callable[[bytes], str | None] | None
    diagnose_tls: Callable[[str, int], str | None]
    server_front: Callable[[], TLSFront] | None = None


def peer_tls(cert_file: str, key_file: str, ca_file: str = "", *, client_cert_auth: bool = False,
             allowed_cn: str = "", crl_file: str = "", ciphers: str = "") -> PeerTLS:
    """Raises :class:`~quorumkv.security.certs.TLSFileError` when the files cannot be served. ``ciphers``:
    --cipher-suites as an OpenSSL cipher list (TLS 1.2) for the listener's front."""
    server = ReloadingServerCredentials(cert_file, key_file, ca_file, client_cert_auth=client_cert_auth,
                                        what="peer")
    server.credentials()  # fails now, not on the first bind, when the files are unusable
    channel = ReloadingChannelCredentials(cert_file, key_file, ca_file)
    crls = [load_crl(crl_file, "--peer-crl-file")] if crl_file else []
    verdicts: dict[bytes, str | None] = {}

    def check(pem: bytes) -> str | None:
        if pem not in verdicts:
            verdicts[pem] = peer_certificate_refusal(pem, allowed_cn, crls)
        return verdicts[pem]

    dial = DialTLS(ca_file, cert_file, key_file, "--peer-trusted-ca-file", "--peer-cert-file", "--peer-key-file",
                   role="peer")

    def front() -> TLSFront:
        # --peer-crl-file and --peer-cert-allowed-cn are the peer service's (``check``), after the handshake
        return TLSFront(cert_file, key_file, ca_file, client_cert_auth=client_cert_auth, ciphers=ciphers, role=PEER)

    return PeerTLS(server.credentials, channel.get, check if allowed_cn or crls else None,
                   lambda host, port: diagnose_dial(host, port, dial), front)
