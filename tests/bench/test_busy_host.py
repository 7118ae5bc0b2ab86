"""bench/busy_host.py's pure parts and its hog: verdicts from the medians of rounds, the hog's processes spin and
are gone afterwards. No benchmark runs here."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import busy_host, check_perf  # noqa: E402


def _result(server: str, slowest: float | None, load: str = "m") -> check_perf.RunResult:
    parsed = check_perf.CheckPerfOutput(writes_per_s=1000, slowest_s=slowest)
    return check_perf.RunResult(server, load, [], 0, 60.0, parsed, None, 0.0, [0.0, 0.0, 0.0])


def test_verdicts_use_the_median_slowest_and_the_worst_for_the_one_second_rule() -> None:
    results = [_result("etcd", 0.40), _result("quorumkv", 0.30), _result("quorumkv-embed", 0.50),
               _result("etcd", 0.60), _result("quorumkv", 1.20), _result("quorumkv-embed", 0.45),
               _result("etcd", 0.50), _result("quorumkv", 0.35), _result("quorumkv-embed", 0.55)]
    lines = busy_host.verdicts(results)
    ours = next(line for line in lines if ", quorumkv:" in line)
    embed = next(line for line in lines if "quorumkv-embed" in line)
    # quorumkv: median 0.35 <= etcd's 0.50, but one request took 1.2 s
    assert "slowest 0.350 s vs etcd 0.500 s" in ours and ": MET;" in ours and "NOT MET (worst 1.200 s)" in ours
    # embedded: median 0.50 <= 0.50, none over 1 s
    assert embed.endswith("no request over 1 s: MET") and ": MET;" in embed
    assert all("NOT MEASURED" in line for line in busy_host.verdicts([_result("quorumkv", 0.3)]))


def _utime_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11])


def test_the_hog_spins_and_its_processes_are_gone_afterwards() -> None:
    with busy_host.cpu_hog(2) as pids:
        assert len(pids) == 2
        before = [_utime_ticks(pid) for pid in pids]
        deadline = time.monotonic() + 30
        while not all(_utime_ticks(pid) > tick for pid, tick in zip(pids, before, strict=True)):
            assert time.monotonic() < deadline  # they keep burning CPU after their start
            time.sleep(0.1)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        busy_host.main(["--rounds", "0"])
    assert refused.value.code == 2 and "--rounds must be >= 1" in capsys.readouterr().err
