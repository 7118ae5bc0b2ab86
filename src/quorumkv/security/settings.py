"""The server's TLS flags as :class:`~quorumkv.security.certs.Endpoint` values, and the start-up check.

Duck-typed over the server configuration (``getattr``), so this package stays below the server layers.
"""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import urlsplit

from quorumkv.security.certs import Endpoint, Inspected, Problem, check_endpoint

__all__ = ["check_config", "endpoints"]


def _hosts(urls: list[str]) -> list[str]:
    out = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.hostname:
            out.append(parts.hostname)
    return out


def endpoints(cfg: Any) -> list[Endpoint]:
    """The client and peer endpoints whose files are configured (auto-TLS ones are generated, not checked)."""
    def g(name: str, default: Any = "") -> Any:
        return getattr(cfg, name, default) or default

    out = []
    client = Endpoint("client", g("cert_file"), g("key_file"), g("trusted_ca_file"), g("client_crl_file"),
                      bool(g("client_cert_auth", False)), names=_hosts(list(g("advertise_client_urls", []))))
    if client.cert_file or client.key_file or client.trusted_ca_file or client.crl_file:
        out.append(client)
    peer = Endpoint("peer", g("peer_cert_file"), g("peer_key_file"), g("peer_trusted_ca_file"), g("peer_crl_file"),
                    bool(g("peer_client_cert_auth", False)), g("peer_cert_allowed_cn"),
                    names=_hosts(list(g("initial_advertise_peer_urls", []))))
    if peer.cert_file or peer.key_file or peer.trusted_ca_file or peer.crl_file:
        out.append(peer)
    return out


def check_config(cfg: Any, now: datetime.datetime | None = None,
                 inspected: list[Inspected] | None = None) -> list[Problem]:
    """Every problem with the configured TLS files (errors first within each endpoint)."""
    problems: list[Problem] = []
    for ep in endpoints(cfg):
        problems += check_endpoint(ep, now, inspected)
    return problems
