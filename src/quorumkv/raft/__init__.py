"""quorumkv.raft: the Raft consensus core, a deterministic I/O-free state machine.

Drive a node with ``RawNode`` (``tick``/``step``/``propose``/...) and handle its ``Ready`` output; see
``quorumkv.raft.rawnode.Ready`` for the persistence contract and docs/raft.md for the design.
"""

from quorumkv.raft.core import Config, PeerStatus, ProposalDroppedError, Raft, Status
from quorumkv.raft.ids import NONE, Index, NodeId, Term
from quorumkv.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
)
from quorumkv.raft.rawnode import RawNode, Ready
from quorumkv.raft.read_only import ReadState
from quorumkv.raft.storage import (
    CompactedError,
    SnapshotTemporarilyUnavailableError,
    Storage,
    StorageError,
    UnavailableError,
)

__all__ = [
    "NONE",
    "CompactedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "Index",
    "Message",
    "MessageType",
    "NodeId",
    "PeerStatus",
    "ProposalDroppedError",
    "Raft",
    "RawNode",
    "ReadState",
    "Ready",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "StateType",
    "Status",
    "Storage",
    "StorageError",
    "Term",
    "UnavailableError",
]
