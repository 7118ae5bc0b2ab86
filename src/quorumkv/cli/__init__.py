"""quorumkv.cli."""
