"""quorumkv.storage."""
