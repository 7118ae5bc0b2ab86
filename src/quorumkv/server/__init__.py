"""quorumkv.server."""
