"""The auth side of a member (etcd's ``AuthStore`` seen from the server): the Auth service's RPCs, tokens, and the
permission checks every other service asks for.

Changes go through the log (``EntryKind.AUTH_*``, applied by ``auth_state``); passwords are bcrypt-hashed here,
with ``--bcrypt-cost``, before the entry is proposed, so applying never hashes. Reads (user/role get and list,
checks) use the applier's current ``AuthState``.

Who a request is from: the ``token`` gRPC metadata (``Authorization`` on the gateway) names a token of this
member's provider; without one, with ``--client-cert-auth``, the verified client certificate's common name is the
user (etcd's rule). With auth disabled nothing is checked and tokens are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from quorumkv import errors
from quorumkv.api.authpb import auth_pb2
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.mvcc import store
from quorumkv.server.auth_state import READ, WRITE, AuthInfo, AuthState
from quorumkv.server.auth_tokens import TokenError, TokenProvider, make_provider
from quorumkv.server.entries import EntryKind
from quorumkv.server.member import MemberCore
from quorumkv.storage.backend import read_txn

log = logging.getLogger("quorumkv.auth")

#: bcrypt reads at most this many bytes of a password; etcd 3.4's Go bcrypt ignores the rest (so a longer password
#: and its first 72 bytes both log in), while Python's bcrypt refuses longer input: cut it as Go does.
BCRYPT_MAX_BYTES = 72

#: Failed authentications are logged at most once per user name per this many seconds (with a count).
FAILED_AUTH_LOG_INTERVAL_S = 10.0


class MemberAuth(MemberCore):
    """AuthEnable/Disable/Status, Authenticate, User*, Role*, and ``auth_info`` / ``authorize`` for the others."""

    _tokens: TokenProvider | None = None
    _failed_auth: dict[str, tuple[float, int]]

    # -- state, tokens, identity -------------------------------------------------------------------------

    @property
    def auth_state(self) -> AuthState:
        state: AuthState = self.applier.auth
        return state

    @property
    def auth_enabled(self) -> bool:
        return bool(self.applier.auth.enabled)

    @property
    def tokens(self) -> TokenProvider:
        if self._tokens is None:
            try:
                self._tokens = make_provider(self.settings.auth_token, self.settings.auth_token_ttl_s)
            except TokenError as exc:
                raise errors.EtcdError("FAILED_PRECONDITION", str(exc)) from None
        return self._tokens

    def auth_info(self, token: str | None, common_name: str | None) -> AuthInfo | None:
        """Who the caller is (None: nobody); raises ``invalid auth token`` for a token this member rejects."""
        state = self.applier.auth
        if not state.enabled:
            return None
        if token is not None:
            info = self.tokens.info(token, state.revision)
            if info is None:
                log.warning("invalid auth token")
                raise errors.INVALID_AUTH_TOKEN
            return info
        if common_name and self.settings.client_cert_auth:
            return AuthInfo(common_name, state.revision)
        return None

    def on_auth_applied(self, before: AuthState, after: AuthState) -> None:
        """After an auth entry: drop tokens that etcd drops (auth disabled; a user deleted or re-passworded)."""
        if self._tokens is None:
            return
        if before.enabled and not after.enabled:
            self._tokens.clear()
            return
        for name, user in before.users.items():
            new = after.users.get(name)
            if new is None or new.password != user.password:
                self._tokens.invalidate_user(name)

    # -- checks for the other services (etcd's authApplierV3 and v3rpc wrappers) ----------------------------

    def authorize_range(self, info: AuthInfo | None, req: pb.RangeRequest) -> None:
        self.applier.auth.check(info, req.key, req.range_end, READ)

    def authorize_put(self, info: AuthInfo | None, req: pb.PutRequest) -> None:
        state: AuthState = self.applier.auth
        state.check(info, req.key, b"", WRITE)
        if req.lease:
            self._check_lease_keys(state, info, req.lease)
        if req.prev_kv:
            state.check(info, req.key, b"", READ)

    def authorize_delete(self, info: AuthInfo | None, req: pb.DeleteRangeRequest) -> None:
        state: AuthState = self.applier.auth
        state.check(info, req.key, req.range_end, WRITE)
        if req.prev_kv:
            state.check(info, req.key, req.range_end, READ)

    def authorize_txn(self, info: AuthInfo | None, req: pb.TxnRequest) -> None:
        self.applier.auth.check_txn(info, req)

    def watch_permitted(self, info: AuthInfo | None, req: pb.WatchCreateRequest) -> bool:
        """etcd's isWatchPermitted: READ on the watched range, with the create request's key rewrites."""
        key = req.key or b"\x00"
        end = b"" if req.range_end == b"\x00" else req.range_end
        try:
            self.applier.auth.check(info, key, end, READ)
        except errors.EtcdError:
            return False
        return True

    def authorize_lease_revoke(self, info: AuthInfo | None, lease_id: int) -> None:
        state: AuthState = self.applier.auth
        self._check_lease_keys(state, info, lease_id)

    def _check_lease_keys(self, state: AuthState, info: AuthInfo | None, lease_id: int) -> None:
        """etcd's checkLeasePuts: WRITE on every key attached to the lease (root: nothing to check)."""
        if not state.enabled:
            return
        try:
            state.check_admin(info)
            return
        except errors.EtcdError:
            pass
        with read_txn(self.reader):
            keys = store.keys_with_lease(self.reader, lease_id)
        for key in keys:
            state.check(info, key, b"", WRITE)

    def authorize_admin(self, info: AuthInfo | None) -> None:
        self.applier.auth.check_admin(info)

    # -- the Auth service -----------------------------------------------------------------------------------

    async def _propose_auth(self, kind: int, req: Any) -> Any:
        return await self._propose(kind, req.SerializeToString())

    async def _hash(self, password: str) -> str:
        import bcrypt

        cost = self.settings.bcrypt_cost
        hashed = await asyncio.get_running_loop().run_in_executor(
            None, lambda: bcrypt.hashpw(password.encode()[:BCRYPT_MAX_BYTES], bcrypt.gensalt(cost)))
        return hashed.decode()

    async def auth_enable(self, info: AuthInfo | None) -> pb.AuthEnableResponse:
        self.authorize_admin(info)
        resp: pb.AuthEnableResponse = await self._propose_auth(EntryKind.AUTH_ENABLE, pb.AuthEnableRequest())
        return resp

    async def auth_disable(self, info: AuthInfo | None) -> pb.AuthDisableResponse:
        self.authorize_admin(info)
        resp: pb.AuthDisableResponse = await self._propose_auth(EntryKind.AUTH_DISABLE, pb.AuthDisableRequest())
        return resp

    async def auth_status(self, info: AuthInfo | None) -> pb.AuthStatusResponse:
        self.authorize_admin(info)
        await self.read_barrier()
        state = self.applier.auth
        return pb.AuthStatusResponse(enabled=state.enabled, authRevision=state.revision)

    async def authenticate(self, req: pb.AuthenticateRequest) -> pb.AuthenticateResponse:
        state: AuthState = self.applier.auth
        if not state.enabled:
            raise errors.AUTH_NOT_ENABLED
        user = state.users.get(req.name)
        if user is not None and user.options.no_password:
            raise errors.NO_PASSWORD_USER
        ok = user is not None and bool(user.password)
        if ok:
            import bcrypt

            assert user is not None
            password = bytes(user.password)
            try:
                ok = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: bcrypt.checkpw(req.password.encode()[:BCRYPT_MAX_BYTES], password))
            except ValueError:  # a stored hash bcrypt cannot read
                ok = False
        if not ok:
            self._log_failed_auth(req.name)
            raise errors.AUTH_FAILED
        await self.read_barrier()
        state = self.applier.auth
        if not state.enabled:
            raise errors.AUTH_NOT_ENABLED
        if req.name not in state.users:
            raise errors.AUTH_FAILED
        try:
            token = self.tokens.assign(req.name, state.revision)
        except TokenError as exc:
            raise errors.EtcdError("FAILED_PRECONDITION", str(exc)) from None
        return pb.AuthenticateResponse(token=token)

    def _log_failed_auth(self, name: str) -> None:
        if not hasattr(self, "_failed_auth"):
            self._failed_auth = {}
        now = time.monotonic()
        shown = name if len(name) <= 64 else name[:64] + "..."
        last, count = self._failed_auth.get(shown, (0.0, 0))
        count += 1
        if now - last >= FAILED_AUTH_LOG_INTERVAL_S:
            log.warning("authentication failed, invalid user ID or password",
                        extra={"user-name": shown, "failures-since-last-log": count})
            self._failed_auth[shown] = (now, 0)
            if len(self._failed_auth) > 10_000:
                self._failed_auth.clear()
        else:
            self._failed_auth[shown] = (last, count)

    async def user_add(self, info: AuthInfo | None, req: pb.AuthUserAddRequest) -> pb.AuthUserAddResponse:
        self.authorize_admin(info)
        if not req.name:
            raise errors.USER_EMPTY
        out = pb.AuthUserAddRequest(name=req.name)
        if req.HasField("options"):
            out.options.CopyFrom(req.options)
        if not req.options.no_password:
            out.hashedPassword = req.hashedPassword or await self._hash(req.password)
        resp: pb.AuthUserAddResponse = await self._propose_auth(EntryKind.AUTH_USER_ADD, out)
        return resp

    async def user_delete(self, info: AuthInfo | None, req: pb.AuthUserDeleteRequest) -> pb.AuthUserDeleteResponse:
        self.authorize_admin(info)
        resp: pb.AuthUserDeleteResponse = await self._propose_auth(EntryKind.AUTH_USER_DELETE, req)
        return resp

    async def user_change_password(self, info: AuthInfo | None, req: pb.AuthUserChangePasswordRequest
                                   ) -> pb.AuthUserChangePasswordResponse:
        self.authorize_admin(info)
        out = pb.AuthUserChangePasswordRequest(name=req.name)
        out.hashedPassword = req.hashedPassword or await self._hash(req.password)
        resp: pb.AuthUserChangePasswordResponse = await self._propose_auth(EntryKind.AUTH_USER_CHANGE_PASSWORD, out)
        return resp

    async def user_grant_role(self, info: AuthInfo | None, req: pb.AuthUserGrantRoleRequest
                              ) -> pb.AuthUserGrantRoleResponse:
        self.authorize_admin(info)
        resp: pb.AuthUserGrantRoleResponse = await self._propose_auth(EntryKind.AUTH_USER_GRANT_ROLE, req)
        return resp

    async def user_revoke_role(self, info: AuthInfo | None, req: pb.AuthUserRevokeRoleRequest
                               ) -> pb.AuthUserRevokeRoleResponse:
        self.authorize_admin(info)
        resp: pb.AuthUserRevokeRoleResponse = await self._propose_auth(EntryKind.AUTH_USER_REVOKE_ROLE, req)
        return resp

    async def user_get(self, info: AuthInfo | None, req: pb.AuthUserGetRequest) -> pb.AuthUserGetResponse:
        state: AuthState = self.applier.auth
        try:
            state.check_admin(info)
        except errors.EtcdError:
            if info is None or req.name != info.username:
                raise
        await self.read_barrier()
        user = self.applier.auth.users.get(req.name)
        if user is None:
            raise errors.USER_NOT_FOUND
        return pb.AuthUserGetResponse(roles=list(user.roles))

    async def user_list(self, info: AuthInfo | None) -> pb.AuthUserListResponse:
        self.authorize_admin(info)
        await self.read_barrier()
        return pb.AuthUserListResponse(users=sorted(self.applier.auth.users, key=lambda n: n.encode()))

    async def role_add(self, info: AuthInfo | None, req: pb.AuthRoleAddRequest) -> pb.AuthRoleAddResponse:
        self.authorize_admin(info)
        resp: pb.AuthRoleAddResponse = await self._propose_auth(EntryKind.AUTH_ROLE_ADD, req)
        return resp

    async def role_delete(self, info: AuthInfo | None, req: pb.AuthRoleDeleteRequest) -> pb.AuthRoleDeleteResponse:
        self.authorize_admin(info)
        resp: pb.AuthRoleDeleteResponse = await self._propose_auth(EntryKind.AUTH_ROLE_DELETE, req)
        return resp

    async def role_grant_permission(self, info: AuthInfo | None, req: pb.AuthRoleGrantPermissionRequest
                                    ) -> pb.AuthRoleGrantPermissionResponse:
        self.authorize_admin(info)
        resp: pb.AuthRoleGrantPermissionResponse = await self._propose_auth(
            EntryKind.AUTH_ROLE_GRANT_PERMISSION, req)
        return resp

    async def role_revoke_permission(self, info: AuthInfo | None, req: pb.AuthRoleRevokePermissionRequest
                                     ) -> pb.AuthRoleRevokePermissionResponse:
        self.authorize_admin(info)
        resp: pb.AuthRoleRevokePermissionResponse = await self._propose_auth(
            EntryKind.AUTH_ROLE_REVOKE_PERMISSION, req)
        return resp

    async def role_get(self, info: AuthInfo | None, req: pb.AuthRoleGetRequest) -> pb.AuthRoleGetResponse:
        state: AuthState = self.applier.auth
        try:
            state.check_admin(info)
        except errors.EtcdError:
            if info is None or not state.has_role(info.username, req.role):
                raise
        await self.read_barrier()
        role = self.applier.auth.roles.get(req.role)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        return pb.AuthRoleGetResponse(perm=[auth_pb2.Permission(permType=p.permType, key=p.key, range_end=p.range_end)
                                            for p in role.keyPermission])

    async def role_list(self, info: AuthInfo | None) -> pb.AuthRoleListResponse:
        self.authorize_admin(info)
        await self.read_barrier()
        return pb.AuthRoleListResponse(roles=sorted(self.applier.auth.roles, key=lambda n: n.encode()))
