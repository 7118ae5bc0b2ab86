"""The certificates and the join token of a managed cluster (``--cluster-init``, ``--server``; docs/ha.md).

Fixed places under the data dir (``<data-dir>/tls``):

- ``ca.crt``/``ca.key``: the cluster CA (ECDSA P-256, ten years). Every member holds the key, as every K3s
  server holds its cluster's CA keys: any member can issue a joiner's certificates.
- ``server.crt``/``server.key``: the client port's certificate (serverAuth; SANs: the client URLs' hosts,
  ``localhost``, ``127.0.0.1`` and every ``--tls-san``); the file holds the certificate then the CA, so a
  joiner reads the CA from the TLS handshake and checks it against the token before trusting it.
- ``peer.crt``/``peer.key``: the peer links' certificate (serverAuth and clientAuth; SANs: the peer URLs' hosts).
- ``client.crt``/``client.key``: an admin client certificate (clientAuth, CN ``quorumkv-admin``).

The token (``<data-dir>/token``) is K3s's format ``K10<sha256 hex of ca.crt>::server:<secret>``; a bare
secret is accepted too (no CA pinning).

The bootstrap record (K3s's "bootstrap data"): the CA certificate and key, encrypted with a key derived from the
token's secret (PBKDF2-HMAC-SHA256, AES-256-GCM), stored under the reserved key ``/bootstrap/<id>`` (``<id>``:
the first 12 hex digits of the secret's SHA-256) so that every snapshot carries the CA and a restore with the
token on a new host recovers it (:func:`seal_bootstrap`, :func:`open_bootstrap`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "BOOTSTRAP_PREFIX", "CA_CERT", "CLIENT_CERT", "CLIENT_KEY", "PEER_CERT", "PEER_KEY", "SERVER_CERT",
    "SERVER_KEY", "TLS_DIR", "TOKEN_FILE", "BootstrapError", "ClusterCA", "Token", "TokenError", "bootstrap_key",
    "ca_hash", "ensure_member_certs", "format_token", "hosts_of", "issue_member_certs", "load_ca", "make_ca",
    "new_secret", "open_bootstrap", "parse_token", "read_token_file", "seal_bootstrap", "write_token_file",
]

TLS_DIR = "tls"
TOKEN_FILE = "token"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
PEER_CERT, PEER_KEY = "peer.crt", "peer.key"
CLIENT_CERT, CLIENT_KEY = "client.crt", "client.key"
ADMIN_CN = "quorumkv-admin"
TOKEN_PREFIX = "K10"
_DAY = datetime.timedelta(days=1)
#: leaf certificates are issued for a year and re-issued at start when less than this is left
LEAF_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=90)


#: The reserved key prefix of the encrypted bootstrap records (K3s uses the same prefix).
BOOTSTRAP_PREFIX = b"/bootstrap/"
BOOTSTRAP_ITERATIONS = 100_000
_BOOTSTRAP_AAD = b"quorumkv-bootstrap-v1"


class BootstrapError(ValueError):
    """A bootstrap record that cannot be opened with the given secret (wrong token) or is malformed."""


class TokenError(ValueError):
    """A token that cannot be used; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Token:
    """A parsed token: ``ca_hash`` is "" for a bare secret (no CA pinning)."""

    ca_hash: str
    secret: str

    @property
    def pinned(self) -> bool:
        return bool(self.ca_hash)


def new_secret() -> str:
    return secrets.token_hex(16)


def format_token(ca_pem: bytes, secret: str) -> str:
    return f"{TOKEN_PREFIX}{ca_hash(ca_pem)}::server:{secret}"


def ca_hash(ca_pem: bytes) -> str:
    """The token's CA hash: SHA-256 (hex) of the CA bundle as stored in ``ca.crt`` (K3s hashes its cacerts)."""
    return hashlib.sha256(ca_pem).hexdigest()


def parse_token(text: str) -> Token:
    """``K10<hash>::<user>:<secret>`` (K3s's full token), ``K10::<user>:<secret>``-style forms without a hash,
    or a bare secret."""
    text = text.strip()
    if not text:
        raise TokenError("the token is empty; give --token, QUORUMKV_TOKEN or --token-file")
    if text.startswith(TOKEN_PREFIX) and "::" in text:
        head, _, cred = text[len(TOKEN_PREFIX):].partition("::")
        user, sep, secret = cred.partition(":")
        if not sep or not secret:
            raise TokenError("malformed token: after '::' expected 'server:<secret>' (K10<ca hash>::server:<secret>)")
        if head and (len(head) != 64 or any(c not in "0123456789abcdef" for c in head.lower())):
            raise TokenError("malformed token: the CA hash after K10 must be 64 hex digits (sha256)")
        if user != "server":
            raise TokenError(f"token user {user!r} cannot join servers; use the server token (...::server:<secret>)")
        return Token(head.lower(), secret)
    if any(c.isspace() for c in text):
        raise TokenError("a bare token secret must not contain whitespace")
    return Token("", text)


def secret_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def read_token_file(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"cannot read the token file {path}: {exc.strerror or exc}") from None


def write_token_file(path: str | os.PathLike[str], token: str) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


@dataclass
class ClusterCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def make_ca(tls_dir: Path, cluster_name: str = "quorumkv") -> ClusterCA:
    """Generate the cluster CA into ``tls_dir`` (``ca.crt``, ``ca.key``)."""
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name}-ca@{int(now.timestamp())}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _DAY)
            .not_valid_after(now + 3650 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    ca = ClusterCA(cert, key)
    store_ca(tls_dir, ca.pem, ca.key_pem)
    return ca


def store_ca(tls_dir: Path, cert_pem: bytes, key_pem: bytes) -> None:
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(tls_dir / CA_KEY, key_pem, private=True)
    _write(tls_dir / CA_CERT, cert_pem)


def load_ca(tls_dir: Path) -> ClusterCA:
    cert = x509.load_pem_x509_certificate((tls_dir / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((tls_dir / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{tls_dir / CA_KEY} is not an ECDSA key")
    return ClusterCA(cert, key)


def ca_from_pem(cert_pem: bytes, key_pem: bytes) -> ClusterCA:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the cluster CA key is not an ECDSA key")
    return ClusterCA(cert, key)


def hosts_of(urls: Iterable[str]) -> list[str]:
    out: list[str] = []
    for url in urls:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            continue
        if host and host not in out:
            out.append(host)
    return out


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in dict.fromkeys(n.strip() for n in names if n.strip()):
        try:
            ip = ipaddress.ip_address(n.strip("[]"))
        except ValueError:
            out.append(x509.DNSName(n))
            continue
        if not ip.is_unspecified:  # a listen URL on 0.0.0.0 names no address a client dials
            out.append(x509.IPAddress(ip))
    return out


def issue_leaf(ca: ClusterCA, cn: str, sans: Sequence[str], usages: Sequence[str]) -> tuple[bytes, bytes]:
    """A certificate (PEM, followed by the CA's) and its key (PEM) signed by ``ca``; ``usages`` from
    "server", "client"."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ekus = [{"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}[u]
            for u in usages]
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + LEAF_DAYS * _DAY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=True, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    alt = _general_names(sans)
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM) + ca.pem, _key_pem(key)


@dataclass(frozen=True)
class MemberCerts:
    """A member's three certificates and keys (PEM), as issued by :func:`issue_member_certs`."""

    server_cert: bytes
    server_key: bytes
    peer_cert: bytes
    peer_key: bytes
    client_cert: bytes
    client_key: bytes


def server_sans(client_hosts: Sequence[str], tls_sans: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*client_hosts, "localhost", "127.0.0.1", *tls_sans]))


def issue_member_certs(ca: ClusterCA, name: str, client_hosts: Sequence[str], peer_hosts: Sequence[str],
                       tls_sans: Sequence[str]) -> MemberCerts:
    server_cert, server_key = issue_leaf(ca, name, server_sans(client_hosts, tls_sans), ["server"])
    peer_cert, peer_key = issue_leaf(ca, name, [*peer_hosts, *tls_sans], ["server", "client"])
    client_cert, client_key = issue_leaf(ca, ADMIN_CN, [], ["client"])
    return MemberCerts(server_cert, server_key, peer_cert, peer_key, client_cert, client_key)


def store_member_certs(tls_dir: Path, certs: MemberCerts) -> None:
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, data, private in ((SERVER_KEY, certs.server_key, True), (SERVER_CERT, certs.server_cert, False),
                                (PEER_KEY, certs.peer_key, True), (PEER_CERT, certs.peer_cert, False),
                                (CLIENT_KEY, certs.client_key, True), (CLIENT_CERT, certs.client_cert, False)):
        _write(tls_dir / name, data, private)


def _covers(path: Path, ca: ClusterCA, names: Sequence[str]) -> bool:
    """``path`` holds a certificate signed by ``ca``, valid for a while yet, whose SANs are exactly ``names``."""
    try:
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return False
    if cert.issuer != ca.cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, Exception):
        return False
    if cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < RENEW_BEFORE:
        return False
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not names
    return set(alt) == set(_general_names(names))


def ensure_member_certs(tls_dir: Path, name: str, client_hosts: Sequence[str], peer_hosts: Sequence[str],
                        tls_sans: Sequence[str]) -> bool:
    """Re-issue this member's certificates from the CA in ``tls_dir`` when missing, expiring, or when the
    names they must cover changed (new ``--tls-san``, new URLs). Returns whether it issued any."""
    ca = load_ca(tls_dir)
    fresh = (_covers(tls_dir / SERVER_CERT, ca, server_sans(client_hosts, tls_sans))
             and _covers(tls_dir / PEER_CERT, ca, [*peer_hosts, *tls_sans])
             and _covers(tls_dir / CLIENT_CERT, ca, [])
             and all((tls_dir / k).exists() for k in (SERVER_KEY, PEER_KEY, CLIENT_KEY)))
    if fresh:
        return False
    store_member_certs(tls_dir, issue_member_certs(ca, name, client_hosts, peer_hosts, tls_sans))
    return True


def ca_from_chain(chain_der: Sequence[bytes]) -> bytes:
    """The CA (PEM) at the end of a TLS certificate chain as a server sent it (leaf first): the self-signed
    certificate, else the last one. Raises ValueError for an empty chain."""
    certs = [x509.load_der_x509_certificate(d) for d in chain_der]
    if not certs:
        raise ValueError("the server sent no certificate")
    roots = [c for c in certs if c.issuer == c.subject]
    return (roots[-1] if roots else certs[-1]).public_bytes(serialization.Encoding.PEM)


def bootstrap_key(secret: str) -> bytes:
    """The key of the bootstrap record sealed with ``secret``."""
    return BOOTSTRAP_PREFIX + hashlib.sha256(secret.encode()).hexdigest()[:12].encode()


def _derive(secret: str, salt: bytes, iterations: int) -> bytes:
    return PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations).derive(secret.encode())


def seal_bootstrap(secret: str, ca_cert_pem: bytes, ca_key_pem: bytes) -> bytes:
    """The bootstrap record (JSON): the CA certificate and key encrypted with a key derived from ``secret``."""
    salt, nonce = os.urandom(16), os.urandom(12)
    plain = json.dumps({"ca_cert": ca_cert_pem.decode(), "ca_key": ca_key_pem.decode()}).encode()
    data = AESGCM(_derive(secret, salt, BOOTSTRAP_ITERATIONS)).encrypt(nonce, plain, _BOOTSTRAP_AAD)
    b64 = base64.b64encode
    return json.dumps({"version": 1, "kdf": "pbkdf2-sha256", "iterations": BOOTSTRAP_ITERATIONS,
                       "salt": b64(salt).decode(), "nonce": b64(nonce).decode(), "data": b64(data).decode()},
                      sort_keys=True).encode()


def open_bootstrap(secret: str, record: bytes) -> tuple[bytes, bytes]:
    """The CA certificate and key (PEM) in ``record``; raises BootstrapError for a wrong secret or bad record."""
    from cryptography.exceptions import InvalidTag

    try:
        doc = json.loads(record)
        if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("kdf") != "pbkdf2-sha256":
            raise BootstrapError("unknown bootstrap record format")
        iterations = int(doc["iterations"])
        if not 1000 <= iterations <= 10_000_000:
            raise BootstrapError("bootstrap record: bad iteration count")
        salt, nonce, data = (base64.b64decode(doc[k], validate=True) for k in ("salt", "nonce", "data"))
        key = _derive(secret, salt, iterations)
        plain = json.loads(AESGCM(key).decrypt(nonce, data, _BOOTSTRAP_AAD))
        return str(plain["ca_cert"]).encode(), str(plain["ca_key"]).encode()
    except InvalidTag:
        raise BootstrapError("the bootstrap record cannot be decrypted with this token's secret") from None
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, BootstrapError):
            raise
        raise BootstrapError(f"malformed bootstrap record ({exc})") from None
