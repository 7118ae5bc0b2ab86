"""3-member clusters, real etcd 3.4 vs quorumkv: check perf writes/s, Range throughput, leader failover.

For each server kind (``--server etcd|quorumkv``, repeatable, default both; one cluster at a time) and each
part (``--part``, repeatable, default all), a fresh 3-member cluster is started on loopback with
:mod:`quorumkv.testing.cluster` (etcd's clustering flags, ``--heartbeat-interval``/``--election-timeout`` as
given, etcd's defaults 100/1000 ms unless changed), measured, and stopped:

``check_perf``
    ``etcdctl --endpoints=<all three client URLs> check perf --load=l`` (as etcd's docs run it against a
    cluster; about 60 s).  writes/s, slowest request, stddev, errors; peak RSS and CPU of the members.
    TARGET: quorumkv/etcd writes/s >= 0.5.
``range``
    preload ``--keys`` keys through the leader, then ``--clients`` closed-loop single-key Range clients
    (``bench.range_read``'s workers) spread round-robin over the three members, linearizable then
    serializable, ``--duration`` s each.  Prints both read targets (issue 21): quorumkv's linearizable reads/s
    >= 0.8 x its own serializable reads/s, and >= 0.6 x etcd's linearizable reads/s.
    (``--part range`` alone: ``PYTHONPATH=src:. python3.11 -m bench.cluster_perf --part range``.)
``failover``
    ``--trials`` times (default 10): SIGKILL the leader, then Put to both survivors (a new attempt every
    20 ms on each, 2 s timeout per attempt) until one succeeds; the time from the kill to that first
    acknowledged write.  The killed member is restarted on its data and caught up before the next trial.
    Median, min and max.

A cluster that does not start (quorumkv before clustering is wired in: ``python -m quorumkv`` refuses a
multi-member ``--initial-cluster``) or a part that fails is reported as an error in the table, not a crash;
the exit status is 0 either way (a measurement, not a test).

    PYTHONPATH=src:. python3.11 -m bench.cluster_perf --server etcd
    PYTHONPATH=src:. python3.11 -m bench.cluster_perf --part failover --trials 10 --json > failover.json
    PYTHONPATH=src:. python3.11 -m bench.cluster_perf --part check_perf --rounds 3   # median of 3 alternating pairs

Everything (three members per cluster, etcdctl, the Python load generator) shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/cluster_perf.py): make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench import range_read
from bench._proc import (
    SERVER_KINDS,
    ProcSampler,
    ProcStats,
    children_cpu_seconds,
    format_table,
    log,
    machine_info,
    read_machine_busy_seconds,
    wait_for_quiet,
)
from bench.check_perf import LOADS, CheckPerfOutput, parse_check_perf
from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from quorumkv.testing.cluster import Cluster, start_etcd_cluster, start_quorumkv_cluster
from quorumkv.testing.processes import run_etcdctl

PARTS = ("check_perf", "range", "failover")
MEMBERS = 3
TARGET_LOAD = "l"
TARGET_RATIO = 0.5
#: Failover: a new Put attempt on each survivor this often, each with this timeout; give up after the deadline.
FAILOVER_ATTEMPT_EVERY_S = 0.02
FAILOVER_ATTEMPT_TIMEOUT_S = 2.0
FAILOVER_DEADLINE_S = 30.0
MAX_TRIALS = 100
MAX_ROUNDS = 20

StartCluster = Callable[[str, Path, argparse.Namespace], Cluster]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# ------------------------------------------------------------------------------------------------ results


@dataclass
class CheckPerfResult:
    server: str
    load: str
    command: list[str]
    returncode: int | None = None
    duration_s: float = 0.0
    parsed: CheckPerfOutput = field(default_factory=CheckPerfOutput)
    member_stats: dict[str, ProcStats] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    #: CPU used during the run by processes other than the members and etcdctl (% of one core): interference.
    other_cpu_percent: float | None = None
    error: str | None = None

    @property
    def peak_rss_mb(self) -> float | None:
        return max((s.peak_rss_mb for s in self.member_stats.values()), default=None)

    @property
    def members_cpu_s(self) -> float | None:
        return round(sum(s.cpu_s for s in self.member_stats.values()), 2) if self.member_stats else None


@dataclass
class RangeResult:
    server: str
    mode: str
    stats: range_read.ReadStats | None = None
    window_cpu: range_read.WindowCpu | None = None
    error: str | None = None


@dataclass
class FailoverResult:
    server: str
    #: Seconds from SIGKILL of the leader to the first acknowledged Put, one per successful trial.
    times_s: list[float] = field(default_factory=list)
    #: Which member was killed and which survivor acknowledged first, per trial.
    trials: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None


@dataclass
class SideResult:
    """Everything measured for one server kind; a part that could not run carries ``error``."""

    server: str
    check_perf: CheckPerfResult | None = None
    range: list[RangeResult] = field(default_factory=list)
    failover: FailoverResult | None = None


# ------------------------------------------------------------------------------------------------ clusters


def start_cluster(kind: str, tmp: Path, args: argparse.Namespace) -> Cluster:
    common: dict[str, Any] = {
        "heartbeat_ms": args.heartbeat_interval,
        "election_ms": args.election_timeout,
        "ready_timeout_s": args.ready_timeout,
    }
    if kind == "etcd":
        return start_etcd_cluster(MEMBERS, tmp, **common)
    if kind == "quorumkv":
        return start_quorumkv_cluster(MEMBERS, tmp, **common)
    raise ValueError(f"unknown server kind {kind!r}")


def grpc_multi_target(cluster: Cluster) -> str:
    """One gRPC target naming every member (``ipv4:127.0.0.1:A,127.0.0.1:B,...``)."""
    return "ipv4:" + ",".join(m.grpc_target for m in cluster.members)


# ------------------------------------------------------------------------------------------------ parts


def run_check_perf(kind: str, cluster: Cluster, load: str, timeout_s: float) -> CheckPerfResult:
    command = ["etcdctl", f"--endpoints={cluster.endpoints}", "check", "perf", f"--load={load}"]
    result = CheckPerfResult(kind, load, command)
    log(f"{kind}: {' '.join(command)}")
    samplers = {m.name: ProcSampler(m.pid) for m in cluster.members if m.pid is not None}
    cpu_children0 = children_cpu_seconds()
    machine0 = read_machine_busy_seconds()
    t0 = time.monotonic()
    for sampler in samplers.values():
        sampler.start()
    try:
        proc = run_etcdctl(cluster.endpoints, "check", "perf", f"--load={load}", timeout_s=timeout_s)
        stdout, stderr, result.returncode = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        stderr, result.error = "", f"etcdctl check perf timed out after {timeout_s}s"
    result.duration_s = round(time.monotonic() - t0, 2)
    for name, sampler in samplers.items():
        try:
            result.member_stats[name] = sampler.stop()
        except OSError:  # the member died during the run
            result.error = result.error or f"member {name} exited during check perf"
    result.client_cpu_s = round(children_cpu_seconds() - cpu_children0, 2)
    if result.duration_s > 0 and result.members_cpu_s is not None:
        other_s = read_machine_busy_seconds() - machine0 - result.members_cpu_s - result.client_cpu_s
        result.other_cpu_percent = round(100 * max(0.0, other_s) / result.duration_s, 1)
    result.parsed = parse_check_perf(stdout, stderr)
    if result.error is None and not result.parsed.complete:
        result.error = f"etcdctl check perf exited {result.returncode} without a complete result"
    return result


def run_range(kind: str, cluster: Cluster, args: argparse.Namespace) -> list[RangeResult]:
    leader = cluster.member(cluster.leader())
    log(f"{kind}: preloading {args.keys} keys x {args.value_size} B through the leader {leader.name}")
    rate = range_read.preload(leader.grpc_target, args.keys, args.value_size)
    log(f"{kind}: preload at {rate:,.0f} puts/s")
    target = grpc_multi_target(cluster)
    pids = [m.pid for m in cluster.members if m.pid is not None]
    out: list[RangeResult] = []
    for mode in range_read.MODES:
        if args.wait_quiet > 0:
            wait_for_quiet(args.wait_quiet)
        try:
            stats, window = range_read.run_load(
                target, args.keys, args.clients, args.procs, 1, mode == "serializable", args.warmup,
                args.duration, pids,
            )  # fmt: skip
        except Exception as exc:  # a measurement: report, carry on with the next mode
            out.append(RangeResult(kind, mode, error=first_line(exc)))
            continue
        log(f"{kind} {mode}: {stats.reads_per_s:,.0f} reads/s, p50 {stats.p50_ms:.2f} ms, errors {stats.errors}")
        out.append(RangeResult(kind, mode, stats, window))
    return out


async def _first_write(targets: dict[str, str], key: bytes, t0: float, deadline: float) -> tuple[float, str] | None:
    """Start a Put on every target every FAILOVER_ATTEMPT_EVERY_S until one succeeds; (seconds since t0, name)."""
    winner: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
    channels = {
        name: grpc.aio.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
        for name, target in targets.items()
    }
    stubs = {name: rpc_pb2_grpc.KVStub(ch) for name, ch in channels.items()}  # type: ignore[no-untyped-call]
    attempts: set[asyncio.Task[None]] = set()

    async def attempt(name: str) -> None:
        try:
            await stubs[name].Put(rpc_pb2.PutRequest(key=key, value=b"x"), timeout=FAILOVER_ATTEMPT_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return
        if not winner.done():
            winner.set_result((time.perf_counter() - t0, name))

    try:
        while not winner.done() and time.perf_counter() < deadline:
            for name in stubs:
                task = asyncio.create_task(attempt(name))
                attempts.add(task)
                task.add_done_callback(attempts.discard)
            with_timeout = min(FAILOVER_ATTEMPT_EVERY_S, max(deadline - time.perf_counter(), 0.0))
            await asyncio.wait([winner], timeout=with_timeout)
        return winner.result() if winner.done() else None
    finally:
        for task in list(attempts):
            task.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)
        for ch in channels.values():
            await ch.close()


def run_failover(kind: str, cluster: Cluster, trials: int, ready_timeout_s: float) -> FailoverResult:
    result = FailoverResult(kind)
    for trial in range(trials):
        leader = cluster.leader()
        survivors = {m.name: m.grpc_target for m in cluster.members if m.name != leader}
        key = f"/bench/failover/{trial}".encode()
        t0 = time.perf_counter()
        cluster.kill(leader)
        got = asyncio.run(_first_write(survivors, key, t0, t0 + FAILOVER_DEADLINE_S))
        if got is None:
            result.error = f"trial {trial}: no write acknowledged within {FAILOVER_DEADLINE_S}s of killing {leader}"
            break
        elapsed, first = got
        result.times_s.append(round(elapsed, 4))
        result.trials.append({"killed": leader, "first_ack_by": first, "seconds": round(elapsed, 4)})
        log(f"{kind} failover trial {trial + 1}/{trials}: killed {leader}, first write by {first} after {elapsed:.3f}s")
        cluster.restart(leader, ready_timeout_s=ready_timeout_s)
        cluster.leader()  # settled: a leader backed by a majority before the next kill
    return result


def run_side(
    kind: str, args: argparse.Namespace, tmp_root: Path, start: StartCluster = start_cluster
) -> SideResult:
    """Every requested part against a fresh ``kind`` cluster each; failures become ``error`` fields."""
    side = SideResult(kind)
    for part in args.parts:
        with tempfile.TemporaryDirectory(prefix=f"cluster-perf-{kind}-{part}-", dir=tmp_root) as tmp:
            cluster: Cluster | None = None
            error: str | None = None
            try:
                cluster = start(kind, Path(tmp), args)
                log(f"{kind} cluster up for {part}:\n{cluster.describe()}")
                if args.wait_quiet > 0 and part != "range":  # range waits before each of its modes
                    wait_for_quiet(args.wait_quiet)
                if part == "check_perf":
                    side.check_perf = run_check_perf(kind, cluster, args.load, args.timeout)
                elif part == "range":
                    side.range = run_range(kind, cluster, args)
                else:
                    side.failover = run_failover(kind, cluster, args.trials, args.ready_timeout)
            except Exception as exc:  # report cleanly (e.g. quorumkv before clustering), never crash the run
                error = first_line(exc)
                if cluster is None:
                    error = f"cluster did not start: {error}"
                log(f"{kind} {part}: {error}")
            finally:
                if cluster is not None:
                    cluster.close()
            if error is not None:
                _record_error(side, part, args.load, error)
    return side


def _record_error(side: SideResult, part: str, load: str, error: str) -> None:
    if part == "check_perf":
        side.check_perf = side.check_perf or CheckPerfResult(side.server, load, [])
        side.check_perf.error = error
    elif part == "range":
        done = {r.mode for r in side.range if r.error is None}
        side.range = [r for r in side.range if r.mode in done]
        side.range += [RangeResult(side.server, mode, error=error) for mode in range_read.MODES if mode not in done]
    else:
        side.failover = side.failover or FailoverResult(side.server)
        side.failover.error = error


# ------------------------------------------------------------------------------------------------ report


def _fmt(value: float | int | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def round_write_ratios(sides: Sequence[SideResult]) -> list[float]:
    """quorumkv writes/s over etcd writes/s, one per round: the n-th etcd check perf is paired with the n-th
    quorumkv one (run right after it); pairs with a missing or zero figure are left out."""
    def writes(kind: str) -> list[float | None]:
        return [s.check_perf.parsed.writes_per_s for s in sides if s.server == kind and s.check_perf is not None]
    return [q / e for e, q in zip(writes("etcd"), writes("quorumkv"), strict=False) if e and q is not None]


def write_ratio(sides: Sequence[SideResult]) -> float | None:
    """The median of the rounds' ratios (one round: its ratio). The machine's speed drifts between minutes, so
    one pair is a sample; the median of alternating pairs is the figure to hold against the target."""
    ratios = round_write_ratios(sides)
    return statistics.median(ratios) if ratios else None


def read_ratio(sides: Sequence[SideResult], mode: str) -> float | None:
    by_kind = {r.server: r.stats.reads_per_s for s in sides for r in s.range if r.mode == mode and r.stats}
    etcd, qkv = by_kind.get("etcd"), by_kind.get("quorumkv")
    return qkv / etcd if etcd and qkv is not None else None


def own_read_ratio(sides: Sequence[SideResult], kind: str = "quorumkv") -> float | None:
    """``kind``'s linearizable reads/s over its own serializable reads/s (what a ReadIndex round costs)."""
    by_mode = {r.mode: r.stats.reads_per_s for s in sides if s.server == kind for r in s.range if r.stats}
    lin, ser = by_mode.get("linearizable"), by_mode.get("serializable")
    return lin / ser if ser and lin is not None else None


#: Linearizable reads on 3 members (issue 21): quorumkv's own serializable reads/s, and etcd's linearizable.
READ_TARGET_OWN = 0.8
READ_TARGET_ETCD = 0.6


def read_target_lines(sides: Sequence[SideResult]) -> list[str]:
    out = []
    for what, ratio, target in (
        ("quorumkv linearizable / quorumkv serializable reads/s", own_read_ratio(sides), READ_TARGET_OWN),
        ("quorumkv linearizable / etcd linearizable reads/s", read_ratio(sides, "linearizable"), READ_TARGET_ETCD),
    ):
        verdict = "NOT MEASURED" if ratio is None else \
            f"{'MET' if ratio >= target else 'NOT MET'} (ratio {ratio:.2f})"
        out.append(f"TARGET: {what} >= {target}: {verdict}")
    return out


def target_line(sides: Sequence[SideResult], load: str) -> str:
    ratio = write_ratio(sides)
    what = f"TARGET: 3-member cluster check perf writes/s ratio quorumkv/etcd >= {TARGET_RATIO} on load {load}"
    if ratio is None:
        return f"{what}: NOT MEASURED"
    rounds = round_write_ratios(sides)
    each = f"; median of rounds: {', '.join(f'{x:.2f}' for x in rounds)}" if len(rounds) > 1 else ""
    return f"{what}: {'MET' if ratio >= TARGET_RATIO else 'NOT MET'} (ratio {ratio:.2f}{each})"


def _perf_row(r: CheckPerfResult) -> list[str]:
    p = r.parsed
    return [
        r.server,
        r.load,
        _fmt(p.writes_per_s, ",d"),
        _fmt(p.slowest_s, ".3f"),
        _fmt(p.stddev_s, ".4f"),
        str(p.errors),
        p.summary or ("ERROR" if r.error else "—"),
        _fmt(r.peak_rss_mb, ".0f"),
        _fmt(r.members_cpu_s, ".1f"),
        _fmt(r.client_cpu_s if r.command else None, ".1f"),
        _fmt(r.other_cpu_percent, ".0f"),
    ]


def _range_row(r: RangeResult) -> list[str]:
    s, w = r.stats, r.window_cpu
    return [
        r.server,
        r.mode,
        _fmt(s.reads_per_s if s else None, ",.0f"),
        _fmt(s.p50_ms if s else None, ".2f"),
        _fmt(s.p99_ms if s else None, ".2f"),
        str(sum(s.errors.values())) if s else "ERROR",
        _fmt(w.server_percent if w else None, ".0f"),
        _fmt(w.client_percent if w else None, ".0f"),
        _fmt(w.other_percent if w else None, ".0f"),
    ]


def _failover_row(f: FailoverResult) -> list[str]:
    return [
        f.server,
        str(len(f.times_s)),
        _fmt(f.median_s, ".3f"),
        _fmt(min(f.times_s, default=None), ".3f"),
        _fmt(max(f.times_s, default=None), ".3f"),
    ]


def render(sides: Sequence[SideResult], load: str) -> str:
    out: list[str] = []
    errors: list[str] = []
    perf = [s.check_perf for s in sides if s.check_perf is not None]
    if perf:
        headers = ["server", "load", "writes/s", "slowest (s)", "stddev (s)", "errors", "check perf",
                   "peak RSS/member (MB)", "members CPU (s)", "etcdctl CPU (s)", "other procs CPU %"]  # fmt: skip
        out += ["## check perf (all three endpoints)", format_table(headers, [_perf_row(r) for r in perf]), ""]
        out.append(f"ratio quorumkv/etcd writes/s, load {load}: {_fmt(write_ratio(sides), '.2f')}")
        out += [target_line(sides, load), ""]
        errors += [f"ERROR {r.server} check perf: {r.error}" for r in perf if r.error]
    ranges = [r for s in sides for r in s.range]
    if ranges:
        headers = ["server", "mode", "reads/s", "p50 (ms)", "p99 (ms)", "errors", "members CPU %", "client CPU %",
                   "other procs CPU %"]  # fmt: skip
        out += ["## single-key Range, clients round-robin over the three members"]
        out += [format_table(headers, [_range_row(r) for r in ranges]), ""]
        for mode in range_read.MODES:
            out.append(f"ratio quorumkv/etcd reads/s, {mode}: {_fmt(read_ratio(sides, mode), '.2f')}")
        out += read_target_lines(sides)
        out.append("")
        errors += [f"ERROR {r.server} range {r.mode}: {r.error}" for r in ranges if r.error]
    failovers = [s.failover for s in sides if s.failover is not None]
    if failovers:
        headers = ["server", "trials ok", "median (s)", "min (s)", "max (s)"]
        out += ["## kill -9 of the leader -> first acknowledged write"]
        out += [format_table(headers, [_failover_row(f) for f in failovers]), ""]
        errors += [f"ERROR {f.server} failover: {f.error}" for f in failovers if f.error]
    out += errors
    return "\n".join(out).rstrip()


def _check_perf_doc(r: CheckPerfResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "load": r.load,
        "command": r.command,
        "returncode": r.returncode,
        "duration_s": r.duration_s,
        "check_perf": asdict(r.parsed),
        "member_stats": {name: stats.as_dict() for name, stats in r.member_stats.items()},
        "client_cpu_s": r.client_cpu_s,
        "other_cpu_percent": r.other_cpu_percent,
        "error": r.error,
    }


def _range_doc(r: RangeResult) -> dict[str, Any]:
    return {
        "mode": r.mode,
        "stats": asdict(r.stats) if r.stats else None,
        "window_cpu": asdict(r.window_cpu) if r.window_cpu else None,
        "error": r.error,
    }


def as_document(sides: Sequence[SideResult], args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    settings = {
        "members": MEMBERS,
        "load": args.load,
        "heartbeat_ms": args.heartbeat_interval,
        "election_ms": args.election_timeout,
        "keys": args.keys,
        "value_size": args.value_size,
        "clients": args.clients,
        "procs": args.procs,
        "duration_s": args.duration,
        "trials": args.trials,
        "rounds": args.rounds,
    }
    results = [
        {
            "server": s.server,
            "check_perf": _check_perf_doc(s.check_perf),
            "range": [_range_doc(r) for r in s.range],
            "failover": {**asdict(s.failover), "median_s": s.failover.median_s} if s.failover else None,
        }
        for s in sides
    ]
    ratios: dict[str, Any] = {"writes_per_s": write_ratio(sides), "writes_per_s_rounds": round_write_ratios(sides)}
    ratios.update({f"reads_per_s_{mode}": read_ratio(sides, mode) for mode in range_read.MODES})
    ratios["quorumkv_linearizable_over_serializable"] = own_read_ratio(sides)
    return {
        "benchmark": "cluster_perf",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "settings": settings,
        "results": results,
        "ratios": ratios,
        "target": target_line(sides, args.load),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", choices=SERVER_KINDS, help="repeatable; default both")
    parser.add_argument("--part", action="append", choices=PARTS, dest="parts", help="repeatable; default all")
    parser.add_argument("--load", choices=LOADS, default=TARGET_LOAD, help="check perf load (default l)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before a check perf is killed")
    parser.add_argument("--trials", type=int, default=10, help="failover trials (median reported)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="check perf only: run etcd and quorumkv alternately this many times (a fresh cluster "
                        "each); the ratio is the median of the rounds' ratios. Other parts run in the first round")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=64, help="closed-loop Range clients in total")
    parser.add_argument("--procs", type=int, default=2, help="worker processes the Range clients are spread over")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per Range mode")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each Range mode")
    parser.add_argument("--heartbeat-interval", type=int, default=100, help="ms, every member (etcd's default)")
    parser.add_argument("--election-timeout", type=int, default=1000, help="ms, every member (etcd's default)")
    parser.add_argument("--ready-timeout", type=float, default=30.0, help="seconds for a cluster/member to serve")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the tables go to stderr)")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="parent of the members' data dirs")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each part, wait up to this many seconds for the machine to be < 30 %% busy (0: don't)",
    )
    args = parser.parse_args(argv)
    args.parts = list(dict.fromkeys(args.parts or PARTS))
    args.kinds = [k for k in SERVER_KINDS if k in (args.server or SERVER_KINDS)]
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}")
    if not 1 <= args.trials <= MAX_TRIALS:
        parser.error(f"--trials must be 1..{MAX_TRIALS}")
    if not (1 <= args.procs <= args.clients and args.keys > 0 and 0 < args.duration <= 600):
        parser.error("need 1 <= procs <= clients, keys > 0, 0 < duration <= 600")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    log(f"machine: {info}")
    sides: list[SideResult] = []
    with tempfile.TemporaryDirectory(prefix="qkv-cluster-perf-", dir=args.tmp_dir) as tmp_root:
        for round_no in range(args.rounds):
            round_args = args
            if round_no:  # later rounds repeat check perf only
                if "check_perf" not in args.parts:
                    break
                round_args = argparse.Namespace(**{**vars(args), "parts": ["check_perf"]})
                log(f"round {round_no + 1} of {args.rounds}")
            for kind in args.kinds:  # strictly one cluster at a time
                sides.append(run_side(kind, round_args, Path(tmp_root)))
    report = render(sides, args.load)
    if args.json:
        print(report, file=sys.stderr)
        print(json.dumps(as_document(sides, args, info), indent=2))
    else:
        loadavg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"machine: nproc={info['nproc']}, {info['cpu_model']}, kernel {info['kernel']}, loadavg now {loadavg}")
        print(
            f"3 members per cluster, heartbeat {args.heartbeat_interval} ms, election {args.election_timeout} ms; "
            "members, etcdctl and the Python load generator share the cores.\n"
        )
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
