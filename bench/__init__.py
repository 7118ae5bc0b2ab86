"""Benchmarks comparing quorumkv with real etcd 3.4 on the same machine (see docs/performance.md).

Run from the repository root, e.g. ``PYTHONPATH=src:. python3.11 -m bench.check_perf --load l``.
"""
