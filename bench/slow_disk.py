"""``check perf`` on an IOPS-limited disk: real etcd 3.4 and quorumkv in a blkio cgroup with a write-IOPS limit.

Issue 21, target 1. The bench puts itself into a new blkio cgroup (cgroup v1) whose
``blkio.throttle.write_iops_device`` limits writes to the disk that holds the data dirs, so every server process
and ``etcdctl`` it starts inherits the limit. For each member count (``--members 1`` and ``3``), each load
(``--load s``, ``m``), each limit (``--limit 400``, ``100``) and each server (etcd first, then quorumkv, one at
a time): a fresh server or cluster is started, ``etcdctl check perf --load=X`` runs against it (about 60 s),
the server is stopped. The write IOs are the cgroup's ``blkio.throttle.io_serviced`` writes on that disk, read
before the server starts and after it has stopped (so its start-up and shutdown writes count too, for both
servers alike); acknowledged writes are ``writes/s x 60`` (check perf runs 60 s and reports successful writes
per second).

    sudo PYTHONPATH=src:. python3.11 -m bench.slow_disk                       # everything (about 20 min)
    sudo PYTHONPATH=src:. python3.11 -m bench.slow_disk --members 1 --load m --limit 100 --server quorumkv

It refuses to start, with one line, where it cannot throttle: not root, no cgroup v1 blkio controller with
throttling (a cgroup v2-only machine is refused too), or a data-dir filesystem that is not on a block device.
The cgroup is removed at the end, also after an error or Ctrl-C (the bench moves itself back to the root
cgroup first; the servers are stopped by then). Exit status 0 when it ran, whatever the figures (a measurement).

TARGET per (members, load, limit): quorumkv writes/s >= 1.0 x etcd's, 0 errors, write IOs per acknowledged write
<= etcd's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/slow_disk.py): make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import check_perf, cluster_perf
from bench._proc import SERVER_KINDS, format_table, log, machine_info
from bench.check_perf import CheckPerfOutput

BLKIO_ROOT = Path("/sys/fs/cgroup/blkio")
DEFAULT_LIMITS = (400, 100)
DEFAULT_LOADS = ("s", "m")
DEFAULT_MEMBERS = (1, 3)
#: ``etcdctl check perf`` (etcd 3.4) runs its load for this long.
CHECK_PERF_SECONDS = 60
TARGET_WRITE_RATIO = 1.0
MAX_ROUNDS = 10


class CannotThrottle(Exception):
    """This machine (or user) cannot limit write IOPS; the message is the one line to print."""


# ------------------------------------------------------------------------------------------------ pure parts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", action="append", type=int, dest="limits", metavar="IOPS",
                        help="write IOPS limit (repeatable; default 400 and 100)")
    parser.add_argument("--load", action="append", choices=check_perf.LOADS, dest="loads",
                        help="check perf load (repeatable; default s and m)")
    parser.add_argument("--members", action="append", type=int, choices=(1, 3), dest="members",
                        help="1 (single node) or 3 (cluster) (repeatable; default both)")
    parser.add_argument("--server", action="append", choices=SERVER_KINDS, help="repeatable; default both")
    parser.add_argument("--rounds", type=int, default=1, help="alternating etcd/quorumkv pairs per case")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a check perf is killed")
    parser.add_argument("--ready-timeout", type=float, default=60.0,
                        help="seconds for a 3-member cluster to serve (it starts on the throttled disk)")
    parser.add_argument("--tmp-dir", type=Path, default=None,
                        help="parent of the servers' data dirs (default: the system temp dir); its disk is limited")
    parser.add_argument("--quorumkv-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for a single-member quorumkv server (repeatable)")
    parser.add_argument("--cgroup-root", type=Path, default=BLKIO_ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the table goes to stderr)")
    args = parser.parse_args(argv)
    args.limits = list(dict.fromkeys(args.limits or DEFAULT_LIMITS))
    args.loads = list(dict.fromkeys(args.loads or DEFAULT_LOADS))
    args.members = list(dict.fromkeys(args.members or DEFAULT_MEMBERS))
    args.kinds = [k for k in SERVER_KINDS if k in (args.server or SERVER_KINDS)]
    if any(not 1 <= n <= 100_000 for n in args.limits):
        parser.error("--limit must be 1..100000 write IOs per second")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}")
    if any("=" not in item for item in args.quorumkv_env):
        parser.error("--quorumkv-env takes NAME=VALUE")
    args.quorumkv_env = dict(item.partition("=")[::2] for item in args.quorumkv_env)
    return args


def parse_io_serviced(text: str, device: str) -> int:
    """Write IOs on ``device`` ("MAJ:MIN") in a ``blkio.throttle.io_serviced`` file (0 if it has no line)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == device and parts[1] == "Write":
            return int(parts[2])
    return 0


def whole_disk(sys_dev_block: Path, device: str) -> str:
    """The disk ("MAJ:MIN") of ``device``: itself, or the disk a partition is on (blkio limits whole disks).
    Raises CannotThrottle if the kernel does not know it as a block device (tmpfs, overlay, NFS...)."""
    node = sys_dev_block / device
    if not node.exists():
        raise CannotThrottle(f"cannot throttle: the data dirs' filesystem (device {device}) is not on a block "
                             "device; pass --tmp-dir on a disk-backed filesystem")
    if (node / "partition").exists():
        return (node.resolve().parent / "dev").read_text().strip()
    return device


def device_of(path: Path, sys_dev_block: Path = Path("/sys/dev/block")) -> str:
    st = os.stat(path)
    return whole_disk(sys_dev_block, f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")


def throttle_problem(cgroup_root: Path, euid: int) -> str | None:
    """Why this process cannot throttle write IOPS (one line), or None."""
    if not sys.platform.startswith("linux"):
        return "cannot throttle: needs Linux (blkio cgroup)"
    if euid != 0:
        return "cannot throttle: creating a blkio cgroup needs root; run it with sudo"
    if not (cgroup_root / "blkio.throttle.write_iops_device").exists():
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return (f"cannot throttle: no cgroup v1 blkio controller at {cgroup_root} (this machine has cgroup v2, "
                    "which this bench does not drive)")
        return f"cannot throttle: no blkio throttling at {cgroup_root} (kernel without CONFIG_BLK_DEV_THROTTLING?)"
    return None


def ios_per_write(write_ios: int | None, writes_per_s: int | None) -> float | None:
    """Write IOs per acknowledged write (acknowledged: writes/s x the 60 s of check perf)."""
    if write_ios is None or not writes_per_s:
        return None
    return write_ios / (writes_per_s * CHECK_PERF_SECONDS)


# ------------------------------------------------------------------------------------------------ the cgroup


class BlkioCgroup:
    """A blkio cgroup this process has moved itself into; ``close`` moves it back and removes the cgroup."""

    def __init__(self, root: Path, device: str) -> None:
        self.root = root
        self.device = device
        self.path = root / f"quorumkv-slow-disk-{os.getpid()}"
        self.path.mkdir()
        try:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            self.path.rmdir()
            raise

    def set_write_iops(self, iops: int) -> None:
        (self.path / "blkio.throttle.write_iops_device").write_text(f"{self.device} {iops}")

    def write_ios(self) -> int:
        return parse_io_serviced((self.path / "blkio.throttle.io_serviced").read_text(), self.device)

    def close(self) -> None:
        (self.root / "cgroup.procs").write_text(str(os.getpid()))
        for _ in range(50):  # children (stopped servers) leave it as they are reaped; bounded wait
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        log(f"could not remove {self.path} (a process still in it?): remove it with rmdir")


@contextlib.contextmanager
def throttled(root: Path, device: str) -> Iterator[BlkioCgroup]:
    """The cgroup, removed on exit; SIGTERM/SIGHUP become KeyboardInterrupt so that it is removed then too."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    group = BlkioCgroup(root, device)
    try:
        yield group
    finally:
        group.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class CaseResult:
    server: str
    members: int
    load: str
    limit: int
    parsed: CheckPerfOutput = field(default_factory=CheckPerfOutput)
    write_ios: int | None = None
    cpu_s: float | None = None
    duration_s: float = 0.0
    loadavg: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ios_per_write(self) -> float | None:
        return ios_per_write(self.write_ios, self.parsed.writes_per_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server, "members": self.members, "load": self.load, "limit": self.limit,
            "writes_per_s": self.parsed.writes_per_s, "slowest_s": self.parsed.slowest_s,
            "errors": self.parsed.errors, "error_kinds": self.parsed.error_kinds, "write_ios": self.write_ios,
            "ios_per_write": self.ios_per_write, "server_cpu_s": self.cpu_s, "duration_s": self.duration_s,
            "loadavg": self.loadavg, "error": self.error,
        }


def run_case(group: BlkioCgroup, kind: str, members: int, load: str, limit: int, tmp_root: Path,
             args: argparse.Namespace) -> CaseResult:
    group.set_write_iops(limit)
    result = CaseResult(kind, members, load, limit, loadavg=[round(x, 2) for x in os.getloadavg()])
    ios0, t0 = group.write_ios(), time.monotonic()
    if members == 1:
        one = check_perf.run_one(kind, load, tmp_root, args.timeout, quorumkv_env=args.quorumkv_env or None)
        result.parsed, result.error = one.parsed, one.error
        result.cpu_s = one.server_stats.cpu_s if one.server_stats else None
    else:
        with tempfile.TemporaryDirectory(prefix=f"slow-disk-{kind}-", dir=tmp_root) as tmp:
            ns = argparse.Namespace(heartbeat_interval=100, election_timeout=1000, ready_timeout=args.ready_timeout)
            try:
                cluster = cluster_perf.start_cluster(kind, Path(tmp), ns)
            except Exception as exc:  # a cluster that does not start is a result, not a crash
                result.error = cluster_perf.first_line(exc)
            else:
                try:
                    perf = cluster_perf.run_check_perf(kind, cluster, load, args.timeout)
                finally:
                    cluster.close()
                result.parsed, result.error, result.cpu_s = perf.parsed, perf.error, perf.members_cpu_s
    result.write_ios = group.write_ios() - ios0
    result.duration_s = round(time.monotonic() - t0, 1)
    return result


def _fmt(value: float | int | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def verdict(etcd: CaseResult, qkv: CaseResult) -> tuple[float | None, float | None, str]:
    """(writes/s ratio, IOs-per-write ratio, MET/NOT MET) of one pair."""
    ew, qw = etcd.parsed.writes_per_s, qkv.parsed.writes_per_s
    wr = qw / ew if ew and qw is not None else None
    ei, qi = etcd.ios_per_write, qkv.ios_per_write
    ir = qi / ei if ei and qi is not None else None
    met = (wr is not None and wr >= TARGET_WRITE_RATIO and qkv.parsed.errors == 0 and qkv.error is None
           and ir is not None and ir <= 1.0)
    return wr, ir, "MET" if met else "NOT MET"


def render(results: Sequence[CaseResult]) -> str:
    headers = ["members", "load", "write IOPS limit", "server", "writes/s", "errors", "slowest (s)", "write IOs",
               "IOs/write", "server CPU (s)", "loadavg"]
    rows = [[str(r.members), r.load, str(r.limit), r.server, _fmt(r.parsed.writes_per_s, ",d"), str(r.parsed.errors),
             _fmt(r.parsed.slowest_s, ".2f"), _fmt(r.write_ios, ",d"), _fmt(r.ios_per_write, ".3f"),
             _fmt(r.cpu_s, ".1f"), " ".join(f"{x:.1f}" for x in r.loadavg)] for r in results]
    out = [format_table(headers, rows), ""]
    for r in results:
        if r.server != "quorumkv":
            continue
        case = (r.members, r.load, r.limit)
        etcd = [e for e in results if e.server == "etcd" and (e.members, e.load, e.limit) == case]
        if not etcd:
            continue
        wr, ir, met = verdict(etcd[-1], r)
        out.append(f"{r.members} member(s), load {r.load}, {r.limit} write IOPS: writes/s ratio {_fmt(wr, '.2f')}, "
                   f"quorumkv errors {r.parsed.errors}, IOs/write ratio {_fmt(ir, '.2f')}: TARGET {met}")
    for r in results:
        if r.parsed.error_kinds:
            out.append(f"errors of {r.server} {r.members} member(s) load {r.load} limit {r.limit}: "
                       + ", ".join(f"{kind} x {n}" for kind, n in r.parsed.error_kinds.items()))
        if r.error:
            out.append(f"ERROR {r.server} {r.members} member(s) load {r.load} limit {r.limit}: {r.error}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = throttle_problem(args.cgroup_root, os.geteuid())
    tmp_parent = args.tmp_dir or Path(tempfile.gettempdir())
    if problem is None:
        try:
            device = device_of(tmp_parent)
        except CannotThrottle as exc:
            problem = str(exc)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    info = machine_info()
    log(f"machine: {info}; throttling device {device} (data dirs under {tmp_parent})")
    results: list[CaseResult] = []
    try:
        with throttled(args.cgroup_root, device) as group, \
                tempfile.TemporaryDirectory(prefix="qkv-slow-disk-", dir=tmp_parent) as tmp_root:
            for members in args.members:
                for load in args.loads:
                    for limit in args.limits:
                        for _ in range(args.rounds):
                            for kind in args.kinds:
                                r = run_case(group, kind, members, load, limit, Path(tmp_root), args)
                                log(f"{kind} {members} member(s) load {load} limit {limit}: "
                                    f"{r.parsed.writes_per_s} writes/s, {r.parsed.errors} errors, slowest "
                                    f"{r.parsed.slowest_s}s, {r.write_ios} write IOs"
                                    + (f", ERROR {r.error}" if r.error else ""))
                                results.append(r)
    except KeyboardInterrupt:
        log("interrupted; the cgroup is removed, figures so far:")
    report = render(results)
    if args.json:
        print(report, file=sys.stderr)
        print(json.dumps({"benchmark": "check perf on an IOPS-limited disk",
                          "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info, "device": device,
                          "results": [r.as_dict() for r in results]}, indent=2))
    else:
        print(f"machine: nproc={info['nproc']}, {info['cpu_model']}, kernel {info['kernel']}; device {device}")
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
