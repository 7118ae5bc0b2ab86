"""Snapshots in an S3-compatible bucket (boto3): upload with bounded retries and a checksum check, list,
delete, prune (its own retention), download.

Objects: ``<folder>/<snapshot file name>`` and ``<folder>/.metadata/<snapshot file name>`` (the record as
JSON). Invariants: an upload counts as done only after the object was read back and its SHA-256 equals the
local file's; a download is verified the same way against the record before it is used; every failed
attempt is logged with the error.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from quorumkv.backup.local import METADATA_DIR, SnapshotRecord, name_timestamp, prune_records, rfc3339

__all__ = ["S3Config", "S3Error", "S3Snapshots"]

log = logging.getLogger("quorumkv.backup")


class S3Error(Exception):
    """An S3 operation failed for good; the message names the bucket/object and the cause."""


@dataclass(frozen=True)
class S3Config:
    """K3s's ``--etcd-s3-*`` settings."""

    bucket: str
    endpoint: str = "s3.amazonaws.com"
    folder: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    region: str = "us-east-1"
    insecure: bool = False
    timeout_s: float = 300.0
    retention: int = 5
    #: upload attempts (first try included) and the first back-off; the back-off doubles, capped at 30 s
    attempts: int = 5
    backoff_s: float = 1.0

    @classmethod
    def from_config(cls, cfg: Any) -> S3Config:
        return cls(bucket=cfg.etcd_s3_bucket, endpoint=cfg.etcd_s3_endpoint, folder=cfg.etcd_s3_folder,
                   access_key=cfg.etcd_s3_access_key, secret_key=cfg.etcd_s3_secret_key, region=cfg.etcd_s3_region,
                   insecure=cfg.etcd_s3_insecure, timeout_s=cfg.etcd_s3_timeout_ms / 1000,
                   retention=cfg.etcd_s3_retention)

    @property
    def endpoint_url(self) -> str | None:
        """The URL boto3 talks to: the endpoint as given if it has a scheme, else https (http with insecure).
        An empty endpoint leaves the choice to boto3 (``AWS_ENDPOINT_URL`` or AWS)."""
        if not self.endpoint:
            return None
        if "://" in self.endpoint:
            return self.endpoint
        return ("http://" if self.insecure else "https://") + self.endpoint

    def key(self, name: str) -> str:
        folder = self.folder.strip("/")
        return f"{folder}/{name}" if folder else name

    def meta_key(self, name: str) -> str:
        return self.key(f"{METADATA_DIR}/{name}")

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"


def _sha256_body(body: Any) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


class S3Snapshots:
    """One bucket/folder. ``sleep`` is injectable so retry tests need not wait."""

    def __init__(self, config: S3Config, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if not config.bucket:
            raise ValueError("S3 needs a bucket: pass --etcd-s3-bucket (or --s3-bucket)")
        self.config = config
        self._sleep = sleep
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            c = self.config
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=c.endpoint_url,
                region_name=c.region or None,
                aws_access_key_id=c.access_key or None,
                aws_secret_access_key=c.secret_key or None,
                config=Config(connect_timeout=min(c.timeout_s, 30.0), read_timeout=c.timeout_s,
                              retries={"max_attempts": 1}, s3={"addressing_style": self._addressing()}),
            )
        return self._client

    def _addressing(self) -> str:
        """Path-style URLs for S3-compatible servers (MinIO, moto, ...), boto3's choice on AWS itself."""
        return "auto" if self.config.endpoint.rstrip("/").endswith("amazonaws.com") else "path"

    def _once(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        # boto3's transfer manager wraps a refused upload (NoSuchBucket, AccessDenied ...) in S3UploadFailedError,
        # a Boto3Error rather than a botocore one: it is a failed attempt like any other, not a crash
        except (Boto3Error, BotoCoreError, ClientError, OSError) as exc:
            raise S3Error(f"S3 {what} failed on {self.config.endpoint_url or 'AWS'} "
                          f"bucket {self.config.bucket!r}: {exc}") from exc

    def upload(self, path: Path, record: SnapshotRecord,
               progress: Callable[[int], None] | None = None) -> SnapshotRecord:
        """Upload ``path`` as ``record.name``, read it back and compare SHA-256; then the metadata object.
        Retries ``attempts`` times with doubling back-off; raises S3Error after the last."""
        c = self.config
        key = c.key(record.name)
        remote = replace(record, location=c.location(record.name))
        delay = c.backoff_s
        last: S3Error | None = None
        for attempt in range(1, c.attempts + 1):
            try:
                self._once("upload", self.client.upload_file, str(path), c.bucket, key, Callback=progress)
                obj = self._once("read-back", self.client.get_object, Bucket=c.bucket, Key=key)
                digest, size = self._once("read-back", _sha256_body, obj["Body"])
                if digest != record.checksum:
                    raise S3Error(f"S3 object {c.location(record.name)} reads back with SHA-256 {digest} "
                                  f"({size} bytes), not {record.checksum}: the upload is corrupt")
                self._once("metadata upload", self.client.put_object,
                           Bucket=c.bucket, Key=c.meta_key(record.name), Body=remote.to_json().encode())
                log.info("snapshot uploaded to S3", extra={"snapshot": record.name, "location": remote.location,
                                                           "attempt": attempt})
                return remote
            except S3Error as exc:
                last = exc
                log.warning("snapshot upload to S3 failed", extra={
                    "snapshot": record.name, "attempt": attempt, "of": c.attempts, "error": str(exc)})
                if attempt < c.attempts:
                    self._sleep(delay)
                    delay = min(delay * 2, 30.0)
        assert last is not None
        raise S3Error(f"{last} (gave up after {c.attempts} attempts)")

    def records(self) -> list[SnapshotRecord]:
        """Every snapshot object in the folder (metadata objects supply revision/checksum when present)."""
        c = self.config
        prefix = c.key("")
        objects: dict[str, dict[str, Any]] = {}
        metas: dict[str, str] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": c.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._once("list", self.client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(prefix):]
                if rest.startswith(METADATA_DIR + "/"):
                    metas[rest[len(METADATA_DIR) + 1:]] = obj["Key"]
                elif "/" not in rest and rest:
                    objects[rest] = obj
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        out = []
        for name, obj in objects.items():
            rec: SnapshotRecord | None = None
            if name in metas:
                try:
                    obj_meta = self._once("metadata read", self.client.get_object, Bucket=c.bucket, Key=metas[name])
                    raw = obj_meta["Body"].read()
                    rec = SnapshotRecord.from_json(raw)
                except (S3Error, ValueError, TypeError) as exc:
                    log.warning("unreadable S3 snapshot record", extra={"snapshot": name, "error": str(exc)})
            ts = float(name_timestamp(name) or obj["LastModified"].timestamp())
            if rec is None:
                rec = SnapshotRecord(name=name, location=c.location(name), created_at=rfc3339(ts),
                                     created_unix=ts, compressed=name.endswith(".zip"))
            out.append(replace(rec, location=c.location(name), size=int(obj["Size"])))
        return sorted(out, key=lambda r: (r.created_unix, r.name))

    def delete(self, name: str) -> bool:
        c = self.config
        existed = any(r.name == name for r in self.records())
        self._once("delete", self.client.delete_object, Bucket=c.bucket, Key=c.key(name))
        self._once("delete", self.client.delete_object, Bucket=c.bucket, Key=c.meta_key(name))
        if existed:
            log.info("snapshot deleted from S3", extra={"snapshot": name, "location": c.location(name)})
        return existed

    def prune(self, prefix: str, retention: int | None = None) -> list[str]:
        """S3's own retention (``--etcd-s3-retention``), over every member's ``<prefix>-...`` objects."""
        keep = self.config.retention if retention is None else retention
        return prune_records(self.records(), prefix, keep, self.delete, where=self.config.location(""))

    def download(self, name: str, dest: Path, progress: Callable[[int], None] | None = None) -> Path:
        """Fetch ``name`` to ``dest`` and check it against its record's SHA-256 (when recorded)."""
        c = self.config
        from botocore.exceptions import BotoCoreError, ClientError

        expected = ""
        try:
            raw = self.client.get_object(Bucket=c.bucket, Key=c.meta_key(name))["Body"].read()
            expected = SnapshotRecord.from_json(raw).checksum
        except (BotoCoreError, ClientError, ValueError, TypeError):
            expected = ""  # no record (uploaded by hand): the snapshot's own trailer is checked after download
        part = dest.with_name(dest.name + ".part")
        self._once("download", self.client.download_file, c.bucket, c.key(name), str(part), Callback=progress)
        if expected:
            h = hashlib.sha256()
            with open(part, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != expected:
                part.unlink(missing_ok=True)
                raise S3Error(f"S3 object {c.location(name)} does not match its recorded SHA-256 "
                              f"({h.hexdigest()} != {expected}): it is corrupt; restore another snapshot")
        part.replace(dest)
        return dest
