"""Single-key Range throughput and latency, real etcd 3.4 vs quorumkv, one server at a time.

For each server: start it fresh, preload ``--keys`` keys (default 10,000) with ``--value-size``-byte values
(default 1 KiB) through concurrent gRPC Puts, then for each read mode (linearizable, serializable) run
``--clients`` concurrent closed-loop clients (default 64) for ``--duration`` seconds (default 15, after a
``--warmup`` second not counted), each doing ``Range(key=<uniformly random preloaded key>)`` back to back.

The clients are coroutines on ``grpc.aio`` channels spread over ``--procs`` worker processes (default 2, see
docs/performance.md for why), all on the same 2 cores as the server: the load generator competes with the
server for CPU, so the figures are "server + Python client on one box", not server capacity.

    PYTHONPATH=src:. python3.11 -m bench.range_read
    PYTHONPATH=src:. python3.11 -m bench.range_read --clients 64 --procs 2 --duration 15 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/range_read.py): make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench._proc import (
    SERVER_KINDS,
    ProcSampler,
    ProcStats,
    children_cpu_seconds,
    format_table,
    log,
    machine_info,
    read_cpu_seconds,
    read_machine_busy_seconds,
    running_server,
    wait_for_quiet,
)
from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc

MODES = ("linearizable", "serializable")
KEY_PREFIX = "/bench/range/"
RPC_TIMEOUT_S = 5.0
#: Hard cap per client coroutine, on top of the time bound.
MAX_REQUESTS_PER_CLIENT = 5_000_000
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]


def channel_options(endpoint: str) -> list[tuple[str, Any]]:
    """Channel options for ``endpoint``.

    A multi-address target (``ipv4:127.0.0.1:A,127.0.0.1:B``: a cluster) spreads its requests over every
    address (round robin) instead of sticking to the first.
    """
    if "," in endpoint:
        return [*_CHANNEL_OPTIONS, ("grpc.lb_policy_name", "round_robin")]
    return list(_CHANNEL_OPTIONS)


def key_of(index: int) -> bytes:
    return f"{KEY_PREFIX}{index:08d}".encode()


# ------------------------------------------------------------------------------------------------ preload


async def _preload_async(endpoint: str, keys: int, value_size: int, concurrency: int, timeout_s: float) -> int:
    value = os.urandom(value_size // 2).hex().encode()[:value_size].ljust(value_size, b"x")
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]

        async def put(i: int) -> None:
            async with sem:
                await stub.Put(rpc_pb2.PutRequest(key=key_of(i), value=value), timeout=30.0)

        await asyncio.wait_for(asyncio.gather(*(put(i) for i in range(keys))), timeout_s)
        check = await stub.Range(
            rpc_pb2.RangeRequest(key=KEY_PREFIX.encode(), range_end=_prefix_end(KEY_PREFIX.encode()), count_only=True)
        )
        return int(check.count)


def _prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    end[-1] += 1
    return bytes(end)


def preload(endpoint: str, keys: int, value_size: int, concurrency: int = 256, timeout_s: float = 300.0) -> float:
    """Put ``keys`` keys; returns the achieved puts/s. Raises if the server does not hold them all afterwards."""
    t0 = time.monotonic()
    count = asyncio.run(_preload_async(endpoint, keys, value_size, concurrency, timeout_s))
    elapsed = time.monotonic() - t0
    if count != keys:
        raise RuntimeError(f"preload: server holds {count} keys under {KEY_PREFIX}, expected {keys}")
    return keys / elapsed


# ------------------------------------------------------------------------------------------------ load workers


@dataclass
class WorkerResult:
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: Latencies (seconds) of requests started and finished inside the measured window.
    latencies: list[float] = field(default_factory=list)


async def _worker_async(
    endpoint: str,
    keys: int,
    clients: int,
    conns: int,
    serializable: bool,
    start_at: float,
    warmup_s: float,
    duration_s: float,
    seed: int,
) -> WorkerResult:
    result = WorkerResult()
    key_list = [key_of(i) for i in range(keys)]
    channels = [grpc.aio.insecure_channel(endpoint, options=channel_options(endpoint)) for _ in range(conns)]
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 10.0) for ch in channels))
        stubs = [rpc_pb2_grpc.KVStub(ch) for ch in channels]  # type: ignore[no-untyped-call]
        await asyncio.sleep(max(0.0, start_at - time.time()))  # all worker processes start together
        t_start = time.perf_counter()
        measure_from, end = t_start + warmup_s, t_start + warmup_s + duration_s

        async def client(n: int) -> None:
            stub, rnd = stubs[n % conns], random.Random(seed * 100_003 + n)
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                request = rpc_pb2.RangeRequest(key=key_list[rnd.randrange(keys)], serializable=serializable)
                try:
                    response = await stub.Range(request, timeout=RPC_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    name = exc.code().name
                    result.errors[name] = result.errors.get(name, 0) + 1
                    await asyncio.sleep(0.01)
                    continue
                t1 = time.perf_counter()
                if len(response.kvs) != 1:
                    result.errors["NOT_FOUND"] = result.errors.get("NOT_FOUND", 0) + 1
                elif t0 >= measure_from and t1 <= end:
                    result.ok += 1
                    result.latencies.append(t1 - t0)

        await asyncio.gather(*(client(n) for n in range(clients)))
    finally:
        for ch in channels:
            await ch.close()
    return result


def _worker_entry(queue: Queue[tuple[int, WorkerResult | str]], index: int, kwargs: dict[str, Any]) -> None:
    try:
        queue.put((index, asyncio.run(_worker_async(**kwargs))))
    except BaseException as exc:  # report, never hang the parent
        queue.put((index, f"{type(exc).__name__}: {exc}"))


@dataclass
class ReadStats:
    reads_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    ok: int
    errors: dict[str, int]


def summarize(results: list[WorkerResult], duration_s: float) -> ReadStats:
    latencies = sorted(lat for r in results for lat in r.latencies)
    errors: dict[str, int] = {}
    for r in results:
        for name, count in r.errors.items():
            errors[name] = errors.get(name, 0) + count
    ok = sum(r.ok for r in results)
    return ReadStats(
        reads_per_s=ok / duration_s if duration_s > 0 else 0.0,
        p50_ms=1000 * percentile(latencies, 50),
        p99_ms=1000 * percentile(latencies, 99),
        p999_ms=1000 * percentile(latencies, 99.9),
        mean_ms=1000 * sum(latencies) / len(latencies) if latencies else 0.0,
        ok=ok,
        errors=errors,
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty list)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * pct // 100)))
    return sorted_values[int(rank) - 1]


def run_load(
    endpoint: str,
    keys: int,
    clients: int,
    procs: int,
    conns: int,
    serializable: bool,
    warmup_s: float,
    duration_s: float,
    server_pid: int | Sequence[int],
) -> tuple[ReadStats, WindowCpu]:
    """Run the closed-loop read load in ``procs`` spawned processes; bounded by time (and a kill after).

    Also returns the CPU used by the server and by the worker processes during the measured window only.
    """
    ctx = multiprocessing.get_context("spawn")
    queue: Queue[tuple[int, WorkerResult | str]] = ctx.Queue()
    start_at = time.time() + 3.0  # time for the spawned interpreters to import grpc and connect
    per_proc = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = []
    for i, n in enumerate(per_proc):
        kwargs = {
            "endpoint": endpoint,
            "keys": keys,
            "clients": n,
            "conns": conns,
            "serializable": serializable,
            "start_at": start_at,
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "seed": i,
        }
        proc = ctx.Process(target=_worker_entry, args=(queue, i, kwargs), name=f"range-read-{i}", daemon=True)
        proc.start()
        workers.append(proc)
    window = _measure_window_cpu(server_pid, [p.pid for p in workers if p.pid], start_at + warmup_s, duration_s)
    results: list[WorkerResult] = []
    failures: list[str] = []
    deadline = start_at + warmup_s + duration_s + 30.0
    try:
        for _ in workers:
            _, got = queue.get(timeout=max(1.0, deadline - time.time()))
            if isinstance(got, str):
                failures.append(got)
            else:
                results.append(got)
    finally:
        for proc in workers:
            proc.join(timeout=10.0)
            if proc.is_alive():
                proc.kill()  # only our own worker, by its pid
                proc.join(timeout=5.0)
    if failures:
        raise RuntimeError(f"read worker(s) failed: {failures}")
    return summarize(results, duration_s), window


@dataclass
class WindowCpu:
    """CPU used during the measured window, as % of one core (200 % = both cores of a 2-core machine)."""

    server_percent: float
    client_percent: float
    #: CPU used by everything else on the machine (other people's jobs on a shared box): interference.
    other_percent: float


def _measure_window_cpu(
    server_pid: int | Sequence[int], worker_pids: list[int], measure_from: float, duration_s: float
) -> WindowCpu:
    server_pids = [server_pid] if isinstance(server_pid, int) else list(server_pid)

    def cpu(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                total += read_cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                pass
        return total

    time.sleep(max(0.0, measure_from - time.time()))
    t0, server0, client0 = time.monotonic(), cpu(server_pids), cpu(worker_pids)
    machine0 = read_machine_busy_seconds()
    time.sleep(max(0.0, duration_s - 0.2))  # stop sampling just before the workers stop and exit
    elapsed = time.monotonic() - t0
    server1, client1, machine1 = cpu(server_pids), cpu(worker_pids), read_machine_busy_seconds()
    server_s, client_s = server1 - server0, client1 - client0
    return WindowCpu(
        server_percent=round(100 * server_s / elapsed, 1),
        client_percent=round(100 * client_s / elapsed, 1),
        other_percent=round(100 * max(0.0, machine1 - machine0 - server_s - client_s) / elapsed, 1),
    )


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class ModeResult:
    server: str
    mode: str
    stats: ReadStats
    server_stats: ProcStats
    window_cpu: WindowCpu
    client_cpu_s: float
    loadavg_before: list[float]


def bench_server(kind: str, args: argparse.Namespace, tmp_root: Path) -> tuple[float, list[ModeResult]]:
    out: list[ModeResult] = []
    with tempfile.TemporaryDirectory(prefix=f"range-read-{kind}-", dir=tmp_root) as tmp:
        with running_server(kind, Path(tmp)) as server:
            endpoint = f"127.0.0.1:{server.client_port}"
            log(f"{kind} pid {server.pid} on {endpoint}: preloading {args.keys} keys x {args.value_size} B")
            puts_per_s = preload(endpoint, args.keys, args.value_size)
            log(f"{kind}: preload at {puts_per_s:,.0f} puts/s")
            for mode in args.modes:
                if args.wait_quiet > 0:
                    wait_for_quiet(args.wait_quiet)
                loadavg = [round(x, 2) for x in os.getloadavg()]
                cpu_children0 = children_cpu_seconds()
                with ProcSampler(server.pid) as sampler:
                    stats, window_cpu = run_load(
                        endpoint,
                        args.keys,
                        args.clients,
                        args.procs,
                        args.conns,
                        mode == "serializable",
                        args.warmup,
                        args.duration,
                        server.pid,
                    )
                    server_stats = sampler.stop()
                client_cpu = children_cpu_seconds() - cpu_children0
                log(
                    f"{kind} {mode}: {stats.reads_per_s:,.0f} reads/s, p50 {stats.p50_ms:.2f} ms, errors {stats.errors}"
                )
                out.append(ModeResult(kind, mode, stats, server_stats, window_cpu, client_cpu, loadavg))
    return puts_per_s, out


def ratio(results: list[ModeResult], mode: str) -> float | None:
    by_kind = {r.server: r.stats.reads_per_s for r in results if r.mode == mode}
    etcd, qkv = by_kind.get("etcd"), by_kind.get("quorumkv")
    if not etcd or qkv is None:
        return None
    return qkv / etcd


def render(results: list[ModeResult], preload_rates: dict[str, float]) -> str:
    headers = [
        "server",
        "mode",
        "reads/s",
        "p50 (ms)",
        "p99 (ms)",
        "p99.9 (ms)",
        "errors",
        "peak RSS (MB)",
        "server CPU %",
        "client CPU %",
        "other procs CPU %",
    ]
    rows = [
        [
            r.server,
            r.mode,
            f"{r.stats.reads_per_s:,.0f}",
            f"{r.stats.p50_ms:.2f}",
            f"{r.stats.p99_ms:.2f}",
            f"{r.stats.p999_ms:.2f}",
            str(sum(r.stats.errors.values())),
            f"{r.server_stats.peak_rss_mb:.0f}",
            f"{r.window_cpu.server_percent:.0f}",
            f"{r.window_cpu.client_percent:.0f}",
            f"{r.window_cpu.other_percent:.0f}",
        ]
        for r in results
    ]
    out = [format_table(headers, rows), ""]
    for mode in dict.fromkeys(r.mode for r in results):
        rt = ratio(results, mode)
        out.append(f"ratio quorumkv/etcd reads/s, {mode}: {'—' if rt is None else f'{rt:.2f}'}")
    for kind, rate in preload_rates.items():
        out.append(f"preload (Python grpc.aio client, 256 in flight): {kind} {rate:,.0f} puts/s")
    out.append(
        "note: server/client CPU % = CPU time over the measured window as % of one core (2 cores = 200 %); "
        "the Python load generator runs on the same cores as the server."
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=64, help="concurrent closed-loop clients in total")
    parser.add_argument("--procs", type=int, default=2, help="client worker processes the clients are spread over")
    parser.add_argument("--conns", type=int, default=1, help="gRPC channels per worker process")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per mode")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each mode")
    parser.add_argument("--mode", action="append", choices=MODES, dest="modes", help="repeatable; default both")
    parser.add_argument("--server", action="append", choices=SERVER_KINDS, help="repeatable; default both")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the table goes to stderr)")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each mode, wait up to this many seconds for the machine to be < 30 %% busy (0: don't)",
    )
    args = parser.parse_args(argv)
    args.modes = list(dict.fromkeys(args.modes or MODES))
    if not (1 <= args.procs <= args.clients and args.keys > 0 and 0 < args.duration <= 600 and args.conns >= 1):
        parser.error("need 1 <= procs <= clients, keys > 0, 0 < duration <= 600, conns >= 1")
    kinds = [k for k in SERVER_KINDS if k in (args.server or SERVER_KINDS)]
    info = machine_info()
    log(f"machine: {info}")
    results: list[ModeResult] = []
    preload_rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qkv-range-read-", dir=args.tmp_dir) as tmp_root:
        for kind in kinds:  # strictly one server at a time
            preload_rates[kind], mode_results = bench_server(kind, args, Path(tmp_root))
            results.extend(mode_results)
    table = render(results, preload_rates)
    settings = (
        f"keys={args.keys} value={args.value_size}B clients={args.clients} procs={args.procs} "
        f"conns/proc={args.conns} duration={args.duration}s warmup={args.warmup}s"
    )
    if args.json:
        print(table, file=sys.stderr)
        document = {
            "benchmark": "range_read",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": info,
            "settings": settings,
            "preload_puts_per_s": preload_rates,
            "results": [
                {
                    "server": r.server,
                    "mode": r.mode,
                    **asdict(r.stats),
                    "server_stats": r.server_stats.as_dict(),
                    "window_cpu": asdict(r.window_cpu),
                    "client_cpu_s": round(r.client_cpu_s, 2),
                    "loadavg_before": r.loadavg_before,
                }
                for r in results
            ],
            "ratios": {mode: ratio(results, mode) for mode in args.modes},
        }
        print(json.dumps(document, indent=2))
    else:
        print(f"machine: nproc={info['nproc']}, {info['cpu_model']}, kernel {info['kernel']}")
        print(f"settings: {settings}; the client load generator shares the cores with the server.\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
