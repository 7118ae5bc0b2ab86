"""The managed cluster's token format, certificates and flags (security/cluster_pki.py, server/join.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from quorumkv.cli.token import main as token_main
from quorumkv.security import cluster_pki as pki
from quorumkv.server.config import ConfigError
from quorumkv.server.config_sources import load_config
from quorumkv.server.join import managed_config, must_match, settings_mismatch
from quorumkv.server.settings import ServerSettings


def test_token_formats() -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n"
    full = pki.format_token(ca, "s3cret")
    assert full == f"K10{hashlib.sha256(ca).hexdigest()}::server:s3cret"
    assert pki.parse_token(full) == pki.Token(hashlib.sha256(ca).hexdigest(), "s3cret")
    assert pki.parse_token("  bare-secret\n") == pki.Token("", "bare-secret")
    assert not pki.parse_token("K10::server:x").pinned
    for bad, why in (("", "empty"), ("K10abc::server:x", "64 hex digits"), ("K10" + "0" * 64 + "::server:", "server:"),
                     ("K10" + "0" * 64 + "::node:x", "cannot join servers"), ("two words", "whitespace")):
        with pytest.raises(pki.TokenError, match=why):
            pki.parse_token(bad)
    assert pki.secret_matches("a", "a") and not pki.secret_matches("a", "b")


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def test_member_certificates_are_reissued_when_names_change(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    ca = pki.make_ca(tls)
    assert pki.ensure_member_certs(tls, "m1", ["10.0.0.1"], ["10.0.0.1"], [])
    chain = x509.load_pem_x509_certificates((tls / pki.SERVER_CERT).read_bytes())
    assert len(chain) == 2 and chain[1] == ca.cert  # the leaf, then the CA a joiner pins by hash
    assert pki.ca_from_chain([c.public_bytes(Encoding.DER) for c in chain]) == ca.pem
    chain[0].verify_directly_issued_by(ca.cert)
    assert not pki.ensure_member_certs(tls, "m1", ["10.0.0.1"], ["10.0.0.1"], [])  # nothing changed
    assert pki.ensure_member_certs(tls, "m1", ["10.0.0.1"], ["10.0.0.1"], ["kv.example.test"])
    sans = _leaf(tls / pki.PEER_CERT).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kv.example.test" in sans.get_values_for_type(x509.DNSName)
    eku = _leaf(tls / pki.CLIENT_CERT).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_flags_are_validated() -> None:
    def err(flags: dict[str, str]) -> str:
        with pytest.raises(ConfigError) as e:
            load_config(flags, {})
        return e.value.message

    assert "cannot be used together" in err({"cluster-init": "true", "server": "https://127.0.0.1:2379",
                                             "token": "x"})
    assert "must be a member's client URL https://host:port" in err({"server": "http://127.0.0.1:2379",
                                                                      "token": "x"})
    assert "needs the cluster's token" in err({"server": "https://127.0.0.1:2379"})
    assert "either --token" in err({"token": "a", "token-file": "/x"})
    assert "DNS name or an IP" in err({"tls-san": "a b"})
    cfg = load_config({"server": "https://127.0.0.1:2379"}, {"QUORUMKV_TOKEN": "abc"}).config
    assert cfg.token == "abc" and cfg.learner_stall_timeout_ms == 600_000


def test_managed_config_serves_http_urls_over_tls(tmp_path: Path) -> None:
    cfg = load_config({"name": "n", "listen-client-urls": "http://127.0.0.1:2379",
                       "advertise-client-urls": "http://127.0.0.1:2379", "listen-peer-urls": "http://127.0.0.1:2380",
                       "initial-advertise-peer-urls": "http://127.0.0.1:2380"}, {}).config
    out = managed_config(cfg, tmp_path)
    assert out.listen_client_urls == ["https://127.0.0.1:2379"] and out.advertise_client_urls[0].startswith("https")
    assert out.initial_advertise_peer_urls == ["https://127.0.0.1:2380"] and out.peer_client_cert_auth
    assert out.initial_cluster == "n=https://127.0.0.1:2380"
    assert out.cert_file == str(tmp_path / pki.SERVER_CERT)


def test_must_match_names_the_setting() -> None:
    ours = must_match(ServerSettings(heartbeat_interval_ms=100, election_timeout_ms=1000))
    assert settings_mismatch(ours, dict(ours)) is None
    theirs = dict(ours, **{"--heartbeat-interval": 200})
    assert settings_mismatch(ours, theirs) == ("--heartbeat-interval differs: the cluster uses 100, the joining "
                                               "member 200; start it with --heartbeat-interval=100")


def test_token_show_and_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert token_main(["show", "--data-dir", str(tmp_path)]) == 1
    assert "no token in" in capsys.readouterr().err
    assert token_main(["rotate", "--data-dir", str(tmp_path)]) == 1
    ca = pki.make_ca(tmp_path / "tls")
    assert token_main(["rotate", "--data-dir", str(tmp_path), "--new-token", "fresh"]) == 0
    assert capsys.readouterr().out.strip() == pki.format_token(ca.pem, "fresh")
    assert token_main(["show", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == pki.format_token(ca.pem, "fresh")
    assert token_main(["rotate", "--data-dir", str(tmp_path)]) == 0
    assert pki.parse_token(capsys.readouterr().out).secret != "fresh"


def test_prepare_member_cluster_init_and_interrupted_join(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quorumkv.server.join import JoinError, prepare_member
    from quorumkv.storage.datadir import open_data_dir

    first = tmp_path / "first"
    cfg = load_config({"data-dir": str(first), "cluster-init": "true", "token": "chosen"}, {}).config
    out, managed = prepare_member(cfg)
    assert managed is not None and out.listen_client_urls == ["https://localhost:2379"]
    assert pki.parse_token((first / "token").read_text()) == pki.Token(
        pki.ca_hash((first / "tls" / "ca.crt").read_bytes()), "chosen")
    assert "join token written to" in capsys.readouterr().out
    again, _ = prepare_member(load_config({"data-dir": str(first)}, {}).config)  # a restart: nothing changes
    assert again.cert_file == out.cert_file and (first / "token").read_text().endswith(":chosen\n")

    broken = tmp_path / "broken"
    open_data_dir(broken).close()
    pki.make_ca(broken / "tls")
    (broken / "tls" / "joining").touch()
    with pytest.raises(JoinError, match="a join that did not finish"):
        prepare_member(load_config({"data-dir": str(broken)}, {}).config)


def test_bootstrap_record_opens_only_with_its_secret(tmp_path: Path) -> None:
    ca = pki.make_ca(tmp_path / "tls")
    record = pki.seal_bootstrap("s3cret", ca.pem, ca.key_pem)
    assert b"PRIVATE KEY" not in record and b"s3cret" not in record
    assert pki.open_bootstrap("s3cret", record) == (ca.pem, ca.key_pem)
    assert pki.seal_bootstrap("s3cret", ca.pem, ca.key_pem) != record  # fresh salt and nonce each time
    with pytest.raises(pki.BootstrapError, match="cannot be decrypted"):
        pki.open_bootstrap("other", record)
    doc = json.loads(record)
    data = bytearray(base64.b64decode(doc["data"]))
    data[0] ^= 1
    doc["data"] = base64.b64encode(bytes(data)).decode()
    with pytest.raises(pki.BootstrapError, match="cannot be decrypted"):
        pki.open_bootstrap("s3cret", json.dumps(doc).encode())
    for junk in (b"", b"[]", b'{"version": 2}', b'{"version": 1, "kdf": "pbkdf2-sha256"}'):
        with pytest.raises(pki.BootstrapError):
            pki.open_bootstrap("s3cret", junk)
    key = pki.bootstrap_key("s3cret")
    assert key.startswith(b"/bootstrap/") and len(key) == len(b"/bootstrap/") + 12
    assert pki.bootstrap_key("other") != key
