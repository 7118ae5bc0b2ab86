"""Single-server membership changes.

``apply_change`` is a pure function of the current configuration and one ``ConfChange``. It is applied
by every member when the change entry is *applied* (after commit), in log order, so every member
computes the same sequence of configurations. Invalid changes are rejected deterministically (the same
on every member) and leave the configuration unchanged.
"""

from __future__ import annotations

from quorumkv.raft.messages import ConfChange, ConfChangeType, ConfState


class ConfChangeError(ValueError):
    """The change is not allowed from the current configuration."""


def apply_change(cs: ConfState, cc: ConfChange) -> ConfState:
    """Return the configuration after ``cc``. Invariant kept: voters and learners disjoint, voters
    non-empty, and the voter sets before/after differ by at most one server."""
    voters = set(cs.voters)
    learners = set(cs.learners)
    nid = cc.node_id
    if nid <= 0:
        raise ConfChangeError(f"invalid node id {nid}")
    if cc.type == ConfChangeType.ADD_NODE:
        learners.discard(nid)  # promotion of a learner, or a fresh voter
        voters.add(nid)
    elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
        if nid in voters:
            raise ConfChangeError(f"demoting voter {nid} to learner is not supported")
        learners.add(nid)
    elif cc.type == ConfChangeType.REMOVE_NODE:
        voters.discard(nid)
        learners.discard(nid)
        if not voters:
            raise ConfChangeError("removing the last voter")
    else:  # pragma: no cover - enum exhaustive
        raise ConfChangeError(f"unknown change {cc.type!r}")
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
