"""``etcdctl check perf`` against a fresh real etcd 3.4 and a fresh quorumkv, one server at a time.

For each ``--load`` (s, m, l, xl; default l) and each server: start the server on free loopback ports with an
empty data dir, run ``etcdctl --endpoints 127.0.0.1:PORT check perf --load=X`` (about 60 s), sample the server's
VmRSS every 0.5 s (peak) and its CPU time (utime+stime delta), stop the server. Prints a table and the
quorumkv/etcd writes/s ratio. Exit status 0 even when the targets are missed: this is a measurement, not a test.

    PYTHONPATH=src:. python3.11 -m bench.check_perf --load s --load l
    PYTHONPATH=src:. python3.11 -m bench.check_perf --load l --json > result.json
    PYTHONPATH=src:. python3.11 -m bench.check_perf --load l --rounds 3   # median of 3 alternating pairs

``etcdctl`` (the Go load generator: 50/200/500/1000 clients for s/m/l/xl, 1 KiB values, rate-limited to
150/1000/8000/15000 writes/s) runs on the same cores as the server, as in production ``check perf`` use.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a file (python bench/check_perf.py): make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import (
    SERVER_KINDS,
    ProcSampler,
    ProcStats,
    children_cpu_seconds,
    format_table,
    log,
    machine_info,
    read_machine_busy_seconds,
    running_server,
    wait_for_quiet,
)
from quorumkv.testing.processes import run_etcdctl

LOADS = ("s", "m", "l", "xl")
#: ``check perf`` target throughput per load (etcd 3.4 ctlv3/command/check.go), for the table.
LOAD_TARGET_WRITES = {"s": 150, "m": 1000, "l": 8000, "xl": 15000}
TARGET_LOAD = "l"
TARGET_RATIO = 0.6

_THROUGHPUT_RE = re.compile(r"^(PASS|FAIL): Throughput (?:is|too low:) (\d+) writes/s$")
_SLOWEST_RE = re.compile(r"^(?:(PASS): )?Slowest request (?:took too long:|took) ([0-9.]+)s$")
_STDDEV_RE = re.compile(r"^(?:(PASS): )?Stddev (?:too high:|is) ([0-9.]+)s$")
_ERROR_RE = re.compile(r"^FAIL: ERROR\((.*)\) -> (\d+)$")


@dataclass
class CheckPerfOutput:
    """What ``etcdctl check perf`` printed, parsed. Fields are None when the line is missing."""

    writes_per_s: int | None = None
    slowest_s: float | None = None
    stddev_s: float | None = None
    #: Total failed requests (sum of the ``FAIL: ERROR(...) -> N`` lines).
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    throughput_pass: bool | None = None
    slowest_pass: bool | None = None
    stddev_pass: bool | None = None
    #: The final ``PASS``/``FAIL`` line.
    summary: str | None = None
    #: Other non-progress lines (e.g. ``FAIL: Cleanup failed ...``, ``Error: ...``), kept for the report.
    other: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return None not in (self.writes_per_s, self.slowest_s, self.stddev_s, self.summary)


#: One frame of etcdctl's progress bar (`` 59 / 60   98.33% 00m01s``), redrawn with ``\\r``. The result lines
#: can follow the last frame with no separator at all (``59 / 60   98.33%PASS: Throughput is ...``) when the
#: bar's goroutine has not printed its final frame yet.
_PROGRESS_RE = re.compile(r"^\s*\d+ / \d+\s+\d+(?:\.\d+)?%(?:\s*\d+m\d+s)?\s*")


def _lines(text: str) -> list[str]:
    """Output lines with the progress bar frames removed."""
    out = []
    for raw in text.splitlines():
        line = _PROGRESS_RE.sub("", raw.rsplit("\r", 1)[-1]).strip()
        if line:
            out.append(line)
    return out


def parse_check_perf(stdout: str, stderr: str = "") -> CheckPerfOutput:
    """Parse the output of ``etcdctl check perf`` (etcd 3.4)."""
    result = CheckPerfOutput()
    for line in _lines(stdout) + _lines(stderr):
        if m := _THROUGHPUT_RE.match(line):
            result.throughput_pass = m.group(1) == "PASS"
            result.writes_per_s = int(m.group(2))
        elif m := _SLOWEST_RE.match(line):
            result.slowest_pass = m.group(1) == "PASS"
            result.slowest_s = float(m.group(2))
        elif m := _STDDEV_RE.match(line):
            result.stddev_pass = m.group(1) == "PASS"
            result.stddev_s = float(m.group(2))
        elif m := _ERROR_RE.match(line):
            count = int(m.group(2))
            result.error_kinds[m.group(1)] = result.error_kinds.get(m.group(1), 0) + count
            result.errors += count
        elif line in ("PASS", "FAIL"):
            result.summary = line
        elif line == "FAIL: too many errors":
            continue
        else:
            result.other.append(line)
    return result


@dataclass
class RunResult:
    server: str
    load: str
    command: list[str]
    returncode: int | None
    duration_s: float
    parsed: CheckPerfOutput
    server_stats: ProcStats | None
    #: CPU seconds used by the etcdctl load generator itself.
    client_cpu_s: float
    loadavg_before: list[float]
    #: etcdctl's output with the progress bar removed (for re-parsing the JSON later).
    output_lines: list[str] = field(default_factory=list)
    #: Machine CPU busy (% of one core) just before the run, and CPU used during the run by processes other
    #: than the server and etcdctl (other engineers' jobs on a shared machine): interference indicators.
    busy_before_percent: float = 0.0
    other_cpu_percent: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "load": self.load,
            "command": self.command,
            "returncode": self.returncode,
            "duration_s": round(self.duration_s, 2),
            "check_perf": asdict(self.parsed),
            "server_stats": self.server_stats.as_dict() if self.server_stats else None,
            "client_cpu_s": round(self.client_cpu_s, 2),
            "loadavg_before": self.loadavg_before,
            "output_lines": self.output_lines,
            "busy_before_percent": self.busy_before_percent,
            "other_cpu_percent": self.other_cpu_percent,
            "error": self.error,
        }


def run_one(
    kind: str, load: str, tmp_root: Path, timeout_s: float, py_spy_out: Path | None = None, wait_quiet_s: float = 0.0,
    quorumkv_args: Sequence[str] = (), quorumkv_env: Mapping[str, str] | None = None,
) -> RunResult:
    """Start a fresh ``kind`` server, run ``check perf --load=LOAD`` against it, stop it."""
    with tempfile.TemporaryDirectory(prefix=f"check-perf-{kind}-{load}-", dir=tmp_root) as tmp:
        with running_server(kind, Path(tmp), quorumkv_args, quorumkv_env) as server:
            return measure(kind, load, server, timeout_s, py_spy_out, wait_quiet_s)


class MeasuredServer(Protocol):
    """What :func:`measure` needs of a running server: its pid (CPU and RSS are sampled there, children
    included) and client port."""

    @property
    def pid(self) -> int: ...
    @property
    def client_port(self) -> int: ...
    def alive(self) -> bool: ...
    def log_tail(self, max_lines: int = 40) -> str: ...
    @property
    def returncode(self) -> int | None: ...


def measure(kind: str, load: str, server: MeasuredServer, timeout_s: float, py_spy_out: Path | None = None,
            wait_quiet_s: float = 0.0) -> RunResult:
    """Run ``etcdctl check perf --load=LOAD`` against the running ``server`` and measure it."""
    endpoint = f"127.0.0.1:{server.client_port}"
    command = ["etcdctl", "--endpoints", endpoint, "check", "perf", f"--load={load}"]
    log(f"{kind} pid {server.pid} on {endpoint}: {' '.join(command)}")
    busy_before = wait_for_quiet(wait_quiet_s) if wait_quiet_s > 0 else 0.0
    loadavg = [round(x, 2) for x in os.getloadavg()]
    profiler = _start_py_spy(server.pid, py_spy_out) if py_spy_out is not None else None
    sampler = ProcSampler(server.pid, interval_s=0.5)
    cpu_children0 = children_cpu_seconds()
    machine0 = read_machine_busy_seconds()
    t0 = time.monotonic()
    sampler.start()
    error = None
    try:
        proc = run_etcdctl(endpoint, "check", "perf", f"--load={load}", timeout_s=timeout_s)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        stderr, rc, error = "", None, f"etcdctl check perf timed out after {timeout_s}s"
    duration = time.monotonic() - t0
    stats = sampler.stop() if server.alive() else None
    client_cpu = children_cpu_seconds() - cpu_children0
    machine_cpu = read_machine_busy_seconds() - machine0
    other = None
    if stats is not None and duration > 0:
        other = round(100 * max(0.0, machine_cpu - stats.cpu_s - client_cpu) / duration, 1)
    if profiler is not None:
        _finish_py_spy(profiler)
    if not server.alive():
        error = f"{kind} exited during the run (code {server.returncode}); log tail:\n{server.log_tail(20)}"
    parsed = parse_check_perf(stdout, stderr)
    if error is None and not parsed.complete:
        error = f"incomplete check perf output (rc {rc}): {(stdout[-300:] + stderr[-500:]).strip()!r}"
    output_lines = _lines(stdout) + _lines(stderr)
    return RunResult(
        kind, load, command, rc, duration, parsed, stats, client_cpu, loadavg, output_lines, busy_before, other, error
    )


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """Profile ``pid`` with py-spy (a dev tool, not a dependency) for 20 s, as a flame graph + raw text."""
    argv = ["py-spy", "record", "--pid", str(pid), "--duration", "20", "--rate", "100", "--function",
            "--subprocesses", "--format"]
    if out.suffix == ".svg":
        argv += ["flamegraph", "-o", str(out)]
    else:
        argv += ["raw", "-o", str(out)]
    log(f"profiling: {' '.join(argv)}")
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish_py_spy(proc: subprocess.Popen[bytes]) -> None:
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    if proc.returncode != 0:
        log(f"py-spy exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")


def _fmt(value: float | int | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def round_ratios(results: list[RunResult], load: str) -> list[float]:
    """quorumkv writes/s divided by etcd writes/s for ``load``, one per round: the n-th etcd run is paired with
    the n-th quorumkv run (measured right after it); pairs with a missing or zero figure are left out."""
    etcd = [r.parsed.writes_per_s for r in results if r.load == load and r.server == "etcd"]
    qkv = [r.parsed.writes_per_s for r in results if r.load == load and r.server == "quorumkv"]
    return [q / e for e, q in zip(etcd, qkv, strict=False) if e and q is not None]


def ratio(results: list[RunResult], load: str) -> float | None:
    """The median of the rounds' ratios for ``load`` (None if no round has both figures). The machine's
    speed drifts by 10-20 % between minutes, so one pair is a sample and the median of alternating pairs the
    figure to compare with a target."""
    ratios = round_ratios(results, load)
    return statistics.median(ratios) if ratios else None


def target_line(results: list[RunResult]) -> str:
    r = ratio(results, TARGET_LOAD)
    if r is None:
        return f"TARGET: writes/s ratio >= {TARGET_RATIO} on load {TARGET_LOAD}: NOT MEASURED"
    verdict = "MET" if r >= TARGET_RATIO else "NOT MET"
    return f"TARGET: writes/s ratio >= {TARGET_RATIO} on load {TARGET_LOAD}: {verdict} (ratio {r:.2f})"


def render(results: list[RunResult]) -> str:
    headers = [
        "server",
        "load",
        "writes/s",
        "slowest request (s)",
        "stddev (s)",
        "errors",
        "check perf",
        "peak RSS (MB)",
        "server CPU (s)",
        "server CPU %",
        "main proc CPU %",
        "etcdctl CPU (s)",
        "other procs CPU %",
    ]
    rows = []
    for r in results:
        p, s = r.parsed, r.server_stats
        rows.append(
            [
                r.server,
                r.load,
                _fmt(p.writes_per_s, ",d"),
                _fmt(p.slowest_s, ".3f"),
                _fmt(p.stddev_s, ".4f"),
                str(p.errors),
                p.summary or "—",
                _fmt(s.peak_rss_mb if s else None, ".0f"),
                _fmt(s.cpu_s if s else None, ".1f"),
                _fmt(s.cpu_percent if s else None, ".0f"),
                _fmt(100 * s.main_cpu_s / s.wall_s if s and s.wall_s else None, ".0f"),
                f"{r.client_cpu_s:.1f}",
                _fmt(r.other_cpu_percent, ".0f"),
            ]
        )
    out = [format_table(headers, rows), ""]
    for load in dict.fromkeys(r.load for r in results):
        rt = ratio(results, load)
        rounds = round_ratios(results, load)
        each = f" (median of rounds: {', '.join(f'{x:.2f}' for x in rounds)})" if len(rounds) > 1 else ""
        out.append(f"ratio quorumkv/etcd writes/s, load {load}: {'—' if rt is None else f'{rt:.2f}'}{each}")
    for r in results:
        if r.error:
            out.append(f"ERROR {r.server} load {r.load}: {r.error}")
        for line in r.parsed.other:
            out.append(f"note {r.server} load {r.load}: {line}")
    out.append(target_line(results))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", action="append", choices=LOADS, help="check perf load (repeatable; default l)")
    parser.add_argument(
        "--server", action="append", choices=SERVER_KINDS, help="servers to measure (repeatable; default both)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the table goes to stderr)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every server this many times, alternating (etcd, quorumkv, etcd, ...); the "
                        "ratio is the median of the rounds' ratios")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before a check perf is killed")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="parent of the servers' data dirs")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for the machine to be < 30 %% busy (0: don't)",
    )
    parser.add_argument(
        "--py-spy-out",
        type=Path,
        default=None,
        help="profile quorumkv with py-spy for 20 s of each run (.svg: flame graph, else raw collapsed stacks); "
        "skews the figures, so use it for profiling runs only",
    )
    parser.add_argument("--quorumkv-arg", action="append", default=[], metavar="ARG",
                        help="extra flag for the quorumkv server (repeatable), e.g. --quorumkv-arg=--log-level=warn")
    parser.add_argument("--quorumkv-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for the quorumkv server (repeatable)")
    args = parser.parse_args(argv)
    qkv_env = dict(item.partition("=")[::2] for item in args.quorumkv_env)
    if args.quorumkv_arg or qkv_env:
        log(f"quorumkv extra args {args.quorumkv_arg}, env {qkv_env}")
    loads: list[str] = list(dict.fromkeys(args.load or ["l"]))
    kinds: list[str] = [k for k in SERVER_KINDS if k in (args.server or SERVER_KINDS)]
    info = machine_info()
    log(f"machine: {info}")
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="qkv-check-perf-", dir=args.tmp_dir) as tmp_root:
        for load, _round in ((load, n) for load in loads for n in range(max(1, args.rounds))):
            for kind in kinds:  # strictly one server at a time
                profile = args.py_spy_out if kind == "quorumkv" else None
                result = run_one(kind, load, Path(tmp_root), args.timeout, profile, args.wait_quiet,
                                 args.quorumkv_arg, qkv_env or None)
                log(
                    f"{kind} load {load}: {result.parsed.writes_per_s} writes/s, "
                    f"slowest {result.parsed.slowest_s}s, errors {result.parsed.errors}"
                    + (f", ERROR {result.error}" if result.error else "")
                )
                results.append(result)
    table = render(results)
    if args.json:
        print(table, file=sys.stderr)
        document = {
            "benchmark": "etcdctl check perf",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": info,
            "quorumkv_args": args.quorumkv_arg,
            "quorumkv_env": qkv_env,
            "results": [r.as_dict() for r in results],
            "ratios": {load: ratio(results, load) for load in loads},
            "round_ratios": {load: round_ratios(results, load) for load in loads},
            "target": target_line(results),
        }
        print(json.dumps(document, indent=2))
    else:
        print(f"machine: nproc={info['nproc']}, {info['cpu_model']}, kernel {info['kernel']}")
        print("etcdctl (the load generator) shares the cores with the server.\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
