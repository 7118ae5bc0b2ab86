"""The payload of a log entry: which request it carries, who is waiting for it, and the request bytes.

Encoding: ``kind`` (1 byte) + ``request_id`` (8 bytes, big-endian) + payload (an etcd request protobuf, or
for internal kinds a small struct). The encoding is part of the data-dir format.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

_HEADER = struct.Struct(">BQ")
HEADER_SIZE = _HEADER.size


class EntryKind(IntEnum):
    NOOP = 0  # appended by a new leader (term marker); changes nothing
    PUT = 1  # etcdserverpb.PutRequest
    DELETE_RANGE = 2  # etcdserverpb.DeleteRangeRequest
    TXN = 3  # etcdserverpb.TxnRequest
    COMPACTION = 4  # etcdserverpb.CompactionRequest
    LEASE_GRANT = 5  # etcdserverpb.LeaseGrantRequest (ID already chosen by the proposer)
    LEASE_REVOKE = 6  # etcdserverpb.LeaseRevokeRequest
    ALARM = 7  # etcdserverpb.AlarmRequest
    LEASE_CHECKPOINT = 8  # etcdserverpb.LeaseCheckpointRequest
    MEMBER_ATTRS = 9  # membership.Member JSON: a member publishes its name and client URLs
    MEMBER_UPDATE = 10  # membership.Member JSON: new peer URLs (MemberUpdate)
    # etcd's auth (each payload the etcdserverpb request; passwords already bcrypt-hashed in hashedPassword)
    AUTH_ENABLE = 11  # AuthEnableRequest
    AUTH_DISABLE = 12  # AuthDisableRequest
    AUTH_USER_ADD = 13  # AuthUserAddRequest (password empty, hashedPassword set)
    AUTH_USER_DELETE = 14  # AuthUserDeleteRequest
    AUTH_USER_CHANGE_PASSWORD = 15  # AuthUserChangePasswordRequest (password empty, hashedPassword set)
    AUTH_USER_GRANT_ROLE = 16  # AuthUserGrantRoleRequest
    AUTH_USER_REVOKE_ROLE = 17  # AuthUserRevokeRoleRequest
    AUTH_ROLE_ADD = 18  # AuthRoleAddRequest
    AUTH_ROLE_DELETE = 19  # AuthRoleDeleteRequest
    AUTH_ROLE_GRANT_PERMISSION = 20  # AuthRoleGrantPermissionRequest
    AUTH_ROLE_REVOKE_PERMISSION = 21  # AuthRoleRevokePermissionRequest
    # a PUT, DELETE_RANGE or TXN proposed for a user while auth is on (etcd's RequestHeader username and
    # auth_revision): see ``wrap_authed``; the applier checks the user's permissions again before applying it
    AUTHED = 22


_AUTHED = struct.Struct(">QH")


class AuthedRequest(NamedTuple):
    username: str
    auth_revision: int
    kind: int
    payload: bytes


class DecodedEntry(NamedTuple):
    kind: int
    request_id: int
    payload: bytes


def encode_entry(kind: int, request_id: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, request_id) + payload


def decode_entry(data: bytes) -> DecodedEntry:
    if len(data) < HEADER_SIZE:
        raise ValueError(f"log entry too short ({len(data)} bytes)")
    kind, request_id = _HEADER.unpack_from(data)
    return DecodedEntry(kind, request_id, data[HEADER_SIZE:])


def wrap_authed(username: str, auth_revision: int, kind: int, payload: bytes) -> bytes:
    """The payload of an ``AUTHED`` entry: auth revision (u64), user name length (u16) and bytes (UTF-8), the
    inner entry's kind (1 byte) and its payload."""
    name = username.encode("utf-8", "surrogateescape")
    return _AUTHED.pack(auth_revision, len(name)) + name + bytes([kind]) + payload


def unwrap_authed(payload: bytes) -> AuthedRequest:
    if len(payload) < _AUTHED.size:
        raise ValueError(f"AUTHED entry too short ({len(payload)} bytes)")
    revision, name_len = _AUTHED.unpack_from(payload)
    at = _AUTHED.size + name_len
    if len(payload) < at + 1:
        raise ValueError(f"AUTHED entry too short ({len(payload)} bytes, user name of {name_len})")
    name = payload[_AUTHED.size:at].decode("utf-8", "surrogateescape")
    return AuthedRequest(name, revision, payload[at], payload[at + 1:])
