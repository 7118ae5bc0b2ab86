"""Typed accessors for the member-local rows of ``meta`` (identity, Raft state, the log's bounds).

The replicated rows (``revision``, ``compact_revision``) belong to ``quorumkv.mvcc``; ``applied_index`` is written
by the applier in the transaction that applies each entry. Every other module reads and writes these keys only
through the functions here, so each key is spelled once.

Invariants:
- ``raft_log`` rows, where there are any, cover ``(log_start().index, last index]`` without a hole;
- ``hard_state().commit`` is at most the log's last index (``log_start().index`` when there are no rows);
- a data dir without ``raft_hard_state`` was written by release 0.1's single-member node (upgraded on open).
"""

from __future__ import annotations

import sqlite3
import struct
from typing import NamedTuple

from quorumkv.raft.ids import Index, NodeId, Term
from quorumkv.raft.messages import ConfState, HardState, decode_hard_state, encode_hard_state
from quorumkv.storage.backend import meta_get, meta_set

HARD_STATE = "raft_hard_state"
CONF_STATE = "raft_conf_state"
LOG_TRIMMED_INDEX = "log_trimmed_index"
LOG_TRIMMED_TERM = "log_trimmed_term"
APPLIED_INDEX = "applied_index"
MEMBER_ID = "member_id"
CLUSTER_ID = "cluster_id"
#: Release 0.1's single-member node kept its term here (read once, when such a data dir is upgraded).
LEGACY_TERM = "term"

_CONF_STATE_HEAD = struct.Struct("<II")
_U64 = struct.Struct("<Q")


class LogStart(NamedTuple):
    """The last entry no longer (or never) stored as a ``raft_log`` row, and its term."""

    trimmed_index: int
    trimmed_term: int


def encode_conf_state(cs: ConfState) -> bytes:
    return _CONF_STATE_HEAD.pack(len(cs.voters), len(cs.learners)) + b"".join(
        _U64.pack(v) for v in (*cs.voters, *cs.learners))


def decode_conf_state(buf: bytes) -> ConfState:
    nv, nl = _CONF_STATE_HEAD.unpack_from(buf)
    ids = [_U64.unpack_from(buf, _CONF_STATE_HEAD.size + 8 * k)[0] for k in range(nv + nl)]
    return ConfState(tuple(NodeId(i) for i in ids[:nv]), tuple(NodeId(i) for i in ids[nv:]))


def hard_state(conn: sqlite3.Connection) -> HardState | None:
    raw = meta_get(conn, HARD_STATE)
    return None if raw is None else decode_hard_state(bytes(raw))


def save_hard_state(conn: sqlite3.Connection, hs: HardState) -> None:
    meta_set(conn, HARD_STATE, encode_hard_state(hs))


def conf_state(conn: sqlite3.Connection) -> ConfState | None:
    raw = meta_get(conn, CONF_STATE)
    return None if raw is None else decode_conf_state(bytes(raw))


def save_conf_state(conn: sqlite3.Connection, cs: ConfState) -> None:
    meta_set(conn, CONF_STATE, encode_conf_state(cs))


def log_start(conn: sqlite3.Connection) -> LogStart:
    return LogStart(int(meta_get(conn, LOG_TRIMMED_INDEX, 0)), int(meta_get(conn, LOG_TRIMMED_TERM, 0)))


def save_log_start(conn: sqlite3.Connection, index: int, term: int) -> None:
    meta_set(conn, LOG_TRIMMED_INDEX, int(index))
    meta_set(conn, LOG_TRIMMED_TERM, int(term))


def applied_index(conn: sqlite3.Connection) -> int:
    return int(meta_get(conn, APPLIED_INDEX, 0))


def save_applied_index(conn: sqlite3.Connection, index: int) -> None:
    meta_set(conn, APPLIED_INDEX, int(index))


def legacy_term(conn: sqlite3.Connection) -> int:
    return int(meta_get(conn, LEGACY_TERM, 1))


def member_id(conn: sqlite3.Connection) -> int | None:
    raw = meta_get(conn, MEMBER_ID)
    return None if raw is None else int(raw, 16)


def cluster_id(conn: sqlite3.Connection) -> int | None:
    raw = meta_get(conn, CLUSTER_ID)
    return None if raw is None else int(raw, 16)


def save_identity(conn: sqlite3.Connection, member: int, cluster: int) -> None:
    meta_set(conn, MEMBER_ID, f"{member:x}")
    meta_set(conn, CLUSTER_ID, f"{cluster:x}")


def reset_raft_state(conn: sqlite3.Connection, voters: list[int], *, index: int, term: int = 1) -> None:
    """A new cluster of ``voters`` whose state machine is already at ``index`` (as etcd's snapshot restore
    writes it): no log rows, the log starts after ``index`` at ``term`` (1; a cluster reset keeps its term),
    everything up to it committed and applied, and no vote. Every restored member writes the same state, so they
    form one cluster, and none of them can win an election (nor acknowledge a write) without a quorum of the others."""
    from quorumkv.storage.raftlog import RaftLogTable  # raftlog imports this module

    RaftLogTable().clear(conn, index, term)
    save_applied_index(conn, index)
    save_hard_state(conn, HardState(Term(term), NodeId(0), Index(index)))
    save_conf_state(conn, ConfState(tuple(NodeId(v) for v in sorted(voters))))
