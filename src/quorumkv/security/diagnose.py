"""Why a TLS connection failed, in one line with the fix, from the dialling side.

grpcio reports a failed handshake only as an unavailable channel (``context deadline exceeded`` in etcdctl's
words). When a dial over TLS fails, :func:`diagnose_dial` looks itself: it checks our own certificate and key
(readable, matching, valid, clientAuth), fetches the server's certificate with Python's ``ssl`` without
verifying it, and names what our trust settings reject (unknown CA with both fingerprints, expired or not yet
valid with the dates, the dialled name missing from the SANs with the SAN list, no serverAuth usage); then it
completes a handshake with our certificate and reads, to catch the server rejecting us (its TLS alert).
quorumkvctl and the peer transport both call it; it runs only after a failure, so it costs nothing while
connections succeed.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from quorumkv.security.certs import (
    CertInfo,
    Endpoint,
    TLSFileError,
    check_chain_against_ca,
    check_endpoint,
    check_name,
    check_usages,
    check_validity,
    describe,
    load_certs,
    unknown_ca_message,
)

__all__ = ["DialTLS", "certificate_message_chain", "client_handshake_refusal", "diagnose_dial",
           "peer_certificate_refusal"]

#: HTTP/2's client preface plus an empty SETTINGS frame: makes a TLS 1.3 server read (and judge) our certificate.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@dataclass
class DialTLS:
    """What the dialling side trusts and presents (etcdctl's --cacert/--cert/--key, or the --peer-* files)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    #: flag names to mention in the messages
    ca_flag: str = "--cacert"
    cert_flag: str = "--cert"
    key_flag: str = "--key"
    #: the role our certificate plays: "client" for etcdctl, "peer" for a member
    role: str = "client"


def _own_problems(tls: DialTLS) -> list[str]:
    """What is wrong with the certificate and key we present (readable, matching, valid, right usages)."""
    if not tls.cert_file and not tls.key_file:
        return []
    ep = Endpoint("client", tls.cert_file, tls.key_file)
    out = []
    for p in check_endpoint(ep):
        if "extended key usage" in p.problem:
            continue  # judged below for the role we play
        line = p.line().replace("--cert-file", tls.cert_flag).replace("--key-file", tls.key_flag)
        out.append(f"our certificate: {line}")
    if tls.cert_file:
        try:
            leaf = load_certs(tls.cert_file)[0]
            out += [f"our certificate: {p.line()}" for p in
                    check_usages(describe(leaf), "client" if tls.role == "client" else "peer", tls.cert_file,
                                 tls.cert_flag)]
        except TLSFileError:
            pass
    return list(dict.fromkeys(out))


def _server_problems(der: bytes, host: str, tls: DialTLS) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    info = describe(cert)
    where = f"the server's certificate '{info.common_name}' (SHA-256 {info.fingerprint})"
    out = []
    if tls.ca_file:
        try:
            cas = load_certs(tls.ca_file, tls.ca_flag, "CA certificate")
        except TLSFileError as exc:
            return [exc.problem.line()]
        if not check_chain_against_ca([cert], cas):
            out.append(f"{where} is {unknown_ca_message([cert], cas, f'{tls.ca_flag} {tls.ca_file}')}; give "
                       f"{tls.ca_flag} the CA that signed the server's certificate")
    out += [f"{where}: {p.problem}; the server must renew it" for p in check_validity(cert, "", "")]
    if not check_name(info, host):
        out.append(f"{where} is not valid for {host}, the address dialled (its SANs: {', '.join(info.sans) or 'none'})"
                   f"; dial a name it covers or reissue it with subjectAltName including "
                   f"{'IP' if _is_ip(host) else 'DNS'}:{host}")
    usage = check_usages(info, "server", "", "")
    if usage:
        out.append(f"{where}: {usage[0].problem}; {usage[0].fix}")
    return out


def diagnose_dial(host: str, port: int, tls: DialTLS, timeout_s: float = 2.0) -> str | None:
    """One line naming why a TLS dial to ``host:port`` fails, or None when nothing TLS-related is found."""
    causes = _own_problems(tls)
    try:
        raw = socket.create_connection((host.strip("[]"), port), timeout=timeout_s)
    except OSError:
        return "; ".join(causes) or None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    # our own certificate's problems are named above: the server's refusal of it would only repeat them (it is
    # still sent when it loads, so that the server logs the same cause rather than a missing certificate)
    withheld = bool(causes)
    if tls.cert_file and tls.key_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError):
            pass
    try:
        with ctx.wrap_socket(raw, server_hostname=None if _is_ip(host) else host) as sock:
            der = sock.getpeercert(binary_form=True)
            if der:
                causes += _server_problems(der, host.strip("[]"), tls)
            try:
                sock.sendall(_H2_PREFACE)
                sock.settimeout(min(timeout_s, 1.0))
                if sock.recv(1) == b"" and not withheld:  # closed before any HTTP/2 frame: we were refused
                    causes.append(_closed_text(der, tls))
            except ssl.SSLError as exc:
                if not withheld:
                    causes.append(_alert_text(exc, tls))
            except OSError:
                pass
    except ssl.SSLError as exc:
        if not withheld:
            causes.append(_alert_text(exc, tls))
    except OSError as exc:
        if not causes:
            return f"the server closed the connection during the TLS handshake ({exc}); is it serving TLS?"
    finally:
        raw.close()
    return "; ".join(dict.fromkeys(causes)) or None


def _closed_text(server_der: bytes | None, tls: DialTLS) -> str:
    """The server ended the connection right after the handshake (gRPC does so, without an alert, when it
    rejects a client certificate under TLS 1.3): name what we sent and whose CA the server uses."""
    if not (tls.cert_file and tls.key_file):
        return (f"the server closed the connection after the TLS handshake: it requires a client certificate; "
                f"give {tls.cert_flag} and {tls.key_flag}")
    try:
        ours = describe(load_certs(tls.cert_file)[0])
    except TLSFileError as exc:
        return exc.problem.line()
    text = (f"the server rejected our certificate {tls.cert_file} ('{ours.common_name}', issued by "
            f"'{ours.issuer}')")
    if server_der:
        theirs = describe(x509.load_der_x509_certificate(server_der))
        if theirs.issuer != ours.issuer:
            text += (f"; the server's own certificate is issued by '{theirs.issuer}': it most likely trusts only "
                     f"that CA (its --trusted-ca-file); issue our certificate from it")
            return text
    return text + "; check its CA, validity, clientAuth usage and revocation with the server's operator"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _alert_text(exc: ssl.SSLError, tls: DialTLS) -> str:
    reason = (exc.reason or str(exc)).lower().replace("_", " ")
    if "certificate required" in reason:
        return (f"the server requires a client certificate (it verifies clients) and none was sent; "
                f"give {tls.cert_flag} and {tls.key_flag}")
    if "unknown ca" in reason:
        return (f"the server rejected our certificate {tls.cert_file}: its CA is unknown to the server "
                f"(TLS alert '{exc.reason}'); issue it from the CA in the server's trusted CA file")
    if "certificate expired" in reason:
        return f"the server rejected our certificate {tls.cert_file} as expired (TLS alert '{exc.reason}')"
    if "bad certificate" in reason or "unsupported certificate" in reason or "certificate revoked" in reason:
        return (f"the server rejected our certificate {tls.cert_file} (TLS alert '{exc.reason}'): check its "
                f"clientAuth usage, validity and CA with 'quorumkv check certs'")
    if "wrong version" in reason or "record layer" in reason:
        return "the server does not speak TLS on this port: use an http:// endpoint or give it --cert-file"
    return f"TLS handshake failed: {exc.reason or exc}"


def peer_certificate_refusal(pem: bytes, allowed_cn: str, crls: list[x509.CertificateRevocationList]) -> str | None:
    """Why a verified client certificate is still refused (etcd's --peer-cert-allowed-cn and CRL rules)."""
    cert = x509.load_pem_x509_certificate(pem)
    info = describe(cert)
    if allowed_cn and info.common_name != allowed_cn:
        return (f"certificate CN '{info.common_name}' is not allowed (--peer-cert-allowed-cn={allowed_cn}); "
                f"reissue it with CN={allowed_cn}")
    for crl in crls:
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return (f"certificate '{info.common_name}' (serial {cert.serial_number:x}) is revoked by the CRL; "
                    "issue a new certificate")
    return None


def certificate_message_chain(message: bytes, tls13: bool) -> list[bytes]:
    """The DER certificates of a TLS Certificate handshake message (its 4-byte header included), as a server
    receives it from a client (RFC 8446 4.4.2 for TLS 1.3, RFC 5246 7.4.2 before); [] when empty or malformed."""
    body = message[4:]
    p = 0
    try:
        if tls13:
            p += 1 + body[0]  # certificate_request_context
        end = p + 3 + int.from_bytes(body[p:p + 3], "big")
        p += 3
        out: list[bytes] = []
        while p + 3 <= min(end, len(body)):
            n = int.from_bytes(body[p:p + 3], "big")
            der = body[p + 3:p + 3 + n]
            if len(der) != n:
                return out
            out.append(der)
            p += 3 + n
            if tls13:  # per-certificate extensions
                p += 2 + int.from_bytes(body[p:p + 2], "big")
        return out
    except IndexError:
        return []


#: role -> (CA flag, client-verification flag, how the dialler gives a certificate)
_ROLE_FLAGS = {
    "client": ("--trusted-ca-file", "--client-cert-auth", "etcdctl --cert and --key"),
    "peer": ("--peer-trusted-ca-file", "--peer-client-cert-auth", "its --peer-cert-file and --peer-key-file"),
}


def _client_cert_problem(chain: Sequence[x509.Certificate], info: CertInfo, ca_file: str,
                         role: str = "client") -> str | None:
    leaf = chain[0]
    ca_flag = _ROLE_FLAGS[role][0]
    who = f"{role} certificate '{info.common_name}' (SHA-256 {info.fingerprint})"
    if ca_file:
        try:
            cas = load_certs(ca_file, ca_flag, "CA certificate")
        except TLSFileError as exc:
            return exc.problem.line()
        if not check_chain_against_ca(chain, cas):
            return (f"{who} is {unknown_ca_message(chain, cas, f'{ca_flag} {ca_file}')}; issue the {role}'s "
                    f"certificate from that CA, or add its CA to {ca_flag}")
    for p in check_validity(leaf, "", "", what=f"{role} certificate"):
        fix = (f"the {role} needs a renewed certificate" if "expired" in p.problem else
               "check the clock of this host and of the CA that issued it, or wait until it is valid")
        return f"{p.problem} (SHA-256 {info.fingerprint}); {fix}"
    for p in check_usages(info, "client", "", ""):
        return f"{who} {p.problem.split(' ', 2)[2]}; {p.fix}"
    return None


def client_handshake_refusal(chain_der: Sequence[bytes], exc: ssl.SSLError, ca_file: str,
                             role: str = "client") -> str | None:
    """Why this member refused a TLS handshake on its client port (``role`` "client") or peer port ("peer"),
    with the fix, from the error OpenSSL raised and the certificates the dialler sent (``chain_der``, captured
    from its Certificate message). None when the handshake failed on the dialler's side (it sent an alert: it
    refused *our* certificate) or the connection simply ended."""
    ca_flag, auth_flag, give = _ROLE_FLAGS[role]
    reason = (exc.reason or "").upper()
    if "ALERT" in reason and "PEER_DID_NOT_RETURN" not in reason:
        return None  # the dialler alerted: the refusal is the dialler's, and it names it
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return None
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason or (reason == "CERTIFICATE_VERIFY_FAILED" and not chain_der):
        return (f"the {role} sent no certificate, but {auth_flag} requires one signed by {ca_flag} "
                f"{ca_file}; give the {role} a certificate and key ({give})")
    if isinstance(exc, ssl.SSLCertVerificationError) or reason == "CERTIFICATE_VERIFY_FAILED":
        verify = getattr(exc, "verify_message", "") or reason.lower()
        try:
            chain = [x509.load_der_x509_certificate(d) for d in chain_der]
        except ValueError:
            return f"the {role}'s certificate is not a readable X.509 certificate ({verify})"
        info = describe(chain[0])
        found = _client_cert_problem(chain, info, ca_file, role)
        if found is not None:
            return found
        return (f"{role} certificate '{info.common_name}' (SHA-256 {info.fingerprint}) failed verification: "
                f"{verify}; check it with 'quorumkv check certs' and the CA with {ca_flag}")
    if "UNSUPPORTED_PROTOCOL" in reason or "VERSION_TOO_LOW" in reason:
        return (f"the {role} offers only TLS versions below 1.2; this member accepts TLS 1.2 and 1.3 (as etcd "
                f"3.4): upgrade the {role}'s TLS")
    if "NO_SHARED_CIPHER" in reason:
        return (f"the {role} offers no cipher suite this member accepts (--cipher-suites limits TLS 1.2); add one "
                f"the {role} offers, or let the {role} use TLS 1.3")
    if "NO_APPLICATION_PROTOCOL" in reason:
        return f"the {role} offers no ALPN protocol this port serves (gRPC: h2)"
    return f"TLS handshake failed: {exc.reason or exc}"
