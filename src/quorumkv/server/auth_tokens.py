"""etcd's auth token providers: ``simple`` (random, kept in this member's memory with a TTL) and ``jwt``.

``--auth-token simple`` (the default): a token is 16 random letters, a dot and a sequence number; it names a
user, is valid only on the member that issued it, expires ``--auth-token-ttl`` seconds after its last use, and is
dropped when auth is disabled or its user is deleted or changes password. It carries no auth revision: a check
uses the current one (as etcd's simple tokens).

``--auth-token jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m``: a signed JWT holding the user name and
the auth revision at issue time; any member with the public key verifies it, and it goes stale (``revision of
auth store is old``) as soon as the auth revision moves on.
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass
from typing import Any, Protocol

from quorumkv.server.auth_state import AuthInfo
from quorumkv.server.durations import parse_duration_ns


class TokenError(ValueError):
    """An ``--auth-token`` value etcd would refuse; the message names what is wrong."""


class TokenProvider(Protocol):
    def assign(self, username: str, revision: int) -> str: ...
    def info(self, token: str, current_revision: int) -> AuthInfo | None: ...
    def invalidate_user(self, username: str) -> None: ...
    def clear(self) -> None: ...


_LETTERS = string.ascii_letters


class SimpleTokens:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expiry on the monotonic clock)
        self._seq = 0

    def assign(self, username: str, revision: int) -> str:
        self._seq += 1
        token = "".join(secrets.choice(_LETTERS) for _ in range(16)) + f".{self._seq}"
        self._expire()
        self._tokens[token] = (username, time.monotonic() + self.ttl_s)
        return token

    def info(self, token: str, current_revision: int) -> AuthInfo | None:
        entry = self._tokens.get(token)
        now = time.monotonic()
        if entry is None or entry[1] <= now:
            self._tokens.pop(token, None)
            return None
        self._tokens[token] = (entry[0], now + self.ttl_s)  # each use renews it (etcd's resetSimpleToken)
        return AuthInfo(entry[0], current_revision)

    def invalidate_user(self, username: str) -> None:
        for token, (user, _) in list(self._tokens.items()):
            if user == username:
                del self._tokens[token]

    def clear(self) -> None:
        self._tokens.clear()

    def _expire(self) -> None:
        now = time.monotonic()
        for token, (_, exp) in list(self._tokens.items()):
            if exp <= now:
                del self._tokens[token]


_JWT_METHODS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                "HS256", "HS384", "HS512")


@dataclass
class JwtTokens:
    sign_method: str
    public_key: Any
    private_key: Any
    ttl_s: float

    def assign(self, username: str, revision: int) -> str:
        import jwt

        if self.private_key is None:
            raise TokenError("this member has no --auth-token priv-key: it verifies JWT tokens but cannot issue them")
        claims = {"username": username, "revision": revision, "exp": int(time.time() + self.ttl_s)}
        return str(jwt.encode(claims, self.private_key, algorithm=self.sign_method))

    def info(self, token: str, current_revision: int) -> AuthInfo | None:
        import jwt

        try:
            claims = jwt.decode(token, self.public_key, algorithms=[self.sign_method])
        except jwt.PyJWTError:
            return None
        username, revision = claims.get("username"), claims.get("revision")
        if not isinstance(username, str) or not isinstance(revision, int):
            return None
        return AuthInfo(username, revision)

    def invalidate_user(self, username: str) -> None:
        pass  # a JWT is stateless; the auth revision makes it stale instead

    def clear(self) -> None:
        pass


def make_provider(spec: str, ttl_s: float, *, load_keys: bool = True) -> TokenProvider:
    """Parse ``--auth-token`` (etcd's syntax) into a provider; raises TokenError naming the problem.

    ``load_keys=False`` checks the syntax only (configuration validation) and returns a provider without keys."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    kind = parts[0] if parts else "simple"
    if kind == "simple":
        if len(parts) > 1:
            raise TokenError("--auth-token simple takes no options")
        return SimpleTokens(ttl_s)
    if kind != "jwt":
        raise TokenError(f"--auth-token: unknown token type {kind!r} (etcd knows 'simple' and 'jwt')")
    opts: dict[str, str] = {}
    for p in parts[1:]:
        if "=" not in p:
            raise TokenError(f"--auth-token jwt: option {p!r} is not key=value")
        k, v = p.split("=", 1)
        if k not in ("pub-key", "priv-key", "sign-method", "ttl"):
            raise TokenError(f"--auth-token jwt: unknown option {k!r} (pub-key, priv-key, sign-method, ttl)")
        opts[k] = v
    method = opts.get("sign-method", "")
    if method not in _JWT_METHODS:
        raise TokenError(f"--auth-token jwt: sign-method {method!r} is not one of {', '.join(_JWT_METHODS)}")
    jwt_ttl = parse_duration_ns(opts["ttl"]) / 1e9 if "ttl" in opts else 300.0
    from cryptography.hazmat.primitives import serialization

    def read(path: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise TokenError(f"--auth-token jwt: cannot read {path!r}: {exc.strerror}") from None

    if not load_keys:
        if not method.startswith("HS") and "pub-key" not in opts:
            raise TokenError("--auth-token jwt: pub-key=PATH is required")
        return JwtTokens(method, None, None, jwt_ttl)
    if method.startswith("HS"):
        key = read(opts.get("priv-key") or opts.get("pub-key") or "")
        return JwtTokens(method, key, key, jwt_ttl)
    if "pub-key" not in opts:
        raise TokenError("--auth-token jwt: pub-key=PATH is required")
    pub_pem = read(opts["pub-key"])
    priv_pem = read(opts["priv-key"]) if "priv-key" in opts else None
    try:
        public = serialization.load_pem_public_key(pub_pem)
        private = serialization.load_pem_private_key(priv_pem, password=None) if priv_pem is not None else None
    except (ValueError, TypeError) as exc:
        raise TokenError(f"--auth-token jwt: cannot load a key: {exc}") from None
    return JwtTokens(method, public, private, jwt_ttl)
