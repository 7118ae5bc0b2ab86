"""etcd's ``--cipher-suites`` (Go's crypto/tls names) as OpenSSL names, which gRPC and Python's ``ssl`` take.

As in Go, the list applies to TLS 1.2 and below; TLS 1.3's suites are not configurable.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

__all__ = ["GO_TO_OPENSSL", "CipherSuiteError", "openssl_names"]

#: Every suite etcd 3.4 accepts (etcd's pkg/tlsutil/cipher_suites.go) -> its OpenSSL name.
GO_TO_OPENSSL: dict[str, str] = {
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}


class CipherSuiteError(ValueError):
    pass


def _available(openssl_name: str) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(openssl_name)
    except ssl.SSLError:
        return False
    return True


def openssl_names(go_names: Sequence[str]) -> list[str]:
    """Map etcd's names to OpenSSL's; raise :class:`CipherSuiteError` naming every unknown or unavailable one."""
    unknown = [n for n in go_names if n.strip() not in GO_TO_OPENSSL]
    if unknown:
        raise CipherSuiteError(
            f"--cipher-suites: unknown cipher suite(s) {', '.join(unknown)}; use Go's names as etcd does, "
            f"e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (known: {', '.join(sorted(GO_TO_OPENSSL))})")
    out = [GO_TO_OPENSSL[n.strip()] for n in go_names]
    unavailable = [n for n, o in zip(go_names, out, strict=True) if not _available(o)]
    if unavailable:
        raise CipherSuiteError(f"--cipher-suites: {', '.join(unavailable)} not available in this OpenSSL "
                               f"({ssl.OPENSSL_VERSION}: RC4 and 3DES are disabled); choose AES-GCM or CHACHA20 suites")
    return list(dict.fromkeys(out))
