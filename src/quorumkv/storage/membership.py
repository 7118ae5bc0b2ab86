"""Cluster membership as replicated state: the ``member`` and ``removed_member`` tables.

Membership changes are Raft configuration-change entries whose context is a JSON member record (as etcd's);
applying one updates these tables in the same transaction as the applied index, so every member holds the same
list at the same index. Member IDs are uint64; SQLite stores them as signed 64-bit integers.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from quorumkv.raft.messages import ConfChange, ConfChangeType


def to_i64(u: int) -> int:
    return u - (1 << 64) if u >= (1 << 63) else u


def to_u64(i: int) -> int:
    return i + (1 << 64) if i < 0 else i


@dataclass
class Member:
    id: int
    name: str = ""
    peer_urls: list[str] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def to_json(self) -> bytes:
        return json.dumps({"id": f"{self.id:x}", "name": self.name, "peerURLs": self.peer_urls,
                           "clientURLs": self.client_urls, "isLearner": self.is_learner},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Member:
        try:
            d = json.loads(data)
            return cls(id=int(d["id"], 16), name=str(d.get("name", "")),
                       peer_urls=[str(u) for u in d.get("peerURLs", [])],
                       client_urls=[str(u) for u in d.get("clientURLs", [])],
                       is_learner=bool(d.get("isLearner", False)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed member record in a configuration change: {exc}") from exc


def load_members(conn: sqlite3.Connection) -> dict[int, Member]:
    out: dict[int, Member] = {}
    for mid, name, peers, clients, learner in conn.execute(
            "SELECT id, name, peer_urls, client_urls, is_learner FROM member"):
        m = Member(to_u64(int(mid)), str(name), [u for u in str(peers).split(",") if u],
                   [u for u in str(clients).split(",") if u], bool(learner))
        out[m.id] = m
    return out


def mark_removed(conn: sqlite3.Connection, member_id: int) -> None:
    """Remember that ``member_id`` left the cluster (its data dir must not be used again)."""
    conn.execute("INSERT OR IGNORE INTO removed_member(id) VALUES (?)", (to_i64(member_id),))


def is_removed(conn: sqlite3.Connection, member_id: int) -> bool:
    return conn.execute("SELECT 1 FROM removed_member WHERE id=?", (to_i64(member_id),)).fetchone() is not None


def removed_ids(conn: sqlite3.Connection) -> list[int]:
    """Every member ID ever removed from this cluster (by ``member remove`` or a cluster reset)."""
    return sorted(to_u64(int(r[0])) for r in conn.execute("SELECT id FROM removed_member"))


def upsert_member(conn: sqlite3.Connection, m: Member) -> None:
    conn.execute(
        "INSERT INTO member(id, name, peer_urls, client_urls, is_learner) VALUES (?,?,?,?,?) "
        "ON CONFLICT(id) DO UPDATE SET name=excluded.name, peer_urls=excluded.peer_urls, "
        "client_urls=excluded.client_urls, is_learner=excluded.is_learner",
        (to_i64(m.id), m.name, ",".join(m.peer_urls), ",".join(m.client_urls), int(m.is_learner)),
    )


def apply_conf_change(conn: sqlite3.Connection, cc: ConfChange) -> None:
    """Record a committed membership change (deterministic; the Raft core is told separately)."""
    if cc.type == ConfChangeType.REMOVE_NODE:
        conn.execute("DELETE FROM member WHERE id=?", (to_i64(cc.node_id),))
        mark_removed(conn, cc.node_id)
        return
    m = Member.from_json(cc.context) if cc.context else Member(cc.node_id)
    existing = load_members(conn).get(cc.node_id)
    if cc.type == ConfChangeType.ADD_NODE and existing is not None:
        # promotion of a learner (or a re-add with new attributes): keep what the record does not say
        m.name = m.name or existing.name
        m.client_urls = m.client_urls or existing.client_urls
        m.peer_urls = m.peer_urls or existing.peer_urls
    m.is_learner = cc.type == ConfChangeType.ADD_LEARNER_NODE
    upsert_member(conn, m)


def apply_attributes(conn: sqlite3.Connection, m: Member) -> None:
    """A member published its name and client URLs after starting (etcd's "publish" request)."""
    conn.execute("UPDATE member SET name=?, client_urls=? WHERE id=?",
                 (m.name, ",".join(m.client_urls), to_i64(m.id)))


def apply_peer_urls(conn: sqlite3.Connection, m: Member) -> None:
    """MemberUpdate: new peer URLs for an existing member."""
    conn.execute("UPDATE member SET peer_urls=? WHERE id=?", (",".join(m.peer_urls), to_i64(m.id)))


def replace_members(conn: sqlite3.Connection, members: list[Member]) -> None:
    """The member list becomes exactly ``members`` (a restored cluster's)."""
    conn.execute("DELETE FROM member")
    for m in members:
        upsert_member(conn, m)
