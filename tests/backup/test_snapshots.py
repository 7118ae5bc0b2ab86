"""K3s-style snapshots without S3: the schedule on a fake clock (retention, compression), one real-time run,
leader-only firing, failure records, restore sources, progress output, and ``quorumkv etcd-snapshot``."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from quorumkv.app import RunningMember, start_member
from quorumkv.backup.local import LocalSnapshots, snapshot_name
from quorumkv.backup.manager import BackupOptions, SnapshotManager
from quorumkv.backup.progress import Progress
from quorumkv.backup.restore_source import RestoreSourceError, resolve_restore_source
from quorumkv.backup.scheduler import SnapshotScheduler, cron_schedule
from quorumkv.cli.ctl import main as ctl_main
from quorumkv.cli.server import main as server_main
from quorumkv.client import Client
from quorumkv.server.settings import ServerSettings
from quorumkv.server.snapshot import SnapshotError, restore, verify
from quorumkv.testing.processes import free_port

pytestmark = pytest.mark.timeout(60)
HALF_DAY = 12 * 3600


class FakeClock:
    """Time moves only when the scheduler sleeps: each sleep jumps straight to its deadline."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def _member(tmp: Path, backups: BackupOptions | None = None, clock: FakeClock | None = None
                  ) -> tuple[RunningMember, str]:
    port = free_port()
    settings = ServerSettings(name="m1", data_dir=str(tmp / "data"), advertise_client_urls=[f"http://127.0.0.1:{port}"])
    running = await start_member(settings, [f"http://127.0.0.1:{port}"], backups=backups, snapshot_clock=clock)
    return running, f"127.0.0.1:{port}"


async def _wait(pred: Any, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _put(endpoint: str, n: int, prefix: str = "k") -> None:
    def work() -> None:
        with Client(endpoint) as c:
            for i in range(n):
                c.put(f"{prefix}{i}", f"v{i}")

    await asyncio.get_running_loop().run_in_executor(None, work)


async def test_schedule_on_fake_clock_keeps_retention_and_compresses(tmp_path: Path) -> None:
    start = 1_800_000_000.0  # a whole multiple of 12 h in UTC; the cron is evaluated in local time
    opts = BackupOptions(directory=str(tmp_path / "snaps"), node="m1", retention=3, compress=True)
    clock = FakeClock(start)
    member, endpoint = await _member(tmp_path, opts, clock)
    try:
        await _put(endpoint, 5)
        sched = member.snapshot_scheduler
        assert sched is not None
        # the fake clock runs while the puts do: snapshots may already be taken; the three kept at the end
        # must all come after the last put
        after_puts = len(sched.taken)
        await _wait(lambda: len(sched.taken) >= max(5, after_puts + 3), 40)
    finally:
        await member.close()
    taken = sched.taken
    # one snapshot every 12 h of fake time, named <name>-<node>-<unix ts>.zip
    stamps = [int(r.created_unix) for r in taken[:5]]
    assert all(b - a == HALF_DAY for a, b in itertools.pairwise(stamps))
    assert [r.name for r in taken[:5]] == [snapshot_name("etcd-snapshot", "m1", t, compressed=True) for t in stamps]
    local = LocalSnapshots(opts.directory)
    kept = [r for r in local.records() if r.status == "success"]
    assert len(kept) == 3  # never more than the retention
    # the newest are kept (one more may have finished while the member closed)
    assert kept[-1].created_unix >= taken[-1].created_unix
    assert [int(r.created_unix) for r in kept] == [int(kept[0].created_unix) + i * HALF_DAY for i in range(3)]
    files = sorted(p.name for p in Path(opts.directory).iterdir() if p.is_file())
    assert files == sorted(r.name for r in kept)
    rec = kept[-1]
    assert rec.compressed and rec.revision >= 6 and rec.size == (Path(opts.directory) / rec.name).stat().st_size
    # the zip holds a verified etcd snapshot that restores
    plain = resolve_restore_source(str(Path(opts.directory) / rec.name), work_dir=tmp_path / "work")
    restored = restore(plain, tmp_path / "restored", name="m1")
    assert restored.revision == rec.revision


class NotLeader:
    is_leader = False

    async def snapshot(self) -> AsyncIterator[Any]:  # pragma: no cover - must not be called
        raise AssertionError("a follower took a scheduled snapshot")
        yield


async def test_only_the_leader_takes_scheduled_snapshots(tmp_path: Path) -> None:
    opts = BackupOptions(directory=str(tmp_path / "snaps"), node="f1")
    clock = FakeClock(1_800_000_000.0)
    sched = SnapshotScheduler(NotLeader(), SnapshotManager(opts), clock=clock)
    task = asyncio.create_task(sched.run())
    await _wait(lambda: sched.skipped >= 3, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sched.taken == [] and not (tmp_path / "snaps").exists()


class BrokenStream:
    is_leader = True

    async def snapshot(self) -> AsyncIterator[Any]:
        yield type("Chunk", (), {"blob": b"partial"})()
        raise RuntimeError("stream broke")


async def test_a_failed_scheduled_snapshot_is_recorded_and_the_schedule_goes_on(tmp_path: Path) -> None:
    opts = BackupOptions(directory=str(tmp_path / "snaps"), node="b1")
    sched = SnapshotScheduler(BrokenStream(), SnapshotManager(opts), clock=FakeClock(1_800_000_000.0))
    task = asyncio.create_task(sched.run())
    local = LocalSnapshots(opts.directory)
    await _wait(lambda: len(local.records()) >= 2, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recs = local.records()
    assert {(r.status, r.message) for r in recs} == {("failed", "stream broke")}
    assert not any(p.name.endswith(".part") for p in Path(opts.directory).iterdir())


async def test_real_time_schedule_with_seconds_field(tmp_path: Path) -> None:
    """The documented test hook: a six-field cron (seconds) fires every second on the real clock."""
    opts = BackupOptions(directory=str(tmp_path / "snaps"), node="m1", retention=2, cron="* * * * * */1")
    member, endpoint = await _member(tmp_path, opts)
    try:
        await _put(endpoint, 3)
        sched = member.snapshot_scheduler
        assert sched is not None
        await _wait(lambda: len(sched.taken) >= 3, 30)
    finally:
        await member.close()
    kept = LocalSnapshots(opts.directory).records()
    assert len(kept) == 2 and all(r.status == "success" for r in kept)
    for r in kept:
        verify(Path(opts.directory) / r.name)
    assert member.stats is not None and member.stats.snapshots_saved >= 3


def test_cron_schedule_defaults_to_every_twelve_hours() -> None:
    nxt = cron_schedule("0 */12 * * *")
    first = nxt(1_800_000_000.0)
    assert nxt(first) - first == HALF_DAY


def test_failed_snapshot_is_recorded_and_kept_by_retention(tmp_path: Path) -> None:
    manager = SnapshotManager(BackupOptions(directory=str(tmp_path), node="n", retention=1))
    part = manager.local.part_path("etcd-snapshot-n-100")
    part.write_bytes(b"\0" * 4128)  # framed like a snapshot, but its digest is wrong
    with pytest.raises(SnapshotError):
        manager.complete(part, "etcd-snapshot-n-100", 100.0, prefix="etcd-snapshot", prune=True)
    manager.prune("etcd-snapshot")
    [rec] = manager.local.records()
    assert (rec.status, rec.name) == ("failed", "etcd-snapshot-n-100")
    assert "SHA-256" in rec.message or "not a snapshot" in rec.message
    assert not part.exists()


def test_restore_source_rejects_damaged_zip_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "s.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("s", b"\1" * 4128)
    with pytest.raises(RestoreSourceError, match="damaged"):
        resolve_restore_source(str(bad), work_dir=tmp_path / "w")
    with pytest.raises(RestoreSourceError, match="does not exist"):
        resolve_restore_source(str(tmp_path / "nope"), work_dir=tmp_path / "w")


def test_progress_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    with Progress("uploading x", total=10, stream=out, every=0.0) as p:
        p.advance(4)
        p.advance(6)
    assert out.getvalue().splitlines() == [
        "uploading x: started", "uploading x: 4 of 10 bytes", "uploading x: 10 of 10 bytes",
        "uploading x: done (10 bytes)"]


def test_progress_bar_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with Progress("uploading x", total=10, stream=out) as p:
        p.advance(10)
    assert "10/10 bytes" in out.getvalue() and "started" not in out.getvalue()


async def test_etcd_snapshot_cli_save_ls_delete_prune_and_ctl_restore_zip(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    member, endpoint = await _member(tmp_path)
    snaps = tmp_path / "snaps"
    loop = asyncio.get_running_loop()

    async def run(*argv: str) -> int:
        return await loop.run_in_executor(None, server_main, ["etcd-snapshot", *argv])

    try:
        await _put(endpoint, 4)
        assert await run("--endpoints", endpoint, "--dir", str(snaps), "save") == 0
        assert await run("save", "--endpoints", endpoint, "--etcd-snapshot-dir", str(snaps), "--compress") == 0
        assert await run("save", "--endpoints", endpoint, "--dir", str(snaps), "--name", "keep") == 0
    finally:
        await member.close()
    out = capsys.readouterr().out
    assert "Snapshot on-demand-m1-" in out and ".zip saved." in out
    assert "saving snapshot on-demand-m1-" in out and ": done (" in out  # plain progress lines (not a terminal)
    assert await run("ls", "--dir", str(snaps), "-o", "json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 3 and {r["status"] for r in listed} == {"success"}
    assert all(r["node"] == "m1" and r["revision"] >= 5 and len(r["checksum"]) == 64 for r in listed)
    zipped = next(r["name"] for r in listed if r["compressed"])
    # quorumkvctl snapshot restore takes the compressed snapshot directly
    assert ctl_main(["snapshot", "restore", str(snaps / zipped), "--data-dir", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r").is_dir()
    assert await run("ls", "--dir", str(snaps)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["Name", "Location", "Size", "Created", "Status"] and len(table) == 4
    # prune on-demand down to 1 (the "keep" snapshot has another prefix and stays)
    assert await run("prune", "--dir", str(snaps), "--snapshot-retention", "1") == 0
    names = sorted(r.name for r in LocalSnapshots(snaps).records())
    assert len(names) == 2 and any(n.startswith("keep-m1-") for n in names)
    assert await run("delete", "--dir", str(snaps), *names) == 0
    assert LocalSnapshots(snaps).records() == []
    assert await run("delete", "--dir", str(snaps), "nope") == 1
    assert "no snapshot named nope" in capsys.readouterr().err
    assert await run("prune", "--dir", str(snaps), "--snapshot-retention", "0") == 2


def test_only_the_leader_of_a_three_member_cluster_takes_scheduled_snapshots(tmp_path: Path) -> None:
    """End to end through the server flags: every member is configured to snapshot every second."""
    import time

    from quorumkv.testing.cluster import start_quorumkv_cluster

    with start_quorumkv_cluster(3, tmp_path, extra_args=["--etcd-snapshot-schedule-cron=* * * * * */1",
                                                         "--etcd-snapshot-retention=100"]) as cluster:
        leader = cluster.leader()
        snaps = {m.name: m.data_dir / "snapshots" for m in cluster.running()}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(LocalSnapshots(snaps[leader]).records()) < 3:
            time.sleep(0.2)
        if cluster.leader() != leader:  # pragma: no cover - an election during the test makes it meaningless
            pytest.skip("leadership changed during the test")
        counts = {name: len(LocalSnapshots(d).records()) for name, d in snaps.items()}
    assert counts[leader] >= 3, counts
    assert all(n == 0 for name, n in counts.items() if name != leader), counts
    assert all(r.name.startswith(f"etcd-snapshot-{leader}-") for r in LocalSnapshots(snaps[leader]).records())
