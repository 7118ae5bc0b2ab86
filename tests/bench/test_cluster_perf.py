"""bench.cluster_perf: reporting, ratios, clean failure when a cluster cannot start; an etcd smoke run (slow)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import cluster_perf, range_read  # noqa: E402
from bench.check_perf import parse_check_perf  # noqa: E402
from quorumkv.testing.processes import ServerNotReady  # noqa: E402

#: The result lines of ``etcdctl check perf`` (etcd 3.4.23), progress bar left out.
CHECK_PERF_PASS = (
    "PASS: Throughput is 150 writes/s\n"
    "PASS: Slowest request took 0.070780s\n"
    "PASS: Stddev is 0.001181s\n"
    "PASS\n"
)


def side_with_writes(server: str, writes: str) -> cluster_perf.SideResult:
    text = CHECK_PERF_PASS.replace("Throughput is 150 writes/s", f"Throughput is {writes} writes/s")
    perf = cluster_perf.CheckPerfResult(server, "l", ["etcdctl"], returncode=0, parsed=parse_check_perf(text))
    return cluster_perf.SideResult(server, check_perf=perf)


def test_defaults() -> None:
    args = cluster_perf.parse_args([])
    assert args.parts == list(cluster_perf.PARTS)
    assert args.kinds == ["etcd", "quorumkv"]
    assert (args.load, args.trials, args.heartbeat_interval, args.election_timeout) == ("l", 10, 100, 1000)
    assert cluster_perf.parse_args(["--server", "quorumkv", "--part", "failover"]).kinds == ["quorumkv"]
    with pytest.raises(SystemExit):
        cluster_perf.parse_args(["--trials", "0"])


def test_write_ratio_and_target() -> None:
    etcd = side_with_writes("etcd", "8000")
    fast, slow = side_with_writes("quorumkv", "4400"), side_with_writes("quorumkv", "3000")
    assert cluster_perf.write_ratio([etcd, fast]) == pytest.approx(0.55)
    assert cluster_perf.target_line([etcd, fast], "l").endswith(": MET (ratio 0.55)")
    assert cluster_perf.target_line([etcd, slow], "l").endswith(": NOT MET (ratio 0.38)")
    assert cluster_perf.target_line([etcd], "l").endswith(": NOT MEASURED")


def side_with_reads(server: str, linearizable: float, serializable: float) -> cluster_perf.SideResult:
    def stats(rate: float) -> range_read.ReadStats:
        return range_read.ReadStats(reads_per_s=rate, p50_ms=1.0, p99_ms=2.0, p999_ms=3.0, mean_ms=1.0, ok=1,
                                    errors={})
    return cluster_perf.SideResult(server, range=[
        cluster_perf.RangeResult(server, "linearizable", stats(linearizable)),
        cluster_perf.RangeResult(server, "serializable", stats(serializable)),
    ])


def test_read_targets_both_ratios() -> None:
    etcd, qkv = side_with_reads("etcd", 3000, 3200), side_with_reads("quorumkv", 1900, 2000)
    assert cluster_perf.own_read_ratio([etcd, qkv]) == pytest.approx(0.95)
    lines = cluster_perf.read_target_lines([etcd, qkv])
    assert lines[0].endswith(">= 0.8: MET (ratio 0.95)")
    assert lines[1].endswith(">= 0.6: MET (ratio 0.63)")
    slow = side_with_reads("quorumkv", 600, 1500)
    assert [line.rsplit(": ", 1)[1] for line in cluster_perf.read_target_lines([etcd, slow])] == [
        "NOT MET (ratio 0.40)", "NOT MET (ratio 0.20)"]
    assert cluster_perf.read_target_lines([etcd])[0].endswith("NOT MEASURED")
    assert "TARGET: quorumkv linearizable / etcd linearizable" in cluster_perf.render([etcd, qkv], "l")


def test_failover_median() -> None:
    result = cluster_perf.FailoverResult("etcd", times_s=[1.5, 1.2, 3.0, 1.3])
    assert result.median_s == pytest.approx(1.4)
    assert cluster_perf.FailoverResult("etcd").median_s is None


def test_a_cluster_that_cannot_start_is_reported_not_raised(tmp_path: Path) -> None:
    args = cluster_perf.parse_args(["--server", "quorumkv", "--wait-quiet", "0"])
    started: list[str] = []

    def refuse(kind: str, tmp: Path, _args: object) -> cluster_perf.Cluster:
        started.append(kind)
        raise ServerNotReady("quorumkv cluster of 3 did not become ready (m1 exited 1: no clustering)\nlog tail")

    side = cluster_perf.run_side("quorumkv", args, tmp_path, start=refuse)
    assert started == ["quorumkv"] * 3  # one fresh cluster per part
    assert side.check_perf is not None and side.check_perf.error is not None
    assert side.check_perf.error.startswith("cluster did not start: ServerNotReady: quorumkv cluster of 3")
    assert "log tail" not in side.check_perf.error  # first line only
    assert [(r.mode, r.error is not None) for r in side.range] == [(m, True) for m in range_read.MODES]
    assert side.failover is not None and side.failover.error is not None and side.failover.times_s == []

    report = cluster_perf.render([side_with_writes("etcd", "8000"), side], "l")
    assert "ERROR quorumkv check perf: cluster did not start" in report
    assert "ERROR quorumkv failover: cluster did not start" in report
    assert report.count("ERROR quorumkv range") == 2
    assert "NOT MEASURED" in report
    document = cluster_perf.as_document([side], args, {"nproc": 2})
    json.dumps(document)  # serialisable
    assert document["results"][0]["failover"]["error"].startswith("cluster did not start")


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.skipif(shutil.which("etcd") is None or shutil.which("etcdctl") is None, reason="etcd 3.4 not on PATH")
def test_etcd_failover_and_range_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    code = cluster_perf.main(
        ["--server", "etcd", "--part", "failover", "--part", "range", "--trials", "2", "--keys", "200",
         "--clients", "8", "--duration", "2", "--warmup", "0.5", "--wait-quiet", "0", "--json"]
    )  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    (etcd,) = document["results"]
    assert len(etcd["failover"]["times_s"]) == 2 and etcd["failover"]["error"] is None
    assert all(0 < t < cluster_perf.FAILOVER_DEADLINE_S for t in etcd["failover"]["times_s"])
    assert [r["mode"] for r in etcd["range"]] == list(range_read.MODES)
    assert all(r["stats"]["reads_per_s"] > 0 and r["error"] is None for r in etcd["range"])


def test_rounds_pair_in_order_and_the_ratio_is_their_median() -> None:
    sides = [side_with_writes("etcd", "4000"), side_with_writes("quorumkv", "2000"),   # 0.50
             side_with_writes("etcd", "2000"), side_with_writes("quorumkv", "1400"),   # 0.70
             side_with_writes("etcd", "5000"), side_with_writes("quorumkv", "2000")]   # 0.40
    assert cluster_perf.round_write_ratios(sides) == pytest.approx([0.5, 0.7, 0.4])
    assert cluster_perf.write_ratio(sides) == pytest.approx(0.5)  # not the mean (0.53), not the last pair
    assert cluster_perf.target_line(sides, "l").endswith(
        ": MET (ratio 0.50; median of rounds: 0.50, 0.70, 0.40)")
    failed = cluster_perf.SideResult("quorumkv", check_perf=cluster_perf.CheckPerfResult(
        "quorumkv", "l", [], error="cluster did not start"))
    assert cluster_perf.round_write_ratios([*sides[:2], side_with_writes("etcd", "3000"), failed]) == [0.5]
    assert cluster_perf.parse_args(["--rounds", "3"]).rounds == 3
    with pytest.raises(SystemExit):
        cluster_perf.parse_args(["--rounds", "0"])


def test_later_rounds_repeat_check_perf_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []

    def fake_side(kind: str, args: object, tmp_root: Path) -> cluster_perf.SideResult:
        calls.append((kind, tuple(args.parts)))  # type: ignore[attr-defined]
        return side_with_writes(kind, "4000" if kind == "etcd" else "2200")

    monkeypatch.setattr(cluster_perf, "run_side", fake_side)
    assert cluster_perf.main(["--rounds", "3", "--part", "check_perf", "--part", "failover"]) == 0
    both = ("check_perf", "failover")
    assert calls == [("etcd", both), ("quorumkv", both), ("etcd", ("check_perf",)), ("quorumkv", ("check_perf",)),
                     ("etcd", ("check_perf",)), ("quorumkv", ("check_perf",))]
    assert "median of rounds: 0.55, 0.55, 0.55" in capsys.readouterr().out
    calls.clear()
    assert cluster_perf.main(["--rounds", "3", "--part", "failover"]) == 0  # nothing to repeat
    assert calls == [("etcd", ("failover",)), ("quorumkv", ("failover",))]
