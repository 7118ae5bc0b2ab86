"""quorumkvctl snapshot save → status (every format) → restore → a server started on the restored dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quorumkv.testing.processes import run_etcdctl, start_quorumkv

SRC = str(Path(__file__).resolve().parents[2] / "src")


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL", "ETCD_"))}
    env["PYTHONPATH"] = SRC
    return subprocess.run([sys.executable, "-m", "quorumkv.cli.ctl", *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.interop
def test_snapshot_save_status_restore_round_trip(tmp_path: Path) -> None:
    server = start_quorumkv(tmp_path / "a")
    try:
        endpoint = server.client_url.removeprefix("http://")
        for key, value in (("a", "1"), ("b", "2"), ("a", "3")):
            assert run_etcdctl(endpoint, "put", key, value).returncode == 0
        saved = ctl("--endpoints", endpoint, "snapshot", "save", str(tmp_path / "snap.db"))
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout == f"Snapshot saved at {tmp_path / 'snap.db'}\n"
    finally:
        server.stop()

    status = ctl("snapshot", "status", str(tmp_path / "snap.db"), "-w", "json")
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    # the snapshot is an etcd database: etcdctl counts keys in every bucket (3 key revisions, plus
    # meta.consistent_index, auth.authRevision, cluster.clusterVersion and the one member)
    assert st["revision"] == 4 and st["totalKey"] == 7 and st["totalSize"] > 0
    simple = ctl("snapshot", "status", str(tmp_path / "snap.db")).stdout.strip().split(", ")
    assert simple[:3] == [f"{st['hash']:x}", "4", "7"]
    table = ctl("snapshot", "status", str(tmp_path / "snap.db"), "-w", "table").stdout
    assert "| HASH | REVISION | TOTAL KEYS | TOTAL SIZE |" in table.replace("  ", " ").replace("  ", " ")

    restored = ctl("snapshot", "restore", str(tmp_path / "snap.db"), "--data-dir", str(tmp_path / "restored"),
                   "--name", "default")
    assert restored.returncode == 0, restored.stderr
    assert "restored snapshot" in restored.stderr

    again = start_quorumkv(tmp_path / "b", data_dir=tmp_path / "restored")
    try:
        endpoint = again.client_url.removeprefix("http://")
        got = run_etcdctl(endpoint, "get", "", "--prefix", "-w", "json")
        kvs = json.loads(got.stdout)["kvs"]
        assert [(kv["mod_revision"], kv["version"]) for kv in kvs] == [(4, 2), (3, 1)]
        past = run_etcdctl(endpoint, "get", "a", "--rev", "2", "--print-value-only")
        assert past.stdout.strip() == "1"  # history as of the snapshot, not just the latest values
    finally:
        again.stop()


def test_snapshot_status_refuses_a_truncated_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\0" * 5000)
    out = ctl("snapshot", "status", str(bad))
    assert out.returncode != 0
    assert "truncated or not a snapshot" in out.stderr and "Traceback" not in out.stderr
