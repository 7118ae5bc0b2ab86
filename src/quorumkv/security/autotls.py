"""``--auto-tls``/``--peer-auto-tls``: a self-signed certificate in the data dir, as etcd's ``transport.SelfCert``
makes it (ECDSA P-256, one year, the listen URLs' hosts as SANs, serverAuth and clientAuth), reused while valid."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["self_cert"]


def self_cert(directory: str | os.PathLike[str], urls: Sequence[str], valid_days: int = 365) -> tuple[str, str]:
    """Return ``(cert.pem, key.pem)`` in ``directory`` (etcd: ``<data-dir>/fixtures/client`` or ``/peer``),
    generating them when missing or expired."""
    d = Path(directory)
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    now = datetime.datetime.now(datetime.UTC)
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.not_valid_after_utc > now + datetime.timedelta(hours=1):
                return str(cert_path), str(key_path)
        except ValueError:
            pass
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for url in urls:
        host = urlsplit(url).hostname or ""
        if not host:
            continue
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=valid_days))
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=True, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(alt))), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)
