"""The single-member writer alone: CPU per put of ``LogWriter.commit`` (append + apply + COMMIT with fsync).

Feeds batches of plain puts (random 8-byte keys under etcdctl check perf's prefix, 1 KiB values, as ``check perf``
writes them) straight into a ``LogWriter`` on a fresh data dir, no gRPC and no other thread, and prints the
writer's CPU time per put (``time.thread_time``) and wall time per put. ``--batch N`` fixes the batch size;
``--batch-min/--batch-max`` draw each batch's size at random (seeded), as under real load, which exercises the
writer's statement cache (one multi-row INSERT text per row count). The writer is configured as a single member's
(no ``raft_log`` rows unless pinned); ``--keep-log`` stores and trims the log's tail as the apply process does;
``--unwatched`` applies as the server does when no watcher exists (no events, the quiet put path).

    PYTHONPATH=src:. python3 -m bench.writer_commit --puts 60000 --batch 110
    PYTHONPATH=src:. python3 -m bench.writer_commit --puts 60000 --batch-min 60 --batch-max 160
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``quorumkv`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.server.apply import Applier
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.server.node import LogWriter
from quorumkv.storage.backend import Backend

PREFIX = b"/etcdctl-check-perf/"


def measure(puts: int, batch_min: int, batch_max: int, seed: int, tmp_root: str | None,
            keep_log: bool = False, unwatched: bool = False) -> dict[str, float]:
    rnd = random.Random(seed)
    value = os.urandom(1024)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        backend = Backend(Path(tmp) / "db")
        try:
            applier = Applier(backend.writer)
            if unwatched:  # as in the server when no watcher exists: no events built, the quiet put path
                applier.events_wanted = lambda: False
            writer = LogWriter(backend, applier, keep_log=keep_log)
            writer.begin_term()
            request_id = 1
            done = 0
            cpu_s = wall_s = 0.0
            batches = 0
            while done < puts:
                size = min(rnd.randint(batch_min, batch_max), puts - done)
                batch: list[tuple[int, bytes]] = []
                for _ in range(size):
                    key = PREFIX + struct.pack(">q", rnd.getrandbits(62))
                    payload = pb.PutRequest(key=key, value=value).SerializeToString()
                    batch.append((EntryKind.PUT, encode_entry(EntryKind.PUT, request_id, payload)))
                    request_id += 1
                cpu0, wall0 = time.thread_time(), time.perf_counter()
                writer.commit(batch)
                cpu_s += time.thread_time() - cpu0
                wall_s += time.perf_counter() - wall0
                done += size
                batches += 1
        finally:
            backend.close()
    return {"puts": done, "batches": batches, "cpu_us_per_put": cpu_s / done * 1e6,
            "wall_us_per_put": wall_s / done * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--puts", type=int, default=60_000)
    ap.add_argument("--batch", type=int, help="fixed batch size (overrides --batch-min/--batch-max)")
    ap.add_argument("--batch-min", type=int, default=60)
    ap.add_argument("--batch-max", type=int, default=160)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmp-dir", help="parent of the data dir (default: the system's temp dir)")
    ap.add_argument("--keep-log", action="store_true",
                    help="keep the log's tail in raft_log (the apply process's writer), not only while pinned")
    ap.add_argument("--unwatched", action="store_true",
                    help="no watcher exists (the server then builds no events and takes the quiet put path)")
    args = ap.parse_args(argv)
    low, high = (args.batch, args.batch) if args.batch else (args.batch_min, args.batch_max)
    if not 1 <= low <= high:
        ap.error("batch sizes must satisfy 1 <= min <= max")
    r = measure(args.puts, low, high, args.seed, args.tmp_dir, keep_log=args.keep_log, unwatched=args.unwatched)
    print(f"{r['puts']:.0f} puts in {r['batches']:.0f} batches of {low}-{high}: "
          f"writer CPU {r['cpu_us_per_put']:.1f} us/put, wall {r['wall_us_per_put']:.1f} us/put")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
