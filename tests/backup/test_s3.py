"""Snapshots and S3 against a real S3-compatible server: moto's server mode, one subprocess for the module on a
loopback port (stopped and restarted on the same port by the retry test). Never a mock object."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from quorumkv.app import RunningMember, start_member
from quorumkv.backup.local import LocalSnapshots
from quorumkv.backup.manager import BackupOptions, SnapshotManager
from quorumkv.backup.restore_source import RestoreSourceError, resolve_restore_source
from quorumkv.backup.s3 import S3Config, S3Snapshots
from quorumkv.cli.ctl import main as ctl_main
from quorumkv.cli.server import main as server_main
from quorumkv.client import Client
from quorumkv.observability.metrics import render
from quorumkv.server.settings import ServerSettings
from quorumkv.server.snapshot import restore
from quorumkv.testing.processes import free_port

pytestmark = pytest.mark.timeout(90)
KEY = "testing"


class Moto:
    """``moto_server`` on 127.0.0.1:port; start/stop by its own pid only."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=out)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-2000:]
                time.sleep(0.1)
        raise AssertionError("moto_server did not start within 20 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    server = Moto(free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_bucket(moto: Moto, name: str) -> None:
    boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=KEY,
                 aws_secret_access_key=KEY).create_bucket(Bucket=name)


def s3_config(moto: Moto, bucket: str, **kw: object) -> S3Config:
    base = S3Config(bucket=bucket, endpoint=f"127.0.0.1:{moto.port}", insecure=True, folder="snaps",
                    access_key=KEY, secret_key=KEY, timeout_s=5.0, backoff_s=0.2, attempts=3)
    return replace(base, **kw)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def _member(tmp: Path, backups: BackupOptions | None = None, clock: FakeClock | None = None
                  ) -> tuple[RunningMember, str]:
    port = free_port()
    settings = ServerSettings(name="m1", data_dir=str(tmp / "data"), advertise_client_urls=[f"http://127.0.0.1:{port}"])
    running = await start_member(settings, [f"http://127.0.0.1:{port}"], backups=backups, snapshot_clock=clock)
    def fill() -> None:
        with Client(f"127.0.0.1:{port}") as c:
            for i in range(5):
                c.put(f"k{i}", f"v{i}")

    await asyncio.get_running_loop().run_in_executor(None, fill)
    return running, f"127.0.0.1:{port}"


async def _wait(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _snapshot(tmp: Path, endpoint: str, manager: SnapshotManager, ts: float) -> Path:
    name = manager.new_name("on-demand", ts)
    part = manager.local.part_path(name)
    with Client(endpoint) as c:
        c.snapshot(to=part)
    return part


async def test_scheduled_upload_with_separate_s3_retention(moto: Moto, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    make_bucket(moto, "sched")
    s3 = s3_config(moto, "sched", retention=3)
    opts = BackupOptions(directory=str(tmp_path / "snaps"), node="m1", retention=2, compress=True, s3=s3)
    member, _ = await _member(tmp_path, opts, FakeClock(1_800_000_000.0))
    try:
        sched = member.snapshot_scheduler
        assert sched is not None
        await _wait(lambda: len(sched.taken) >= 5, 60)
    finally:
        await member.close()
    local = LocalSnapshots(opts.directory).records()
    remote = S3Snapshots(s3).records()
    assert len(local) == 2 and len(remote) == 3  # each side keeps its own count
    assert {r.name for r in local} <= {r.name for r in remote}
    for r in remote:  # every object is what was recorded, byte for byte
        body = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=KEY,
                            aws_secret_access_key=KEY).get_object(Bucket="sched", Key=f"snaps/{r.name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == r.checksum and r.location == f"s3://sched/snaps/{r.name}"
    assert all(r.upload_status == "success" for r in local)
    assert member.stats is not None and member.stats.snapshot_uploads >= 5
    assert member.registry is not None
    metrics = render(member.registry).decode()
    assert "quorumkv_snapshot_uploads_failed_total 0.0" in metrics
    assert f"quorumkv_snapshot_uploads_total {float(member.stats.snapshot_uploads)}" in metrics
    # lowering the S3 retention deletes several at once: that is logged as a warning, never silent
    with caplog.at_level(logging.INFO, logger="quorumkv.backup"):
        gone = SnapshotManager(replace(opts, s3=replace(s3, retention=1))).prune("etcd-snapshot")
    assert len([g for g in gone if g.startswith("s3://")]) == 2
    assert any(r.levelno == logging.WARNING and "shrinks" in r.getMessage() for r in caplog.records)
    assert len(S3Snapshots(s3).records()) == 1


async def test_upload_retried_after_s3_was_down(moto: Moto, tmp_path: Path) -> None:
    member, endpoint = await _member(tmp_path)
    try:
        loop = asyncio.get_running_loop()
        make_bucket(moto, "retry")
        s3 = s3_config(moto, "retry", attempts=8, backoff_s=0.5)
        manager = SnapshotManager(BackupOptions(directory=str(tmp_path / "snaps"), node="m1", s3=s3))
        part = await loop.run_in_executor(None, _snapshot, tmp_path, endpoint, manager, 1000.0)
        moto.stop()

        def come_back() -> None:
            time.sleep(1.5)
            moto.start()
            make_bucket(moto, "retry")  # moto keeps state in memory: the restarted server starts empty

        helper = threading.Thread(target=come_back)
        helper.start()
        record = await loop.run_in_executor(
            None, lambda: manager.complete(part, part.name[:-5], 1000.0, prefix="on-demand", prune=False))
        helper.join(timeout=30)
        assert record.upload_status == "success"
        [remote] = S3Snapshots(s3).records()
        assert remote.checksum == record.checksum

        # down for longer than every retry: the failure is recorded, shown by ls, counted; a later retry uploads
        from quorumkv.observability.metrics import ServerStats

        stats = ServerStats()
        quick = SnapshotManager(BackupOptions(directory=str(tmp_path / "snaps2"), node="m1",
                                              s3=s3_config(moto, "retry", attempts=2, backoff_s=0.1)), stats=stats)
        part = await loop.run_in_executor(None, _snapshot, tmp_path, endpoint, quick, 2000.0)
        moto.stop()
        try:
            record = await loop.run_in_executor(
                None, lambda: quick.complete(part, part.name[:-5], 2000.0, prefix="on-demand", prune=False))
        finally:
            moto.start()
            make_bucket(moto, "retry")
        assert record.status == "success" and record.upload_status == "failed" and record.upload_message
        assert stats.snapshot_uploads_failed == 1
        rows = quick.records()
        assert [(r.location.split(":")[0], r.status) for r in rows if r.name == record.name] == [
            ("file", "success"), ("s3", "failed")]
        assert await loop.run_in_executor(None, quick.retry_failed_uploads) == 1
        assert quick.local.records()[0].upload_status == "success"
    finally:
        await member.close()


async def test_cli_save_ls_and_restore_from_s3(moto: Moto, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    make_bucket(moto, "cli")
    member, endpoint = await _member(tmp_path)
    loop = asyncio.get_running_loop()
    s3_flags = ["--s3", "--s3-bucket", "cli", "--s3-folder", "snaps", "--s3-endpoint", f"127.0.0.1:{moto.port}",
                "--s3-insecure", "--s3-access-key", KEY, "--s3-secret-key", KEY]
    snaps = tmp_path / "snaps"
    try:
        code = await loop.run_in_executor(
            None, server_main, ["etcd-snapshot", *s3_flags, "save", "--endpoints", endpoint, "--dir", str(snaps)])
        assert code == 0
    finally:
        await member.close()
    capsys.readouterr()
    assert server_main(["etcd-snapshot", "ls", "--dir", str(snaps), *s3_flags]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert sorted(line.split()[1].split(":")[0] for line in lines) == ["file", "s3"]
    name = lines[0].split()[0]
    config = s3_config(moto, "cli")
    # a bare name with the S3 settings, verified against the recorded checksum, then restored
    got = resolve_restore_source(name, work_dir=tmp_path / "w", s3=config)
    assert restore(got, tmp_path / "r1", name="m1").revision >= 6
    # quorumkvctl: s3://bucket/folder/name, endpoint and keys from boto3's environment
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert ctl_main(["snapshot", "restore", f"s3://cli/snaps/{name}", "--data-dir", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2").is_dir()
    # a corrupted object is refused before anything is restored
    boto3.client("s3", endpoint_url=moto.url).put_object(Bucket="cli", Key=f"snaps/{name}", Body=b"\0" * 4128)
    with pytest.raises(RestoreSourceError, match="SHA-256"):
        resolve_restore_source(name, work_dir=tmp_path / "w2", s3=config)
    assert ctl_main(["snapshot", "restore", f"s3://cli/snaps/{name}", "--data-dir", str(tmp_path / "r3")]) == 1
    assert not (tmp_path / "r3").exists()
    # delete removes both copies
    assert server_main(["etcd-snapshot", "delete", "--dir", str(snaps), *s3_flags, name]) == 0
    assert S3Snapshots(config).records() == [] and LocalSnapshots(snaps).records() == []


async def test_upload_to_a_missing_bucket_is_a_failed_attempt_not_a_crash(moto: Moto, tmp_path: Path) -> None:
    """boto3 wraps a refused upload (here NoSuchBucket) in its own S3UploadFailedError: the snapshot is still
    taken, each attempt is retried, and the upload is recorded as failed with the cause."""
    member, endpoint = await _member(tmp_path)
    try:
        loop = asyncio.get_running_loop()
        manager = SnapshotManager(BackupOptions(directory=str(tmp_path / "snaps"), node="m1",
                                                s3=s3_config(moto, "no-such-bucket", attempts=2, backoff_s=0.05)))
        part = await loop.run_in_executor(None, _snapshot, tmp_path, endpoint, manager, 3000.0)
        record = await loop.run_in_executor(
            None, lambda: manager.complete(part, part.name[:-5], 3000.0, prefix="on-demand", prune=False))
        assert record.status == "success" and record.upload_status == "failed"
        assert "NoSuchBucket" in record.upload_message and "gave up after 2 attempts" in record.upload_message
    finally:
        await member.close()
