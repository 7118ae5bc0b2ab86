"""The single member's writer alone: CPU per put of the node engine's thread (``RaftNode`` as a sole voter:
propose, append + apply + COMMIT with fsync in one transaction).

Feeds batches of plain puts (random 8-byte keys under etcdctl check perf's prefix, 1 KiB values, as ``check perf``
writes them) straight into a ``RaftNode`` on a fresh data dir, no gRPC, and prints the CPU time per put of the
node's thread (``pthread_getcpuclockid``) and the wall time per put. ``--batch N`` fixes the batch size;
``--batch-min/--batch-max`` draw each batch's size at random (seeded), as under real load. ``--unwatched``
applies as the server does when no watcher exists (no events, the quiet put path).

    PYTHONPATH=src:. python3 -m bench.writer_commit --puts 60000 --batch 110
    PYTHONPATH=src:. python3 -m bench.writer_commit --puts 60000 --batch-min 60 --batch-max 160
"""

from __future__ import annotations

import argparse
import asyncio
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
from quorumkv.server.entries import EntryKind
from quorumkv.server.raft_node import RaftNode
from quorumkv.server.wait import WaitRegistry
from quorumkv.storage import membership
from quorumkv.storage.backend import Backend

PREFIX = b"/etcdctl-check-perf/"
MEMBER_ID = 0x1234


def _thread_cpu_s(node: RaftNode) -> float:
    assert node._thread is not None and node._thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(node._thread.ident))


async def _run(backend: Backend, applier: Applier, puts: int, batch_min: int, batch_max: int,
               seed: int) -> dict[str, float]:
    rnd = random.Random(seed)
    value = os.urandom(1024)
    waits = WaitRegistry()
    node = RaftNode(backend, applier, member_id=MEMBER_ID, on_applied=lambda result: None, send=lambda msgs: None,
                    bootstrap=[membership.Member(MEMBER_ID, "bench", ["http://127.0.0.1:1"], [])],
                    rng=random.Random(seed), waits=waits)
    node.start(asyncio.get_running_loop())
    try:
        for _ in range(3000):  # the sole voter elects itself in its first turn
            if node.is_leader:
                break
            await asyncio.sleep(0.01)
        request_id = 1
        done = batches = 0
        cpu_s = wall_s = 0.0
        while done < puts:
            size = min(rnd.randint(batch_min, batch_max), puts - done)
            payloads = []
            for _ in range(size):
                key = PREFIX + struct.pack(">q", rnd.getrandbits(62))
                payloads.append(pb.PutRequest(key=key, value=value).SerializeToString())
            cpu0, wall0 = _thread_cpu_s(node), time.perf_counter()
            futures = []
            for payload in payloads:
                futures.append(waits.register(request_id))
                node.propose(EntryKind.PUT, payload, request_id)
                request_id += 1
            await asyncio.gather(*futures)
            cpu_s += _thread_cpu_s(node) - cpu0
            wall_s += time.perf_counter() - wall0
            done += size
            batches += 1
    finally:
        await asyncio.get_running_loop().run_in_executor(None, node.stop)
    return {"puts": done, "batches": batches, "cpu_us_per_put": cpu_s / done * 1e6,
            "wall_us_per_put": wall_s / done * 1e6}


def measure(puts: int, batch_min: int, batch_max: int, seed: int, tmp_root: str | None,
            unwatched: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        backend = Backend(Path(tmp) / "db")
        try:
            applier = Applier(backend.writer)
            if unwatched:  # as in the server when no watcher exists: no events built, the quiet put path
                applier.events_wanted = lambda: False
            return asyncio.run(_run(backend, applier, puts, batch_min, batch_max, seed))
        finally:
            backend.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--puts", type=int, default=60_000)
    ap.add_argument("--batch", type=int, help="fixed batch size (overrides --batch-min/--batch-max)")
    ap.add_argument("--batch-min", type=int, default=60)
    ap.add_argument("--batch-max", type=int, default=160)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmp-dir", help="parent of the data dir (default: the system's temp dir)")
    ap.add_argument("--unwatched", action="store_true",
                    help="no watcher exists (the server then builds no events and takes the quiet put path)")
    args = ap.parse_args(argv)
    low, high = (args.batch, args.batch) if args.batch else (args.batch_min, args.batch_max)
    if not 1 <= low <= high:
        ap.error("batch sizes must satisfy 1 <= min <= max")
    r = measure(args.puts, low, high, args.seed, args.tmp_dir, unwatched=args.unwatched)
    print(f"{r['puts']:.0f} puts in {r['batches']:.0f} batches of {low}-{high}: "
          f"writer CPU {r['cpu_us_per_put']:.1f} us/put, wall {r['wall_us_per_put']:.1f} us/put")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
