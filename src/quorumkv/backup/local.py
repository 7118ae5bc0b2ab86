"""Snapshot files in a snapshot directory, named and recorded as K3s records its etcd snapshots.

A snapshot is named ``<prefix>-<node>-<unix seconds>`` (``.zip`` appended when compressed); scheduled
snapshots use ``--etcd-snapshot-name`` (``etcd-snapshot``), on-demand ones ``on-demand``. Beside the files,
``<dir>/.metadata/<file name>.json`` holds one :class:`SnapshotRecord`.

Invariants:
- a snapshot file exists under its final name only after its content was re-read and its SHA-256 trailer
  (and, compressed, the zip CRC) verified; until then it is ``<name>.part``;
- every attempt leaves a record: ``status`` is ``success`` or ``failed`` with the error message; a failed record
  is never removed by retention, only by an explicit ``delete``;
- retention keeps at most ``retention`` successful snapshots of one prefix and logs every deletion.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from quorumkv.mvcc import etcd_db
from quorumkv.server.snapshot import DIGEST_BYTES, SnapshotError, verify

__all__ = [
    "METADATA_DIR",
    "ON_DEMAND_NAME",
    "SCHEDULED_NAME",
    "LocalSnapshots",
    "SnapshotRecord",
    "file_sha256",
    "snapshot_name",
    "verify_stream",
]

log = logging.getLogger("quorumkv.backup")

ON_DEMAND_NAME = "on-demand"
SCHEDULED_NAME = "etcd-snapshot"
METADATA_DIR = ".metadata"
COMPRESSED_SUFFIX = ".zip"
_TS_RE = re.compile(r"-(\d+)(?:\.zip)?$")


def snapshot_name(prefix: str, node: str, unix_s: int, *, compressed: bool = False) -> str:
    """``<prefix>-<node>-<unix seconds>[.zip]`` (K3s's pattern)."""
    return f"{prefix}-{node}-{unix_s}" + (COMPRESSED_SUFFIX if compressed else "")


def rfc3339(unix_s: float) -> str:
    return datetime.datetime.fromtimestamp(unix_s, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def name_timestamp(name: str) -> int | None:
    """The Unix seconds at the end of a snapshot name, or None."""
    m = _TS_RE.search(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class SnapshotRecord:
    """What is known about one snapshot (local file or S3 object); serialised as the metadata JSON."""

    name: str
    location: str
    node: str = ""
    size: int = 0
    created_at: str = ""
    #: Unix seconds the snapshot was taken (orders retention)
    created_unix: float = 0.0
    revision: int = 0
    #: SHA-256 (hex) of the file as stored (compressed: of the zip)
    checksum: str = ""
    compressed: bool = False
    status: str = "success"
    message: str = ""
    #: ``""`` (no upload asked), ``success`` or ``failed`` (then ``upload_message`` says why)
    upload_status: str = ""
    upload_message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> SnapshotRecord:
        raw = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_stream(fh: IO[bytes], size: int, where: str) -> None:
    """Check etcd's framing on a readable stream of ``size`` bytes: content then its SHA-256. Raises
    SnapshotError naming ``where``."""
    if size < DIGEST_BYTES + 512 or (size - DIGEST_BYTES) % 512 != 0:
        raise SnapshotError(f"snapshot {where} is truncated or not a snapshot ({size} bytes): take it again")
    h = hashlib.sha256()
    left = size - DIGEST_BYTES
    while left > 0:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            raise SnapshotError(f"snapshot {where} ended early: take it again")
        h.update(chunk)
        left -= len(chunk)
    if fh.read(DIGEST_BYTES) != h.digest():
        raise SnapshotError(f"snapshot {where} fails its SHA-256 integrity check: take it again")


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, path)


class LocalSnapshots:
    """The snapshot directory: save (finish) a snapshot, list, delete, prune."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.meta_dir = self.dir / METADATA_DIR

    def _ensure(self) -> None:
        self.meta_dir.mkdir(parents=True, exist_ok=True)

    def part_path(self, name: str) -> Path:
        """Where a snapshot named ``name`` (without ``.zip``) is written before :meth:`finish`."""
        self._ensure()
        return self.dir / f"{name}.part"

    def _record_path(self, file_name: str) -> Path:
        return self.meta_dir / f"{file_name}.json"

    def write_record(self, record: SnapshotRecord) -> None:
        self._ensure()
        _write_atomic(self._record_path(record.name), record.to_json())

    def finish(self, part: Path, name: str, *, node: str, created_unix: float, compress: bool) -> SnapshotRecord:
        """Verify the etcd snapshot at ``part`` (content + SHA-256), compress it if asked, verify what was
        written, move it into place and record it. A failure is recorded (status ``failed``) and re-raised."""
        file_name = name + (COMPRESSED_SUFFIX if compress else "")
        final = self.dir / file_name
        base = SnapshotRecord(name=file_name, location=final.resolve().as_uri(), node=node,
                              created_at=rfc3339(created_unix), created_unix=created_unix, compressed=compress)
        zpart = self.dir / f"{file_name}.part"
        try:
            verify(part)
            revision = etcd_db.db_status(part).revision
            if compress:
                with zipfile.ZipFile(zpart, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                    zf.write(part, arcname=name)
                _verify_zip(zpart, name)
                part.unlink()
                os.replace(zpart, final)
            else:
                os.replace(part, final)
                verify(final)
            record = replace(base, size=final.stat().st_size, revision=revision, checksum=file_sha256(final))
        except (SnapshotError, etcd_db.EtcdDbError, OSError, zipfile.BadZipFile) as exc:
            part.unlink(missing_ok=True)
            zpart.unlink(missing_ok=True)
            failed = replace(base, status="failed", message=str(exc))
            self.write_record(failed)
            log.error("snapshot failed", extra={"snapshot": file_name, "error": str(exc)})
            raise SnapshotError(f"snapshot {file_name} failed: {exc}") from exc
        self.write_record(record)
        log.info("snapshot saved", extra={"snapshot": file_name, "size": record.size, "revision": revision})
        return record

    def records(self) -> list[SnapshotRecord]:
        """Every recorded snapshot plus snapshot files without a record (oldest first)."""
        out: dict[str, SnapshotRecord] = {}
        if self.meta_dir.is_dir():
            for p in self.meta_dir.glob("*.json"):
                try:
                    rec = SnapshotRecord.from_json(p.read_text(encoding="utf-8"))
                except (ValueError, TypeError, OSError) as exc:
                    log.warning("unreadable snapshot record", extra={"path": str(p), "error": str(exc)})
                    continue
                out[rec.name] = rec
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".part") and p.name not in out:
                    st = p.stat()
                    ts = name_timestamp(p.name) or st.st_mtime
                    out[p.name] = SnapshotRecord(name=p.name, location=p.resolve().as_uri(), size=st.st_size,
                                                 created_at=rfc3339(ts), created_unix=ts,
                                                 compressed=p.name.endswith(COMPRESSED_SUFFIX))
        return sorted(out.values(), key=lambda r: (r.created_unix, r.name))

    def get(self, name: str) -> SnapshotRecord | None:
        return next((r for r in self.records() if r.name == name), None)

    def path(self, name: str) -> Path:
        return self.dir / name

    def delete(self, name: str) -> bool:
        """Remove the file and its record; False when neither existed."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} is not a snapshot name: pass a name as `etcd-snapshot ls` prints it")
        found = False
        for p in (self.dir / name, self._record_path(name)):
            if p.exists():
                p.unlink()
                found = True
        if found:
            log.info("snapshot deleted", extra={"snapshot": name})
        return found

    def update_record(self, name: str, **changes: Any) -> None:
        rec = self.get(name)
        if rec is not None:
            self.write_record(replace(rec, **changes))

    def prune(self, prefix: str, retention: int) -> list[str]:
        """Delete the oldest successful snapshots named ``<prefix>-...`` beyond ``retention``; the names deleted.
        Failed records are kept (and reported in the log) until deleted by name."""
        return prune_records(self.records(), prefix, retention, self.delete, where=str(self.dir))


def prune_records(records: list[SnapshotRecord], prefix: str, retention: int, delete: Callable[[str], object], *,
                  where: str) -> list[str]:
    """Shared retention rule (local and S3): keep the newest ``retention`` successful snapshots of ``prefix``."""
    if retention < 1:
        raise ValueError(f"snapshot retention must be at least 1 (got {retention}): use e.g. --snapshot-retention=5")
    mine = [r for r in records if r.name.startswith(prefix + "-")]
    ok = sorted((r for r in mine if r.status == "success"), key=lambda r: (r.created_unix, r.name))
    failed = [r.name for r in mine if r.status != "success"]
    if failed:
        log.warning("failed snapshots are kept until deleted by name", extra={"where": where, "snapshots": failed})
    doomed = ok[: max(0, len(ok) - retention)]
    if len(doomed) > 1:
        log.warning("retention shrinks the snapshot set", extra={
            "where": where, "before": len(ok), "after": retention, "deleting": [r.name for r in doomed]})
    for rec in doomed:
        log.info("pruning snapshot beyond retention", extra={"where": where, "snapshot": rec.name,
                                                             "retention": retention})
        delete(rec.name)
    return [r.name for r in doomed]


def _verify_zip(path: Path, member: str) -> None:
    """Re-read a compressed snapshot: the zip's CRC and the snapshot's own SHA-256 trailer."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        with zf.open(info) as fh:  # zipfile checks the CRC when the member has been read to its end
            verify_stream(fh, info.file_size, f"{path}:{member}")
            if fh.read(1):
                raise SnapshotError(f"snapshot {path}:{member} is longer than recorded")
