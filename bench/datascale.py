"""Big-store benchmark: quorumkv against real etcd 3.4 measured in the same run, one server at a time.

For each server, on a fresh single member:

1. **write**: ``--keys`` keys of 1 KiB values (default 1,000,000) through the API (concurrent Puts), then a
   Kubernetes-like shape: ``--k8s-objects`` objects (default 100,000) of 2-8 KiB under
   ``/registry/<kind>/<namespace>/<name>``, each updated ``--k8s-updates`` times (default 5);
2. **restart**: stop the member (SIGTERM) and time from the new process's start to its first answered Range;
3. **list**: a paginated list of ``--list-keys`` keys (default 10,000; limit 500 per page, all pages at one fixed
   revision), the best of 3;
4. **compaction**: compact ``--compact-revs`` revisions (default 500,000; at most the store's history) while a
   writer puts one key after another and records its slowest Put (the longest write stall);
5. **size**: defragment, then the data dir's size on disk (everything in it: etcd's WAL segments and snapshot
   files too) and the database file alone.

Peak RSS is sampled over the whole life of each server process (the max of the first process and the restarted
one). The script prints one table with the ratios quorumkv / etcd and the targets (issue 21): restart <= 1.0,
RSS <= 0.5, data dir <= 1.0, list <= 1.5, longest stall during compaction <= 100 ms.

    PYTHONPATH=src:. python3.11 -m bench.datascale                                  # the issue's scale
    PYTHONPATH=src:. python3.11 -m bench.datascale --keys 100000 --k8s-objects 10000   # a shared machine
    PYTHONPATH=src:. python3.11 -m bench.datascale --keys 2000 --k8s-objects 200 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/datascale.py): make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench._proc import SERVER_KINDS, ProcSampler, format_table, log, machine_busy_percent, machine_info
from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from quorumkv.testing.processes import ServerProcess, start_etcd, start_quorumkv

QUOTA_BYTES = 8 * 1024**3
FLAT_PREFIX = b"/bench/datascale/"
K8S_KINDS = ("pods", "configmaps", "secrets", "events", "services", "deployments", "replicasets", "leases")
K8S_NAMESPACES = 20
IN_FLIGHT = 64
PAGE_LIMIT = 500
RPC_TIMEOUT_S = 60.0
RESTART_TIMEOUT_S = 600.0
#: Targets of issue 21: quorumkv / etcd at most these (stall: milliseconds, absolute).
TARGETS = {"restart": 1.0, "peak_rss": 0.5, "data_dir": 1.0, "list": 1.5}
MAX_STALL_MS = 100.0
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@dataclass
class ServerResult:
    server: str
    keys: int
    k8s_objects: int
    revisions: int = 0
    write_s: float = 0.0
    restart_s: float = 0.0
    peak_rss_mb: float = 0.0
    list_ms: float = 0.0
    list_pages: int = 0
    compacted_revs: int = 0
    compaction_s: float = 0.0
    max_stall_ms: float = 0.0
    stall_puts: int = 0
    data_dir_mb: float = 0.0
    db_file_mb: float = 0.0
    busy_before_pct: float = 0.0
    notes: list[str] = field(default_factory=list)


def flat_key(i: int) -> bytes:
    return FLAT_PREFIX + b"%08d" % i


def k8s_key(i: int) -> bytes:
    kind = K8S_KINDS[i % len(K8S_KINDS)]
    return f"/registry/{kind}/ns-{(i // len(K8S_KINDS)) % K8S_NAMESPACES:02d}/obj-{i:07d}".encode()


def k8s_value(rng: random.Random, version: int) -> bytes:
    size = rng.randint(2048, 8192)
    head = b'{"kind":"Object","resourceVersion":"%d","spec":"' % version
    return head + rng.randbytes(max(0, (size - len(head) - 2) // 2)).hex().encode()[: size - len(head) - 2] + b'"}'


def requests(keys: int, k8s_objects: int, k8s_updates: int, seed: int) -> Iterator[bytes]:
    """Every Put of the write phase, serialised: the flat keys, then each k8s object created and updated."""
    rng = random.Random(seed)
    value = bytes(1024)
    for i in range(keys):
        yield rpc_pb2.PutRequest(key=flat_key(i), value=value).SerializeToString()
    for round_ in range(1 + k8s_updates):
        for i in range(k8s_objects):
            yield rpc_pb2.PutRequest(key=k8s_key(i), value=k8s_value(rng, round_)).SerializeToString()


def _target(server: ServerProcess) -> str:
    return server.client_url.removeprefix("http://")


async def write_all(server: ServerProcess, keys: int, k8s_objects: int, k8s_updates: int) -> int:
    """Put everything with IN_FLIGHT requests outstanding; the last revision."""
    last = 0
    async with grpc.aio.insecure_channel(_target(server), options=_CHANNEL_OPTIONS) as channel:
        put = channel.unary_unary("/etcdserverpb.KV/Put", response_deserializer=rpc_pb2.PutResponse.FromString)
        source = requests(keys, k8s_objects, k8s_updates, seed=21)

        async def worker() -> None:
            nonlocal last
            for request in source:  # the generator is shared: each request is taken once
                resp = await put(request, timeout=RPC_TIMEOUT_S, wait_for_ready=True)
                last = max(last, resp.header.revision)

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return last


def restart(server: ServerProcess, tmp: Path) -> tuple[ServerProcess, float]:
    """Stop ``server`` and start the same kind on its data dir; seconds from spawn to the first answered Range."""
    server.stop(timeout_s=120.0)
    args = ["--quota-backend-bytes", str(QUOTA_BYTES)]
    t0 = time.monotonic()
    if server.kind == "etcd":
        again = start_etcd(tmp, extra_args=args, data_dir=server.data_dir, ready_timeout_s=None)
    else:
        again = start_quorumkv(tmp, extra_args=args, data_dir=server.data_dir, ready_timeout_s=None)
    # a fresh channel per attempt: a channel's reconnect backoff (1 s, then longer) would be measured instead
    deadline = t0 + RESTART_TIMEOUT_S
    while True:
        with grpc.insecure_channel(_target(again), options=_CHANNEL_OPTIONS) as channel:
            try:
                rpc_pb2_grpc.KVStub(channel).Range(  # type: ignore[no-untyped-call]
                    rpc_pb2.RangeRequest(key=b"probe"), timeout=1.0)
                took = time.monotonic() - t0
                break
            except grpc.RpcError:
                pass
        if not again.alive() or time.monotonic() > deadline:
            again.stop()
            raise RuntimeError(f"{again.kind} did not serve within {RESTART_TIMEOUT_S} s after a restart:\n"
                               f"{again.log_tail()}")
        time.sleep(0.02)
    again.wait_ready(60.0)  # fills the ids; already serving
    return again, took


async def list_pages(server: ServerProcess, prefix: bytes, count: int) -> tuple[float, int]:
    """Best of 3 paginated lists of ``count`` keys under ``prefix`` at one fixed revision: (ms, pages)."""
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    times = []
    pages = 0
    async with grpc.aio.insecure_channel(_target(server), options=_CHANNEL_OPTIONS) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(3):
            t0 = time.perf_counter()
            first = await kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end, limit=PAGE_LIMIT),
                                   timeout=RPC_TIMEOUT_S)
            revision, got, pages = first.header.revision, len(first.kvs), 1
            last = first.kvs[-1].key if first.kvs else b""
            more = first.more
            while more and got < count:
                resp = await kv.Range(rpc_pb2.RangeRequest(key=last + b"\x00", range_end=end, revision=revision,
                                                           limit=min(PAGE_LIMIT, count - got)), timeout=RPC_TIMEOUT_S)
                got += len(resp.kvs)
                pages += 1
                more = resp.more
                if resp.kvs:
                    last = resp.kvs[-1].key
            times.append(time.perf_counter() - t0)
    return min(times) * 1000, pages


async def compact_under_writes(server: ServerProcess, revision: int) -> tuple[float, float, int]:
    """Compact at ``revision`` while one writer puts back to back: (compaction s, slowest put ms, puts)."""
    async with grpc.aio.insecure_channel(_target(server), options=_CHANNEL_OPTIONS) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        done = asyncio.Event()
        worst = 0.0
        puts = 0

        async def writer() -> None:
            nonlocal worst, puts
            while not done.is_set() and puts < 10_000_000:
                t0 = time.perf_counter()
                await kv.Put(rpc_pb2.PutRequest(key=b"/bench/stall-probe", value=b"x" * 100), timeout=RPC_TIMEOUT_S)
                worst = max(worst, time.perf_counter() - t0)
                puts += 1

        probe = asyncio.create_task(writer())
        await asyncio.sleep(0.3)
        worst, puts = 0.0, 0  # only what happens while the compaction runs
        t0 = time.perf_counter()
        await kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=True), timeout=3600)
        took = time.perf_counter() - t0
        await asyncio.sleep(0.3)  # a stall right after the answer (the deletion's tail) counts too
        done.set()
        await probe
    return took, worst * 1000, puts


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_blocks * 512
            except OSError:
                pass
    return total


def db_file_bytes(server: ServerProcess) -> int:
    if server.kind == "etcd":
        return (server.data_dir / "member" / "snap" / "db").stat().st_size
    return sum(p.stat().st_size for p in server.data_dir.iterdir() if p.name.startswith("quorumkv.db"))


def bench_one(kind: str, tmp: Path, keys: int, k8s_objects: int, k8s_updates: int, list_keys: int,
              compact_revs: int) -> ServerResult:
    result = ServerResult(kind, keys, k8s_objects, busy_before_pct=round(machine_busy_percent(1.0), 1))
    args = ["--quota-backend-bytes", str(QUOTA_BYTES)]
    server = start_etcd(tmp, extra_args=args) if kind == "etcd" else start_quorumkv(tmp, extra_args=args)
    peak = 0.0
    try:
        with ProcSampler(server.pid) as sampler:
            log(f"{kind}: writing {keys} keys + {k8s_objects} k8s objects x {1 + k8s_updates}")
            t0 = time.perf_counter()
            result.revisions = asyncio.run(write_all(server, keys, k8s_objects, k8s_updates))
            result.write_s = round(time.perf_counter() - t0, 2)
            peak = sampler.stop().peak_rss_mb
        log(f"{kind}: restarting on {result.revisions} revisions")
        server, took = restart(server, tmp)
        result.restart_s = round(took, 3)
        with ProcSampler(server.pid) as sampler:
            prefix = FLAT_PREFIX if keys >= list_keys else b"/registry/"
            ms, pages = asyncio.run(list_pages(server, prefix, list_keys))
            result.list_ms, result.list_pages = round(ms, 1), pages
            target = min(result.revisions, 1 + compact_revs)
            log(f"{kind}: compacting {target - 1} revisions under writes")
            took, stall, puts = asyncio.run(compact_under_writes(server, target))
            result.compacted_revs, result.compaction_s = target - 1, round(took, 3)
            result.max_stall_ms, result.stall_puts = round(stall, 1), puts
            channel = grpc.insecure_channel(_target(server), options=_CHANNEL_OPTIONS)
            try:
                maint = rpc_pb2_grpc.MaintenanceStub(channel)  # type: ignore[no-untyped-call]
                maint.Defragment(rpc_pb2.DefragmentRequest(), timeout=3600)
            finally:
                channel.close()
            peak = max(peak, sampler.stop().peak_rss_mb)
        result.peak_rss_mb = peak
        result.data_dir_mb = round(dir_bytes(server.data_dir) / 2**20, 1)
        result.db_file_mb = round(db_file_bytes(server) / 2**20, 1)
    finally:
        server.stop(timeout_s=120.0)
    return result


def ratios(results: list[ServerResult]) -> dict[str, float | None]:
    by = {r.server: r for r in results}
    if "etcd" not in by or "quorumkv" not in by:
        return {}
    q, e = by["quorumkv"], by["etcd"]

    def div(a: float, b: float) -> float | None:
        return round(a / b, 2) if b > 0 else None

    return {"restart": div(q.restart_s, e.restart_s), "peak_rss": div(q.peak_rss_mb, e.peak_rss_mb),
            "data_dir": div(q.data_dir_mb, e.data_dir_mb), "list": div(q.list_ms, e.list_ms)}


def render(results: list[ServerResult]) -> str:
    headers = ["server", "keys + k8s objects", "revisions", "write s", "restart s", "peak RSS MB",
               f"list {results[0].list_pages if results else 0} pages ms", "compacted revs", "compaction s",
               "max write stall ms", "data dir MB", "db file MB", "machine busy before %"]
    rows = [[r.server, f"{r.keys} + {r.k8s_objects}", str(r.revisions), f"{r.write_s:.1f}", f"{r.restart_s:.2f}",
             f"{r.peak_rss_mb:.0f}", f"{r.list_ms:.1f}", str(r.compacted_revs), f"{r.compaction_s:.2f}",
             f"{r.max_stall_ms:.0f}", f"{r.data_dir_mb:.1f}", f"{r.db_file_mb:.1f}", f"{r.busy_before_pct:.0f}"]
            for r in results]
    out = [format_table(headers, rows)]
    found = ratios(results)
    if found:
        lines = []
        for name, value in found.items():
            verdict = "n/a" if value is None else ("met" if value <= TARGETS[name] else "MISSED")
            lines.append(f"{name}: {value} (target <= {TARGETS[name]}) {verdict}")
        q = next(r for r in results if r.server == "quorumkv")
        lines.append(f"write stall during compaction: {q.max_stall_ms:.0f} ms (target <= {MAX_STALL_MS:.0f}) "
                     f"{'met' if q.max_stall_ms <= MAX_STALL_MS else 'MISSED'}")
        out.append("quorumkv / etcd: " + "; ".join(lines))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="flat keys of 1 KiB (default 1,000,000)")
    parser.add_argument("--k8s-objects", type=int, default=100_000)
    parser.add_argument("--k8s-updates", type=int, default=5)
    parser.add_argument("--list-keys", type=int, default=10_000)
    parser.add_argument("--compact-revs", type=int, default=500_000)
    parser.add_argument("--server", action="append", choices=SERVER_KINDS, help="repeatable; default both")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for name in ("keys", "k8s_objects", "k8s_updates", "list_keys", "compact_revs"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.keys + args.k8s_objects == 0:
        parser.error("nothing to write: give --keys or --k8s-objects")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-datascale-", dir=args.tmp_dir) as tmp:
        for kind in args.server or ["etcd", "quorumkv"]:  # one after the other, never in parallel
            results.append(bench_one(kind, Path(tmp) / kind, args.keys, args.k8s_objects, args.k8s_updates,
                                     args.list_keys, args.compact_revs))
    if args.json:
        print(json.dumps({"machine": machine_info(), "results": [asdict(r) for r in results],
                          "ratios": ratios(results)}, indent=2))
    else:
        print(f"machine: {json.dumps(machine_info())}")
        print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
