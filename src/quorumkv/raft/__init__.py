"""quorumkv.raft: the Raft consensus core, a deterministic I/O-free state machine."""
