"""Finishing a snapshot the same way wherever it was taken (the scheduler in the server, or
``quorumkv etcd-snapshot save`` through a client): verify and record it, upload it to S3 when configured,
apply retention. Failures end up in the record (``ls``), the log and the member's metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from quorumkv.backup.local import LocalSnapshots, SnapshotRecord, snapshot_name
from quorumkv.backup.s3 import S3Config, S3Error, S3Snapshots
from quorumkv.observability.metrics import ServerStats

__all__ = ["BackupOptions", "SnapshotManager"]

log = logging.getLogger("quorumkv.backup")


@dataclass(frozen=True)
class BackupOptions:
    """The member's snapshot settings (``--etcd-snapshot-*``, ``--etcd-s3*``)."""

    directory: str
    node: str
    name: str = "etcd-snapshot"
    retention: int = 5
    compress: bool = False
    cron: str = "0 */12 * * *"
    disabled: bool = False
    s3: S3Config | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> BackupOptions:
        return cls(directory=cfg.etcd_snapshot_dir, node=cfg.name, name=cfg.etcd_snapshot_name,
                   retention=cfg.etcd_snapshot_retention, compress=cfg.etcd_snapshot_compress,
                   cron=cfg.etcd_snapshot_schedule_cron, disabled=cfg.etcd_disable_snapshots,
                   s3=S3Config.from_config(cfg) if cfg.etcd_s3 else None)


class SnapshotManager:
    """Names, finishes, uploads and prunes snapshots for one node. Thread-safe enough for one caller at a time
    (the scheduler runs one snapshot at a time; the CLI is one process)."""

    def __init__(self, options: BackupOptions, *, stats: ServerStats | None = None,
                 s3_sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.local = LocalSnapshots(options.directory)
        self.s3 = S3Snapshots(options.s3, sleep=s3_sleep) if options.s3 is not None else None
        self.stats = stats

    def new_name(self, prefix: str, created_unix: float) -> str:
        return snapshot_name(prefix, self.options.node, int(created_unix))

    def complete(self, part: Path, name: str, created_unix: float, *, prefix: str, prune: bool,
                 upload_progress: Callable[[int], None] | None = None) -> SnapshotRecord:
        """``part`` holds the etcd snapshot just streamed: verify/compress/record it (raises SnapshotError after
        recording a failure), upload it (a failed upload is recorded, logged, counted, not raised), then apply
        local and S3 retention when ``prune``."""
        try:
            record = self.local.finish(part, name, node=self.options.node, created_unix=created_unix,
                                       compress=self.options.compress)
        except Exception:
            if self.stats is not None:
                self.stats.snapshots_failed += 1
            raise
        if self.stats is not None:
            self.stats.snapshots_saved += 1
        if self.s3 is not None:
            try:
                self.s3.upload(self.local.path(record.name), record, progress=upload_progress)
            except S3Error as exc:
                if self.stats is not None:
                    self.stats.snapshot_uploads_failed += 1
                self.local.update_record(record.name, upload_status="failed", upload_message=str(exc))
                log.error("snapshot upload to S3 failed for good", extra={"snapshot": record.name,
                                                                          "error": str(exc)})
                record = self.local.get(record.name) or record
            else:
                if self.stats is not None:
                    self.stats.snapshot_uploads += 1
                self.local.update_record(record.name, upload_status="success")
                record = self.local.get(record.name) or record
        if prune:
            self.prune(prefix)
        return record

    def retry_failed_uploads(self) -> int:
        """Upload again every local snapshot whose upload failed; the number now uploaded."""
        if self.s3 is None:
            return 0
        done = 0
        for rec in self.local.records():
            if rec.upload_status != "failed" or rec.status != "success":
                continue
            try:
                self.s3.upload(self.local.path(rec.name), rec)
            except S3Error as exc:
                if self.stats is not None:
                    self.stats.snapshot_uploads_failed += 1
                self.local.update_record(rec.name, upload_message=str(exc))
                continue
            if self.stats is not None:
                self.stats.snapshot_uploads += 1
            self.local.update_record(rec.name, upload_status="success", upload_message="")
            done += 1
        return done

    def prune(self, prefix: str, retention: int | None = None, s3_retention: int | None = None) -> list[str]:
        """Local retention, then S3's own (separate) retention; the names deleted (S3 ones as ``s3://...``)."""
        deleted = self.local.prune(prefix, self.options.retention if retention is None else retention)
        if self.s3 is not None:
            try:
                gone = self.s3.prune(prefix, s3_retention)
            except S3Error as exc:
                log.error("S3 retention failed", extra={"error": str(exc)})
            else:
                deleted += [self.s3.config.location(n) for n in gone]
        return deleted

    def records(self) -> list[SnapshotRecord]:
        """Local and S3 snapshots; a local snapshot whose upload failed adds an S3 row with status failed."""
        out = list(self.local.records())
        if self.s3 is not None:
            remote = self.s3.records()
            names = {r.name for r in remote}
            out += remote
            for rec in self.local.records():
                if rec.upload_status == "failed" and rec.name not in names:
                    out.append(replace(rec, location=self.s3.config.location(rec.name), status="failed",
                                       message=f"upload failed: {rec.upload_message}"))
        return out

    def delete(self, name: str) -> bool:
        found = self.local.delete(name)
        if self.s3 is not None:
            found = self.s3.delete(name) or found
        return found
