"""Where a restore's snapshot comes from: a local file, a compressed (``.zip``) snapshot, or S3.

:func:`resolve_restore_source` turns any of them into a verified local etcd-format snapshot file; it is what
``quorumkvctl snapshot restore`` calls and what ``--cluster-reset-restore-path`` calls (``app.py``). Invariant:
the file returned has passed the SHA-256 trailer check (unless ``skip_hash_check`` for a plain local file, as
etcdctl's flag), so nothing is replaced before the snapshot is known good.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from quorumkv.backup.local import verify_stream
from quorumkv.backup.s3 import S3Config, S3Error, S3Snapshots
from quorumkv.server.snapshot import SnapshotError, verify

__all__ = ["RestoreSourceError", "resolve_restore_source"]


class RestoreSourceError(Exception):
    """The snapshot to restore cannot be obtained or is not good; the message says which and what to do."""


def _from_s3(source: str, s3: S3Config | None, work_dir: Path, progress: Callable[[int], None] | None) -> Path:
    if source.startswith("s3://"):
        parts = urlsplit(source)
        key = parts.path.lstrip("/")
        folder, _, name = key.rpartition("/")
        if not parts.netloc or not name:
            raise RestoreSourceError(f"{source!r} is not an S3 snapshot name: use s3://BUCKET/[FOLDER/]NAME")
        base = s3 or S3Config(bucket=parts.netloc, endpoint="")
        config = replace(base, bucket=parts.netloc, folder=folder)
    else:
        assert s3 is not None
        config, name = s3, source
    dest = work_dir / name
    try:
        S3Snapshots(config).download(name, dest, progress=progress)
    except S3Error as exc:
        raise RestoreSourceError(f"cannot fetch snapshot {config.location(name)}: {exc}") from exc
    return dest


def _unzip(path: Path, work_dir: Path) -> Path:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            if len(members) != 1:
                raise RestoreSourceError(f"compressed snapshot {path} holds {len(members)} files, expected 1: "
                                         "pass the snapshot file itself")
            info = members[0]
            name = Path(info.filename).name or path.stem
            with zf.open(info) as fh:
                verify_stream(fh, info.file_size, f"{path}:{info.filename}")  # checks the zip CRC too
            dest = work_dir / name
            with zf.open(info) as fh, open(dest, "wb") as out:
                shutil.copyfileobj(fh, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
    except (zipfile.BadZipFile, SnapshotError) as exc:
        raise RestoreSourceError(f"compressed snapshot {path} is damaged: {exc}; restore another snapshot") from exc
    return dest


def resolve_restore_source(source: str, *, work_dir: str | os.PathLike[str], s3: S3Config | None = None,
                           skip_hash_check: bool = False,
                           progress: Callable[[int], None] | None = None) -> Path:
    """A verified local snapshot file for ``source``.

    ``source``: a path (plain etcd snapshot, or a ``.zip`` made by ``--etcd-snapshot-compress``);
    ``s3://bucket/[folder/]name`` (credentials and endpoint from ``s3`` if given, else boto3's environment such
    as ``AWS_ENDPOINT_URL``/``AWS_ACCESS_KEY_ID``); or, when ``s3`` is given and no such local file exists, a bare
    snapshot name in ``s3``'s bucket and folder. Downloads and extractions go to ``work_dir`` (created).
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    path: Path
    local = Path(source)
    downloaded = False
    if source.startswith("s3://") or (s3 is not None and not local.exists() and "/" not in source):
        path = _from_s3(source, s3, work, progress)
        downloaded = True
    else:
        if not local.is_file():
            hint = " (give --etcd-s3 and the bucket flags to restore a snapshot from S3)" if "/" not in source else ""
            raise RestoreSourceError(f"snapshot {source} does not exist or is not a file{hint}")
        path = local
    if zipfile.is_zipfile(path):
        path = _unzip(path, work)
    elif skip_hash_check and not downloaded:
        return path
    try:
        verify(path)
    except SnapshotError as exc:
        raise RestoreSourceError(str(exc)) from exc
    return path
