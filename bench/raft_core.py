"""Benchmark of the Raft core alone, in process (no network, no disk).

    PYTHONPATH=src python3.11 bench/raft_core.py [--entries N] [--batch B] [--size BYTES]

Prints committed entries/s for a 3-member cluster with batched proposals (every member persists to a
MemoryStorage and applies), and the time to elect a leader in ticks and wall milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import deque

from quorumkv.raft import Config, Message, NodeId, RawNode, StateType
from quorumkv.raft.memory_storage import MemoryStorage
from quorumkv.testing.harness import bootstrap_storage

Cluster = tuple[dict[int, RawNode], dict[int, MemoryStorage]]


def make_cluster(n: int, seed: int, pre_vote: bool = True) -> Cluster:
    voters = tuple(range(1, n + 1))
    nodes: dict[int, RawNode] = {}
    storages: dict[int, MemoryStorage] = {}
    for i in voters:
        st = bootstrap_storage(voters)
        storages[i] = st
        nodes[i] = RawNode(
            Config(
                id=NodeId(i),
                storage=st,
                rng=random.Random(f"{seed}:{i}"),
                election_timeout_ticks=10,
                heartbeat_interval_ticks=1,
                max_inflight_msgs=256,
                max_uncommitted_entries=1 << 20,
                pre_vote=pre_vote,
                check_quorum=True,
            )
        )
    return nodes, storages


def pump(nodes: dict[int, RawNode], storages: dict[int, MemoryStorage], queue: deque[Message]) -> int:
    """Handle Readies and deliver messages until quiet; returns entries applied on node 1."""
    applied = 0
    while True:
        progressed = False
        for nid, node in nodes.items():
            while node.has_ready():
                progressed = True
                rd = node.ready()
                st = storages[nid]
                if rd.entries:
                    st.append(rd.entries)
                if rd.hard_state is not None:
                    st.set_hard_state(rd.hard_state)
                queue.extend(rd.messages)
                if nid == 1:
                    applied += len(rd.committed_entries)
                node.advance(rd)
        while queue:
            progressed = True
            m = queue.popleft()
            nodes[m.to].step(m)
        if not progressed:
            return applied


def bench_throughput(entries: int, batch: int, size: int) -> tuple[float, int]:
    nodes, storages = make_cluster(3, 0)
    queue: deque[Message] = deque()
    nodes[1].campaign()
    pump(nodes, storages, queue)
    assert nodes[1].raft.state == StateType.LEADER
    payload = [b"x" * size] * batch
    done = 0
    t0 = time.perf_counter()
    while done < entries:
        nodes[1].propose_batch(payload)
        done += batch
        pump(nodes, storages, queue)
        # Keep memory flat like a real server would: compact what every member has applied.
        if done % 20_000 < batch:
            for st in storages.values():
                st.compact(st.last_index())
    elapsed = time.perf_counter() - t0
    return done / elapsed, nodes[1].raft.log.committed


def bench_election(runs: int) -> tuple[list[int], list[float]]:
    ticks_all: list[int] = []
    ms_all: list[float] = []
    for seed in range(runs):
        nodes, storages = make_cluster(3, seed)
        queue: deque[Message] = deque()
        t0 = time.perf_counter()
        ticks = 0
        while not any(n.raft.state == StateType.LEADER for n in nodes.values()):
            for n in nodes.values():
                n.tick()
            ticks += 1
            pump(nodes, storages, queue)
        ms_all.append((time.perf_counter() - t0) * 1000)
        ticks_all.append(ticks)
    return ticks_all, ms_all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--elections", type=int, default=200)
    ns = ap.parse_args()
    for batch in sorted({1, ns.batch}):
        n = ns.entries if batch > 1 else ns.entries // 10
        rate, committed = bench_throughput(n, batch, ns.size)
        print(f"throughput: 3 members, batch={batch}, {ns.size}B entries: {rate:,.0f} committed entries/s "
              f"({committed} committed)")
    ticks, ms = bench_election(ns.elections)
    print(f"election (3 members, timeout 10 ticks, pre-vote, cold start, {ns.elections} seeds): "
          f"ticks median={statistics.median(ticks)} p99={sorted(ticks)[int(0.99 * len(ticks)) - 1]} "
          f"max={max(ticks)}; wall median={statistics.median(ms):.2f} ms max={max(ms):.2f} ms")


if __name__ == "__main__":
    main()
