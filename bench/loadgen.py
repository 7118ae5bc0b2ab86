"""``check perf`` load generators side by side: etcdctl 3.4 (Go) and quorumkvctl (asyncio + grpc.aio), each against
its own fresh server, one run at a time.

The question it answers: is quorumkvctl's generator fast enough not to be what limits the figures? For each server
and load it prints writes/s as each client reports it, the client's own CPU, the server's CPU and the CPU taken
by every other process on the machine during the run (interference from other jobs).

    PYTHONPATH=src:. python3.11 -m bench.loadgen --load l                      # against quorumkv (~2.5 min)
    PYTHONPATH=src:. python3.11 -m bench.loadgen --load l --server etcd --server quorumkv --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import (
    SERVER_KINDS,
    ProcSampler,
    children_cpu_seconds,
    format_table,
    log,
    machine_info,
    read_machine_busy_seconds,
    running_server,
    wait_for_quiet,
)
from bench.check_perf import LOADS, parse_check_perf
from quorumkv.testing.processes import CLIENTS, run_etcdctl


@dataclass
class LoadgenResult:
    server: str
    client: str
    load: str
    writes_per_s: int | None
    slowest_s: float | None
    stddev_s: float | None
    errors: int
    summary: str | None
    client_cpu_percent: float
    server_cpu_percent: float | None
    other_cpu_percent: float | None
    busy_before_percent: float
    wall_s: float


def run_one(kind: str, client: str, load: str, tmp_root: Path, wait_quiet_s: float, timeout_s: float
            ) -> LoadgenResult:
    with tempfile.TemporaryDirectory(prefix=f"loadgen-{kind}-{client}-", dir=tmp_root) as tmp:
        with running_server(kind, Path(tmp)) as server:
            endpoint = f"127.0.0.1:{server.client_port}"
            busy_before = wait_for_quiet(wait_quiet_s) if wait_quiet_s > 0 else 0.0
            log(f"{client} check perf --load={load} against {kind} on {endpoint}")
            sampler = ProcSampler(server.pid, interval_s=0.5)
            children0, machine0, t0 = children_cpu_seconds(), read_machine_busy_seconds(), time.monotonic()
            sampler.start()
            try:
                proc = run_etcdctl(endpoint, "check", "perf", f"--load={load}", timeout_s=timeout_s, client=client)
                stdout, stderr = proc.stdout, proc.stderr
            except subprocess.TimeoutExpired:
                stdout, stderr = "", f"timed out after {timeout_s}s"
            wall = time.monotonic() - t0
            stats = sampler.stop() if server.alive() else None
            client_cpu = children_cpu_seconds() - children0
            machine_cpu = read_machine_busy_seconds() - machine0
    parsed = parse_check_perf(stdout, stderr)
    server_cpu = stats.cpu_s if stats is not None else None
    other = None if server_cpu is None else round(100 * max(0.0, machine_cpu - server_cpu - client_cpu) / wall, 1)
    return LoadgenResult(
        kind, client, load, parsed.writes_per_s, parsed.slowest_s, parsed.stddev_s, parsed.errors, parsed.summary,
        round(100 * client_cpu / wall, 1), None if server_cpu is None else round(100 * server_cpu / wall, 1), other,
        busy_before, round(wall, 1))


def render(results: list[LoadgenResult]) -> str:
    headers = ["server", "client", "load", "writes/s", "slowest (s)", "stddev (s)", "errors", "verdict",
               "client CPU %", "server CPU %", "other procs CPU %"]
    rows = [[r.server, r.client, r.load, "—" if r.writes_per_s is None else f"{r.writes_per_s:,}",
             "—" if r.slowest_s is None else f"{r.slowest_s:.3f}", "—" if r.stddev_s is None else f"{r.stddev_s:.4f}",
             str(r.errors), r.summary or "—", f"{r.client_cpu_percent:.0f}",
             "—" if r.server_cpu_percent is None else f"{r.server_cpu_percent:.0f}",
             "—" if r.other_cpu_percent is None else f"{r.other_cpu_percent:.0f}"] for r in results]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", action="append", choices=LOADS, help="repeatable; default l")
    parser.add_argument("--server", action="append", choices=SERVER_KINDS, help="repeatable; default quorumkv")
    parser.add_argument("--client", action="append", choices=CLIENTS, help="repeatable; default both")
    parser.add_argument("--wait-quiet", type=float, default=60.0, help="seconds to wait for a < 30%% busy machine")
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="qkv-loadgen-", dir=args.tmp_dir) as tmp:
        for load in args.load or ["l"]:
            for kind in args.server or ["quorumkv"]:
                for client in args.client or list(CLIENTS):
                    results.append(run_one(kind, client, load, Path(tmp), args.wait_quiet, args.timeout))
    print(render(results), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
                          "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                          "results": [asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
