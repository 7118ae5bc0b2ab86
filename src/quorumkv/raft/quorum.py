"""Pure majority-quorum arithmetic (single configurations; quorumkv uses single-server changes).

Invariant relied on by safety: any two majorities of the same voter set intersect, and a majority of
``C`` and a majority of ``C ± {one server}`` intersect (see docs/raft.md).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping

from quorumkv.raft.ids import Index, NodeId


class VoteResult(enum.IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority(n_voters: int) -> int:
    """Size of the smallest majority of ``n_voters`` voters."""
    return n_voters // 2 + 1


def committed_index(voters: Collection[NodeId], match: Callable[[NodeId], Index]) -> Index:
    """Largest index acknowledged by a majority of ``voters``.

    An empty configuration has no quorum constraint; by convention it returns a huge index so that the
    caller's ``min`` with other configs is unaffected (the core never has an empty voter set while leading).
    """
    n = len(voters)
    if n == 0:
        return Index(1 << 62)
    if n == 1:
        return match(next(iter(voters)))
    acked = sorted((match(v) for v in voters), reverse=True)
    return acked[majority(n) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """WON if a majority granted, LOST if a majority can no longer be reached, else PENDING."""
    if not voters:
        return VoteResult.WON
    granted = rejected = 0
    for v in voters:
        got = votes.get(v)
        if got is None:
            continue
        if got:
            granted += 1
        else:
            rejected += 1
    q = majority(len(voters))
    if granted >= q:
        return VoteResult.WON
    if len(voters) - rejected < q:
        return VoteResult.LOST
    return VoteResult.PENDING
