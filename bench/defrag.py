"""Defragmentation benchmark: defrag a store holding --size-mb of free space (after compaction) while a probe
client keeps writing and reading, against real etcd 3.4 and quorumkv.

Reported per server: defrag wall time, DB size before/after, and the longest client-visible stall (the slowest
single put and single get issued while the defrag ran; the probe issues them back to back, one at a time).

    PYTHONPATH=src:. python3.11 -m bench.defrag --size-mb 500     # the issue's size
    PYTHONPATH=src:. python3.11 -m bench.defrag --size-mb 50      # quick run

Before starting, the script checks that the temporary directory's file system and the machine's available memory
can take the run (:func:`preflight`): quorumkv keeps the value bytes twice (the key history and the last 10,000
log entries) and defrag writes a compacted copy beside the live file, so disk needs about 4x ``--size-mb``; the
client holds one value, the servers' caches grow with the file, so memory needs about 1x. Each row also records
how busy the rest of the machine was (``--wait-quiet`` waits, bounded, for it to calm down first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench._proc import SERVER_KINDS, machine_busy_percent, read_machine_busy_seconds, wait_for_quiet
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.processes import ServerProcess, start_etcd, start_quorumkv

VALUE_BYTES = 64 * 1024
LIVE_KEYS = 16
QUOTA_BYTES = 8 * 1024**3


@dataclass
class DefragResult:
    server: str
    size_mb: int
    db_before_mb: float
    db_after_mb: float
    defrag_s: float
    probe_puts: int
    probe_gets: int
    max_put_stall_ms: float
    max_get_stall_ms: float
    #: Whole-machine CPU busy (% of one core) in the 2 s before the run, and during the defrag itself.
    busy_before_pct: float = 0.0
    busy_during_defrag_pct: float = 0.0
    loadavg_1m: float = 0.0


def preflight(size_mb: int, tmp: Path) -> list[str]:
    """Reasons the machine cannot take a ``size_mb`` run in ``tmp`` (empty: go ahead)."""
    problems = []
    free_disk = shutil.disk_usage(tmp).free
    if free_disk < 4 * size_mb * 1024 * 1024:
        problems.append(f"{tmp}: {free_disk / 2**20:.0f} MB free, a {size_mb} MB run needs ~{4 * size_mb} MB")
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available_kb = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return problems
    if available_kb * 1024 < size_mb * 1024 * 1024 + 512 * 2**20:
        problems.append(f"{available_kb // 1024} MB of memory available, a {size_mb} MB run wants ~{size_mb + 512} MB")
    return problems


def start(kind: str, tmp: Path) -> ServerProcess:
    args = ["--quota-backend-bytes", str(QUOTA_BYTES)]
    return start_etcd(tmp, extra_args=args) if kind == "etcd" else start_quorumkv(tmp, extra_args=args)


async def fill(kv: pb_grpc.KVStub, size_mb: int) -> int:
    """Write size_mb of values over LIVE_KEYS keys (so nearly all of it is history), return the revision."""
    value = b"x" * VALUE_BYTES
    n = size_mb * 1024 * 1024 // VALUE_BYTES
    rev = 0
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        nonlocal rev
        async with sem:
            resp = await kv.Put(pb.PutRequest(key=f"k{i % LIVE_KEYS}".encode(), value=value))
            rev = max(rev, resp.header.revision)

    await asyncio.gather(*(one(i) for i in range(n)))
    return rev


async def bench(kind: str, size_mb: int, tmp: Path, busy_before: float = 0.0) -> DefragResult:
    server = start(kind, tmp / kind)
    try:
        async with grpc.aio.insecure_channel(server.client_url.removeprefix("http://"),
                                             options=[("grpc.max_receive_message_length", 1 << 30)]) as ch:
            kv, maint = pb_grpc.KVStub(ch), pb_grpc.MaintenanceStub(ch)  # type: ignore[no-untyped-call]
            rev = await fill(kv, size_mb)
            await kv.Compact(pb.CompactionRequest(revision=rev, physical=True))
            before = (await maint.Status(pb.StatusRequest())).dbSize
            done = asyncio.Event()
            stalls = {"put": [0.0, 0], "get": [0.0, 0]}

            async def probe(op: str) -> None:
                i = 0
                while not done.is_set():
                    t0 = time.perf_counter()
                    if op == "put":
                        await kv.Put(pb.PutRequest(key=f"probe{i % 100}".encode(), value=b"p" * 100))
                    else:
                        await kv.Range(pb.RangeRequest(key=b"k0"))
                    stalls[op][0] = max(stalls[op][0], time.perf_counter() - t0)
                    stalls[op][1] += 1
                    i += 1

            probes = [asyncio.create_task(probe("put")), asyncio.create_task(probe("get"))]
            await asyncio.sleep(0.2)
            for s in stalls.values():  # measure only while the defrag runs
                s[0], s[1] = 0.0, 0
            t0 = time.perf_counter()
            busy0 = read_machine_busy_seconds()
            await maint.Defragment(pb.DefragmentRequest(), timeout=3600)
            took = time.perf_counter() - t0
            busy_during = 100.0 * (read_machine_busy_seconds() - busy0) / took
            done.set()
            await asyncio.gather(*probes)
            after = (await maint.Status(pb.StatusRequest())).dbSize
    finally:
        server.stop()
    return DefragResult(kind, size_mb, before / 1e6, after / 1e6, took, int(stalls["put"][1]),
                        int(stalls["get"][1]), stalls["put"][0] * 1000, stalls["get"][0] * 1000,
                        busy_before_pct=round(busy_before, 1), busy_during_defrag_pct=round(busy_during, 1),
                        loadavg_1m=round(os.getloadavg()[0], 2))


def render(results: list[DefragResult]) -> str:
    lines = ["| server | free MB | DB before → after (MB) | defrag s | probe puts/gets during | max put stall ms "
             "| max get stall ms | machine busy before / during defrag (% of a core) | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.server} | {r.size_mb} | {r.db_before_mb:.0f} → {r.db_after_mb:.1f} | {r.defrag_s:.2f} "
                     f"| {r.probe_puts} / {r.probe_gets} | {r.max_put_stall_ms:.0f} | {r.max_get_stall_ms:.0f} "
                     f"| {r.busy_before_pct:.0f} / {r.busy_during_defrag_pct:.0f} | {r.loadavg_1m:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--server", action="append", choices=SERVER_KINDS, help="repeatable; default both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each server, wait up to S seconds for the machine to be < 30%% busy")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-defrag-", dir=args.tmp_dir) as tmp:
        problems = preflight(args.size_mb, Path(tmp))
        if problems:
            print("bench.defrag: not enough room for this run:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        for kind in args.server or list(SERVER_KINDS):  # one after the other, never in parallel
            busy = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else machine_busy_percent()
            results.append(asyncio.run(bench(kind, args.size_mb, Path(tmp), busy)))
    print(json.dumps([asdict(r) for r in results], indent=2) if args.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
