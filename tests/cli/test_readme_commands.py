"""The README opens with the two commands, CI runs the second, and the first starts a working node."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from quorumkv.testing.processes import free_port, run_etcdctl

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None, "README must open with a sh code block"
    assert text.index(block.group(0)) < 40, "the commands must open the README"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands() -> None:
    assert _readme_commands() == ["bash scripts/run.sh", "bash scripts/test.sh"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


@pytest.mark.interop
def test_run_script_starts_a_node_etcdctl_can_use(tmp_path: Path) -> None:
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "run.sh"), "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "QUORUMKV"))},
    )
    try:
        deadline = time.monotonic() + 180  # the first run may create .venv
        while True:
            r = run_etcdctl(f"127.0.0.1:{client}", "put", "readme", "works", timeout_s=10)
            if r.returncode == 0:
                break
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "node did not come up"
            time.sleep(0.5)
        got = run_etcdctl(f"127.0.0.1:{client}", "get", "readme", "--print-value-only")
        assert got.stdout.strip() == "works"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
