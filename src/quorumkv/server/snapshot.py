"""Snapshot files: a point-in-time copy of the whole store, its status, and restoring a data dir from one.

Two formats, both framed as etcd frames them (content, then the 32-byte SHA-256 of the content; the size is
``n * 512 + 32``, which ``etcdctl snapshot save`` checks, and the Maintenance/Snapshot stream sends the digest
as its last chunk):

- ``etcd`` (written by ``save`` and the Snapshot stream): an etcd 3.4 backend database, bbolt with etcd's
  buckets (``quorumkv.mvcc.etcd_db``). Real ``etcdctl snapshot status|restore`` read it, and quorumkv
  restores snapshots saved from real etcd the same way: the migration path in both directions;
- ``sqlite`` (what quorumkv wrote before; still restored, and written by ``save(..., snapshot_format="sqlite")``):
  the bytes of a SQLite database holding the store (the data dir's schema, ``PRAGMA user_version`` = schema
  version, rollback-journal mode), a whole number of pages.

Invariants:
- a snapshot holds one revision: the etcd export reads everything in one SQLite read transaction;
  ``copy_database`` uses SQLite's backup API in a single step (also one read transaction); writers are not
  blocked by either;
- ``verify`` is called before anything reads a snapshot's content; a truncated or altered file fails it with
  a message naming the file and the problem;
- ``restore`` never touches an existing data dir: it builds the new one beside it and renames it into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quorumkv.mvcc import etcd_db, hashing, store
from quorumkv.storage import leases, membership, schema
from quorumkv.storage.backend import (
    SCHEMA_VERSION,
    UPGRADABLE_SCHEMA_VERSIONS,
    Backend,
    copy_database,
    immediate_txn,
    open_store_file,
    read_txn,
    set_wal_mode,
)
from quorumkv.storage.datadir import DATA_FORMAT, DB_FILE, FORMAT_FILE, fsync_dir

DIGEST_BYTES = hashlib.sha256().digest_size
#: Chunk size of the Snapshot stream (etcd sends 32 KiB chunks).
CHUNK_BYTES = 32 * 1024
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BBOLT_MAGIC = 0xED0CDAED
#: Snapshot content formats (see the module docstring).
FORMAT_ETCD = "etcd"
FORMAT_SQLITE = "sqlite"
SNAPSHOT_FORMATS = (FORMAT_ETCD, FORMAT_SQLITE)


class SnapshotError(Exception):
    """A snapshot file cannot be used; the message names the file, the problem and what to do."""


@dataclass(frozen=True)
class SnapshotStatus:
    """What ``snapshot status`` prints: content hash, store revision, stored key revisions, content size."""

    hash: int
    revision: int
    total_key: int
    total_size: int


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    member_id: int
    cluster_id: int
    revision: int


def export_etcd_database(db_path: Path, dest: Path) -> int:
    """Write the store at ``db_path`` as an etcd 3.4 backend database (bbolt, no digest) to ``dest``, read in
    one transaction; returns its size in bytes (a whole number of 4 KiB pages). The Snapshot stream's content."""
    with open(dest, "wb+") as fh:
        size = etcd_db.export_store(db_path, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return size


def file_digest(path: Path, chunk_bytes: int = 1 << 20) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    return h.digest()


def iter_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(remaining bytes after this chunk, chunk) over a database copy, then (0, its SHA-256): the stream."""
    total = path.stat().st_size
    sent = 0
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while sent < total:
            blob = fh.read(min(chunk_bytes, total - sent))
            if not blob:
                raise SnapshotError(f"{path} shrank while being streamed")
            sent += len(blob)
            h.update(blob)
            yield total - sent, blob
    yield 0, h.digest()


def save(db_path: Path, dest: Path, *, snapshot_format: str = FORMAT_ETCD) -> int:
    """Write a snapshot file (content + digest) of the database at ``db_path``; returns its size in bytes.
    ``snapshot_format``: ``etcd`` (default) or ``sqlite`` (the format older quorumkv wrote)."""
    if snapshot_format not in SNAPSHOT_FORMATS:
        raise ValueError(f"unknown snapshot format {snapshot_format!r} (expected one of {SNAPSHOT_FORMATS})")
    part = dest.with_name(dest.name + ".part")
    if snapshot_format == FORMAT_ETCD:
        export_etcd_database(db_path, part)
    else:
        copy_database(db_path, part)
    with open(part, "ab") as fh:
        fh.write(file_digest(part))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, dest)
    return dest.stat().st_size


def verify(path: Path, *, skip_hash_check: bool = False, accept_raw_etcd_db: bool = False) -> int:
    """Check the framing and digest of a snapshot file; returns the content size. Raises SnapshotError.

    ``skip_hash_check``: the trailing SHA-256 is not compared (etcdctl's ``--skip-hash-check``).
    ``accept_raw_etcd_db`` (implied by ``skip_hash_check``): an etcd database without the digest (e.g. etcd's
    ``member/snap/db``) is accepted as it is; its content is the whole file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            start = fh.read(64)
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror}") from None
    if size < DIGEST_BYTES + 512 or (size - DIGEST_BYTES) % 512 != 0:
        raw_etcd = size >= 1024 and size % 512 == 0 and _content_format(start) == FORMAT_ETCD
        if raw_etcd and (skip_hash_check or accept_raw_etcd_db):
            return size
        hint = " (an etcd database file without its hash needs --skip-hash-check)" if raw_etcd else ""
        raise SnapshotError(
            f"snapshot {path} is truncated or not a snapshot ({size} bytes; a snapshot is a whole number of "
            f"512-byte blocks plus a 32-byte SHA-256): save it again{hint}"
        )
    content = size - DIGEST_BYTES
    if _content_format(start) is None:
        raise SnapshotError(f"snapshot {path} holds neither an etcd (bbolt) database nor a quorumkv (SQLite) "
                            "store: not a snapshot")
    if skip_hash_check:
        return content
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        left = content
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                raise SnapshotError(f"snapshot {path} shrank while being read")
            h.update(chunk)
            left -= len(chunk)
        digest = fh.read(DIGEST_BYTES)
    if h.digest() != digest:
        raise SnapshotError(
            f"snapshot {path} fails its SHA-256 integrity check (the file is corrupt or truncated): "
            "save a new snapshot"
        )
    return content


def _content_format(head: bytes) -> str | None:
    if head.startswith(_SQLITE_MAGIC):
        return FORMAT_SQLITE
    if len(head) >= 20 and int.from_bytes(head[16:20], "little") == _BBOLT_MAGIC:
        return FORMAT_ETCD
    return None


def snapshot_format(path: str | os.PathLike[str]) -> str:
    """``etcd`` or ``sqlite``: the content format of a snapshot file (after ``verify``). Raises SnapshotError."""
    p = Path(path)
    verify(p, accept_raw_etcd_db=True)
    return _file_format(p)


def _file_format(path: Path) -> str:
    """The content format of a snapshot ``verify`` accepted."""
    try:
        with open(path, "rb") as fh:
            kind = _content_format(fh.read(64))
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror}") from None
    if kind is None:
        raise SnapshotError(f"snapshot {path} changed while being read")
    return kind


def _extract(path: Path, content_bytes: int, dest: Path) -> None:
    with open(path, "rb") as src, open(dest, "wb") as dst:
        left = content_bytes
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            dst.write(chunk)
            left -= len(chunk)
        dst.flush()
        os.fsync(dst.fileno())


def _import_etcd(path: Path, db: Path) -> None:
    """A new quorumkv store at ``db`` holding the etcd database in snapshot ``path``."""
    backend = Backend(db)
    try:
        with backend.write_txn() as conn:
            etcd_db.import_db(path, conn)
    except etcd_db.EtcdDbError as exc:
        raise SnapshotError(f"snapshot {path} cannot be restored: {exc}") from None
    finally:
        backend.close()


def _open_content(path: Path, db: Path) -> sqlite3.Connection:
    try:
        conn, version = open_store_file(db)
    except sqlite3.DatabaseError as exc:
        raise SnapshotError(f"snapshot {path} does not hold a quorumkv store ({exc})") from None
    if version != SCHEMA_VERSION and version not in UPGRADABLE_SCHEMA_VERSIONS:  # older: upgraded on first open
        conn.close()
        raise SnapshotError(f"snapshot {path} has schema version {version}, this quorumkv reads "
                            f"{SCHEMA_VERSION}; use the quorumkv version that wrote it")
    return conn


def snapshot_status(path: str | os.PathLike[str]) -> SnapshotStatus:
    """What ``etcdctl snapshot status`` prints. etcd format: exactly etcdctl 3.4's numbers (CRC-32C of every
    bucket name, key and value; the last revision in the ``key`` bucket; keys in all buckets; database size).
    SQLite format: hash as the Hash RPC computes it, store revision, stored key revisions, content size."""
    p = Path(path)
    content = verify(p, accept_raw_etcd_db=True)  # etcdctl reads a bare etcd database file too
    if _file_format(p) == FORMAT_ETCD:
        try:
            st = etcd_db.db_status(p)
        except etcd_db.EtcdDbError as exc:
            raise SnapshotError(f"snapshot {p} is damaged: {exc}") from None
        return SnapshotStatus(hash=st.hash, revision=st.revision, total_key=st.total_key, total_size=st.total_size)
    with tempfile.TemporaryDirectory(prefix="quorumkv-snapshot-status-") as tmp:
        db = Path(tmp) / DB_FILE
        _extract(p, content, db)
        conn = _open_content(p, db)
        try:
            with read_txn(conn):
                return SnapshotStatus(
                    hash=hashing.hash_backend(conn),
                    revision=store.current_revision(conn),
                    total_key=store.stored_revision_count(conn),
                    total_size=content,
                )
        finally:
            conn.close()


def restore(path: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, name: str = "default",
            initial_cluster: str = "", initial_cluster_token: str = "etcd-cluster",
            initial_advertise_peer_urls: list[str] | None = None, skip_hash_check: bool = False) -> RestoreResult:
    """Build a new data dir from a snapshot: every key revision, lease and the store revision as saved.

    Membership is replaced by ``initial_cluster`` (default ``name=<initial_advertise_peer_urls>``) with
    member and cluster IDs computed as etcd does; the log starts empty and alarms are cleared (a new
    cluster whose members all start from the same Raft state: see ``schema.reset_raft_state``).
    ``data_dir`` must not exist or be empty. ``skip_hash_check``: as etcdctl's flag, the digest is not checked
    and an etcd database without one (etcd's ``member/snap/db``) is accepted. Raises SnapshotError (file) or
    ValueError (arguments).
    """
    from quorumkv.server.identity import compute_cluster_id, compute_member_id, parse_initial_cluster

    src = Path(path)
    target = Path(data_dir)
    peer_urls = list(initial_advertise_peer_urls or ["http://localhost:2380"])
    cluster_spec = initial_cluster or ",".join(f"{name}={u}" for u in peer_urls)
    members = parse_initial_cluster(cluster_spec)
    if name not in members:
        raise ValueError(f"couldn't find local name {name!r} in the initial cluster configuration "
                         f"({cluster_spec!r}): pass --initial-cluster including {name}=<peer url>")
    if sorted(members[name]) != sorted(peer_urls):
        raise ValueError(f"--initial-cluster has {name}={','.join(members[name])} but "
                         f"--initial-advertise-peer-urls is {','.join(peer_urls)}: make them agree")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"data-dir {str(target)!r} exists: restore into a new (or empty) directory")
    content = verify(src, skip_hash_check=skip_hash_check)
    ids = {n: compute_member_id(urls, initial_cluster_token) for n, urls in members.items()}
    cluster_id = compute_cluster_id(list(ids.values()))
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        db = work / DB_FILE
        if _file_format(src) == FORMAT_ETCD:
            _import_etcd(src, db)
        else:
            _extract(src, content, db)
        conn = _open_content(src, db)
        try:
            with immediate_txn(conn):
                membership.replace_members(
                    conn, [membership.Member(ids[n], n, list(urls)) for n, urls in members.items()])
                leases.clear_alarms(conn)
                schema.save_identity(conn, ids[name], cluster_id)
                # as etcd's restore: a new cluster of exactly these members, its state machine at index N (the
                # number of members), committed and applied, at term 1 -- every restored member starts from the
                # same Raft state, so they form one cluster and none of them leads without a quorum
                schema.reset_raft_state(conn, list(ids.values()), index=len(ids))
                revision = store.current_revision(conn)
            set_wal_mode(conn)
        finally:
            conn.close()
        with open(work / FORMAT_FILE, "w", encoding="utf-8") as fh:
            fh.write(DATA_FORMAT + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(work)
        if target.exists():
            target.rmdir()
        os.replace(work, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return RestoreResult(data_dir=target, member_id=ids[name], cluster_id=cluster_id, revision=revision)
