"""Defragmentation benchmark: defrag a store holding --size-mb of free space (after compaction) while a probe
client keeps writing and reading, against real etcd 3.4 and quorumkv.

Reported per server: defrag wall time, DB size before/after, and the longest client-visible stall (the slowest
single put and single get issued while the defrag ran; the probe issues them back to back, one at a time).

    PYTHONPATH=src python3.11 -m bench.defrag --size-mb 500     # the issue's size (needs ~1.5 GB of disk)
    PYTHONPATH=src python3.11 -m bench.defrag --size-mb 50      # quick run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench._proc import SERVER_KINDS
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


async def bench(kind: str, size_mb: int, tmp: Path) -> DefragResult:
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
            await maint.Defragment(pb.DefragmentRequest(), timeout=3600)
            took = time.perf_counter() - t0
            done.set()
            await asyncio.gather(*probes)
            after = (await maint.Status(pb.StatusRequest())).dbSize
    finally:
        server.stop()
    return DefragResult(kind, size_mb, before / 1e6, after / 1e6, took, int(stalls["put"][1]),
                        int(stalls["get"][1]), stalls["put"][0] * 1000, stalls["get"][0] * 1000)


def render(results: list[DefragResult]) -> str:
    lines = ["| server | free MB | DB before → after (MB) | defrag s | probe puts/gets during | max put stall ms "
             "| max get stall ms |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.server} | {r.size_mb} | {r.db_before_mb:.0f} → {r.db_after_mb:.1f} | {r.defrag_s:.2f} "
                     f"| {r.probe_puts} / {r.probe_gets} | {r.max_put_stall_ms:.0f} | {r.max_get_stall_ms:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--server", action="append", choices=SERVER_KINDS, help="repeatable; default both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-defrag-", dir=args.tmp_dir) as tmp:
        for kind in args.server or list(SERVER_KINDS):  # one after the other, never in parallel
            results.append(asyncio.run(bench(kind, args.size_mb, Path(tmp))))
    print(json.dumps([asdict(r) for r in results], indent=2) if args.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
