"""Snapshot benchmark: ``etcdctl snapshot save`` throughput against real etcd 3.4 and quorumkv, and restore
throughput (``etcdctl snapshot restore`` for etcd, ``quorumkv.server.snapshot.restore`` for quorumkv).

    PYTHONPATH=src python3.11 -m bench.snapshot --size-mb 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench._proc import SERVER_KINDS
from bench.defrag import fill, start
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.server.snapshot import restore
from quorumkv.testing.processes import ETCDCTL_BIN, etcdctl_env


@dataclass
class SnapshotResult:
    server: str
    snapshot_mb: float
    save_s: float
    save_mb_per_s: float
    restore_s: float
    restore_mb_per_s: float


async def _fill(url: str, size_mb: int) -> None:
    async with grpc.aio.insecure_channel(url.removeprefix("http://")) as ch:
        # no compaction: the history is kept, so the snapshot holds about size_mb
        kv = pb_grpc.KVStub(ch)  # type: ignore[no-untyped-call]
        await fill(kv, size_mb)


def bench(kind: str, size_mb: int, tmp: Path) -> SnapshotResult:
    server = start(kind, tmp / kind)
    snap = tmp / f"{kind}.snap"
    try:
        asyncio.run(_fill(server.client_url, size_mb))
        t0 = time.perf_counter()
        r = server.etcdctl("snapshot", "save", str(snap), timeout_s=3600)
        save_s = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"snapshot save failed on {kind}: {r.stderr}")
    finally:
        server.stop()
    mb = snap.stat().st_size / 1e6
    t0 = time.perf_counter()
    if kind == "etcd":
        subprocess.run([ETCDCTL_BIN, "snapshot", "restore", str(snap), "--data-dir", str(tmp / "etcd-restored")],
                       check=True, capture_output=True, env=etcdctl_env())
    else:
        restore(snap, tmp / "quorumkv-restored")
    restore_s = time.perf_counter() - t0
    return SnapshotResult(kind, mb, save_s, mb / save_s, restore_s, mb / restore_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--server", action="append", choices=SERVER_KINDS, help="repeatable; default both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-", dir=args.tmp_dir) as tmp:
        for kind in args.server or list(SERVER_KINDS):
            results.append(bench(kind, args.size_mb, Path(tmp)))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print("| server | snapshot MB | save s | save MB/s | restore s | restore MB/s |\n|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r.server} | {r.snapshot_mb:.1f} | {r.save_s:.2f} | {r.save_mb_per_s:.1f} | {r.restore_s:.2f} "
                  f"| {r.restore_mb_per_s:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
