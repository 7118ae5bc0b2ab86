"""quorumkv.transport: carries Raft messages (and forwarded requests) between the members of a cluster.

``PeerTransport`` is the gRPC implementation (``quorumkvpb.Peer`` on ``--listen-peer-urls``);
``quorumkv.testing.memory_transport.MemoryTransport`` offers the same ``Transport`` surface in-process.
"""

from quorumkv.transport.base import (
    CallErrorKind,
    CallHandler,
    OnMessages,
    OnSnapshotStatus,
    OnUnreachable,
    PeerCallError,
    PeerStats,
    RemoteCallError,
    Transport,
    TransportError,
    cluster_mismatch_message,
)
from quorumkv.transport.grpc_transport import PeerTransport, TransportOptions

__all__ = [
    "CallErrorKind",
    "CallHandler",
    "OnMessages",
    "OnSnapshotStatus",
    "OnUnreachable",
    "PeerCallError",
    "PeerStats",
    "PeerTransport",
    "RemoteCallError",
    "Transport",
    "TransportError",
    "TransportOptions",
    "cluster_mismatch_message",
]
