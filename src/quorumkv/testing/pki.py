"""A throw-away PKI for tests: a CA, server/peer/client certificates, and one deliberately broken certificate
per diagnostic (expired, not yet valid, wrong SANs, missing usage, other CA, wrong CN, revoked, key mismatch).

``make_pki(dir)`` writes PEM files and returns their paths; :func:`issue` makes any other certificate.
Keys are EC P-256 (fast to generate).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "PKI", "issue", "make_ca", "make_pki", "write_crl"]

DAY = datetime.timedelta(days=1)


@dataclass
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "ca", cn: str = "quorumkv test CA") -> CA:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - DAY)
            .not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, directory / f"{name}.key")
    return CA(cert, key, path)


def issue(ca: CA, directory: Path, name: str, *, cn: str | None = None,
          sans: tuple[str, ...] = ("localhost", "127.0.0.1"), usages: tuple[str, ...] | None = ("server", "client"),
          not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
          key: ec.EllipticCurvePrivateKey | None = None) -> tuple[Path, Path]:
    """Write ``name.crt``/``name.key`` signed by ``ca``; ``usages`` None leaves out the EKU extension."""
    key = key or _key()
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = []
    for s in sans:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            alt.append(x509.DNSName(s))
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - DAY).not_valid_after(not_after or now + 365 * DAY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    if usages is not None:
        oids = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
        builder = builder.add_extension(x509.ExtendedKeyUsage([oids[u] for u in usages]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    crt, keyfile = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, keyfile)
    return crt, keyfile


def write_crl(ca: CA, path: Path, revoked: list[Path]) -> Path:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject).last_update(now - DAY)
               .next_update(now + 30 * DAY))
    for crt in revoked:
        serial = x509.load_pem_x509_certificate(crt.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - DAY).build())
    path.write_bytes(builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class PKI:
    """Paths of the generated files: ``certs[name] = (crt, key)``."""

    directory: Path
    ca: CA
    other_ca: CA
    certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    crl: Path | None = None
    empty_crl: Path | None = None

    def cert(self, name: str) -> str:
        return str(self.certs[name][0])

    def key(self, name: str) -> str:
        return str(self.certs[name][1])


def make_pki(directory: Path, sans: tuple[str, ...] = ("localhost", "127.0.0.1")) -> PKI:
    """A CA and its good certificates (``server``, ``peer``, ``client``), plus one broken one per diagnostic:
    ``expired``, ``future``, ``wrong-san``, ``no-client-usage``, ``no-server-usage``, ``other-ca`` (signed by
    ``other_ca``), ``wrong-cn``, ``revoked`` (in ``crl``), ``mismatch`` (key of another certificate)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory)
    other = make_ca(directory, "other-ca", "some other CA")
    now = datetime.datetime.now(datetime.UTC)
    pki = PKI(directory, ca, other)
    pki.certs["server"] = issue(ca, directory, "server", usages=("server", "client"), sans=sans)
    pki.certs["peer"] = issue(ca, directory, "peer", cn="quorumkv-peer", sans=sans)
    pki.certs["client"] = issue(ca, directory, "client", cn="root", usages=("client",), sans=())
    pki.certs["expired"] = issue(ca, directory, "expired", sans=sans, not_before=now - 30 * DAY,
                                 not_after=now - DAY)
    pki.certs["future"] = issue(ca, directory, "future", sans=sans, not_before=now + 10 * DAY,
                                not_after=now + 40 * DAY)
    pki.certs["wrong-san"] = issue(ca, directory, "wrong-san", sans=("example.com", "10.9.9.9"))
    pki.certs["no-client-usage"] = issue(ca, directory, "no-client-usage", sans=sans, usages=("server",))
    pki.certs["no-server-usage"] = issue(ca, directory, "no-server-usage", sans=sans, usages=("client",))
    pki.certs["other-ca"] = issue(other, directory, "other-ca-leaf", sans=sans)
    pki.certs["wrong-cn"] = issue(ca, directory, "wrong-cn", cn="intruder", sans=sans)
    pki.certs["revoked"] = issue(ca, directory, "revoked", sans=sans)
    crt, _ = issue(ca, directory, "mismatch-cert", sans=sans)
    pki.certs["mismatch"] = (crt, pki.certs["server"][1])
    pki.crl = write_crl(ca, directory / "ca.crl", [pki.certs["revoked"][0]])
    pki.empty_crl = write_crl(ca, directory / "empty.crl", [])
    return pki
