"""quorumkv's own member-to-member (peer) protocol: peer.proto and its generated stubs."""
