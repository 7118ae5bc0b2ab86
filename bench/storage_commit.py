"""Where should the log live? Measures the durable write path of the two designs on this machine.

A: log entries and their apply in ONE SQLite transaction (WAL mode, synchronous=FULL): one fsync per batch.
B: log entries appended to a separate file + fdatasync, then applied to SQLite with synchronous=OFF
   (durability from the file log, SQLite synced only at checkpoints): one fdatasync per batch + SQLite work.

Both write the same rows (1 KiB values) in batches of --batch entries, for --entries entries in total.
Usage: python bench/storage_commit.py [--entries 20000] [--batch 1 10 50 200]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import struct
import tempfile
import time
import zlib
from pathlib import Path

SCHEMA = """
CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, term INTEGER, kind INTEGER, data BLOB, crc INTEGER);
CREATE TABLE kv (id INTEGER PRIMARY KEY, rev INTEGER, sub INTEGER, key BLOB, value BLOB, create_rev INTEGER,
                 version INTEGER, lease INTEGER);
CREATE UNIQUE INDEX kv_by_rev ON kv(rev, sub);
CREATE INDEX kv_by_key ON kv(key, rev);
CREATE TABLE live (key BLOB PRIMARY KEY, create_rev INTEGER, mod_rev INTEGER, version INTEGER, lease INTEGER,
                   kv_id INTEGER) WITHOUT ROWID;
"""


def _open(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.executescript(SCHEMA)
    return conn


def _apply(conn: sqlite3.Connection, rev: int, key: bytes, value: bytes) -> None:
    cur = conn.execute(
        "INSERT INTO kv(rev, sub, key, value, create_rev, version, lease) VALUES (?,?,?,?,?,?,0)",
        (rev, 0, key, value, rev, 1),
    )
    conn.execute("INSERT OR REPLACE INTO live VALUES (?,?,?,?,0,?)", (key, rev, rev, 1, cur.lastrowid))


def design_a(root: Path, entries: int, batch: int, value: bytes) -> float:
    conn = _open(root / "a.db", "FULL")
    start = time.perf_counter()
    rev = 1
    for base in range(0, entries, batch):
        conn.execute("BEGIN IMMEDIATE")
        for i in range(base, min(entries, base + batch)):
            rev += 1
            key = b"k%08d" % i
            conn.execute("INSERT INTO raft_log VALUES (?,?,?,?,?)", (i + 1, 1, 1, key + value, zlib.crc32(value)))
            _apply(conn, rev, key, value)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return entries / elapsed


def design_b(root: Path, entries: int, batch: int, value: bytes) -> float:
    conn = _open(root / "b.db", "OFF")
    fd = os.open(root / "b.wal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start = time.perf_counter()
    rev = 1
    for base in range(0, entries, batch):
        chunk = []
        for i in range(base, min(entries, base + batch)):
            data = b"k%08d" % i + value
            chunk.append(struct.pack(">QI", i + 1, zlib.crc32(data)) + struct.pack(">I", len(data)) + data)
        os.write(fd, b"".join(chunk))
        os.fdatasync(fd)
        conn.execute("BEGIN IMMEDIATE")
        for i in range(base, min(entries, base + batch)):
            rev += 1
            _apply(conn, rev, b"k%08d" % i, value)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    os.close(fd)
    conn.close()
    return entries / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 10, 50, 200])
    args = ap.parse_args()
    value = os.urandom(1024)
    print(f"{'batch':>6} {'A: log in SQLite (entries/s)':>30} {'B: file WAL + SQLite (entries/s)':>34} {'A/B':>6}")
    for batch in args.batch:
        n = args.entries if batch > 1 else min(args.entries, 3000)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
            a = design_a(Path(d), n, batch, value)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
            b = design_b(Path(d), n, batch, value)
        print(f"{batch:>6} {a:>30,.0f} {b:>34,.0f} {a / b:>6.2f}")


if __name__ == "__main__":
    main()
