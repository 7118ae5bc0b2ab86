"""etcd 3.4's backend schema on bbolt: export a quorumkv store as an etcd database, import one into quorumkv.

Buckets as etcd 3.4 writes them (checked against ``etcdctl snapshot save`` of a real etcd 3.4.23):

- ``key``: every stored revision. Key: 8-byte big-endian main revision, ``_``, 8-byte big-endian sub revision,
  plus ``t`` for a tombstone (a delete). Value: a marshalled ``mvccpb.KeyValue`` (a tombstone's holds only the key);
- ``meta``: ``consistent_index`` (u64 big-endian, the applied Raft index), and after a compaction
  ``scheduledCompactRev`` / ``finishedCompactRev`` (the 17-byte revision key of the compaction revision);
- ``lease``: key the lease ID as 8 bytes big-endian, value a marshalled ``leasepb.Lease`` (ID = field 1,
  TTL = field 2, RemainingTTL = field 3, all int64 varints). There is no generated leasepb here: the three
  varint fields are encoded and decoded by hand (:func:`encode_lease`, :func:`decode_lease`);
- ``members``: key the member ID in lowercase hex, value the member as JSON (``id``, ``peerURLs``,
  ``isLearner`` when true, ``name``, ``clientURLs`` when set); ``members_removed``: hex ID -> ``removed``;
- ``cluster``: ``clusterVersion`` = ``3.4.0``; ``alarm``: key a marshalled ``AlarmMember``, empty value;
- ``auth``: ``authRevision`` (u64 big-endian, at least 1) and ``authEnabled`` (one byte, 1 or 0); etcd writes
  ``authEnabled`` only once auth was switched on or off, so a store that never had auth has no such key;
- ``authUsers``: key the user name, value a marshalled ``authpb.User`` (bcrypt password hash, roles);
  ``authRoles``: key the role name, value a marshalled ``authpb.Role`` (key permissions). quorumkv's auth tables
  hold the same records (``storage/auth.py``), so users, roles, permissions and passwords carry over both ways.

Invariants: an export reads the whole store in one SQLite read transaction (one revision, even while the
store is being written); an import refuses (:class:`EtcdDbError`, naming the file and the problem) anything it
cannot carry over faithfully.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from google.protobuf.message import DecodeError

from quorumkv.api.authpb import auth_pb2
from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.mvcc import store
from quorumkv.storage import auth as auth_tables
from quorumkv.storage.backend import insert_rows, meta_get, meta_set
from quorumkv.storage.bbolt import DEFAULT_PAGE_SIZE_BYTES, BboltError, BboltFile, write_db

BUCKET_KEY = b"key"
BUCKET_META = b"meta"
BUCKET_LEASE = b"lease"
BUCKET_MEMBERS = b"members"
BUCKET_MEMBERS_REMOVED = b"members_removed"
BUCKET_CLUSTER = b"cluster"
BUCKET_ALARM = b"alarm"
BUCKET_AUTH = b"auth"
BUCKET_AUTH_USERS = b"authUsers"
BUCKET_AUTH_ROLES = b"authRoles"

CLUSTER_VERSION = b"3.4.0"
_REVISION = struct.Struct(">Q")
REVISION_KEY_BYTES = 17
_TOMBSTONE_MARK = b"t"
_U64_MASK = (1 << 64) - 1
_AuthRecord = TypeVar("_AuthRecord", auth_pb2.User, auth_pb2.Role)


class EtcdDbError(ValueError):
    """An etcd database that cannot be imported; the message names the file and the problem."""


def revision_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """The ``key`` bucket's key of revision (main, sub): 17 bytes, plus ``t`` for a tombstone."""
    return _REVISION.pack(main) + b"_" + _REVISION.pack(sub) + (_TOMBSTONE_MARK if tombstone else b"")


def parse_revision_key(raw: bytes) -> tuple[int, int, bool]:
    """(main, sub, tombstone) of a ``key`` bucket key; ValueError if it is not one."""
    if len(raw) not in (REVISION_KEY_BYTES, REVISION_KEY_BYTES + 1) or raw[8:9] != b"_" or \
            (len(raw) > REVISION_KEY_BYTES and raw[17:] != _TOMBSTONE_MARK):
        raise ValueError(f"{raw.hex()} is not a revision key")
    return _REVISION.unpack_from(raw, 0)[0], _REVISION.unpack_from(raw, 9)[0], len(raw) > REVISION_KEY_BYTES


# -- protobuf varints (leasepb.Lease) --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= _U64_MASK  # int64 fields carry negative numbers as their 64-bit two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def encode_lease(lease_id: int, ttl_s: int, remaining_ttl_s: int = 0) -> bytes:
    """``leasepb.Lease{ID, TTL, RemainingTTL}`` marshalled as proto3 does (zero fields left out)."""
    out = bytearray()
    for field, value in ((1, lease_id), (2, ttl_s), (3, remaining_ttl_s)):
        if value:
            out += bytes([field << 3]) + _varint(value)
    return bytes(out)


def decode_lease(raw: bytes) -> tuple[int, int, int]:
    """(ID, TTL, RemainingTTL) of a marshalled ``leasepb.Lease``; unknown fields are skipped. ValueError if
    malformed."""
    fields = {1: 0, 2: 0, 3: 0}
    at = 0
    while at < len(raw):
        tag, at = _read_varint(raw, at)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, at = _read_varint(raw, at)
            if field in fields:
                fields[field] = _signed(value)
        elif wire == 1:
            at += 8
        elif wire == 2:
            size, at = _read_varint(raw, at)
            at += size
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"wire type {wire}")
        if at > len(raw):
            raise ValueError("truncated")
    return fields[1], fields[2], fields[3]


def _read_varint(raw: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(raw) or shift > 63:
            raise ValueError("bad varint")
        byte = raw[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _U64_MASK, at
        shift += 7


# -- CRC-32C (what etcdctl snapshot status hashes with) ----------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), continuing from ``crc``."""
    table = _CRC32C_TABLE
    c = crc ^ 0xFFFFFFFF
    for byte in data:
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# -- members -------------------------------------------------------------------------------------------------------


def member_json(member_id: int, peer_urls: list[str], name: str, client_urls: list[str], is_learner: bool) -> bytes:
    """A member as etcd 3.4 stores it (Go's encoding/json field order and escaping)."""
    doc: dict[str, object] = {"id": member_id & _U64_MASK, "peerURLs": peer_urls}
    if is_learner:
        doc["isLearner"] = True
    if name:
        doc["name"] = name
    if client_urls:
        doc["clientURLs"] = client_urls
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def _split_urls(text: str) -> list[str]:
    return [u for u in text.split(",") if u]


# -- export --------------------------------------------------------------------------------------------------------


def _kv_items(conn: sqlite3.Connection) -> Iterator[tuple[bytes, bytes]]:
    for rev, sub, key, value, create_rev, version, lease in conn.execute(
            "SELECT rev, sub, key, value, create_rev, version, lease FROM kv ORDER BY rev, sub"):
        if value is None:
            yield revision_key(rev, sub, True), kv_pb2.KeyValue(key=bytes(key)).SerializeToString()
        else:
            kv = kv_pb2.KeyValue(key=bytes(key), create_revision=create_rev, mod_revision=rev, version=version,
                                 value=bytes(value), lease=lease)
            yield revision_key(rev, sub), kv.SerializeToString()


def _u64(value: int) -> bytes:
    return _REVISION.pack(value & _U64_MASK)


def store_buckets(conn: sqlite3.Connection) -> dict[bytes, Iterable[tuple[bytes, bytes]]]:
    """etcd's buckets for the quorumkv store on ``conn`` (call inside a read transaction; ``key`` is read lazily
    from it)."""
    meta = [(b"consistent_index", _u64(int(meta_get(conn, "applied_index", 0))))]
    compacted = int(meta_get(conn, "compact_revision", -1))
    if compacted >= 0:  # etcd records a Compact(0) too
        meta += [(b"finishedCompactRev", revision_key(compacted, 0)),
                 (b"scheduledCompactRev", revision_key(compacted, 0))]
    leases = sorted((_u64(lease_id), encode_lease(lease_id, ttl, remaining))
                    for lease_id, ttl, remaining in conn.execute("SELECT id, ttl, remaining_ttl FROM lease"))
    members = sorted(
        (f"{member_id & _U64_MASK:x}".encode(),
         member_json(member_id, _split_urls(peers), name, _split_urls(clients), bool(learner)))
        for member_id, name, peers, clients, learner in conn.execute(
            "SELECT id, name, peer_urls, client_urls, is_learner FROM member"))
    removed = sorted((f"{member_id & _U64_MASK:x}".encode(), b"removed")
                     for (member_id,) in conn.execute("SELECT id FROM removed_member"))
    alarms = sorted((rpc_pb2.AlarmMember(memberID=member_id & _U64_MASK, alarm=alarm).SerializeToString(), b"")
                    for member_id, alarm in conn.execute("SELECT member_id, alarm FROM alarm"))
    auth, users, roles = _auth_buckets(conn)
    return {
        BUCKET_ALARM: alarms,
        BUCKET_AUTH: auth,
        BUCKET_AUTH_ROLES: roles,
        BUCKET_AUTH_USERS: users,
        BUCKET_CLUSTER: [(b"clusterVersion", CLUSTER_VERSION)],
        BUCKET_KEY: _kv_items(conn),
        BUCKET_LEASE: leases,
        BUCKET_MEMBERS: members,
        BUCKET_MEMBERS_REMOVED: removed,
        BUCKET_META: sorted(meta),
    }


def _auth_buckets(conn: sqlite3.Connection) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]],
                                                     list[tuple[bytes, bytes]]]:
    """(auth, authUsers, authRoles) as etcd writes them, from quorumkv's auth tables."""
    enabled, revision = auth_tables.load_flags(conn)
    auth = [(b"authRevision", _u64(max(revision, 1)))]
    if meta_get(conn, auth_tables.AUTH_ENABLED) is not None:  # switched on or off at least once
        auth.insert(0, (b"authEnabled", b"\x01" if enabled else b"\x00"))
    users = sorted((name.encode("utf-8", "surrogateescape"), user.SerializeToString())
                   for name, user in auth_tables.load_users(conn).items())
    roles = sorted((name.encode("utf-8", "surrogateescape"), role.SerializeToString())
                   for name, role in auth_tables.load_roles(conn).items())
    return auth, users, roles


def export_store(db_path: str | os.PathLike[str], out: BinaryIO, *,
                 page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES) -> int:
    """Write the quorumkv store at ``db_path`` as an etcd 3.4 backend database (bbolt) to the seekable ``out``;
    returns its size in bytes. Everything is read in one SQLite read transaction: one revision."""
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=30.0)
    try:
        conn.execute("PRAGMA query_only=1")
        conn.execute("BEGIN")
        try:
            return write_db(out, store_buckets(conn), page_size_bytes=page_size_bytes)
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()


# -- import --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSummary:
    """What an import carried over."""

    revision: int
    compact_revision: int
    key_revisions: int
    leases: int


def _bucket(db: BboltFile, names: set[bytes], name: bytes) -> Iterator[tuple[bytes, bytes]]:
    return db.items(name) if name in names else iter(())


def import_db(path: str | os.PathLike[str], conn: sqlite3.Connection) -> ImportSummary:
    """Fill the (empty) quorumkv tables on ``conn`` from the etcd backend database at ``path``, inside the
    caller's write transaction: every key revision (tombstones included), the compaction, leases, members,
    removed members and alarms. Raises EtcdDbError naming the file and the problem."""
    src = Path(path)
    try:
        with BboltFile(src) as db:
            db.check()
            return _import(src, db, conn)
    except BboltError as exc:
        raise EtcdDbError(str(exc)) from None


def _import(src: Path, db: BboltFile, conn: sqlite3.Connection) -> ImportSummary:
    names = set(db.bucket_names())
    if BUCKET_KEY not in names or BUCKET_META not in names:
        raise EtcdDbError(f"{src} is a bbolt file but not an etcd database (no 'key' or 'meta' bucket)")

    max_rev = 0
    rows: list[tuple[int, int, bytes, bytes | None, int, int, int]] = []
    count = 0
    for raw_key, raw_value in db.items(BUCKET_KEY):
        try:
            main, sub, tombstone = parse_revision_key(raw_key)
            kv = kv_pb2.KeyValue.FromString(raw_value)
        except (ValueError, DecodeError) as exc:
            raise EtcdDbError(f"{src} has a damaged entry in bucket 'key' at {raw_key.hex()}: {exc}") from None
        if tombstone:
            rows.append((main, sub, kv.key, None, 0, 0, 0))
        else:
            if kv.mod_revision != main:
                raise EtcdDbError(f"{src} has key revision {main} holding mod_revision {kv.mod_revision} (damaged)")
            rows.append((main, sub, kv.key, kv.value, kv.create_revision, kv.version, kv.lease))
        max_rev = max(max_rev, main)
        count += 1
        if len(rows) >= 4096:
            _insert_kv(src, conn, rows)
            rows = []
    _insert_kv(src, conn, rows)

    meta = dict(db.items(BUCKET_META))
    compacted = {}
    for name in (b"finishedCompactRev", b"scheduledCompactRev"):
        if name in meta:
            try:
                compacted[name] = parse_revision_key(meta[name])[0]
                if compacted[name] >= 1 << 63:
                    raise ValueError("out of range")
            except ValueError:
                raise EtcdDbError(f"{src} has a damaged meta.{name.decode()}: {meta[name].hex()}") from None
    compact_rev = compacted.get(b"finishedCompactRev", -1)
    scheduled = compacted.get(b"scheduledCompactRev", -1)
    if scheduled > compact_rev:  # etcd finishes an interrupted compaction when it starts; so does the import
        store.compact(conn, scheduled)
        compact_rev = scheduled
    if compact_rev >= 0:
        meta_set(conn, "compact_revision", compact_rev)
    revision = max(max_rev, compact_rev, 1)
    meta_set(conn, "revision", revision)

    leases = 0
    for raw_id, raw_lease in _bucket(db, names, BUCKET_LEASE):
        try:
            lease_id, ttl, remaining = decode_lease(raw_lease)
        except ValueError as exc:
            raise EtcdDbError(f"{src} has a damaged lease {raw_id.hex()}: {exc}") from None
        conn.execute("INSERT INTO lease(id, ttl, remaining_ttl) VALUES (?, ?, ?)", (lease_id, ttl, remaining))
        leases += 1

    for raw_id, raw_member in _bucket(db, names, BUCKET_MEMBERS):
        try:
            doc = json.loads(raw_member)
            member_id = _signed(int(raw_id, 16))
            conn.execute("INSERT INTO member(id, name, peer_urls, client_urls, is_learner) VALUES (?,?,?,?,?)",
                         (member_id, str(doc.get("name", "")), ",".join(doc.get("peerURLs") or []),
                          ",".join(doc.get("clientURLs") or []), int(bool(doc.get("isLearner", False)))))
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise EtcdDbError(f"{src} has a damaged member {raw_id!r}: {exc}") from None
    for raw_id, _ in _bucket(db, names, BUCKET_MEMBERS_REMOVED):
        try:
            conn.execute("INSERT OR IGNORE INTO removed_member(id) VALUES (?)", (_signed(int(raw_id, 16)),))
        except (ValueError, OverflowError):
            raise EtcdDbError(f"{src} has a damaged removed member {raw_id!r}") from None
    for raw_alarm, _ in _bucket(db, names, BUCKET_ALARM):
        try:
            alarm = rpc_pb2.AlarmMember.FromString(raw_alarm)
        except DecodeError:
            raise EtcdDbError(f"{src} has a damaged alarm {raw_alarm.hex()}") from None
        conn.execute("INSERT OR IGNORE INTO alarm(member_id, alarm) VALUES (?, ?)",
                     (_signed(alarm.memberID), alarm.alarm))
    _import_auth(src, db, names, conn)
    return ImportSummary(revision=revision, compact_revision=compact_rev, key_revisions=count, leases=leases)


def _import_auth(src: Path, db: BboltFile, names: set[bytes], conn: sqlite3.Connection) -> None:
    """Users, roles and the auth flags, as etcd stored them (passwords stay bcrypt hashes)."""
    auth = dict(_bucket(db, names, BUCKET_AUTH))
    enabled_raw = auth.get(b"authEnabled")
    revision_raw = auth.get(b"authRevision", _u64(1))
    if enabled_raw not in (None, b"\x00", b"\x01") or len(revision_raw) != 8:
        raise EtcdDbError(f"{src} has a damaged 'auth' bucket (authEnabled={enabled_raw!r}, "
                          f"authRevision={revision_raw.hex()})")
    for raw_name, raw in _bucket(db, names, BUCKET_AUTH_USERS):
        auth_tables.put_user(conn, _auth_record(src, BUCKET_AUTH_USERS, raw_name, raw, auth_pb2.User()))
    for raw_name, raw in _bucket(db, names, BUCKET_AUTH_ROLES):
        auth_tables.put_role(conn, _auth_record(src, BUCKET_AUTH_ROLES, raw_name, raw, auth_pb2.Role()))
    if enabled_raw is not None:
        auth_tables.save_flags(conn, enabled_raw == b"\x01", _REVISION.unpack(revision_raw)[0])


def _auth_record(src: Path, bucket: bytes, raw_name: bytes, raw: bytes, record: _AuthRecord) -> _AuthRecord:
    try:
        record.ParseFromString(raw)
    except DecodeError:
        raise EtcdDbError(f"{src} has a damaged entry {raw_name!r} in bucket '{bucket.decode()}'") from None
    if record.name != raw_name:
        raise EtcdDbError(f"{src} has entry {raw_name!r} in bucket '{bucket.decode()}' naming {record.name!r}")
    return record


def _insert_kv(src: Path, conn: sqlite3.Connection,
               rows: list[tuple[int, int, bytes, bytes | None, int, int, int]]) -> None:
    try:
        insert_rows(conn, "INSERT INTO kv(rev, sub, key, value, create_rev, version, lease) VALUES ", 7, rows)
    except (sqlite3.IntegrityError, OverflowError) as exc:
        raise EtcdDbError(f"{src} has a revision stored twice or out of range in the 'key' bucket ({exc})") from None


# -- status --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdDbStatus:
    """What ``etcdctl snapshot status`` reports: CRC-32C over every bucket name, key and value in order, the
    last revision in ``key``, keys in all buckets, and the database size (pages in use x page size)."""

    hash: int
    revision: int
    total_key: int
    total_size: int


def db_status(path: str | os.PathLike[str]) -> EtcdDbStatus:
    """``etcdctl snapshot status`` of an etcd database (after a full check). Raises EtcdDbError."""
    try:
        with BboltFile(path) as db:
            db.check()
            crc = 0
            revision = total = 0
            for name, items in db.iter_all():
                crc = crc32c(name, crc)
                for key, value in items:
                    crc = crc32c(value, crc32c(key, crc))
                    if name == BUCKET_KEY:
                        revision = _REVISION.unpack_from(key, 0)[0] if len(key) >= 8 else revision
                    total += 1
            return EtcdDbStatus(hash=crc, revision=revision, total_key=total,
                                total_size=db.high_water_pgid * db.page_size_bytes)
    except BboltError as exc:
        raise EtcdDbError(str(exc)) from None
