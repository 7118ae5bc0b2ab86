"""docs/operations.md's NOSPACE recovery block, run as written (bash), with etcdctl 3.4 and with quorumkvctl, against
a quorumkv member that has raised the NOSPACE alarm: afterwards the alarm is gone and writes work again."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from quorumkv.testing.processes import ETCDCTL_BIN, client_env, start_quorumkv

pytestmark = pytest.mark.interop

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def runbook() -> str:
    """The sh block that follows "Bring a NOSPACE member back" in docs/operations.md."""
    text = DOC.read_text()
    match = re.search(r"Bring a NOSPACE member back.*?```sh\n(.*?)```", text, re.S)
    assert match, "the NOSPACE recovery block is missing from docs/operations.md"
    return match.group(1)


@pytest.mark.parametrize("client", ["etcdctl", "quorumkvctl"])
def test_documented_nospace_recovery(client: str, tmp_path: Path) -> None:
    srv = start_quorumkv(tmp_path, extra_args=["--quota-backend-bytes", str(2 * 1024 * 1024)])
    try:
        for i in range(60):
            if srv.etcdctl("put", f"k{i % 3}", "x" * 100_000).returncode != 0:
                break
        else:
            pytest.fail("the quota was never reached")
        assert "alarm:NOSPACE" in srv.etcdctl("alarm", "list").stdout
        assert srv.etcdctl("put", "z", "1").returncode != 0

        if client == "etcdctl":
            prelude = f"etcdctl() {{ command {shlex.quote(ETCDCTL_BIN)} \"$@\"; }}\n"
        else:
            prelude = f"etcdctl() {{ {shlex.quote(sys.executable)} -m quorumkv.cli.ctl \"$@\"; }}\n"
        env = client_env(client, {"ETCDCTL_ENDPOINTS": srv.client_url})
        env["PATH"] = os.environ.get("PATH", "")
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + runbook()], capture_output=True,
                             text=True, env=env, timeout=120)
        assert out.returncode == 0, (out.stdout, out.stderr)
        lines = out.stdout.splitlines()
        assert re.fullmatch(r"compacted revision \d+", lines[0]), lines
        assert lines[1].startswith("Finished defragmenting etcd member[")
        assert "alarm:NOSPACE" in lines[2] and len(lines) == 3, lines  # disarm echoes the alarm; list is empty

        assert srv.etcdctl("put", "z", "1").stdout.strip() == "OK"
        assert srv.etcdctl("alarm", "list").stdout == ""
    finally:
        srv.stop()
