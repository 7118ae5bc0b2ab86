"""The gRPC floor: a grpc.aio server whose Put stores into a dict (no disk, no MVCC), as in the reference probe.

Running `etcdctl check perf` against it and against quorumkv back to back shows how much quorumkv adds over
what Python's gRPC layer alone costs on this machine.
Usage: python bench/grpc_floor.py --port 23900   (serves until killed)
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc


class FloorKV(pb_grpc.KVServicer):
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.rev = 1

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        self.data[request.key] = request.value
        self.rev += 1
        return pb.PutResponse(header=pb.ResponseHeader(revision=self.rev))

    async def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        return pb.RangeResponse(header=pb.ResponseHeader(revision=self.rev))

    async def DeleteRange(self, request: pb.DeleteRangeRequest, context: Any) -> pb.DeleteRangeResponse:
        n = 0
        for k in [k for k in self.data if k.startswith(request.key)]:
            del self.data[k]
            n += 1
        return pb.DeleteRangeResponse(header=pb.ResponseHeader(revision=self.rev), deleted=n)


class FloorMaintenance(pb_grpc.MaintenanceServicer):
    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        return pb.StatusResponse(version="3.4.23", leader=1, header=pb.ResponseHeader(member_id=1))


async def main(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_KVServicer_to_server(FloorKV(), server)  # type: ignore[no-untyped-call]
    pb_grpc.add_MaintenanceServicer_to_server(FloorMaintenance(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=23900)
    asyncio.run(main(ap.parse_args().port))
