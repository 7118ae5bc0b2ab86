"""How the client port's front classifies a connection from its first bytes (``api/cmux.py``)."""

from __future__ import annotations

import ssl

import pytest

from quorumkv.api.cmux import GRPC, H2_PREFACE, HTTP, classify_plain, classify_tls, client_hello_alpn


def client_hello(alpn: list[str] | None) -> bytes:
    """The first flight of a real TLS client (Python's OpenSSL), offering ``alpn``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_plain_preface_goes_to_grpc_anything_else_to_http() -> None:
    assert classify_plain(H2_PREFACE + b"\x00\x00") == GRPC
    assert classify_plain(H2_PREFACE[:10]) is None  # wait for the rest
    assert classify_plain(b"") is None
    assert classify_plain(b"GET /health HTTP/1.1\r\n") == HTTP
    assert classify_plain(b"POST") == HTTP
    assert classify_plain(b"\x16\x03\x01") == HTTP  # TLS on a plain URL: the HTTP side answers 400


@pytest.mark.parametrize(("alpn", "verdict"), [
    (["h2"], GRPC),                      # grpc-go
    (["grpc-exp", "h2"], GRPC),          # grpc-core (Python, C++), grpc-java
    (["h2", "http/1.1"], HTTP),          # curl, browsers, Go's net/http
    (["http/1.1"], HTTP),                # Python's http.client
    (None, HTTP),                        # no ALPN at all
])
def test_tls_alpn_decides(alpn: list[str] | None, verdict: str) -> None:
    hello = client_hello(alpn)
    assert client_hello_alpn(hello) == [p.encode() for p in alpn or []]
    assert classify_tls(hello) == verdict
    for cut in (1, 5, 40, len(hello) - 1):  # a ClientHello cut short: wait for more
        assert classify_tls(hello[:cut]) is None


def test_tls_hello_split_over_records_and_junk() -> None:
    hello = client_hello(["h2"])
    body = hello[5:]
    half = len(body) // 2
    split = (b"\x16\x03\x01" + half.to_bytes(2, "big") + body[:half]
             + b"\x16\x03\x01" + (len(body) - half).to_bytes(2, "big") + body[half:])
    assert client_hello_alpn(split) == [b"h2"]
    assert classify_tls(b"GET / HTTP/1.1\r\n\r\n") == HTTP  # plain HTTP on a TLS URL: the TLS side refuses it
    assert classify_tls(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") == HTTP  # not a ClientHello
    assert classify_tls(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff") == HTTP  # truncated inside
