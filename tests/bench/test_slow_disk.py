"""bench.slow_disk: argument parsing, the refusal line, IO accounting, the device of a data dir, the verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import slow_disk  # noqa: E402
from bench.check_perf import parse_check_perf  # noqa: E402

IO_SERVICED = """\
7:0 Read 0
7:0 Write 0
254:0 Read 12
254:0 Write 31748
254:0 Sync 31700
254:0 Async 60
254:0 Total 31760
Total 31760
"""


def test_defaults_and_choices() -> None:
    args = slow_disk.parse_args([])
    assert (args.limits, args.loads, args.members, args.kinds) == ([400, 100], ["s", "m"], [1, 3], ["etcd", "quorumkv"])
    args = slow_disk.parse_args(["--limit", "100", "--limit", "100", "--load", "m", "--members", "3",
                                 "--server", "quorumkv"])
    assert (args.limits, args.loads, args.members, args.kinds) == ([100], ["m"], [3], ["quorumkv"])
    assert slow_disk.parse_args(["--quorumkv-env", "A=1=2"]).quorumkv_env == {"A": "1=2"}
    for bad in (["--limit", "0"], ["--members", "2"], ["--rounds", "0"], ["--load", "xxl"], ["--quorumkv-env", "A"]):
        with pytest.raises(SystemExit):
            slow_disk.parse_args(bad)


def test_write_ios_are_the_device_write_line() -> None:
    assert slow_disk.parse_io_serviced(IO_SERVICED, "254:0") == 31748
    assert slow_disk.parse_io_serviced(IO_SERVICED, "8:0") == 0
    assert slow_disk.parse_io_serviced("", "254:0") == 0


def test_ios_per_acknowledged_write() -> None:
    # check perf runs 60 s: 31,748 IOs for 200 writes/s is 31,748 / 12,000
    assert slow_disk.ios_per_write(31748, 200) == pytest.approx(31748 / 12000)
    assert slow_disk.ios_per_write(None, 200) is None
    assert slow_disk.ios_per_write(100, 0) is None
    assert slow_disk.ios_per_write(100, None) is None


def test_refusals_are_one_line(tmp_path: Path) -> None:
    assert slow_disk.throttle_problem(tmp_path, 1000) == \
        "cannot throttle: creating a blkio cgroup needs root; run it with sudo"
    problem = slow_disk.throttle_problem(tmp_path, 0)  # no blkio.throttle.* files there
    assert problem is not None and problem.startswith("cannot throttle: no ") and "\n" not in problem
    (tmp_path / "blkio.throttle.write_iops_device").write_text("")
    assert slow_disk.throttle_problem(tmp_path, 0) is None


def test_refused_run_prints_the_line_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert slow_disk.main(["--cgroup-root", str(tmp_path), "--tmp-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cannot throttle: ")
    assert list(tmp_path.iterdir()) == []


def test_whole_disk_of_a_partition(tmp_path: Path) -> None:
    disk = tmp_path / "devices" / "vda"
    (disk / "vda1").mkdir(parents=True)
    (disk / "dev").write_text("254:0\n")
    (disk / "vda1" / "dev").write_text("254:1\n")
    (disk / "vda1" / "partition").write_text("1\n")
    links = tmp_path / "dev-block"
    links.mkdir()
    (links / "254:0").symlink_to(disk)
    (links / "254:1").symlink_to(disk / "vda1")
    assert slow_disk.whole_disk(links, "254:1") == "254:0"
    assert slow_disk.whole_disk(links, "254:0") == "254:0"
    with pytest.raises(slow_disk.CannotThrottle, match="not on a block device"):
        slow_disk.whole_disk(links, "0:45")  # tmpfs, overlay: no block device


def _case(server: str, writes: int, errors: int, ios: int) -> slow_disk.CaseResult:
    text = f"PASS: Throughput is {writes} writes/s\nPASS: Slowest request took 0.5s\nPASS: Stddev is 0.01s\nPASS\n"
    if errors:
        text += f"FAIL: ERROR(etcdserver: request timed out) -> {errors}\n"
    return slow_disk.CaseResult(server, 1, "m", 100, parsed=parse_check_perf(text), write_ios=ios)


def test_verdict_needs_writes_no_errors_and_no_more_ios() -> None:
    etcd = _case("etcd", 1000, 0, 60_000)
    assert slow_disk.verdict(etcd, _case("quorumkv", 1000, 0, 30_000)) == (1.0, 0.5, "MET")
    assert slow_disk.verdict(etcd, _case("quorumkv", 990, 0, 30_000))[2] == "NOT MET"
    assert slow_disk.verdict(etcd, _case("quorumkv", 1000, 3, 30_000))[2] == "NOT MET"
    assert slow_disk.verdict(etcd, _case("quorumkv", 1000, 0, 61_000))[2] == "NOT MET"
    table = slow_disk.render([etcd, _case("quorumkv", 1000, 0, 30_000)])
    assert "1 member(s), load m, 100 write IOPS: writes/s ratio 1.00, quorumkv errors 0, IOs/write ratio 0.50: " \
           "TARGET MET" in table
    table = slow_disk.render([etcd, _case("quorumkv", 1000, 7, 30_000)])
    assert "errors of quorumkv 1 member(s) load m limit 100: etcdserver: request timed out x 7" in table
