"""gRPC servicers for etcd's KV, Watch, Lease, Maintenance and Cluster services.

Each handler is thin: validate → call the server → map errors → fill the response header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc

from quorumkv import errors
from quorumkv.api import validate
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.errors import EtcdError
from quorumkv.security.tls_front import verified_common_name
from quorumkv.server.auth_state import AuthInfo
from quorumkv.server.interfaces import (
    Authorizer,
    AuthService,
    ClusterService,
    KVService,
    LeaseService,
    MaintenanceService,
    Member,
    WatchService,
)

log = logging.getLogger("quorumkv.api")



async def abort(context: Any, err: EtcdError) -> NoReturn:
    await context.abort(grpc.StatusCode[err.code], err.message)
    raise AssertionError("unreachable")  # pragma: no cover


async def abort_unexpected(context: Any, exc: BaseException) -> NoReturn:
    log.exception("unexpected error serving a request")
    await context.abort(grpc.StatusCode.INTERNAL, f"quorumkv: internal error: {exc!r}")
    raise AssertionError("unreachable")  # pragma: no cover


def caller(context: Any) -> tuple[str | None, str | None]:
    """The request's auth token (``token`` metadata, or ``authorization`` as etcd also reads) and the common
    name of its verified client certificate (None when there is none)."""
    token = None
    for key, value in context.invocation_metadata() or ():
        if key == "token":
            token = value
            break
        if key == "authorization" and token is None:
            token = value
    common_name = None
    auth_context = getattr(context, "auth_context", None)
    if auth_context is not None:
        try:
            names = auth_context().get("x509_common_name") or []
            if names:
                common_name = bytes(names[0]).decode("utf-8", "replace")
        except Exception:  # no TLS peer: no name
            common_name = None
    if common_name is None:  # TLS terminated by the client port's front (security/tls_front.py)
        with contextlib.suppress(Exception):
            common_name = verified_common_name(context.peer())
    return token, common_name


def auth_info(s: Authorizer, context: Any) -> AuthInfo | None:
    """Who is calling (None while auth is disabled or nobody is named); raises ``invalid auth token``."""
    if not s.auth_enabled:
        return None
    token, common_name = caller(context)
    return s.auth_info(token, common_name)


class KVServicer(pb_grpc.KVServicer):
    def __init__(self, server: KVService) -> None:
        self.s = server

    async def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        try:
            validate.check_range(request)
            if not request.serializable:
                await self.s.read_barrier()
            if self.s.auth_enabled:  # after the barrier, as etcd: the auth state is at least as new as the read
                self.s.authorize_range(auth_info(self.s, context), request)
            resp = self.s.range(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        try:
            validate.check_put(request)
            info = None
            if self.s.auth_enabled:
                info = auth_info(self.s, context)
                self.s.authorize_put(info, request)
            resp = await self.s.put(request, info)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def DeleteRange(self, request: pb.DeleteRangeRequest, context: Any
                          ) -> pb.DeleteRangeResponse:
        try:
            validate.check_delete(request)
            info = None
            if self.s.auth_enabled:
                info = auth_info(self.s, context)
                self.s.authorize_delete(info, request)
            resp = await self.s.delete_range(request, info)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        try:
            validate.check_txn(request, self.s.max_txn_ops)
            validate.check_txn_intervals(request)
            info = None
            if self.s.auth_enabled:
                info = auth_info(self.s, context)
                self.s.authorize_txn(info, request)
            resp = await self.s.txn(request, info)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def Compact(self, request: pb.CompactionRequest, context: Any
                      ) -> pb.CompactionResponse:
        try:
            auth_info(self.s, context)  # etcd checks only that a given token is valid
            resp = await self.s.compact(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp


class WatchServicer(pb_grpc.WatchServicer):
    def __init__(self, server: WatchService) -> None:
        self.s = server

    async def Watch(self, request_iterator: AsyncIterator[pb.WatchRequest], context: Any
                    ) -> AsyncIterator[pb.WatchResponse]:
        hub = self.s.hub
        assert hub is not None
        s = self.s
        require_leader = _requires_leader(context)
        if require_leader and not s.has_leader:
            await abort(context, errors.NO_LEADER)
        stream = hub.new_stream()

        async def receive() -> None:
            """Requests until the client half-closes. As etcd, a half-closed stream keeps its watchers and goes
            on sending events until the client cancels the call; only a broken stream ends them here."""
            try:
                async for req in request_iterator:
                    which = req.WhichOneof("request_union")
                    if which == "create_request":
                        if s.auth_enabled and not _watch_permitted(s, context, req.create_request):
                            stream.send(pb.WatchResponse(header=stream.header(hub.last_rev), watch_id=-1,
                                                         created=True, canceled=True,
                                                         cancel_reason=_WATCH_DENIED))
                            continue
                        stream.create(req.create_request)
                    elif which == "cancel_request":
                        stream.cancel(req.cancel_request.watch_id)
                    elif which == "progress_request":
                        stream.request_progress()
            except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.AbortError):
                stream.close()  # AbortError: an undecodable request ended the call (tolerant_handler)
            except Exception:  # a malformed stream must not take the server down
                log.exception("watch stream receive failed")
                stream.close()

        receiver = asyncio.get_running_loop().create_task(receive())
        leaderless_checks = 0
        try:
            while True:
                if require_leader:
                    try:
                        resp = await asyncio.wait_for(stream.queue.get(), s.no_leader_check_s)
                    except TimeoutError:
                        # etcd's monitorLeader: a hasleader stream ends after NO_LEADER_CHECKS election timeouts
                        # without a leader (new ones are refused at once, above)
                        leaderless_checks = 0 if s.has_leader else leaderless_checks + 1
                        if leaderless_checks >= NO_LEADER_CHECKS:
                            await abort(context, errors.NO_LEADER)
                        continue
                else:
                    resp = await stream.queue.get()
                if resp is None:
                    break
                yield resp
        finally:
            receiver.cancel()
            stream.close()


#: etcd's maxNoLeaderCnt: election timeouts without a leader before a ``hasleader`` watch stream is ended.
NO_LEADER_CHECKS = 3


def _requires_leader(context: Any) -> bool:
    """clientv3.WithRequireLeader: the ``hasleader`` metadata key set to ``true``."""
    return any(key == "hasleader" and value == "true" for key, value in context.invocation_metadata() or ())


def _watch_permitted(s: Authorizer, context: Any, req: pb.WatchCreateRequest) -> bool:
    try:
        info = auth_info(s, context)
    except EtcdError:
        return False
    return s.watch_permitted(info, req)


#: etcd 3.4 puts the whole gRPC status text of ErrGRPCPermissionDenied in a denied watch's cancel reason.
_WATCH_DENIED = f"rpc error: code = PermissionDenied desc = {errors.PERMISSION_DENIED.message}"

#: etcd's auth package errors as they read before v3rpc translates them (what authMaintenanceServer returns).
_AUTH_RAW = {
    errors.PERMISSION_DENIED.message: "auth: permission denied",
    errors.USER_EMPTY.message: "auth: user name is empty",
    errors.USER_NOT_FOUND.message: "auth: user name not found",
    errors.INVALID_AUTH_TOKEN.message: "auth: invalid auth token",
}


class LeaseServicer(pb_grpc.LeaseServicer):
    def __init__(self, server: LeaseService) -> None:
        self.s = server

    async def LeaseGrant(self, request: pb.LeaseGrantRequest, context: Any
                         ) -> pb.LeaseGrantResponse:
        try:
            auth_info(self.s, context)  # etcd checks only that a given token is valid
            resp = await self.s.lease_grant(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def LeaseRevoke(self, request: pb.LeaseRevokeRequest, context: Any
                          ) -> pb.LeaseRevokeResponse:
        try:
            if self.s.auth_enabled:
                self.s.authorize_lease_revoke(auth_info(self.s, context), request.ID)
            resp = await self.s.lease_revoke(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def LeaseKeepAlive(self, request_iterator: AsyncIterator[pb.LeaseKeepAliveRequest],
                             context: Any) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        async for req in request_iterator:
            try:
                ttl = await self.s.lease_renew(req.ID)
            except EtcdError as err:
                await abort(context, err)
            resp = pb.LeaseKeepAliveResponse(ID=req.ID, TTL=ttl)
            resp.header.revision = self.s.current_revision
            self.s.fill_header(resp.header)
            yield resp

    async def LeaseTimeToLive(self, request: pb.LeaseTimeToLiveRequest, context: Any
                              ) -> pb.LeaseTimeToLiveResponse:
        try:
            resp = await self.s.lease_time_to_live(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def LeaseLeases(self, request: pb.LeaseLeasesRequest, context: Any
                          ) -> pb.LeaseLeasesResponse:
        resp = self.s.lease_leases()
        self.s.fill_header(resp.header)
        return resp


class MaintenanceServicer(pb_grpc.MaintenanceServicer):
    def __init__(self, server: MaintenanceService) -> None:
        self.s = server

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        resp = self.s.status()
        self.s.fill_header(resp.header)
        return resp

    async def Alarm(self, request: pb.AlarmRequest, context: Any) -> pb.AlarmResponse:
        try:
            resp = await self.s.alarm(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def _admin(self, context: Any) -> None:
        """etcd 3.4's authMaintenanceServer: root only, and its errors reach the client untranslated (gRPC
        Unknown, ``auth: ...``)."""
        if self.s.auth_enabled:
            try:
                self.s.authorize_admin(auth_info(self.s, context))
            except EtcdError as err:
                await abort(context, EtcdError("UNKNOWN", _AUTH_RAW.get(err.message, err.message)))

    async def Hash(self, request: pb.HashRequest, context: Any) -> pb.HashResponse:
        await self._admin(context)
        resp = await self.s.hash()
        self.s.fill_header(resp.header)
        return resp

    async def HashKV(self, request: pb.HashKVRequest, context: Any) -> pb.HashKVResponse:
        await self._admin(context)
        try:
            resp = await self.s.hash_kv(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def MoveLeader(self, request: pb.MoveLeaderRequest, context: Any) -> pb.MoveLeaderResponse:
        try:
            resp = await self.s.move_leader(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def Defragment(self, request: pb.DefragmentRequest, context: Any) -> pb.DefragmentResponse:
        await self._admin(context)
        try:
            resp = await self.s.defragment()
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def Snapshot(self, request: pb.SnapshotRequest, context: Any) -> AsyncIterator[pb.SnapshotResponse]:
        await self._admin(context)
        try:
            async for chunk in self.s.snapshot():
                yield chunk
        except EtcdError as err:
            await abort(context, err)


class ClusterServicer(pb_grpc.ClusterServicer):
    def __init__(self, server: ClusterService) -> None:
        self.s = server

    async def MemberList(self, request: pb.MemberListRequest, context: Any
                         ) -> pb.MemberListResponse:
        resp = self.s.member_list()
        self.s.fill_header(resp.header)
        return resp

    async def MemberAdd(self, request: pb.MemberAddRequest, context: Any) -> pb.MemberAddResponse:
        try:
            if self.s.auth_enabled:
                self.s.authorize_admin(auth_info(self.s, context))
            resp = await self.s.member_add(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def MemberRemove(self, request: pb.MemberRemoveRequest, context: Any
                           ) -> pb.MemberRemoveResponse:
        try:
            if self.s.auth_enabled:
                self.s.authorize_admin(auth_info(self.s, context))
            resp = await self.s.member_remove(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def MemberUpdate(self, request: pb.MemberUpdateRequest, context: Any
                           ) -> pb.MemberUpdateResponse:
        try:
            if self.s.auth_enabled:
                self.s.authorize_admin(auth_info(self.s, context))
            resp = await self.s.member_update(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp

    async def MemberPromote(self, request: pb.MemberPromoteRequest, context: Any
                            ) -> pb.MemberPromoteResponse:
        try:
            if self.s.auth_enabled:
                self.s.authorize_admin(auth_info(self.s, context))
            resp = await self.s.member_promote(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        return resp


class AuthServicer(pb_grpc.AuthServicer):
    """etcd's Auth service: every call but Authenticate names its caller for the admin checks inside."""

    def __init__(self, server: AuthService) -> None:
        self.s = server

    async def _call(self, context: Any, fn: Callable[[AuthInfo | None], Awaitable[Any]]) -> Any:
        try:
            resp = await fn(auth_info(self.s, context))
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        resp.header.revision = self.s.current_revision
        return resp

    async def AuthEnable(self, request: pb.AuthEnableRequest, context: Any) -> pb.AuthEnableResponse:
        return await self._call(context, self.s.auth_enable)  # type: ignore[no-any-return]

    async def AuthDisable(self, request: pb.AuthDisableRequest, context: Any) -> pb.AuthDisableResponse:
        return await self._call(context, self.s.auth_disable)  # type: ignore[no-any-return]

    async def AuthStatus(self, request: pb.AuthStatusRequest, context: Any) -> pb.AuthStatusResponse:
        return await self._call(context, self.s.auth_status)  # type: ignore[no-any-return]

    async def Authenticate(self, request: pb.AuthenticateRequest, context: Any) -> pb.AuthenticateResponse:
        try:
            resp = await self.s.authenticate(request)
        except EtcdError as err:
            await abort(context, err)
        self.s.fill_header(resp.header)
        resp.header.revision = self.s.current_revision
        return resp

    async def UserAdd(self, request: pb.AuthUserAddRequest, context: Any) -> pb.AuthUserAddResponse:
        return await self._call(context, lambda i: self.s.user_add(i, request))  # type: ignore[no-any-return]

    async def UserGet(self, request: pb.AuthUserGetRequest, context: Any) -> pb.AuthUserGetResponse:
        return await self._call(context, lambda i: self.s.user_get(i, request))  # type: ignore[no-any-return]

    async def UserList(self, request: pb.AuthUserListRequest, context: Any) -> pb.AuthUserListResponse:
        return await self._call(context, self.s.user_list)  # type: ignore[no-any-return]

    async def UserDelete(self, request: pb.AuthUserDeleteRequest, context: Any) -> pb.AuthUserDeleteResponse:
        return await self._call(context, lambda i: self.s.user_delete(i, request))  # type: ignore[no-any-return]

    async def UserChangePassword(self, request: pb.AuthUserChangePasswordRequest, context: Any
                                 ) -> pb.AuthUserChangePasswordResponse:
        return await self._call(  # type: ignore[no-any-return]
            context, lambda i: self.s.user_change_password(i, request))

    async def UserGrantRole(self, request: pb.AuthUserGrantRoleRequest, context: Any
                            ) -> pb.AuthUserGrantRoleResponse:
        return await self._call(context, lambda i: self.s.user_grant_role(i, request))  # type: ignore[no-any-return]

    async def UserRevokeRole(self, request: pb.AuthUserRevokeRoleRequest, context: Any
                             ) -> pb.AuthUserRevokeRoleResponse:
        return await self._call(context, lambda i: self.s.user_revoke_role(i, request))  # type: ignore[no-any-return]

    async def RoleAdd(self, request: pb.AuthRoleAddRequest, context: Any) -> pb.AuthRoleAddResponse:
        return await self._call(context, lambda i: self.s.role_add(i, request))  # type: ignore[no-any-return]

    async def RoleGet(self, request: pb.AuthRoleGetRequest, context: Any) -> pb.AuthRoleGetResponse:
        return await self._call(context, lambda i: self.s.role_get(i, request))  # type: ignore[no-any-return]

    async def RoleList(self, request: pb.AuthRoleListRequest, context: Any) -> pb.AuthRoleListResponse:
        return await self._call(context, self.s.role_list)  # type: ignore[no-any-return]

    async def RoleDelete(self, request: pb.AuthRoleDeleteRequest, context: Any) -> pb.AuthRoleDeleteResponse:
        return await self._call(context, lambda i: self.s.role_delete(i, request))  # type: ignore[no-any-return]

    async def RoleGrantPermission(self, request: pb.AuthRoleGrantPermissionRequest, context: Any
                                  ) -> pb.AuthRoleGrantPermissionResponse:
        return await self._call(  # type: ignore[no-any-return]
            context, lambda i: self.s.role_grant_permission(i, request))

    async def RoleRevokePermission(self, request: pb.AuthRoleRevokePermissionRequest, context: Any
                                   ) -> pb.AuthRoleRevokePermissionResponse:
        return await self._call(  # type: ignore[no-any-return]
            context, lambda i: self.s.role_revoke_permission(i, request))


def add_servicers(grpc_servers: Sequence[grpc.aio.Server], server: Member,
                  instrument: Callable[[Any, str], None] | None = None,
                  count_bytes: tuple[Callable[[int], None], Callable[[int], None]] | None = None) -> dict[str, Any]:
    """Register etcd's services on every server of ``grpc_servers`` (the same servicer objects on each);
    returns the servicers by service name ("KV", ...).

    ``instrument(servicer, service_name)`` (metrics) may wrap a servicer's methods before registration; the
    JSON gateway calls the same servicer objects, so both paths behave (and count) alike.
    ``count_bytes = (received, sent)`` is told the size of every message a gRPC client sent or was sent (the
    bytes the (de)serializers already handle: no extra encoding).
    """
    servicers: dict[str, Any] = {
        "KV": KVServicer(server),
        "Watch": WatchServicer(server),
        "Lease": LeaseServicer(server),
        "Maintenance": MaintenanceServicer(server),
        "Cluster": ClusterServicer(server),
        "Auth": AuthServicer(server),
    }
    table = _MethodTable(count_bytes, lambda: bool(getattr(server, "has_leader", True)))
    for name, servicer in servicers.items():
        if instrument is not None:
            instrument(servicer, name)
        getattr(pb_grpc, f"add_{name}Servicer_to_server")(servicer, table)
    _add_concurrency_servicers(server, servicers, table, instrument)
    for grpc_server in grpc_servers:
        grpc_server.add_generic_rpc_handlers((table,))
    return servicers


def _counting(handler: Any, received: Callable[[int], None], sent: Callable[[int], None]) -> Any:
    """``handler`` with (de)serializers that report each message's encoded size."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer

    def counted_deserialize(data: bytes) -> Any:
        received(len(data))
        return deserialize(data)

    def counted_serialize(message: Any) -> bytes:
        data: bytes = serialize(message)
        sent(len(data))
        return data

    return handler._replace(request_deserializer=counted_deserialize, response_serializer=counted_serialize)


def _add_concurrency_servicers(server: Member, servicers: dict[str, Any], table: _MethodTable,
                               instrument: Callable[[Any, str], None] | None) -> None:
    """etcd's v3lockpb.Lock and v3electionpb.Election (api/concurrency.py)."""
    from quorumkv.api.concurrency import ElectionServicer, LockServicer
    from quorumkv.api.v3electionpb import v3election_pb2_grpc
    from quorumkv.api.v3lockpb import v3lock_pb2_grpc

    servicers["Lock"] = LockServicer(server)
    servicers["Election"] = ElectionServicer(server)
    if instrument is not None:
        instrument(servicers["Lock"], "Lock")
        instrument(servicers["Election"], "Election")
    v3lock_pb2_grpc.add_LockServicer_to_server(servicers["Lock"], table)  # type: ignore[no-untyped-call]
    v3election_pb2_grpc.add_ElectionServicer_to_server(  # type: ignore[no-untyped-call]
        servicers["Election"], table)


class _MethodTable:
    """Every service's method handlers in one dict, registered as ONE generic handler.

    The generated ``add_*Servicer_to_server`` also registers each method as a "registered method"; grpc.aio's
    server then keeps one pending call future per method and runs ``asyncio.wait`` over all of them (about 30
    for etcd's API) for every incoming call, which costs more Python time per RPC than the whole KV.Put
    handler. With one generic handler it waits on a single future (see docs/performance.md).
    """

    def __init__(self, count_bytes: tuple[Callable[[int], None], Callable[[int], None]] | None = None,
                 has_leader: Callable[[], bool] | None = None) -> None:
        self.handlers: dict[str, Any] = {}
        self.count_bytes = count_bytes
        self._has_leader = has_leader

    # what the generated add_*Servicer_to_server functions call on their ``server`` argument
    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers also arrive through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for method, handler in handlers.items():
            if self.count_bytes is not None:
                handler = _counting(handler, *self.count_bytes)
            self.handlers[f"/{service}/{method}"] = tolerant_handler(handler, self._has_leader)

    def service(self, handler_call_details: Any) -> Any:
        """grpc.GenericRpcHandler's one method: the handler of the called method; for an unknown one, a handler
        answering UNIMPLEMENTED in grpc-go's words (``unknown service etcdserverpb.X``), as etcd does. Paths
        outside ``etcdserverpb`` get None, so generic handlers registered after this one still see them."""
        path = handler_call_details.method
        handler = self.handlers.get(path)
        if handler is None and path.startswith("/etcdserverpb."):
            return _unknown_method(path)
        return handler


def _unknown_method(path: str) -> Any:
    service, _, method = path.lstrip("/").partition("/")
    known = any(name.startswith(f"/{service}/") for name in _KNOWN_PATHS)
    detail = f"unknown method {method} for service {service}" if known else f"unknown service {service}"

    async def unimplemented(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, detail)
        raise AssertionError("unreachable")  # pragma: no cover

    return grpc.unary_unary_rpc_method_handler(unimplemented)


#: Every method path etcd's services define (filled from the generated descriptors).
_KNOWN_PATHS = frozenset(
    f"/{svc.full_name}/{m.name}" for svc in pb.DESCRIPTOR.services_by_name.values() for m in svc.methods)


#: What grpc-go (and so etcd) answers, with code INTERNAL, when a request's bytes are not a valid message; the
#: detail is protobuf-go's text for malformed wire data.
UNDECODABLE_REQUEST = "grpc: error unmarshalling request: proto: cannot parse invalid wire-format data"


class _Undecodable:
    """Stands in for a request whose bytes did not parse (the handler answers INTERNAL, as grpc-go does)."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def tolerant_handler(handler: Any, has_leader: Callable[[], bool] | None = None) -> Any:
    """``handler`` with a deserializer that never raises: undecodable bytes get grpc-go's INTERNAL answer
    (:data:`UNDECODABLE_REQUEST`) instead of grpcio's UNKNOWN naming a Python exception class.

    With ``has_leader``, a call carrying ``hasleader=true`` metadata on a member without a leader is refused
    with ``etcdserver: no leader`` (etcd's unary and stream interceptors); the metadata is only read when there
    is no leader, so the common path costs one property read."""
    parse = handler.request_deserializer
    if parse is None:
        return handler

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:
            return _UNDECODABLE

    async def refuse(context: Any) -> NoReturn:
        await context.abort(grpc.StatusCode.INTERNAL, UNDECODABLE_REQUEST)
        raise AssertionError("unreachable")  # pragma: no cover

    async def require_leader(context: Any) -> None:
        if has_leader is not None and not has_leader() and _requires_leader(context):
            await abort(context, errors.NO_LEADER)

    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if request is _UNDECODABLE:
                await refuse(context)
            yield request

    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def uu(request: Any, context: Any) -> Any:
            if request is _UNDECODABLE:
                await refuse(context)
            await require_leader(context)
            return await unary_unary(request, context)

        return handler._replace(unary_unary=uu, request_deserializer=deserialize)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def us(request: Any, context: Any) -> AsyncIterator[Any]:
            if request is _UNDECODABLE:
                await refuse(context)
            await require_leader(context)
            async for response in unary_stream(request, context):
                yield response

        return handler._replace(unary_stream=us, request_deserializer=deserialize)
    if handler.stream_stream is not None:
        stream_stream = handler.stream_stream

        async def ss(requests: Any, context: Any) -> AsyncIterator[Any]:
            # grpc.aio streams the responses of an async generator *function* only: one more layer
            await require_leader(context)
            async for response in stream_stream(checked(requests, context), context):
                yield response

        return handler._replace(stream_stream=ss, request_deserializer=deserialize)
    stream_unary = handler.stream_unary

    async def su(requests: Any, context: Any) -> Any:
        await require_leader(context)
        return await stream_unary(checked(requests, context), context)

    return handler._replace(stream_unary=su, request_deserializer=deserialize)
