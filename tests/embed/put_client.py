"""Issue puts against an endpoint from a separate process; print one JSON line of (start, end) monotonic times.

Usage: python put_client.py HOST:PORT SECONDS. Prints ``started`` once the first put succeeds, then puts for
SECONDS more (each with a 10 s deadline) and prints ``{"puts": [[t0, t1], ...], "errors": n}``.
CLOCK_MONOTONIC is system-wide on Linux, so the parent can compare these times with its own.
"""

from __future__ import annotations

import json
import sys
import time

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc


def main() -> None:
    endpoint, seconds = sys.argv[1], float(sys.argv[2])
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        kv.Put(rpc_pb2.PutRequest(key=b"/gil/warmup", value=b"x"), timeout=10)
        print("started", flush=True)
        puts: list[tuple[float, float]] = []
        errors = 0
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                kv.Put(rpc_pb2.PutRequest(key=b"/gil/%d" % i, value=b"v"), timeout=10)
                puts.append((t0, time.monotonic()))
            except grpc.RpcError:
                errors += 1
            i += 1
        print(json.dumps({"puts": puts, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
