"""The auth tables (schema 3): users, roles (with their key permissions) and the auth flags in ``meta``.

Rows hold etcd's own records: ``auth_user.data`` is an ``authpb.User`` and ``auth_role.data`` an
``authpb.Role``, serialized (as etcd's ``authUsers`` / ``authRoles`` buckets). ``meta`` keeps whether auth is
enabled (``auth_enabled``) and the auth revision (``auth_revision``), both replicated (the state snapshot
carries them). The tables are created by ``storage.backend`` (schema 3). Only the applier writes
these; every member reads them back on start and after a restore.
"""

from __future__ import annotations

import sqlite3

from quorumkv.api.authpb import auth_pb2
from quorumkv.storage.backend import meta_get, meta_set

AUTH_ENABLED = "auth_enabled"
AUTH_REVISION = "auth_revision"

def load_users(conn: sqlite3.Connection) -> dict[str, auth_pb2.User]:
    out: dict[str, auth_pb2.User] = {}
    for name, data in conn.execute("SELECT name, data FROM auth_user ORDER BY name"):
        out[bytes(name).decode("utf-8", "surrogateescape")] = auth_pb2.User.FromString(bytes(data))
    return out


def load_roles(conn: sqlite3.Connection) -> dict[str, auth_pb2.Role]:
    out: dict[str, auth_pb2.Role] = {}
    for name, data in conn.execute("SELECT name, data FROM auth_role ORDER BY name"):
        out[bytes(name).decode("utf-8", "surrogateescape")] = auth_pb2.Role.FromString(bytes(data))
    return out


def load_flags(conn: sqlite3.Connection) -> tuple[bool, int]:
    """(auth enabled, auth revision)."""
    return bool(int(meta_get(conn, AUTH_ENABLED, 0))), int(meta_get(conn, AUTH_REVISION, 0))


def save_flags(conn: sqlite3.Connection, enabled: bool, revision: int) -> None:
    meta_set(conn, AUTH_ENABLED, int(enabled))
    meta_set(conn, AUTH_REVISION, int(revision))


def put_user(conn: sqlite3.Connection, user: auth_pb2.User) -> None:
    conn.execute("INSERT OR REPLACE INTO auth_user(name, data) VALUES (?, ?)",
                 (bytes(user.name), user.SerializeToString()))


def delete_user(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM auth_user WHERE name = ?", (name.encode("utf-8", "surrogateescape"),))


def put_role(conn: sqlite3.Connection, role: auth_pb2.Role) -> None:
    conn.execute("INSERT OR REPLACE INTO auth_role(name, data) VALUES (?, ?)",
                 (bytes(role.name), role.SerializeToString()))


def delete_role(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM auth_role WHERE name = ?", (name.encode("utf-8", "surrogateescape"),))
