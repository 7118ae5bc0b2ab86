"""TLS of the peer links from etcd's ``--peer-*`` flags: what the peer transport needs, in one place.

- ``server_credentials``/``channel_credentials``: callables making gRPC credentials that re-read rotated files;
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

__all__ = ["PeerTLS", "peer_tls"]


@dataclass
class PeerTLS:
    server_credentials: Callable[[], grpc.ServerCredentials]
    channel_credentials: Callable[[], grpc.ChannelCredentials]
    check_peer_cert: Callable[[bytes], str | None] | None
    diagnose_tls: Callable[[str, int], str | None]


def peer_tls(cert_file: str, key_file: str, ca_file: str = "", *, client_cert_auth: bool = False,
             allowed_cn: str = "", crl_file: str = "") -> PeerTLS:
    """Raises :class:`~quorumkv.security.certs.TLSFileError` when the files cannot be served."""
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
    return PeerTLS(server.credentials, channel.get, check if allowed_cn or crls else None,
                   lambda host, port: diagnose_dial(host, port, dial))
