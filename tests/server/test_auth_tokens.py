"""Token providers: simple tokens (member-local, TTL renewed on use, dropped per user) and --auth-token parsing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from quorumkv.server.auth_state import AuthInfo
from quorumkv.server.auth_tokens import JwtTokens, SimpleTokens, TokenError, make_provider


def test_simple_tokens_expire_renew_on_use_and_drop_per_user() -> None:
    tokens = SimpleTokens(ttl_s=0.3)
    a, b = tokens.assign("alice", 3), tokens.assign("bob", 3)
    assert a != b and tokens.info(a, 7) == AuthInfo("alice", 7)  # the current auth revision, not the issue one
    for _ in range(3):  # each use renews it
        time.sleep(0.15)
        assert tokens.info(a, 7) is not None
    time.sleep(0.4)
    assert tokens.info(a, 7) is None and tokens.info(b, 7) is None
    c = tokens.assign("carol", 1)
    tokens.invalidate_user("carol")
    assert tokens.info(c, 1) is None and tokens.info("garbage", 1) is None


def test_auth_token_values(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / "k", tmp_path / "k.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    jwt = make_provider(f"jwt,pub-key={pub},priv-key={priv},sign-method=ES256,ttl=1m", 300)
    assert isinstance(jwt, JwtTokens) and jwt.ttl_s == 60
    token = jwt.assign("alice", 4)
    assert jwt.info(token, 9) == AuthInfo("alice", 4)  # a JWT keeps its issue revision: stale once it moves
    verifier = make_provider(f"jwt,pub-key={pub},sign-method=ES256", 300)
    assert verifier.info(token, 4) == AuthInfo("alice", 4)
    with pytest.raises(TokenError):
        verifier.assign("alice", 4)
    assert verifier.info(token[:-3] + "abc", 4) is None
    assert isinstance(make_provider("simple", 5), SimpleTokens)
    for bad in ("simple,x=1", "nope", "jwt,sign-method=RS256", "jwt,pub-key=/missing,sign-method=RS256",
                f"jwt,pub-key={pub},sign-method=XX1", f"jwt,pub-key={pub},sign-method=RS256,colour=red"):
        with pytest.raises(TokenError):
            make_provider(bad, 300)
