"""Scalar identifiers used throughout the Raft core.

``NodeId`` 0 (``NONE``) means "no node"; real node ids are positive. ``Term`` and ``Index`` start at 0,
which is the term/index of the empty log.
"""

from __future__ import annotations

from typing import NewType

NodeId = NewType("NodeId", int)
Term = NewType("Term", int)
Index = NewType("Index", int)

#: The absent node: no leader, no vote.
NONE = NodeId(0)
#: The term/index of the empty log (used as dataclass defaults).
TERM0 = Term(0)
INDEX0 = Index(0)
