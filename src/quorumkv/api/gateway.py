"""The JSON gateway (etcd's grpc-gateway v1 on ``/v3/...``) and the HTTP routing of the member's listeners.

Every gateway call goes through the same (instrumented) servicer objects the gRPC server uses, with a small
stand-in for the gRPC context, so validation, errors, headers and metrics are identical on both paths — as in
etcd, whose gateway is a gRPC client of the member itself.

Wire conventions (checked against etcd 3.4.23): POST with a JSON body (empty body = empty message), original
proto field names in responses (``prev_kv``, ``cluster_id``; requests accept both spellings), int64/uint64 as
strings, bytes as standard base64, default values omitted, unknown request fields ignored. Errors are
``{"error":msg,"message":msg,"code":grpc_code}`` with grpc-gateway's HTTP status. Streaming calls (watch,
keepalive, snapshot) answer chunked, one ``{"result":{...}}`` object per line; the request body of watch and
keepalive may carry several JSON objects. Once the body ends the request stream is half-closed, as
grpc-gateway's CloseSend: the answer ends when the call does (a keepalive answers each request, then ends),
and a watch -- whose servicer keeps streaming after a half-close, as etcd's -- stays open until the client
leaves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from quorumkv import ETCD_CLUSTER_VERSION, ETCD_COMPAT_VERSION
from quorumkv.api import jsonpb
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.http import HttpError, Request, Response, StreamResponse
from quorumkv.api.v3electionpb import v3election_pb2 as epb
from quorumkv.api.v3lockpb import v3lock_pb2 as lpb
from quorumkv.observability.health import Health
from quorumkv.observability.health import Response as HealthAnswer
from quorumkv.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

#: grpc-gateway v1 runtime.HTTPStatusFromCode (as etcd 3.4.23 answers: FailedPrecondition is 412).
HTTP_STATUS: dict[int, int] = {
    0: 200, 1: 408, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 412, 10: 409, 11: 400,
    12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}

#: etcd's gateway answers with these on the client URL.
CORS_HEADERS = [
    ("Access-Control-Allow-Headers", "accept, content-type, authorization"),
    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("Access-Control-Allow-Origin", "*"),
]

JSON = "application/json"

# path -> (service, method, request type, streaming kind: "" | "bidi" | "server")
ROUTES: dict[str, tuple[str, str, type[Message], str]] = {
    "/v3/kv/range": ("KV", "Range", pb.RangeRequest, ""),
    "/v3/kv/put": ("KV", "Put", pb.PutRequest, ""),
    "/v3/kv/deleterange": ("KV", "DeleteRange", pb.DeleteRangeRequest, ""),
    "/v3/kv/txn": ("KV", "Txn", pb.TxnRequest, ""),
    "/v3/kv/compaction": ("KV", "Compact", pb.CompactionRequest, ""),
    "/v3/watch": ("Watch", "Watch", pb.WatchRequest, "bidi"),
    "/v3/lease/grant": ("Lease", "LeaseGrant", pb.LeaseGrantRequest, ""),
    "/v3/lease/revoke": ("Lease", "LeaseRevoke", pb.LeaseRevokeRequest, ""),
    "/v3/kv/lease/revoke": ("Lease", "LeaseRevoke", pb.LeaseRevokeRequest, ""),
    "/v3/lease/keepalive": ("Lease", "LeaseKeepAlive", pb.LeaseKeepAliveRequest, "bidi"),
    "/v3/lease/timetolive": ("Lease", "LeaseTimeToLive", pb.LeaseTimeToLiveRequest, ""),
    "/v3/kv/lease/timetolive": ("Lease", "LeaseTimeToLive", pb.LeaseTimeToLiveRequest, ""),
    "/v3/lease/leases": ("Lease", "LeaseLeases", pb.LeaseLeasesRequest, ""),
    "/v3/kv/lease/leases": ("Lease", "LeaseLeases", pb.LeaseLeasesRequest, ""),
    "/v3/cluster/member/add": ("Cluster", "MemberAdd", pb.MemberAddRequest, ""),
    "/v3/cluster/member/remove": ("Cluster", "MemberRemove", pb.MemberRemoveRequest, ""),
    "/v3/cluster/member/update": ("Cluster", "MemberUpdate", pb.MemberUpdateRequest, ""),
    "/v3/cluster/member/list": ("Cluster", "MemberList", pb.MemberListRequest, ""),
    "/v3/cluster/member/promote": ("Cluster", "MemberPromote", pb.MemberPromoteRequest, ""),
    "/v3/maintenance/alarm": ("Maintenance", "Alarm", pb.AlarmRequest, ""),
    "/v3/maintenance/status": ("Maintenance", "Status", pb.StatusRequest, ""),
    "/v3/maintenance/defragment": ("Maintenance", "Defragment", pb.DefragmentRequest, ""),
    "/v3/maintenance/hash": ("Maintenance", "Hash", pb.HashRequest, ""),
    "/v3/maintenance/snapshot": ("Maintenance", "Snapshot", pb.SnapshotRequest, "server"),
    "/v3/maintenance/transfer-leadership": ("Maintenance", "MoveLeader", pb.MoveLeaderRequest, ""),
    "/v3/auth/enable": ("Auth", "AuthEnable", pb.AuthEnableRequest, ""),
    "/v3/auth/disable": ("Auth", "AuthDisable", pb.AuthDisableRequest, ""),
    "/v3/auth/status": ("Auth", "AuthStatus", pb.AuthStatusRequest, ""),
    "/v3/auth/authenticate": ("Auth", "Authenticate", pb.AuthenticateRequest, ""),
    "/v3/auth/user/add": ("Auth", "UserAdd", pb.AuthUserAddRequest, ""),
    "/v3/auth/user/get": ("Auth", "UserGet", pb.AuthUserGetRequest, ""),
    "/v3/auth/user/list": ("Auth", "UserList", pb.AuthUserListRequest, ""),
    "/v3/auth/user/delete": ("Auth", "UserDelete", pb.AuthUserDeleteRequest, ""),
    "/v3/auth/user/changepw": ("Auth", "UserChangePassword", pb.AuthUserChangePasswordRequest, ""),
    "/v3/auth/user/grant": ("Auth", "UserGrantRole", pb.AuthUserGrantRoleRequest, ""),
    "/v3/auth/user/revoke": ("Auth", "UserRevokeRole", pb.AuthUserRevokeRoleRequest, ""),
    "/v3/auth/role/add": ("Auth", "RoleAdd", pb.AuthRoleAddRequest, ""),
    "/v3/auth/role/get": ("Auth", "RoleGet", pb.AuthRoleGetRequest, ""),
    "/v3/auth/role/list": ("Auth", "RoleList", pb.AuthRoleListRequest, ""),
    "/v3/auth/role/delete": ("Auth", "RoleDelete", pb.AuthRoleDeleteRequest, ""),
    "/v3/auth/role/grant": ("Auth", "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest, ""),
    "/v3/auth/role/revoke": ("Auth", "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest, ""),
}


# -- etcd's v3lock and v3election services (api/concurrency.py) ------------------------------------------
# "wait": a unary call that may wait for long (a lock, a campaign): abandoned, as a cancelled gRPC call, when
# the HTTP client goes away; "observe": a server stream ended the same way.
ROUTES.update({
    "/v3/lock/lock": ("Lock", "Lock", lpb.LockRequest, "wait"),
    "/v3/lock/unlock": ("Lock", "Unlock", lpb.UnlockRequest, ""),
    "/v3/election/campaign": ("Election", "Campaign", epb.CampaignRequest, "wait"),
    "/v3/election/proclaim": ("Election", "Proclaim", epb.ProclaimRequest, ""),
    "/v3/election/leader": ("Election", "Leader", epb.LeaderRequest, ""),
    "/v3/election/observe": ("Election", "Observe", epb.LeaderRequest, "observe"),
    "/v3/election/resign": ("Election", "Resign", epb.ResignRequest, ""),
})


async def _call_until_gone(req: Request, method: Callable[[Any, Any], Awaitable[Message]], message: Message,
                           ctx: GatewayContext) -> Message | None:
    """``method(message, ctx)``, cancelled if the client closes the connection first (then None)."""
    call = asyncio.ensure_future(method(message, ctx))
    gone = asyncio.ensure_future(req.wait_disconnect())
    try:
        done, _ = await asyncio.wait([call, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if call in done:
        return call.result()
    call.cancel()
    await asyncio.wait([call])
    return None


def _observe_until_gone(req: Request, responses: AsyncIterator[Message]) -> tuple[AsyncIterator[Message],
                                                                                    asyncio.Event]:
    """``responses`` and the event set when the client closes the connection."""
    gone = asyncio.Event()

    async def watch_connection() -> None:
        await req.wait_disconnect()
        gone.set()

    watcher = asyncio.ensure_future(watch_connection())

    async def stream() -> AsyncIterator[Message]:
        try:
            async for msg in responses:
                yield msg
        finally:
            watcher.cancel()
            aclose: Callable[[], Awaitable[None]] | None = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    return stream(), gone


class GatewayAbort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GatewayContext:
    """What the servicers use of ``grpc.aio.ServicerContext``."""

    def __init__(self, peer: str = "", token: str | None = None) -> None:
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._peer = peer
        #: The ``Authorization`` header: grpc-gateway hands it to the server as ``authorization`` metadata.
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", token),) if token is not None else ()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code, self._details = code, details
        raise GatewayAbort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    async def send_initial_metadata(self, metadata: Any) -> None:
        return None

    def set_trailing_metadata(self, metadata: Any) -> None:
        return None


def to_json(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(code: int, message: str) -> bytes:
    return dumps({"error": message, "message": message, "code": code})


def error_response(code: int, message: str) -> Response:
    return Response(HTTP_STATUS.get(code, 500), error_body(code, message), JSON)


def _code_value(code: grpc.StatusCode | None) -> int:
    return int(code.value[0]) if code is not None else 2


def parse_message(data: Any, cls: type[Message]) -> Message:
    """A decoded JSON body as ``cls``, with etcd's gateway rules (strict base64, typed numbers, named enums);
    raises :class:`~quorumkv.api.jsonpb.DecodeError` with etcd's message."""
    return jsonpb.parse_message(data, cls)


class _ObjectReader:
    """Splits a streamed request body into JSON values as they arrive."""

    def __init__(self, req: Request) -> None:
        self.req = req
        self.buf = ""
        self._pending = b""

    async def next(self) -> Any | None:
        """The next JSON value, or None at the end of the body. Raises ValueError on malformed JSON."""
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    obj, end = jsonpb.decode_value(text)
                except jsonpb.DecodeError:
                    if self.req.body_done:
                        raise
                else:
                    self.buf = text[end:]
                    return obj
            elif self.req.body_done:
                return None
            chunk = await self.req.read_chunk()
            if chunk:
                data = self._pending + chunk
                try:
                    self.buf = text + data.decode()
                    self._pending = b""
                except UnicodeDecodeError:  # a multi-byte character split across chunks
                    self._pending = data
                    self.buf = text


class Gateway:
    """Routes for the member's HTTP listeners."""

    def __init__(self, servicers: dict[str, Any], health: Health, render_metrics: Callable[[], bytes]) -> None:
        self.servicers = servicers
        self.health = health
        self.render_metrics = render_metrics

    # -- listeners ----------------------------------------------------------------------------------------

    async def metrics_handler(self, req: Request) -> Response | StreamResponse:
        """``--listen-metrics-urls``: /metrics and the health endpoints."""
        resp = await self._common(req)
        return resp if resp is not None else Response(404, b"404 page not found\n")

    async def client_handler(self, req: Request) -> Response | StreamResponse:
        """``--listen-client-http-urls``: the gateway, /version, /metrics and the health endpoints."""
        resp = await self._common(req)
        if resp is not None:
            return resp
        path = req.path
        if path == "/version":
            if req.method not in ("GET", "HEAD"):
                return Response(405, b"Method Not Allowed")
            return Response(200, dumps({"etcdserver": ETCD_COMPAT_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION}),
                            JSON)
        if path.startswith("/v3/"):
            return await self.gateway(req)
        return Response(404, b"404 page not found\n")

    async def _common(self, req: Request) -> Response | None:
        path = req.path
        if path == "/metrics":
            return Response(200, self.render_metrics(), METRICS_CONTENT_TYPE)
        if path == "/health":
            return _http_response(await self.health.handle_health(req))
        if path in ("/livez", "/readyz") or path.startswith(("/livez/", "/readyz/")):
            return _http_response(await self.health.handle_probe(req))
        return None

    # -- /v3 ----------------------------------------------------------------------------------------------

    async def gateway(self, req: Request) -> Response | StreamResponse:
        route = ROUTES.get(req.path.rstrip("/") or "/")
        if route is None:
            return Response(404, b"Not Found\n")
        if req.method == "OPTIONS":
            return Response(200, b"")
        if req.method != "POST":
            return Response(405, b"Method Not Allowed\n")
        service, method_name, req_cls, streaming = route
        servicer = self.servicers.get(service)
        method = getattr(servicer, method_name, None) if servicer is not None else None
        if method is None:
            return error_response(12, f"unknown service etcdserverpb.{service}")
        if streaming == "bidi":
            return await self._bidi(req, method, req_cls)
        try:
            body = await req.read_body()
            message = parse_message(jsonpb.loads(body) if body.strip() else {}, req_cls)
        except HttpError:
            raise
        except jsonpb.DecodeError as exc:
            return error_response(3, str(exc))
        ctx = GatewayContext(token=_authorization(req))
        if streaming == "server":
            return StreamResponse(self._stream_out(method(message, ctx), ctx), headers=_STREAM_HEADERS)
        if streaming == "observe":
            changes, gone = _observe_until_gone(req, method(message, ctx))
            return StreamResponse(self._stream_out(changes, ctx, gone), headers=_STREAM_HEADERS)
        try:
            if streaming == "wait":
                waited = await _call_until_gone(req, method, message, ctx)
                if waited is None:
                    return error_response(1, "context canceled")
                resp = waited
            else:
                resp = await method(message, ctx)
        except GatewayAbort as exc:
            return error_response(_code_value(exc.code), exc.message)
        except NotImplementedError:
            return error_response(_code_value(ctx.code() or grpc.StatusCode.UNIMPLEMENTED),
                                  ctx.details() or "Method not implemented!")
        return Response(200, dumps(to_json(resp)), JSON)

    async def _bidi(self, req: Request, method: Callable[[Any, Any], AsyncIterator[Message]],
                    req_cls: type[Message]) -> Response | StreamResponse:
        objects = _ObjectReader(req)
        try:  # the first request is read before answering, so a bad body gets a plain error (as etcd)
            first = await objects.next()
            if first is not None and not isinstance(first, dict):
                raise jsonpb.DecodeError(f"json: cannot unmarshal {type(first).__name__} into a request object")
            # an empty body sends no request at all (etcd: a keepalive answers nothing and ends)
            first_msg = parse_message(first, req_cls) if first is not None else None
        except HttpError:
            raise
        except jsonpb.DecodeError as exc:
            return error_response(2, str(exc))

        async def requests() -> AsyncIterator[Message]:
            if first_msg is not None:  # None: nothing was sent, the request stream is closed at once
                yield first_msg
            while first_msg is not None:
                try:
                    obj = await objects.next()
                except (jsonpb.DecodeError, HttpError):
                    break
                if obj is None or not isinstance(obj, dict):
                    break
                try:
                    yield parse_message(obj, req_cls)
                except jsonpb.DecodeError:
                    break
            # the body has ended: the request stream half-closes here (grpc-gateway's CloseSend), and from
            # now on the connection is only watched for the client going away
            watcher.append(asyncio.ensure_future(_set_when_gone(req, gone)))

        ctx = GatewayContext(token=_authorization(req))
        gone = asyncio.Event()
        watcher: list[asyncio.Future[None]] = []
        return StreamResponse(self._stream_out(method(requests(), ctx), ctx, gone, watcher),
                              headers=_STREAM_HEADERS)

    async def _stream_out(self, responses: AsyncIterator[Message], ctx: GatewayContext,
                          gone: asyncio.Event | None = None,
                          watcher: list[asyncio.Future[None]] | None = None) -> AsyncIterator[bytes]:
        """The responses as chunks, until they end or (``gone``) the client closes the connection -- which a
        gRPC client's cancel would tell the servicer, so its generator is closed then, as a cancel closes it."""
        try:
            try:
                async for msg in _until(responses, gone):
                    yield dumps({"result": to_json(msg)}) + b"\n"
            except GatewayAbort as exc:
                yield _stream_error(_code_value(exc.code), exc.message)
            except NotImplementedError:
                yield _stream_error(_code_value(ctx.code() or grpc.StatusCode.UNIMPLEMENTED),
                                    ctx.details() or "Method not implemented!")
        finally:
            for task in watcher or ():
                task.cancel()
            aclose: Callable[[], Awaitable[None]] | None = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()


_STREAM_HEADERS = [("Grpc-Metadata-Content-Type", "application/grpc")]


async def _until(responses: AsyncIterator[Message], gone: asyncio.Event | None) -> AsyncIterator[Message]:
    """``responses`` until they end, or until ``gone`` is set (then the pending read is cancelled)."""
    if gone is None:
        async for msg in responses:
            yield msg
        return
    it = responses.__aiter__()
    stop = asyncio.ensure_future(gone.wait())
    try:
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait([nxt, stop], return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()  # and let the cancel land, so the generator can be closed next (bounded wait)
                await asyncio.wait([nxt], timeout=5.0)
                if nxt.done() and not nxt.cancelled():
                    nxt.exception()  # retrieved: a late error of a call the client has left is not reported
                return
            try:
                yield nxt.result()
            except StopAsyncIteration:
                return
    finally:
        stop.cancel()


async def _set_when_gone(req: Request, gone: asyncio.Event) -> None:
    try:
        await req.wait_disconnect()
    except (ConnectionError, OSError):
        pass
    gone.set()


def _authorization(req: Request) -> str | None:
    for name, value in req.headers.items():
        if name.lower() == "authorization":
            return str(value)
    return None


def _stream_error(code: int, message: str) -> bytes:
    """grpc-gateway v1's in-stream error object."""
    status = HTTP_STATUS.get(code, 500)
    from quorumkv.api.http import REASONS

    return dumps({"error": {"grpc_code": code, "http_code": status, "message": message,
                            "http_status": REASONS.get(status, "Unknown")}}) + b"\n"


def _http_response(answer: HealthAnswer) -> Response:
    return Response(answer.status, answer.body, headers=list(answer.headers))
