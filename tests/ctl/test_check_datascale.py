"""quorumkvctl check datascale: etcdctl 3.4's loads, keys and metric reading, its output beside etcdctl's on a real
etcd 3.4 (normalised: the progress bar, revisions and the memory figure differ run to run), and a run against a
quorumkv member.

etcdctl reads the member's memory from ``http://<endpoint>/metrics`` (etcd serves HTTP on its client port, and so
does quorumkv's shared client port); the quorumkv run reads it there.
The in-process run points the reader at the member's ``--listen-metrics-urls`` to cover the whole check.
Runs are shortened with the hidden ``QUORUMKVCTL_CHECK_DATASCALE_LIMIT`` variable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quorumkv.cli.ctl import check
from quorumkv.cli.ctl.check import (
    DATASCALE_LIMIT_ENV,
    DATASCALE_LOADS,
    datascale_key,
    metrics_url,
    parse_resident_memory,
)
from quorumkv.testing.processes import free_port, run_etcdctl, start_etcd, start_quorumkv

SRC = str(Path(__file__).resolve().parents[2] / "src")
PREFIX = "/etcdctl-check-datascale/"


def ctl(*args: str, limit: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL", "ETCD_"))}
    env["PYTHONPATH"] = SRC
    if limit is not None:
        env[DATASCALE_LIMIT_ENV] = str(limit)
    return subprocess.run([sys.executable, "-m", "quorumkv.cli.ctl", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def normalise(stdout: str) -> list[str]:
    """Lines without etcdctl's progress frames (drawn with ``\\r`` into the pipe), numbers that vary replaced."""
    lines = []
    for line in stdout.split("\n"):
        line = line.rsplit("\r", 1)[-1] if "\r" in line else line
        if re.fullmatch(r"\s*\d+ / \d+\s+\d+\.\d+%.*", line) or not line:
            continue
        line = re.sub(r"(with revision) \d+", r"\1 R", line)
        line = re.sub(r"used : -?\d+\.\d\d MB\.", "used : M MB.", line)
        line = re.sub(r"\[\d+ key-value pairs", "[N key-value pairs", line)
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------- units


def test_loads_are_etcdctl_34s() -> None:
    table = {name: (load.limit, load.kv_size, load.clients) for name, load in DATASCALE_LOADS.items()}
    assert table == {"s": (10_000, 1024, 50), "m": (100_000, 1024, 200), "l": (1_000_000, 1024, 500),
                     "xl": (3_000_000, 1024, 1000)}


def test_keys_are_512_bytes_after_the_prefix_with_a_zigzag_varint() -> None:
    key = datascale_key(b"/p/", 1)
    assert key == b"/p/" + b"\x02" + bytes(511)
    assert datascale_key(b"", -1)[:1] == b"\x01" and len(datascale_key(b"", 2**62)) == 512


def test_metrics_url_is_the_endpoint_over_http() -> None:
    assert metrics_url("127.0.0.1:2379") == "http://127.0.0.1:2379/metrics"
    assert metrics_url("http://127.0.0.1:2379") == "http://127.0.0.1:2379/metrics"
    # etcdctl prefixes anything that does not start with http:// (an https endpoint cannot be read)
    assert metrics_url("https://h:1") == "http://https://h:1/metrics"


def test_resident_memory_is_the_first_sample_line() -> None:
    page = ("# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 4.5056e+07\n"
            "process_resident_memory_bytes 1\n")
    assert parse_resident_memory(page) == 45_056_000.0
    assert parse_resident_memory("up 1\n") == "could not find: process_resident_memory_bytes"
    assert parse_resident_memory("process_resident_memory_bytes x\n") == (
        'parse error: strconv.ParseFloat: parsing "x": invalid syntax')


def test_bad_load_and_no_server() -> None:
    out = ctl("check", "datascale", "--load", "q")
    assert (out.returncode, out.stdout, out.stderr) == (4, "", "Error: unknown load option q\n")
    out = ctl("--endpoints", f"127.0.0.1:{free_port()}", "--dial-timeout=1s", "--command-timeout=1s", "check",
              "datascale")
    # etcdctl 3.4 waits for ever here; quorumkvctl gives up after --dial-timeout + --command-timeout
    assert out.returncode == 1 and out.stdout == "" and out.stderr.endswith("Error: context deadline exceeded\n")


def test_usage_matches_etcdctl() -> None:
    theirs = subprocess.run(["etcdctl", "check", "datascale", "--help"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert ctl("check", "datascale", "--help").stdout == theirs.stdout


# ---------------------------------------------------------------------------------------------- servers


#: Real stdout of ``etcdctl check datascale --auto-compact --auto-defrag`` against a fresh etcd 3.4.23 on this
#: machine (2026-12-07; the progress bar's frames trimmed to the first and last).
ETCDCTL_OUTPUT = (
    "Start data scale check for work load [10000 key-value pairs, 1024 bytes per key-value, 50 concurrent clients].\n"
    "\r 0 / 10000    0.00%\r 102 / 10000    1.02% 00m22s\r 10000 / 10000  100.00% 8s\n"
    "Compacting with revision 10002\n"
    "Compacted with revision 10002\n"
    'Defragmenting "127.0.0.1:23790"\n'
    'Defragmented "127.0.0.1:23790"\n'
    "PASS: Approximate system memory used : 48.16 MB.\n"
)


@pytest.mark.interop
def test_on_a_real_etcd_as_etcdctl(tmp_path: Path) -> None:
    server = start_etcd(tmp_path)
    try:
        ours = ctl("--endpoints", server.client_url, "check", "datascale", "--auto-compact", "--auto-defrag",
                   limit=300)
        left = server.etcdctl("get", PREFIX, "--prefix", "--keys-only")
    finally:
        server.stop()
    assert ours.returncode == 0, ours
    expected = normalise(ETCDCTL_OUTPUT.replace("127.0.0.1:23790", server.client_url))
    assert normalise(ours.stdout) == expected, ours.stdout
    assert ours.stdout.startswith("Start data scale check for work load [300 key-value pairs, 1024 bytes per "
                                  "key-value, 50 concurrent clients].\n")
    assert "Compacting with revision 302\n" in ours.stdout  # revision 1, 300 puts, the clean-up delete
    assert left.returncode == 0 and left.stdout == ""


@pytest.mark.slow
@pytest.mark.interop
def test_beside_etcdctl_on_a_real_etcd(tmp_path: Path) -> None:
    """etcdctl's full small load and a shortened quorumkvctl run against one etcd 3.4: the same lines."""
    server = start_etcd(tmp_path)
    try:
        theirs = run_etcdctl(server.client_url, "check", "datascale", "--auto-compact", "--auto-defrag",
                             timeout_s=180)
        ours = ctl("--endpoints", server.client_url, "check", "datascale", "--auto-compact", "--auto-defrag",
                   limit=500)
    finally:
        server.stop()
    assert (ours.returncode, theirs.returncode) == (0, 0), (ours, theirs)
    assert normalise(ours.stdout) == normalise(theirs.stdout), (ours.stdout, theirs.stdout)
    # etcd's first run: revision 1, 10,000 puts, the delete; ours: 500 puts and the delete after that
    assert "Compacting with revision 10002\n" in theirs.stdout and "Compacting with revision 10503\n" in ours.stdout


@pytest.mark.interop
def test_against_quorumkv(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The check through the client port (gRPC and /metrics on one port); then through the metrics listener."""
    from quorumkv.cli.ctl.app import main

    metrics_port = free_port()
    server = start_quorumkv(tmp_path, extra_args=["--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}"])
    try:
        ours = ctl("--endpoints", server.client_url, "check", "datascale", limit=300)
        # the client port serves /metrics over HTTP/1.1 too (as etcd's), so the check reads the member's memory there
        assert ours.returncode == 0, ours
        assert normalise(ours.stdout)[-1].startswith("PASS: Approximate system memory used : ")
        left = server.etcdctl("get", PREFIX, "--prefix", "--keys-only")
        assert left.returncode == 0 and left.stdout == ""

        capfd.readouterr()
        monkeypatch.setattr(check, "metrics_url", lambda endpoint: f"http://127.0.0.1:{metrics_port}/metrics")
        monkeypatch.setenv(DATASCALE_LIMIT_ENV, "400")
        before = int(server.etcdctl("endpoint", "status", "-w", "fields").stdout.split('"Revision" : ')[1].split()[0])
        code = main(["--endpoints", server.client_url, "check", "datascale", "--auto-compact", "--load=small"])
        printed = capfd.readouterr().out
        assert code == 0, printed
        assert normalise(printed) == ["Start data scale check for work load [N key-value pairs, 1024 bytes per "
                                  "key-value, 50 concurrent clients].", "Compacting with revision R",
                                  "Compacted with revision R", "PASS: Approximate system memory used : M MB."]
        assert f"Compacting with revision {before + 401}\n" in printed
        history = server.etcdctl("get", "x", "--rev", str(before + 400))
        assert "required revision has been compacted" in history.stderr
    finally:
        server.stop()
