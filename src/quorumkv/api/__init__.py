"""quorumkv.api."""
