"""The client port's private gRPC socket directories: a member killed with -9 cannot remove its own, so the next
member to start removes those whose process is gone (and only those)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from quorumkv import app


def test_stale_socket_dirs_of_dead_members_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(done.stdout)
    dead = tmp_path / f"{app.GRPC_SOCKET_DIR_PREFIX}{dead_pid}-abc"
    alive = tmp_path / f"{app.GRPC_SOCKET_DIR_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{app.GRPC_SOCKET_DIR_PREFIX}xyz"  # no pid in the name: not ours to judge
    other = tmp_path / "something-else"
    for d in (dead, alive, unnamed, other):
        d.mkdir()
        (d / "0.sock").write_text("")
    app._remove_stale_socket_dirs()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (alive, unnamed, other))
