"""quorumkv.mvcc."""
