"""Speed of the linearizability checker, and of recording a history against a real server.

    PYTHONPATH=src:. python3 -m bench.linearizability [--ops 3000] [--clients 10] [--keys 5] [--seeds 3]
    PYTHONPATH=src:. python3 -m bench.linearizability --record etcd|quorumkv [--ops 3000]

Without ``--record``: generated histories (a sequential model run with random overlap, see
``quorumkv.testing.history_gen``) at several failure rates, each checked with and without its watch; prints the
median check time and search steps per case. With ``--record``: starts the server on free loopback ports,
records ``--ops`` operations from ``--clients`` workers, and prints the recording rate and the check time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from quorumkv.testing.history import History
from quorumkv.testing.history_gen import GenParams, generate_history
from quorumkv.testing.linearizability import check
from quorumkv.testing.processes import start_etcd, start_quorumkv
from quorumkv.testing.recorder import RecorderConfig, record_history_sync


def _time_check(history: History, max_seconds: float) -> tuple[float, int, str]:
    started = time.perf_counter()
    result = check(history, max_seconds=max_seconds)
    return time.perf_counter() - started, result.nodes, result.outcome


def generated(args: argparse.Namespace) -> None:
    print(f"{'failed writes':>13} {'watch':>5} {'median s':>9} {'max s':>7} {'steps':>9}  outcomes")
    for maybe in (0.0, 0.02, 0.05, 0.1, 0.2):
        for watch in (False, True):
            times: list[float] = []
            steps: list[int] = []
            outcomes: list[str] = []
            for seed in range(args.seeds):
                params = GenParams(operations=args.ops, clients=args.clients, keys=args.keys, maybe_fraction=maybe,
                                   failed_read_fraction=maybe / 2, watch=watch)
                history = generate_history(random.Random(seed), params)
                elapsed, nodes, outcome = _time_check(history, args.max_seconds)
                times.append(elapsed)
                steps.append(nodes)
                outcomes.append(outcome)
            print(f"{maybe:>13.0%} {'yes' if watch else 'no':>5} {statistics.median(times):>9.3f} "
                  f"{max(times):>7.3f} {int(statistics.median(steps)):>9}  {','.join(sorted(set(outcomes)))}")


def recorded(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lin-bench-") as tmp:
        start = start_etcd if args.record == "etcd" else start_quorumkv
        server = start(Path(tmp) / args.record)
        try:
            config = RecorderConfig([server.client_url], clients=args.clients, keys=args.keys,
                                    max_operations=args.ops, max_seconds=120, seed=0)
            started = time.perf_counter()
            history = record_history_sync(config)
            recording = time.perf_counter() - started
        finally:
            server.stop()
    elapsed, nodes, outcome = _time_check(history, args.max_seconds)
    print(f"{args.record}: recorded {len(history)} operations from {args.clients} clients in {recording:.2f}s "
          f"({len(history) / recording:.0f} ops/s, {history.stats()['failed']} failed)")
    print(f"check: {outcome} in {elapsed:.3f}s, {nodes} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--record", choices=("etcd", "quorumkv"))
    args = parser.parse_args()
    if args.record:
        recorded(args)
    else:
        generated(args)


if __name__ == "__main__":
    main()
