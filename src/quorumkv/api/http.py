"""A small asyncio HTTP/1.1 server for the metrics, health and JSON gateway listeners.

Supports what etcd's HTTP side needs and no more: persistent connections, ``Content-Length`` and chunked
request bodies (read lazily, so a streaming endpoint can consume JSON objects as they arrive),
``Expect: 100-continue``, fixed-length responses and chunked streaming responses (watch, keepalive,
snapshot). Handlers are ``async def handler(request) -> Response | StreamResponse``.

Limits: request line + headers at most 64 KiB; a body read with ``Request.read_body`` at most
``max_body_bytes`` (413 otherwise). Anything malformed gets 400 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("quorumkv.http")

MAX_HEAD_BYTES = 64 * 1024

REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    411: "Length Required", 412: "Precondition Failed", 413: "Payload Too Large", 429: "Too Many Requests",
    499: "Client Closed Request", 500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StreamResponse:
    """A chunked response: each item of ``chunks`` is written (and flushed) as one chunk."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


class Request:
    def __init__(self, method: str, target: str, version: str, headers: dict[str, str],
                 reader: asyncio.StreamReader, max_body_bytes: int, writer: asyncio.StreamWriter) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        parts = urlsplit(target)
        self.path = unquote(parts.path) or "/"
        self.query = parse_qs(parts.query, keep_blank_values=True)
        self._reader = reader
        self._writer = writer
        self.max_body_bytes = max_body_bytes
        te = headers.get("transfer-encoding", "").lower()
        self.chunked = "chunked" in te
        if self.chunked:
            self._remaining = -1
        else:
            cl = headers.get("content-length", "0").strip() or "0"
            if not cl.isdigit():
                raise HttpError(400, f"bad Content-Length {cl!r}")
            self._remaining = int(cl)
        self._body_done = not self.chunked and self._remaining == 0
        self._continue_sent = False

    @property
    def body_done(self) -> bool:
        return self._body_done

    async def _maybe_continue(self) -> None:
        if not self._continue_sent and self.headers.get("expect", "").lower() == "100-continue":
            self._continue_sent = True
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._writer.drain()

    async def read_chunk(self) -> bytes:
        """The next piece of the body; b"" once it is complete."""
        if self._body_done:
            return b""
        await self._maybe_continue()
        r = self._reader
        if not self.chunked:
            data = await r.read(min(self._remaining, 65536))
            if not data:
                raise HttpError(400, "request body ended early")
            self._remaining -= len(data)
            if self._remaining == 0:
                self._body_done = True
            return data
        line = await r.readline()
        if not line.endswith(b"\n"):
            raise HttpError(400, "chunked body ended early")
        size_s = line.split(b";", 1)[0].strip()
        try:
            size = int(size_s, 16)
        except ValueError:
            raise HttpError(400, "bad chunk size") from None
        if size == 0:
            while True:  # trailers, then the empty line
                t = await r.readline()
                if t in (b"\r\n", b"\n", b""):
                    break
            self._body_done = True
            return b""
        data = await r.readexactly(size)
        if await r.readline() not in (b"\r\n", b"\n"):
            raise HttpError(400, "bad chunk terminator")
        return data

    async def read_body(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            chunk = await self.read_chunk()
            if not chunk:
                return b"".join(parts)
            total += len(chunk)
            if total > self.max_body_bytes:
                raise HttpError(413, f"request body larger than {self.max_body_bytes} bytes")
            parts.append(chunk)

    async def wait_disconnect(self) -> None:
        """After the body: returns when the client closes the connection (for streaming endpoints)."""
        while True:
            data = await self._reader.read(65536)
            if not data:
                return


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


class HttpServer:
    """One listener. ``extra_headers`` are added to every response (etcd's CORS headers)."""

    def __init__(self, handler: Handler, *, max_body_bytes: int = 4 * 1024 * 1024,
                 extra_headers: list[tuple[str, str]] | None = None) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.extra_headers = extra_headers or []
        self._servers: list[asyncio.Server] = []
        self._conns: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None = None) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        srv = await asyncio.start_server(self._on_conn, host, port, limit=MAX_HEAD_BYTES, ssl=ssl_ctx,
                                         reuse_address=True)
        self._servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for srv in self._servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 1.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
        self._servers.clear()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a connection accepted elsewhere (the client port's front, ``api/cmux.py``) until it ends."""
        await self._on_conn(reader, writer)

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve_conn(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self._conns.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):
                pass

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # client closed between requests
            except asyncio.LimitOverrunError:
                await self._write_simple(writer, 431, b"request header too large\n", close=True)
                return
            try:
                req = self._parse_head(head, reader, writer)
            except HttpError as exc:
                await self._write_simple(writer, exc.status, exc.message.encode() + b"\n", close=True)
                return
            keep_alive = _keep_alive(req)
            try:
                resp = await self.handler(req)
            except HttpError as exc:
                resp = Response(exc.status, exc.message.encode() + b"\n")
                keep_alive = False
            if isinstance(resp, StreamResponse):
                await self._write_stream(writer, resp)
                return
            if not req.body_done:  # drain what the handler did not read, so the next request parses
                try:
                    while await req.read_chunk():
                        pass
                except HttpError:
                    keep_alive = False
            await self._write_response(writer, resp, keep_alive, head_only=req.method == "HEAD")
            if not keep_alive:
                return

    def _parse_head(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
            raise HttpError(400, "bad request") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, "malformed header line")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return Request(method, target, version, headers, reader, self.max_body_bytes, writer)

    def _head_bytes(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        out = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        for k, v in (*self.extra_headers, *headers):
            out.append(f"{k}: {v}")
        out.append(f"Date: {formatdate(usegmt=True)}")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    async def _write_simple(self, writer: asyncio.StreamWriter, status: int, body: bytes, *, close: bool) -> None:
        await self._write_response(writer, Response(status, body), not close)

    async def _write_response(self, writer: asyncio.StreamWriter, resp: Response, keep_alive: bool,
                              head_only: bool = False) -> None:
        headers = [("Content-Type", resp.content_type), *resp.headers, ("Content-Length", str(len(resp.body)))]
        if not keep_alive:
            headers.append(("Connection", "close"))
        writer.write(self._head_bytes(resp.status, headers))
        if not head_only and resp.body:
            writer.write(resp.body)
        await writer.drain()

    async def _write_stream(self, writer: asyncio.StreamWriter, resp: StreamResponse) -> None:
        headers = [("Content-Type", resp.content_type), *resp.headers, ("Transfer-Encoding", "chunked"),
                   ("Connection", "close")]
        writer.write(self._head_bytes(resp.status, headers))
        await writer.drain()
        try:
            async for chunk in resp.chunks:
                if chunk:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            aclose = getattr(resp.chunks, "aclose", None)
            if aclose is not None:
                await aclose()


def _keep_alive(req: Request) -> bool:
    conn = req.headers.get("connection", "").lower()
    if req.version == "HTTP/1.0":
        return "keep-alive" in conn
    return "close" not in conn


def text_response(status: int, text: str) -> Response:
    return Response(status, text.encode())
