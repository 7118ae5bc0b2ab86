"""A member's identity as etcd computes it: member and cluster IDs, request IDs, ``--initial-cluster``."""

from __future__ import annotations

import hashlib


def compute_member_id(peer_urls: list[str], cluster_token: str, now_s: int | None = None) -> int:
    """etcd's member ID: SHA-1 of the sorted peer URLs, the cluster token (and a start time), first 8 bytes."""
    b = "".join(sorted(peer_urls)).encode() + cluster_token.encode()
    if now_s is not None:
        b += str(now_s).encode()
    return int.from_bytes(hashlib.sha1(b).digest()[:8], "big")


def compute_cluster_id(member_ids: list[int]) -> int:
    """etcd's cluster ID: SHA-1 of the sorted member IDs (8 bytes big-endian each), first 8 bytes."""
    b = b"".join(mid.to_bytes(8, "big") for mid in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(b).digest()[:8], "big")


def parse_initial_cluster(spec: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, url = part.partition("=")
        out.setdefault(name, []).append(url)
    return out


class IdGenerator:
    """etcd's request ID scheme: member ID low 16 bits, then a millisecond timestamp and a counter."""

    def __init__(self, member_id: int, now_ms: int) -> None:
        self.prefix = (member_id & 0xFFFF) << 48
        self.suffix = (now_ms & ((1 << 40) - 1)) << 8

    def next(self) -> int:
        self.suffix += 1
        return self.prefix | (self.suffix & ((1 << 48) - 1))
