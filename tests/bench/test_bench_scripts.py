"""Unit tests for the benchmark scripts' parsers and summaries, on captured output. No benchmark runs here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import _proc, check_perf, range_read  # noqa: E402

#: Real stdout of ``etcdctl check perf --load=s`` against etcd 3.4.23 on this machine (progress bar trimmed to
#: its first and last frames; etcdctl redraws it with ``\r``, no newline).
ETCD_LOAD_S_PASS = (
    "\r 0 / 60    0.00%\r 0 / 60    0.00%\r 1 / 60    1.67% 00m59s\r 59 / 60   98.33%\r 60 / 60  100.00% 1m0s\n"
    "PASS: Throughput is 150 writes/s\n"
    "PASS: Slowest request took 0.070780s\n"
    "PASS: Stddev is 0.001181s\n"
    "PASS\n"
)

#: Real output (etcd 3.4.23, load s, machine saturated by other jobs): the results follow the last progress
#: frame with no separator, and the slowest-request failure line has no "FAIL:" prefix.
ETCD_LOAD_S_GLUED = (
    "\r 58 / 60   96.67% 00m01s\r 59 / 60   98.33% 00m01s\r 59 / 60   98.33%PASS: Throughput is 143 writes/s\n"
    "Slowest request took too long: 0.917324s\n"
    "PASS: Stddev is 0.042133s\n"
    "FAIL\n"
)

#: etcd 3.4's failure wording (ctlv3/command/check.go): "Slowest ..." and "Stddev ..." lose the FAIL: prefix.
FAIL_WITH_ERRORS = (
    "\r 60 / 60  100.00% 1m0s\n"
    "FAIL: too many errors\n"
    "FAIL: ERROR(rpc error: code = DeadlineExceeded desc = context deadline exceeded) -> 12\n"
    "FAIL: ERROR(rpc error: code = Unavailable desc = transport is closing) -> 3\n"
    "FAIL: Throughput too low: 2913 writes/s\n"
    "Slowest request took too long: 1.786915s\n"
    "Stddev too high: 0.163215s\n"
    "FAIL\n"
)


def test_parse_check_perf_pass() -> None:
    out = check_perf.parse_check_perf(ETCD_LOAD_S_PASS)
    assert out.writes_per_s == 150
    assert out.slowest_s == 0.070780
    assert out.stddev_s == 0.001181
    assert out.errors == 0 and out.error_kinds == {}
    assert (out.throughput_pass, out.slowest_pass, out.stddev_pass, out.summary) == (True, True, True, "PASS")
    assert out.other == []
    assert out.complete


def test_parse_check_perf_result_glued_to_progress_bar() -> None:
    out = check_perf.parse_check_perf(ETCD_LOAD_S_GLUED)
    assert out.writes_per_s == 143
    assert out.slowest_s == 0.917324 and out.slowest_pass is False
    assert out.stddev_s == 0.042133 and out.stddev_pass is True
    assert out.summary == "FAIL" and out.complete
    assert out.other == []


def test_parse_check_perf_fail_and_errors() -> None:
    out = check_perf.parse_check_perf(FAIL_WITH_ERRORS, "")
    assert out.writes_per_s == 2913
    assert out.slowest_s == 1.786915
    assert out.stddev_s == 0.163215
    assert out.errors == 15
    assert out.error_kinds["rpc error: code = Unavailable desc = transport is closing"] == 3
    assert (out.throughput_pass, out.slowest_pass, out.stddev_pass, out.summary) == (False, False, False, "FAIL")
    assert out.other == []


def test_parse_check_perf_incomplete_keeps_unknown_lines() -> None:
    out = check_perf.parse_check_perf("", "Error: context deadline exceeded\n")
    assert not out.complete
    assert out.writes_per_s is None
    assert out.other == ["Error: context deadline exceeded"]


def _result(server: str, load: str, writes: int | None) -> check_perf.RunResult:
    parsed = check_perf.CheckPerfOutput(writes_per_s=writes)
    return check_perf.RunResult(server, load, [], 0, 60.0, parsed, None, 0.0, [0.0, 0.0, 0.0])


def test_ratio_and_target_line() -> None:
    results = [_result("etcd", "l", 5000), _result("quorumkv", "l", 3500), _result("etcd", "s", 150)]
    assert check_perf.ratio(results, "l") == 0.7
    assert check_perf.ratio(results, "s") is None
    assert check_perf.target_line(results).endswith(": MET (ratio 0.70)")
    results[1] = _result("quorumkv", "l", 2000)
    assert "NOT MET" in check_perf.target_line(results)
    assert check_perf.target_line(results[2:]).endswith("NOT MEASURED")
    table = check_perf.render(results)
    assert "| quorumkv | l" in table and "ratio quorumkv/etcd writes/s, load l: 0.40" in table


def test_ratio_is_the_median_of_alternating_rounds() -> None:
    results = [_result("etcd", "l", 5000), _result("quorumkv", "l", 2500),   # 0.50
               _result("etcd", "l", 4000), _result("quorumkv", "l", 2800),   # 0.70
               _result("etcd", "l", 5000), _result("quorumkv", "l", 3000),   # 0.60
               _result("etcd", "l", 5000), _result("quorumkv", "l", None)]   # failed round: left out
    assert [round(x, 2) for x in check_perf.round_ratios(results, "l")] == [0.5, 0.7, 0.6]
    assert check_perf.ratio(results, "l") == 0.6
    assert check_perf.target_line(results).endswith(": MET (ratio 0.60)")
    assert "(median of rounds: 0.50, 0.70, 0.60)" in check_perf.render(results)
    assert "NOT MET" in check_perf.target_line(results[:2])  # one round: that pair's ratio


def test_proc_status_and_stat_parsing() -> None:
    status = "Name:\tpython3.11\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"
    assert _proc.parse_status_kb(status, "VmRSS") == 102400
    assert _proc.parse_status_kb(status, "VmHWM") == 204800
    assert _proc.parse_status_kb(status, "VmSwap") is None
    assert _proc.read_cpu_seconds(1) >= 0.0  # /proc/1/stat parses (pid 1 always exists)


def test_percentile_and_summarize() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    assert range_read.percentile(values, 50) == 0.050
    assert range_read.percentile(values, 99) == 0.099
    assert range_read.percentile(values, 100) == 0.100
    assert range_read.percentile([], 50) == 0.0
    a = range_read.WorkerResult(ok=60, errors={"UNAVAILABLE": 1}, latencies=values[:60])
    b = range_read.WorkerResult(ok=40, errors={"UNAVAILABLE": 2, "NOT_FOUND": 1}, latencies=values[60:])
    stats = range_read.summarize([a, b], duration_s=10.0)
    assert stats.reads_per_s == 10.0
    assert stats.ok == 100
    assert stats.errors == {"UNAVAILABLE": 3, "NOT_FOUND": 1}
    assert round(stats.p50_ms, 6) == 50.0 and round(stats.p99_ms, 6) == 99.0
    assert range_read.key_of(7) == b"/bench/range/00000007"


def test_profile_top_self_and_total() -> None:
    from bench import profile_top

    text = (
        'process 1:"python3.11 -m quorumkv";<module> (quorumkv/__main__.py:1);run (asyncio/runners.py:118) 6\n'
        'process 1:"python3.11 -m quorumkv";<module> (quorumkv/__main__.py:1);_run (node.py:178) 4\n'
        "garbage line\n"
    )
    hot = profile_top.top_hotspots(text, n=2)
    assert [h.frame for h in hot] == ["run (asyncio/runners.py:118)", "_run (node.py:178)"]
    assert hot[0].self_percent == 60.0 and hot[1].self_percent == 40.0
    by_total = profile_top.top_hotspots(text, n=1, by="total")
    assert by_total[0].total_percent == 100.0


@pytest.mark.parametrize("unwatched", [False, True])
def test_writer_commit_measures_every_put(tmp_path: Path, unwatched: bool) -> None:
    from bench import writer_commit

    r = writer_commit.measure(300, 20, 40, seed=3, tmp_root=str(tmp_path), unwatched=unwatched)
    assert r["puts"] == 300 and 300 / 40 <= r["batches"] <= 300 / 20 + 1
    assert r["cpu_us_per_put"] > 0 and r["wall_us_per_put"] >= r["cpu_us_per_put"] * 0.5
