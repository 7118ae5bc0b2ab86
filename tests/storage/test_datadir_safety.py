"""Data dir safety rules, checked on real server processes: every refusal is a non-zero exit with one clear
``quorumkv: ...`` message on stderr (no traceback), and a refused directory is left exactly as it was."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from quorumkv.storage.backend import SCHEMA_VERSION
from quorumkv.storage.datadir import DATA_FORMAT, DB_FILE, FORMAT_FILE, LOCK_FILE
from quorumkv.testing.crash import run_quorumkv_once
from quorumkv.testing.processes import start_quorumkv


def _assert_refused(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    output = res.stdout + res.stderr
    assert res.returncode != 0, f"server did not refuse to start:\n{output}"
    assert "Traceback" not in output, output
    lines = [line for line in res.stderr.splitlines() if line.startswith("quorumkv: ")]
    assert len(lines) == 1, f"expected one 'quorumkv: ...' line on stderr:\n{res.stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.mark.timeout(60)
def test_second_server_on_a_locked_data_dir_is_refused(tmp_path: Path) -> None:
    first = start_quorumkv(tmp_path)
    try:
        put = first.etcdctl("put", "k", "v1")
        assert put.returncode == 0, put.stderr
        res = run_quorumkv_once(first.data_dir)
        line = _assert_refused(res, str(first.data_dir / LOCK_FILE), "in use by another quorumkv process")
        print(line)
        # The first server is unaffected and still serves.
        assert first.alive()
        got = first.etcdctl("get", "k", "--print-value-only")
        assert got.returncode == 0 and got.stdout.strip() == "v1", got
        assert first.etcdctl("put", "k", "v2").returncode == 0
    finally:
        assert first.stop() == 0
    # Once the lock is released, the same dir starts normally and has both writes' result.
    again = start_quorumkv(tmp_path, data_dir=first.data_dir)
    try:
        got = again.etcdctl("get", "k", "--print-value-only")
        assert got.stdout.strip() == "v2", got
    finally:
        again.stop()


@pytest.mark.timeout(60)
def test_unknown_format_marker_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "future.data"
    data_dir.mkdir()
    (data_dir / FORMAT_FILE).write_text("quorumkv-data/999\n")
    before = _snapshot(data_dir)
    res = run_quorumkv_once(data_dir)
    _assert_refused(res, str(data_dir), "'quorumkv-data/999'", repr(DATA_FORMAT))
    after = _snapshot(data_dir)
    after.pop(LOCK_FILE, None)  # the lock file is created (empty) before the format is checked
    assert after == before


@pytest.mark.timeout(60)
def test_non_empty_foreign_directory_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "someone-elses"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("not a quorumkv data dir\n")
    (data_dir / "sub").mkdir()
    before = _snapshot(data_dir)
    res = run_quorumkv_once(data_dir)
    _assert_refused(res, str(data_dir), f"no {FORMAT_FILE} marker", "notes.txt", "not a quorumkv data dir")
    after = _snapshot(data_dir)
    after.pop(LOCK_FILE, None)
    assert after == before
    assert not (data_dir / FORMAT_FILE).exists() and not (data_dir / DB_FILE).exists()


@pytest.mark.timeout(60)
def test_schema_version_mismatch_is_refused(tmp_path: Path) -> None:
    server = start_quorumkv(tmp_path)
    assert server.etcdctl("put", "k", "v").returncode == 0
    assert server.stop() == 0
    db = server.data_dir / DB_FILE
    other = SCHEMA_VERSION + 1
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version={other}")
    res = run_quorumkv_once(server.data_dir)
    _assert_refused(res, str(db), f"schema version {other}", f"reads {SCHEMA_VERSION}")
    with sqlite3.connect(db) as conn:  # refused without touching the schema or the data
        assert conn.execute("PRAGMA user_version").fetchone()[0] == other
        assert conn.execute("SELECT count(*) FROM kv WHERE key = ?", (b"k",)).fetchone()[0] == 1
