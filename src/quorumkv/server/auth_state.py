"""etcd's auth store as replicated state: users, roles, permissions, the enabled flag and the auth revision.

``AuthState`` is an immutable value: the applier (writer thread) builds a new one for each applied auth entry and
swaps it in; the event loop reads whichever is current, so a check never sees half an update. Applying is
deterministic: passwords arrive already hashed (bcrypt runs on the member that received the request, before it
proposes), and nothing here reads a clock.

Permission checks follow etcd 3.4's ``auth/range_perm_cache.go``: each user's permissions are merged into READ
and WRITE interval sets over etcd's "affine" byte order (an empty bound is +infinity; a range end of ``"\\x00"``
means "to the end of the key space"); a single key needs one interval that holds it, a range needs the union of
intervals to cover it without a gap.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from quorumkv import errors
from quorumkv.api.authpb import auth_pb2
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.storage import auth as auth_rows

ROOT_USER = "root"
ROOT_ROLE = "root"

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE


@dataclass(frozen=True)
class AuthInfo:
    """Who a request is from (etcd's ``auth.AuthInfo``): a user name and the auth revision its token carries."""

    username: str
    revision: int


def _cmp(a: bytes, b: bytes) -> int:
    """etcd's BytesAffineComparable: the empty byte string sorts after everything (+infinity)."""
    if not a:
        return 0 if not b else 1
    if not b:
        return -1
    return (a > b) - (a < b)


Interval = tuple[bytes, bytes]


def _perm_interval(perm: auth_pb2.Permission) -> Interval:
    if not perm.range_end:
        return (perm.key, perm.key + b"\x00")
    end = b"" if perm.range_end == b"\x00" else perm.range_end
    return (perm.key, end)


def _intersects(a: Interval, b: Interval) -> bool:
    return _cmp(a[0], b[1]) < 0 and _cmp(b[0], a[1]) < 0


@dataclass
class _Perms:
    read: list[Interval] = field(default_factory=list)
    write: list[Interval] = field(default_factory=list)


def _point_permitted(ivls: list[Interval], key: bytes) -> bool:
    pt = (key, key + b"\x00")
    return any(_intersects(i, pt) for i in ivls)


def _interval_permitted(ivls: list[Interval], key: bytes, range_end: bytes) -> bool:
    """etcd's IntervalTree.Contains: the intervals meeting [key, range_end) cover it without a gap."""
    want = (key, b"" if range_end == b"\x00" else range_end)
    hits = sorted((i for i in ivls if _intersects(i, want)), key=_SortKey)
    if not hits:
        return False
    min_begin, max_end = hits[0]
    for begin, end in hits[1:]:
        if _cmp(max_end, begin) < 0:
            return False
        if _cmp(end, max_end) > 0:
            max_end = end
    return _cmp(max_end, want[1]) >= 0 and _cmp(min_begin, want[0]) <= 0


class _SortKey:
    """Orders intervals by begin in the affine order (empty = +infinity)."""

    __slots__ = ("b",)

    def __init__(self, ivl: Interval) -> None:
        self.b = ivl[0]

    def __lt__(self, other: _SortKey) -> bool:
        return _cmp(self.b, other.b) < 0


@dataclass(frozen=True)
class AuthState:
    enabled: bool = False
    revision: int = 0
    users: dict[str, auth_pb2.User] = field(default_factory=dict)
    roles: dict[str, auth_pb2.Role] = field(default_factory=dict)
    _cache: dict[str, _Perms] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> AuthState:
        enabled, revision = auth_rows.load_flags(conn)
        return cls(enabled, revision, auth_rows.load_users(conn), auth_rows.load_roles(conn))

    # -- checks (etcd's isOpPermitted / IsAdminPermitted) ---------------------------------------------------

    def has_root_role(self, username: str) -> bool:
        user = self.users.get(username)
        return user is not None and ROOT_ROLE in user.roles

    def has_role(self, username: str, role: str) -> bool:
        user = self.users.get(username)
        return user is not None and role in user.roles

    def check_admin(self, info: AuthInfo | None) -> None:
        if not self.enabled:
            return
        if info is None:
            raise errors.USER_EMPTY
        user = self.users.get(info.username)
        if user is None:
            raise errors.USER_NOT_FOUND
        if ROOT_ROLE not in user.roles:
            raise errors.PERMISSION_DENIED

    def check(self, info: AuthInfo | None, key: bytes, range_end: bytes, perm: int) -> None:
        """Raise unless ``info`` may READ or WRITE ``[key, range_end)`` (a single key when ``range_end`` is
        empty)."""
        if not self.enabled:
            return
        if info is None or info.revision == 0:
            raise errors.USER_EMPTY
        if info.revision < self.revision:
            raise errors.AUTH_OLD_REVISION
        user = self.users.get(info.username)
        if user is None:
            raise errors.PERMISSION_DENIED
        if ROOT_ROLE in user.roles:
            return
        perms = self._cache.get(info.username)
        if perms is None:
            perms = self._cache[info.username] = self._merge(user)
        ivls = perms.read if perm == READ else perms.write
        ok = _point_permitted(ivls, key) if not range_end else _interval_permitted(ivls, key, range_end)
        if not ok:
            raise errors.PERMISSION_DENIED

    def _merge(self, user: auth_pb2.User) -> _Perms:
        out = _Perms()
        for name in user.roles:
            role = self.roles.get(name)
            if role is None:
                continue
            for perm in role.keyPermission:
                ivl = _perm_interval(perm)
                if perm.permType in (READ, READWRITE):
                    out.read.append(ivl)
                if perm.permType in (WRITE, READWRITE):
                    out.write.append(ivl)
        return out

    def check_txn(self, info: AuthInfo | None, req: pb.TxnRequest) -> None:
        """etcd's checkTxnAuth: every compare needs READ, every op on either branch its own, recursively."""
        for c in req.compare:
            self.check(info, c.key, c.range_end, READ)
        for ops in (req.success, req.failure):
            for op in ops:
                which = op.WhichOneof("request")
                if which == "request_range":
                    self.check(info, op.request_range.key, op.request_range.range_end, READ)
                elif which == "request_put":
                    self.check(info, op.request_put.key, b"", WRITE)
                elif which == "request_delete_range":
                    d = op.request_delete_range
                    if d.prev_kv:
                        self.check(info, d.key, d.range_end, READ)
                    self.check(info, d.key, d.range_end, WRITE)
                elif which == "request_txn":
                    self.check_txn(info, op.request_txn)


# -- apply: each returns the new state (rows already written in ``conn``) ------------------------------------


def _user(name: str, state: AuthState) -> auth_pb2.User:
    user = state.users.get(name)
    if user is None:
        raise errors.USER_NOT_FOUND
    copy = auth_pb2.User()
    copy.CopyFrom(user)
    return copy


def _role(name: str, state: AuthState) -> auth_pb2.Role:
    role = state.roles.get(name)
    if role is None:
        raise errors.ROLE_NOT_FOUND
    copy = auth_pb2.Role()
    copy.CopyFrom(role)
    return copy


def _with(state: AuthState, conn: sqlite3.Connection, *, enabled: bool | None = None, bump: bool = True,
          users: dict[str, auth_pb2.User] | None = None, roles: dict[str, auth_pb2.Role] | None = None
          ) -> AuthState:
    new = AuthState(state.enabled if enabled is None else enabled, state.revision + (1 if bump else 0),
                    state.users if users is None else users, state.roles if roles is None else roles)
    auth_rows.save_flags(conn, new.enabled, new.revision)
    return new


def apply_auth_enable(conn: sqlite3.Connection, state: AuthState) -> AuthState:
    if state.enabled:
        return state
    root = state.users.get(ROOT_USER)
    if root is None:
        raise errors.ROOT_USER_NOT_EXIST
    if ROOT_ROLE not in root.roles:
        raise errors.ROOT_ROLE_NOT_EXIST
    return _with(state, conn, enabled=True, bump=False)  # etcd 3.4 enables without a new revision


def apply_auth_disable(conn: sqlite3.Connection, state: AuthState) -> AuthState:
    if not state.enabled:
        return state
    return _with(state, conn, enabled=False)


def apply_user_add(conn: sqlite3.Connection, state: AuthState, req: pb.AuthUserAddRequest) -> AuthState:
    if not req.name:
        raise errors.USER_EMPTY
    if req.name in state.users:
        raise errors.USER_ALREADY_EXIST
    user = auth_pb2.User(name=req.name.encode(), password=req.hashedPassword.encode())
    if req.HasField("options"):
        user.options.CopyFrom(req.options)
    auth_rows.put_user(conn, user)
    return _with(state, conn, users={**state.users, req.name: user})


def apply_user_delete(conn: sqlite3.Connection, state: AuthState, req: pb.AuthUserDeleteRequest) -> AuthState:
    if state.enabled and req.name == ROOT_USER:
        raise errors.INVALID_AUTH_MGMT
    _user(req.name, state)
    auth_rows.delete_user(conn, req.name)
    users = dict(state.users)
    del users[req.name]
    return _with(state, conn, users=users)


def apply_user_change_password(conn: sqlite3.Connection, state: AuthState,
                               req: pb.AuthUserChangePasswordRequest) -> AuthState:
    user = _user(req.name, state)
    user.password = req.hashedPassword.encode()
    auth_rows.put_user(conn, user)
    return _with(state, conn, users={**state.users, req.name: user})


def apply_user_grant_role(conn: sqlite3.Connection, state: AuthState, req: pb.AuthUserGrantRoleRequest
                          ) -> AuthState:
    user = _user(req.user, state)
    if req.role != ROOT_ROLE and req.role not in state.roles:
        raise errors.ROLE_NOT_FOUND
    if req.role in user.roles:
        return state  # etcd: already granted, nothing changes
    roles = sorted([*user.roles, req.role])
    del user.roles[:]
    user.roles.extend(roles)
    auth_rows.put_user(conn, user)
    return _with(state, conn, users={**state.users, req.user: user})


def apply_user_revoke_role(conn: sqlite3.Connection, state: AuthState, req: pb.AuthUserRevokeRoleRequest
                           ) -> AuthState:
    if state.enabled and req.name == ROOT_USER and req.role == ROOT_ROLE:
        raise errors.INVALID_AUTH_MGMT
    user = _user(req.name, state)
    if req.role not in user.roles:
        raise errors.ROLE_NOT_GRANTED
    kept = [r for r in user.roles if r != req.role]
    del user.roles[:]
    user.roles.extend(kept)
    auth_rows.put_user(conn, user)
    return _with(state, conn, users={**state.users, req.name: user})


def apply_role_add(conn: sqlite3.Connection, state: AuthState, req: pb.AuthRoleAddRequest) -> AuthState:
    if not req.name:
        raise errors.ROLE_EMPTY
    if req.name in state.roles:
        raise errors.ROLE_ALREADY_EXIST
    role = auth_pb2.Role(name=req.name.encode())
    auth_rows.put_role(conn, role)
    return _with(state, conn, roles={**state.roles, req.name: role})


def apply_role_delete(conn: sqlite3.Connection, state: AuthState, req: pb.AuthRoleDeleteRequest) -> AuthState:
    if state.enabled and req.role == ROOT_ROLE:
        raise errors.INVALID_AUTH_MGMT
    _role(req.role, state)
    auth_rows.delete_role(conn, req.role)
    roles = dict(state.roles)
    del roles[req.role]
    users = dict(state.users)
    for name, user in state.users.items():  # etcd 3.4 also takes the role away from every user
        if req.role in user.roles:
            changed = auth_pb2.User()
            changed.CopyFrom(user)
            kept = [r for r in user.roles if r != req.role]
            del changed.roles[:]
            changed.roles.extend(kept)
            auth_rows.put_user(conn, changed)
            users[name] = changed
    return _with(state, conn, users=users, roles=roles)


def apply_role_grant_permission(conn: sqlite3.Connection, state: AuthState,
                                req: pb.AuthRoleGrantPermissionRequest) -> AuthState:
    role = _role(req.name, state)
    perms = list(role.keyPermission)
    for p in perms:
        if p.key == req.perm.key and p.range_end == req.perm.range_end:
            p.permType = req.perm.permType  # the same key/range again: its type is replaced
            break
    else:
        idx = 0
        while idx < len(perms) and perms[idx].key < req.perm.key:
            idx += 1
        new = auth_pb2.Permission()
        new.CopyFrom(req.perm)
        perms.insert(idx, new)
    fresh = auth_pb2.Role(name=role.name)
    fresh.keyPermission.extend(perms)
    auth_rows.put_role(conn, fresh)
    return _with(state, conn, roles={**state.roles, req.name: fresh})


def apply_role_revoke_permission(conn: sqlite3.Connection, state: AuthState,
                                 req: pb.AuthRoleRevokePermissionRequest) -> AuthState:
    role = _role(req.role, state)
    kept = [p for p in role.keyPermission if not (p.key == req.key and p.range_end == req.range_end)]
    if len(kept) == len(role.keyPermission):
        raise errors.PERMISSION_NOT_GRANTED
    fresh = auth_pb2.Role(name=role.name)
    fresh.keyPermission.extend(kept)
    auth_rows.put_role(conn, fresh)
    return _with(state, conn, roles={**state.roles, req.role: fresh})
