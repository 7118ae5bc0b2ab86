"""The gRPC floor: a grpc.aio server whose Put stores into a dict (no disk, no MVCC), as in the reference probe.

Running `etcdctl check perf` against it and against quorumkv back to back shows how much quorumkv adds over
what Python's gRPC layer alone costs on this machine. The handlers are registered as generic handlers (no
generated ``*_pb2_grpc`` module), so the script also runs under other grpcio releases installed in a venv of
their own (only ``protobuf`` must be able to load the committed ``*_pb2`` modules):

    PYTHONPATH=src:. python bench/grpc_floor.py --port 23900   (serves until killed)
    python -m venv /tmp/g178 && /tmp/g178/bin/pip install grpcio==1.78.0 protobuf==6.33.6
    PYTHONPATH=src /tmp/g178/bin/python bench/grpc_floor.py --port 23900 --uvloop
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2 as pb


class FloorKV:
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


async def floor_status(request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
    return pb.StatusResponse(version="3.4.23", leader=1, header=pb.ResponseHeader(member_id=1))


def _unary(fn: Callable[[Any, Any], Awaitable[Any]], request_type: Any, response_type: Any) -> Any:
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString)


async def main(port: int) -> None:
    kv = FloorKV()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("etcdserverpb.KV", {
            "Put": _unary(kv.Put, pb.PutRequest, pb.PutResponse),
            "Range": _unary(kv.Range, pb.RangeRequest, pb.RangeResponse),
            "DeleteRange": _unary(kv.DeleteRange, pb.DeleteRangeRequest, pb.DeleteRangeResponse),
        }),
        grpc.method_handlers_generic_handler("etcdserverpb.Maintenance", {
            "Status": _unary(floor_status, pb.StatusRequest, pb.StatusResponse),
        }),
    ))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=23900)
    ap.add_argument("--uvloop", action="store_true", help="serve on uvloop's event loop (as the quorumkv command)")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.port))
    else:
        asyncio.run(main(args.port))
