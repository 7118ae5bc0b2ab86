"""quorumkv.lease."""
