"""Torn and corrupt tails of the stored data.

What is covered
- A torn WAL tail: a data dir left by kill -9 under load is copied and its ``quorumkv.db-wal`` truncated at a
  seeded random offset inside one of its last (at most 3) committed transactions, only ever in frames that
  were not yet checkpointed into the main file (read from the WAL-index in ``-shm``) - which is what a torn
  un-synced tail looks like. SQLite's recovery drops the cut transaction and everything after it; the test
  proves quorumkv then starts and serves a *consistent prefix* of the original history: its current state,
  its reads at older revisions and its watch history are exactly the original's up to its revision, and a
  new write continues from that revision.
- A corrupt log entry on the replay path: entries above ``meta.applied_index`` are re-applied at startup and
  their CRC32 checked first; a mismatch refuses the start with a message naming the checksum.
- A missing log entry on the replay path (a hole between the applied index and the last entry) refuses the
  start instead of applying past it.
- The replay path itself: a durable but unapplied entry is applied at startup.

What is not covered (and why)
- Acknowledged writes in a torn tail are lost: a torn tail means the disk lost fsynced data, outside the
  durability promise (which relies on fsync). The test only checks the loss is a clean prefix.
- Damage in the middle of the WAL: SQLite stops reading the WAL at the first frame failing its checksum, so
  later commits vanish silently, as after a torn tail; no error is raised.
- Damage to the main database file (checkpointed pages): SQLite has no page checksums; quorumkv does not run
  ``PRAGMA integrity_check`` at startup, so such damage is found only when a query trips over it (or never).
- Corruption of log entries at or below the applied index is not detected at startup (they are not re-read);
  on a single member they are only kept for future follower catch-up.
- The ``-shm`` WAL-index is not copied: SQLite rebuilds it from the WAL when the first connection opens the
  database, which is what happens after a reboot.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sqlite3
import struct
from pathlib import Path
from typing import Any

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.storage import schema
from quorumkv.storage.datadir import DB_FILE
from quorumkv.storage.raftlog import row_crc
from quorumkv.testing.crash import (
    ACKED,
    CHANNEL_OPTIONS,
    ROOT_END,
    ROOT_PREFIX,
    RPC_TIMEOUT_S,
    SEED_ENV,
    Ledger,
    grpc_target,
    load_until_kill,
    run_quorumkv_once,
    seed_from_env,
    value_ok,
    verify_restarted,
    watch_history,
)
from quorumkv.testing.processes import ServerProcess, start_quorumkv

WAL_HEADER = 32
FRAME_HEADER = 24


def wal_index(shm: Path) -> tuple[int, int] | None:
    """(mxFrame, nBackfill) from a WAL-index (``-shm``): the last committed frame, and how many frames were
    already copied into the main database file. Native byte order; the header is stored twice (None if the
    two copies differ: the kill landed while SQLite was updating it)."""
    data = shm.read_bytes()[:136]
    assert len(data) >= 100, f"{shm} too short"
    if data[:48] != data[48:96]:
        return None
    (mx_frame,) = struct.unpack_from("=I", data, 16)
    (n_backfill,) = struct.unpack_from("=I", data, 96)
    return mx_frame, n_backfill


def wal_commit_frames(wal: Path) -> tuple[int, list[int]]:
    """(frame size, 1-based numbers of the commit frames of the current WAL generation)."""
    data = wal.read_bytes()
    magic, _version, page_size = struct.unpack_from(">III", data, 0)
    assert magic in (0x377F0682, 0x377F0683), f"{wal} is not a WAL file"
    salt = data[16:24]
    frame_size = FRAME_HEADER + page_size
    commits = []
    n = 0
    while WAL_HEADER + (n + 1) * frame_size <= len(data):
        off = WAL_HEADER + n * frame_size
        if data[off + 8 : off + 16] != salt:
            break
        n += 1
        (db_size,) = struct.unpack_from(">I", data, off + 4)
        if db_size:
            commits.append(n)
    return frame_size, commits


def _kvs(resp: Any) -> list[tuple[bytes, bytes, int, int, int, int]]:
    return [(bytes(x.key), bytes(x.value), int(x.create_revision), int(x.mod_revision), int(x.version),
             int(x.lease)) for x in resp.kvs]


async def _range(client_url: str, revision: int = 0) -> tuple[int, list[tuple[bytes, bytes, int, int, int, int]]]:
    async with grpc.aio.insecure_channel(grpc_target(client_url), options=CHANNEL_OPTIONS) as ch:
        resp = await pb_grpc.KVStub(ch).Range(
            pb.RangeRequest(key=ROOT_PREFIX, range_end=ROOT_END, revision=revision), timeout=RPC_TIMEOUT_S)
        return int(resp.header.revision), _kvs(resp)


async def _history(client_url: str, start: int, until: int) -> list[tuple[int, int, bytes, bytes]]:
    async with grpc.aio.insecure_channel(grpc_target(client_url), options=CHANNEL_OPTIONS) as ch:
        events, error = await watch_history(pb_grpc.WatchStub(ch), ROOT_PREFIX, ROOT_END, start, until,
                                            RPC_TIMEOUT_S)
    assert not error, error
    return [(int(e.kv.mod_revision), int(e.type), bytes(e.kv.key), bytes(e.kv.value)) for e in events]


async def _put(client_url: str, key: bytes) -> int:
    async with grpc.aio.insecure_channel(grpc_target(client_url)) as ch:
        resp = await pb_grpc.KVStub(ch).Put(pb.PutRequest(key=key, value=b"after"), timeout=RPC_TIMEOUT_S)
        return int(resp.header.revision)


@pytest.mark.timeout(120)
def test_torn_wal_tail_serves_a_consistent_prefix(tmp_path: Path) -> None:
    seed = seed_from_env()
    print(f"\ntorn tail: seed={seed} (rerun with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    ledger = Ledger()
    servers: list[ServerProcess] = []
    try:
        server = start_quorumkv(tmp_path / "orig")
        servers.append(server)
        data_dir = server.data_dir
        base_rev = since = asyncio.run(_range(server.client_url))[0]
        # Load, kill -9; retry (bounded) in the rare case that every committed frame was already checkpointed.
        for attempt in range(3):
            load = asyncio.run(load_until_kill(server.client_url, ledger, cycle=attempt, writers=8, rng=rng,
                                               kill_after_s=rng.uniform(0.4, 1.0), kill=server.kill9))
            assert server.returncode == -signal.SIGKILL and not load.early_failures and load.acked > 0
            index = wal_index(data_dir / f"{DB_FILE}-shm")
            mx_frame, n_backfill = index or (0, 0)
            frame_size, commits = wal_commit_frames(data_dir / f"{DB_FILE}-wal")
            assert index is None or mx_frame in commits, (mx_frame, commits[-5:])
            commits = [c for c in commits if c <= mx_frame]
            # Transactions whose frames all lie above the checkpointed ones: (first frame, commit frame).
            txns = [(prev + 1, c) for prev, c in zip([0, *commits[:-1]], commits, strict=True) if prev >= n_backfill]
            if txns:
                break
            server = start_quorumkv(tmp_path / "orig", data_dir=data_dir)
            servers.append(server)
            since = asyncio.run(_range(server.client_url))[0]
        else:
            pytest.fail("every kill landed right after a full checkpoint (or mid WAL-index update); nothing to tear")
        first, commit = rng.choice(txns[-3:])
        cut = rng.randrange(WAL_HEADER + (first - 1) * frame_size, WAL_HEADER + commit * frame_size)
        print(f"WAL: {mx_frame} committed frames, {n_backfill} checkpointed, {len(txns)} tearable transactions; "
              f"cutting at byte {cut} inside the transaction in frames {first}..{commit}")

        torn_dir = tmp_path / "torn.data"
        torn_dir.mkdir()
        for name in ("FORMAT", DB_FILE, f"{DB_FILE}-wal"):
            shutil.copy2(data_dir / name, torn_dir / name)
        with open(torn_dir / f"{DB_FILE}-wal", "r+b") as fh:
            fh.truncate(cut)

        # The original is intact after its kill -9 (as test_crash_durability proves at length).
        orig = start_quorumkv(tmp_path / "orig", data_dir=data_dir)
        servers.append(orig)
        res = asyncio.run(verify_restarted(orig.client_url, ledger, cycle=attempt, since_revision=since, rng=rng))
        assert not res.problems, "\n".join(res.problems[:40])
        orig_rev = res.revision

        torn = start_quorumkv(tmp_path / "torn", data_dir=torn_dir)
        servers.append(torn)
        torn_rev, torn_state = asyncio.run(_range(torn.client_url))
        lost = [op for op in ledger.ops if op.status == ACKED and op.revision > torn_rev]
        print(f"torn copy serves revision {torn_rev} (original {orig_rev}); the tear dropped the last "
              f"{len(lost)} acknowledged requests")
        assert base_rev <= torn_rev < orig_rev, "the cut transaction changed nothing?"
        # Every served key is one the load wrote, with its value intact.
        for key, value, *_ in torn_state:
            assert key in ledger.key_owner and value in ledger.key_owner[key].values, key
            assert value_ok(value), key
        # Consistent prefix: current state, reads at older revisions and the history equal the original's.
        assert torn_state == asyncio.run(_range(orig.client_url, torn_rev))[1]
        for at in sorted({base_rev, torn_rev, *(rng.randint(base_rev, torn_rev) for _ in range(6))}):
            assert asyncio.run(_range(torn.client_url, at))[1] == asyncio.run(_range(orig.client_url, at))[1], at
        if torn_rev > base_rev:
            orig_history = asyncio.run(_history(orig.client_url, base_rev + 1, orig_rev))
            torn_history = asyncio.run(_history(torn.client_url, base_rev + 1, torn_rev))
            assert torn_history == [e for e in orig_history if e[0] <= torn_rev]
            assert torn_history[-1][0] == torn_rev
        # Revisions continue from the surviving prefix.
        assert asyncio.run(_put(torn.client_url, b"crash/after-tear")) == torn_rev + 1
    finally:
        for s in servers:
            s.stop()


# -- the replay path --------------------------------------------------------------------------------------


def _stopped_data_dir(tmp_path: Path, puts: int) -> tuple[Path, int]:
    """A data dir with ``puts`` keys written and the server stopped cleanly; returns it and its revision."""
    server = start_quorumkv(tmp_path)
    try:
        for i in range(puts):
            assert server.etcdctl("put", f"r/{i}", f"v{i}").returncode == 0
        got = server.etcdctl("get", "r/0", write_out="json")
        assert got.returncode == 0, got.stderr
    finally:
        assert server.stop() == 0
    with sqlite3.connect(server.data_dir / DB_FILE) as conn:
        (rev,) = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
    return server.data_dir, int(rev)


def _append_unapplied(conn: sqlite3.Connection, n: int) -> list[int]:
    """Store ``n`` put entries after the applied index without applying them: the state a crash leaves when log
    rows are durable before their apply (a member of a larger cluster). A sole voter applies every entry in the
    transaction that stores it, so its own log never looks like this; once it leads again it commits them."""
    (applied,) = conn.execute("SELECT value FROM meta WHERE name = 'applied_index'").fetchone()
    hard_state = schema.hard_state(conn)
    assert hard_state is not None
    term = int(hard_state.term)
    indexes = []
    for i in range(n):
        idx = int(applied) + 1 + i
        payload = pb.PutRequest(key=f"r/replayed-{i}".encode(), value=b"from the log").SerializeToString()
        data = encode_entry(EntryKind.PUT, 0, payload)
        crc = row_crc(term, EntryKind.PUT, data)
        conn.execute("INSERT INTO raft_log(idx, term, kind, data, crc) VALUES (?,?,?,?,?)",
                     (idx, int(term), int(EntryKind.PUT), data, crc))
        indexes.append(idx)
    return indexes


def _applied_index(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE name = 'applied_index'").fetchone()[0])


@pytest.mark.timeout(60)
def test_corrupt_log_entry_on_replay_refuses_to_start(tmp_path: Path) -> None:
    data_dir, revision = _stopped_data_dir(tmp_path, puts=6)
    db = data_dir / DB_FILE
    with sqlite3.connect(db) as conn:
        applied = _applied_index(conn)
        victim = _append_unapplied(conn, 4)[1]
        (stored,) = conn.execute("SELECT data FROM raft_log WHERE idx = ?", (victim,)).fetchone()
        data = bytearray(stored)
        data[-1] ^= 0x40  # one flipped bit in the stored value; the stored crc is left as it was
        conn.execute("UPDATE raft_log SET data = ? WHERE idx = ?", (bytes(data), victim))
    res = run_quorumkv_once(data_dir)
    output = res.stdout + res.stderr
    assert res.returncode != 0, f"started on a corrupt log:\n{output}"
    assert "Traceback" not in output, output
    lines = [line for line in res.stderr.splitlines() if line.startswith("quorumkv: ")]
    assert len(lines) == 1 and "checksum" in lines[0] and f"log entry {victim}" in lines[0], res.stderr
    print(lines[0])
    with sqlite3.connect(db) as conn:  # nothing of the replay was committed
        assert _applied_index(conn) == applied
        assert conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0] == revision


@pytest.mark.timeout(60)
def test_missing_log_entry_on_replay_refuses_to_start(tmp_path: Path) -> None:
    data_dir, revision = _stopped_data_dir(tmp_path, puts=6)
    db = data_dir / DB_FILE
    with sqlite3.connect(db) as conn:
        applied = _applied_index(conn)
        missing = _append_unapplied(conn, 4)[2]
        conn.execute("DELETE FROM raft_log WHERE idx = ?", (missing,))
    res = run_quorumkv_once(data_dir)
    output = res.stdout + res.stderr
    assert res.returncode != 0, f"replayed across a hole in the log:\n{output}"
    assert "Traceback" not in output, output
    lines = [line for line in res.stderr.splitlines() if line.startswith("quorumkv: ")]
    assert len(lines) == 1 and f"log entry {missing} is missing" in lines[0], res.stderr
    with sqlite3.connect(db) as conn:
        assert _applied_index(conn) == applied
        assert conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0] == revision


@pytest.mark.timeout(60)
def test_durable_unapplied_log_entry_is_applied_at_startup(tmp_path: Path) -> None:
    data_dir, revision = _stopped_data_dir(tmp_path, puts=2)
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        (replayed,) = _append_unapplied(conn, 1)
    server = start_quorumkv(tmp_path, data_dir=data_dir)
    try:
        got = server.etcdctl("get", "r/replayed-0", write_out="json")
        assert got.returncode == 0, got.stderr
        kv = json.loads(got.stdout)["kvs"][0]
        assert kv["mod_revision"] == revision + 1
        assert server.etcdctl("put", "r/next", "x").returncode == 0
    finally:
        assert server.stop() == 0
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        assert int(conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]) == revision + 2
        # then the new term's no-op, the member's published attributes and the put, after the replayed entry
        assert _applied_index(conn) == replayed + 3
        # the replayed row went with the first batch after it: nothing needs it any more
        assert conn.execute("SELECT count(*) FROM raft_log").fetchone()[0] == 0
