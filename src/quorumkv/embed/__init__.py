"""quorumkv.embed."""
