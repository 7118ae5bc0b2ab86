"""The ``lease`` and ``alarm`` tables: replicated state the applier writes, one row per lease or raised alarm.

Alarm member IDs are uint64; SQLite stores them as signed 64-bit integers (``membership.to_i64``).
"""

from __future__ import annotations

import sqlite3

from quorumkv.storage.membership import to_i64, to_u64


def load_leases(conn: sqlite3.Connection) -> dict[int, int]:
    """``lease ID -> granted TTL (seconds)``."""
    return {int(r[0]): int(r[1]) for r in conn.execute("SELECT id, ttl FROM lease")}


def load_lease_remaining(conn: sqlite3.Connection) -> dict[int, int]:
    """``lease ID -> checkpointed remaining TTL (seconds)`` for the leases that have one (0: none, the full TTL)."""
    return {int(r[0]): int(r[1]) for r in conn.execute("SELECT id, remaining_ttl FROM lease WHERE remaining_ttl > 0")}


def set_lease_remaining(conn: sqlite3.Connection, lease_id: int, remaining_ttl_s: int) -> None:
    """Record a lease checkpoint (0 clears it); a lease that no longer exists is left alone."""
    conn.execute("UPDATE lease SET remaining_ttl = ? WHERE id = ?", (remaining_ttl_s, lease_id))


def insert_lease(conn: sqlite3.Connection, lease_id: int, ttl_s: int) -> None:
    conn.execute("INSERT INTO lease(id, ttl, remaining_ttl) VALUES (?, ?, 0)", (lease_id, ttl_s))


def delete_lease(conn: sqlite3.Connection, lease_id: int) -> None:
    conn.execute("DELETE FROM lease WHERE id = ?", (lease_id,))


def load_alarms(conn: sqlite3.Connection) -> set[tuple[int, int]]:
    """Raised alarms as ``(member ID (uint64), AlarmType value)``."""
    return {(to_u64(int(r[0])), int(r[1])) for r in conn.execute("SELECT member_id, alarm FROM alarm")}


def insert_alarm(conn: sqlite3.Connection, member_id: int, alarm: int) -> None:
    conn.execute("INSERT INTO alarm(member_id, alarm) VALUES (?, ?)", (to_i64(member_id), alarm))


def delete_alarm(conn: sqlite3.Connection, member_id: int, alarm: int) -> None:
    conn.execute("DELETE FROM alarm WHERE member_id = ? AND alarm = ?", (to_i64(member_id), alarm))


def clear_alarms(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM alarm")
