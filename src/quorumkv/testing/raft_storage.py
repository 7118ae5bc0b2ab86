"""Re-export of :mod:`quorumkv.raft.memory_storage` (the in-memory Raft storage lives with the core now)."""

from quorumkv.raft.memory_storage import MemoryStorage, SnapshotOutOfDateError

__all__ = ["MemoryStorage", "SnapshotOutOfDateError"]
