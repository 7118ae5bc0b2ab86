"""Command line for the simulator: ``python -m quorumkv.sim --seeds N [--start S] [--nodes K]``."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator

from quorumkv.testing.planted import KNOWN_BUGS
from quorumkv.testing.sim import SimResult, run_seed


def _run(args: tuple[int, int, frozenset[str]]) -> SimResult:
    seed, nodes, bugs = args
    return run_seed(seed, nodes, bugs)


def _results(seeds: range, nodes: int, bugs: frozenset[str], jobs: int) -> Iterator[SimResult]:
    work = [(s, nodes, bugs) for s in seeds]
    if jobs <= 1:
        for w in work:
            yield _run(w)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        yield from pool.imap(_run, work, chunksize=4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quorumkv.sim", description=__doc__)
    ap.add_argument("--seeds", type=int, default=100, help="number of seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--nodes", type=int, default=3, help="initial cluster size (3, 5, 7)")
    ap.add_argument(
        "--bug",
        action="append",
        default=[],
        choices=sorted(KNOWN_BUGS),
        help="TEST-ONLY: plant a known bug in the core (repeatable)",
    )
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                    help="worker processes (results are identical for any value); default min(4, CPUs)")
    ap.add_argument("--stop-on-first", action="store_true", help="stop at the first violating seed")
    ap.add_argument("-v", "--verbose", action="store_true", help="print one line per seed")
    ns = ap.parse_args(argv)
    bugs = frozenset(ns.bug)
    seeds = range(ns.start, ns.start + ns.seeds)
    print(
        f"quorumkv sim: nodes={ns.nodes} seeds={ns.start}..{ns.start + ns.seeds - 1} "
        f"bugs={sorted(bugs)} jobs={ns.jobs}"
    )
    t0 = time.monotonic()
    runs = committed = writes = reads = 0
    faults: Counter[str] = Counter()
    failed: list[SimResult] = []
    first: SimResult | None = None
    for r in _results(seeds, ns.nodes, bugs, ns.jobs):
        runs += 1
        first = first or r
        committed += r.committed_entries
        writes += r.writes_acked
        reads += r.reads_ok
        faults.update(r.faults)
        if ns.verbose:
            status = "ok" if r.ok else "VIOLATION"
            print(
                f"seed {r.seed}: {status} committed={r.committed_entries} writes={r.writes_acked} "
                f"reads={r.reads_ok} ticks={r.ticks} ticks_to_progress={r.liveness_ticks} "
                f"faults={sum(r.faults.values())} trace={r.trace_hash}"
            )
        if not r.ok:
            failed.append(r)
            print(f"VIOLATION seed={r.seed} nodes={r.nodes}: {r.violations[0]}")
            print(f"  reproduce: {r.reproduce_command()}")
            if ns.stop_on_first:
                break
    elapsed = time.monotonic() - t0
    self_check_ok = True
    if first is not None:
        again = run_seed(first.seed, ns.nodes, bugs)
        self_check_ok = again.trace_hash == first.trace_hash
        print(
            f"determinism self-check: seed {first.seed} trace {first.trace_hash} == {again.trace_hash}: "
            f"{'ok' if self_check_ok else 'MISMATCH'}"
        )
    print(
        f"runs: {runs}  violations: {len(failed)}  committed entries: {committed}  "
        f"writes acked: {writes}  reads checked: {reads}"
    )
    print("faults injected: " + ", ".join(f"{k}={v}" for k, v in sorted(faults.items())))
    print(f"elapsed: {elapsed:.1f}s")
    if failed:
        print("failing seeds: " + " ".join(str(r.seed) for r in failed))
    return 0 if not failed and self_check_ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
