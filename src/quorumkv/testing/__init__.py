"""quorumkv.testing: in-memory storage, transport and clock, and the seeded simulator, shipped for tests."""
