"""Offline inspection of TLS files: what each certificate allows, and what is wrong with it, with the fix.

Pure (files and ``cryptography`` only, nothing of the project), so the server's start-up checks, ``quorumkv
check certs``, the peer transport and quorumkvctl's handshake diagnosis all share one vocabulary of problems.

Each problem names the file, the exact mismatch (dates, SAN list, both CA fingerprints, ...) and the fix.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertInfo",
    "Endpoint",
    "Problem",
    "TLSFileError",
    "check_chain_against_ca",
    "check_endpoint",
    "check_name",
    "describe",
    "fingerprint",
    "load_certs",
    "load_crl",
    "load_key",
]

Severity = Literal["error", "warning"]
Role = Literal["server", "client", "peer"]

#: Extended key usages by the role a certificate plays (a peer both serves and dials).
_USAGES: dict[str, tuple[str, ...]] = {
    "server": ("serverAuth",),
    "client": ("clientAuth",),
    "peer": ("serverAuth", "clientAuth"),
}
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "any",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a TLS file: which file (and the flag that named it), what, and how to fix it."""

    file: str
    problem: str
    fix: str
    flag: str = ""
    severity: Severity = "error"

    def line(self) -> str:
        """One line: ``--cert-file server.crt: certificate expired on ...; renew it ...``."""
        where = " ".join(part for part in (self.flag, self.file) if part)
        return f"{where}: {self.problem}; {self.fix}"


class TLSFileError(ValueError):
    """A TLS file that cannot be used at all (unreadable, not PEM)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.line())
        self.problem = problem


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as ``openssl x509 -fingerprint -sha256`` prints it (``AB:CD:...``)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _utc(cert: x509.Certificate, which: str) -> datetime.datetime:
    return getattr(cert, f"not_valid_{which}_utc")  # type: ignore[no-any-return]


def _fmt(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


@dataclass(frozen=True)
class CertInfo:
    """What a certificate says, in the terms an operator checks."""

    subject: str
    common_name: str
    issuer: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    usages: tuple[str, ...] | None  # None: no extended key usage extension (any usage)
    is_ca: bool
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    fingerprint: str

    @property
    def sans(self) -> list[str]:
        return [*(f"DNS:{d}" for d in self.dns_names), *(f"IP:{i}" for i in self.ip_addresses)]


def describe(cert: x509.Certificate) -> CertInfo:
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    usages: tuple[str, ...] | None = None
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
    except x509.ExtensionNotFound:
        pass
    is_ca = False
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        pass
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        common_name=_common_name(cert.subject),
        issuer=cert.issuer.rfc4514_string(),
        dns_names=dns,
        ip_addresses=ips,
        usages=usages,
        is_ca=is_ca,
        not_before=_utc(cert, "before"),
        not_after=_utc(cert, "after"),
        serial=cert.serial_number,
        fingerprint=fingerprint(cert),
    )


def _read(path: str, flag: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSFileError(Problem(path, f"cannot read the {what}: {exc.strerror or exc}",
                                   f"check the path and its permissions, or fix {flag or 'the flag'}",
                                   flag)) from None


def load_certs(path: str, flag: str = "", what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate in a PEM file (a chain or a CA bundle); raise :class:`TLSFileError` if none."""
    data = _read(path, flag, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        hint = ("it holds a private key, not a certificate: swap the cert and key flags"
                if b"PRIVATE KEY-----" in data else
                "it is DER: convert it with 'openssl x509 -inform der -in FILE -out FILE.pem'"
                if data[:1] == b"\x30" else "give a file with '-----BEGIN CERTIFICATE-----' blocks")
        raise TLSFileError(Problem(path, f"not a PEM {what} (no readable CERTIFICATE block)", hint, flag))
    return certs


def load_key(path: str, flag: str = "") -> object:
    data = _read(path, flag, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError(Problem(path, "the private key is encrypted (has a passphrase)",
                                   "decrypt it: 'openssl pkey -in KEY -out KEY.plain'", flag)) from None
    except Exception:  # cryptography raises ValueError or UnsupportedAlgorithm
        hint = ("it holds a certificate, not a key: swap the cert and key flags"
                if b"CERTIFICATE-----" in data else "give an unencrypted PEM private key "
                "('-----BEGIN PRIVATE KEY-----' or 'RSA/EC PRIVATE KEY')")
        raise TLSFileError(Problem(path, "not a PEM private key", hint, flag)) from None


def load_crl(path: str, flag: str = "") -> x509.CertificateRevocationList:
    data = _read(path, flag, "certificate revocation list")
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        try:
            return x509.load_der_x509_crl(data)
        except ValueError:
            raise TLSFileError(Problem(path, "not a certificate revocation list (PEM or DER)",
                                       "give the CRL your CA published ('openssl ca -gencrl -out FILE')",
                                       flag)) from None


def _public_bytes(key: object) -> bytes:
    pub = key.public_key()  # type: ignore[attr-defined]
    return pub.public_bytes(serialization.Encoding.DER,  # type: ignore[no-any-return]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    pub = issuer.public_key()
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            assert cert.signature_hash_algorithm is not None
            pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(pub, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, ValueError, AssertionError):
        return False
    return True


def check_chain_against_ca(chain: Sequence[x509.Certificate], cas: Sequence[x509.Certificate]) -> bool:
    """Whether ``chain[0]`` leads to one of ``cas`` through the intermediates in ``chain`` (signatures only)."""
    current = chain[0]
    pool = list(chain[1:])
    for _ in range(len(pool) + 1):
        if any(current == ca or _signed_by(current, ca) for ca in cas):
            return True
        nxt = next((c for c in pool if _signed_by(current, c)), None)
        if nxt is None:
            return False
        pool.remove(nxt)
        current = nxt
    return False


def unknown_ca_message(chain: Sequence[x509.Certificate], cas: Sequence[x509.Certificate], ca_desc: str) -> str:
    """Names both sides: the CA that signed the certificate (its fingerprint if the chain carries it) and the
    trusted CA(s) with their SHA-256 fingerprints."""
    leaf = chain[0]
    signer = next((c for c in chain[1:] if _signed_by(leaf, c)), None)
    if signer is not None:
        signed = f"'{leaf.issuer.rfc4514_string()}' (SHA-256 {fingerprint(signer)})"
    else:
        signed = f"'{leaf.issuer.rfc4514_string()}'"
        try:
            aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
            if aki:
                signed += f" (authority key id {aki.hex(':').upper()})"
        except x509.ExtensionNotFound:
            pass
    trusted = ", ".join(f"'{c.subject.rfc4514_string()}' (SHA-256 {fingerprint(c)})" for c in cas)
    return f"signed by unknown authority: issued by {signed}, but {ca_desc} trusts only {trusted}"


def check_name(info: CertInfo, host: str) -> bool:
    """Whether a dialled ``host`` (name or IP) is in the certificate's SANs, as Go and OpenSSL match them."""
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return any(ipaddress.ip_address(a) == ip for a in info.ip_addresses)
    host = host.lower().rstrip(".")
    for pattern in info.dns_names:
        pattern = pattern.lower().rstrip(".")
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def check_validity(cert: x509.Certificate, file: str, flag: str, now: datetime.datetime | None = None,
                   what: str = "certificate") -> list[Problem]:
    now = now or _now()
    nb, na = _utc(cert, "before"), _utc(cert, "after")
    if now < nb:
        return [Problem(file, f"{what} '{_common_name(cert.subject)}' is not yet valid: valid from {_fmt(nb)} "
                              f"to {_fmt(na)}, now is {_fmt(now)}",
                        "check this host's clock, or wait until it is valid", flag)]
    if now > na:
        return [Problem(file, f"{what} '{_common_name(cert.subject)}' expired on {_fmt(na)} (valid from "
                              f"{_fmt(nb)}), now is {_fmt(now)}",
                        "issue a new one and replace the file (it is re-read without a restart)", flag)]
    return []


def check_usages(info: CertInfo, role: str, file: str, flag: str) -> list[Problem]:
    if info.usages is None or "any" in info.usages:
        return []
    missing = [u for u in _USAGES[role] if u not in info.usages]
    if not missing:
        return []
    purpose = {"server": "serve TLS", "client": "authenticate as a TLS client",
               "peer": "serve and dial peers"}[role]
    return [Problem(file, f"certificate '{info.common_name}' lacks the {' and '.join(missing)} extended key usage "
                          f"needed to {purpose} (it has {', '.join(info.usages) or 'none'})",
                    f"reissue it with extendedKeyUsage = {', '.join(_USAGES[role])}", flag)]


@dataclass
class Endpoint:
    """The TLS settings of one side (etcd's client or peer flags) and the names it must answer to."""

    scope: Literal["client", "peer"]
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    crl_file: str = ""
    client_cert_auth: bool = False
    allowed_cn: str = ""
    #: host names / IPs others dial (from the advertised URLs): each must be in the certificate's SANs
    names: list[str] = field(default_factory=list)

    def flag(self, what: str) -> str:
        return f"--{'peer-' if self.scope == 'peer' else ''}{what}"

    @property
    def role(self) -> str:
        return "peer" if self.scope == "peer" else "server"


@dataclass
class Inspected:
    """A file's certificates and what :func:`check_endpoint` found wrong with the endpoint."""

    file: str
    flag: str
    certs: list[x509.Certificate] = field(default_factory=list)


def check_endpoint(ep: Endpoint, now: datetime.datetime | None = None,
                   inspected: list[Inspected] | None = None) -> list[Problem]:
    """Every problem with an endpoint's files, errors first. ``inspected`` collects what was loaded (for
    ``check certs``' table)."""
    problems: list[Problem] = []
    seen = inspected if inspected is not None else []
    cas: list[x509.Certificate] = []
    if ep.trusted_ca_file:
        flag = ep.flag("trusted-ca-file")
        try:
            cas = load_certs(ep.trusted_ca_file, flag, "CA certificate")
            seen.append(Inspected(ep.trusted_ca_file, flag, cas))
            for ca in cas:
                problems += check_validity(ca, ep.trusted_ca_file, flag, now, "CA certificate")
                if not describe(ca).is_ca:
                    problems.append(Problem(ep.trusted_ca_file, f"'{_common_name(ca.subject)}' is not a CA "
                                            "certificate (basicConstraints CA:FALSE)",
                                            "give the CA that signed the certificates, not a leaf", flag, "warning"))
        except TLSFileError as exc:
            problems.append(exc.problem)
    elif ep.client_cert_auth:
        problems.append(Problem("", f"{ep.flag('client-cert-auth')} is set but {ep.flag('trusted-ca-file')} is "
                                "not: no client certificate can be verified",
                                f"set {ep.flag('trusted-ca-file')} to the CA that signs client certificates",
                                ep.flag("client-cert-auth")))
    chain: list[x509.Certificate] = []
    if ep.cert_file:
        flag = ep.flag("cert-file")
        try:
            chain = load_certs(ep.cert_file, flag)
            seen.append(Inspected(ep.cert_file, flag, chain))
        except TLSFileError as exc:
            problems.append(exc.problem)
    key: object = None
    if ep.key_file:
        try:
            key = load_key(ep.key_file, ep.flag("key-file"))
        except TLSFileError as exc:
            problems.append(exc.problem)
    if chain:
        leaf, flag, file = chain[0], ep.flag("cert-file"), ep.cert_file
        info = describe(leaf)
        if key is not None and _public_bytes(key) != leaf.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            problems.append(Problem(ep.key_file, f"the private key does not match the certificate in {file} "
                                    f"('{info.common_name}', SHA-256 {info.fingerprint})",
                                    f"give the key the certificate was issued for in {ep.flag('key-file')}",
                                    ep.flag("key-file")))
        problems += check_validity(leaf, file, flag, now)
        problems += check_usages(info, ep.role, file, flag)
        missing = [n for n in dict.fromkeys(ep.names) if n and not check_name(info, n)]
        if missing:
            problems.append(Problem(file, f"certificate '{info.common_name}' does not cover "
                                    f"{', '.join(missing)} which {'peers' if ep.scope == 'peer' else 'clients'} "
                                    f"dial (its SANs: {', '.join(info.sans) or 'none'})",
                                    f"reissue it with subjectAltName including {', '.join(_san(n) for n in missing)}",
                                    flag))
        if cas and not check_chain_against_ca(chain, cas):
            problems.append(Problem(file, unknown_ca_message(chain, cas, ep.flag("trusted-ca-file")),
                                    f"issue it from that CA, or point {ep.flag('trusted-ca-file')} at the CA "
                                    "that signed it", flag,
                                    "error" if ep.scope == "peer" else "warning"))
        if ep.allowed_cn and info.common_name != ep.allowed_cn:
            problems.append(Problem(file, f"certificate CN '{info.common_name}' is not the one "
                                    f"--peer-cert-allowed-cn={ep.allowed_cn} allows: the other members will "
                                    "refuse it", f"reissue it with CN={ep.allowed_cn}", flag))
    if ep.crl_file:
        flag = ep.flag("crl-file")
        try:
            crl = load_crl(ep.crl_file, flag)
            if chain and crl.get_revoked_certificate_by_serial_number(chain[0].serial_number) is not None:
                problems.append(Problem(ep.cert_file, f"certificate '{_common_name(chain[0].subject)}' "
                                        f"(serial {chain[0].serial_number:x}) is revoked by {ep.crl_file}",
                                        "issue a new certificate", ep.flag("cert-file")))
        except TLSFileError as exc:
            problems.append(exc.problem)
    problems.sort(key=lambda p: p.severity != "error")
    return problems


def _san(name: str) -> str:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return f"IP:{name.strip('[]')}"
    except ValueError:
        return f"DNS:{name}"


def revoked(cert: x509.Certificate, crls: Iterable[x509.CertificateRevocationList]) -> bool:
    return any(c.get_revoked_certificate_by_serial_number(cert.serial_number) is not None for c in crls)
