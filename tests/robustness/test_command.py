"""``quorumkv robustness run|check|record`` from the command line: flags refused, verdicts, smoke runs."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quorumkv.cli.server import main
from quorumkv.testing.processes import ServerNotReady, quorumkv_env, start_etcd
from quorumkv.testing.robustness import runner
from quorumkv.testing.robustness.anomalies import PLANTS, clean_recording
from quorumkv.testing.robustness.faults import FAULTS, applicable, parse_faults
from quorumkv.testing.robustness.record import Recording
from quorumkv.testing.robustness.runner import Budget, RunConfig, check_duration, reproduce_command, validate


def _cli(*args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quorumkv", "robustness", *args], capture_output=True, text=True,
                          env=quorumkv_env(), timeout=timeout_s)


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--faults", "kill-leader,set-on-fire"], "unknown fault set-on-fire"),
    (["run", "--members", "2"], "'2' is not one of '1', '3', '5'"),
    (["run", "--duration", "soon"], "is not a duration"),
    (["run", "--duration", "0s"], "must be positive"),
    (["run", "--duration", "19s"], "19s is too short: a run needs at least 20s"),
    (["run", "--target", "zookeeper"], "'zookeeper' is not one of"),
    (["record", "--endpoints", "http://10.1.2.3:2379", "--out", "x.json"], "only loopback endpoints"),
])
def test_bad_flags_are_refused_with_one_line(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["robustness", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err, err


def test_fault_names_and_where_they_apply() -> None:
    assert parse_faults("all") == list(FAULTS)
    assert parse_faults("kill-leader, delay") == ["kill-leader", "delay"]
    assert applicable("blackhole", "etcd", 3) is not None and "skipped on etcd" in str(applicable("delay", "etcd", 3))
    assert "skipped on etcd" in str(applicable("slow-fsync", "etcd", 3))
    assert applicable("slow-fsync", "quorumkv", 3) is None
    assert "one member" in str(applicable("kill-follower", "quorumkv", 1))


def test_the_reproduce_command_names_every_choice() -> None:
    cfg = RunConfig(target="etcd", members=5, profile="lease-heavy", faults=("kill-leader",),
                    faults_text="kill-leader", duration_s=90, seed=42)
    assert reproduce_command(cfg) == ("quorumkv robustness run --target=etcd --members=5 --profile=lease-heavy "
                                      "--faults=kill-leader --duration=90s --seed=42")


def test_check_gives_the_verdict_of_a_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean.json"
    clean.write_text(clean_recording(2).to_json())
    assert main(["robustness", "check", str(clean)]) == 0
    assert "verdict PASS" in capsys.readouterr().out
    plant, check = PLANTS["early bookmark"]
    bad = tmp_path / "bad.json"
    bad.write_text(plant(clean_recording(2), random.Random(2)).to_json())
    assert main(["robustness", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"VIOLATION {check}:" in out and "verdict FAIL" in out
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    assert main(["robustness", "check", str(junk)]) == 2
    assert "is not a robustness recording" in capsys.readouterr().err


def test_the_budget_spends_the_duration_on_every_phase() -> None:
    short, long = Budget(20.0, 1), Budget(600.0, 5)
    assert short.wrapup_s == 10.0 and short.traffic_end_s == 10.0 and short.startup_s == 7.0
    assert long.wrapup_s == 150.0 and long.startup_s == 60.0 and long.traffic_end_s == 450.0
    for b in (short, Budget(90.0, 3), long):
        # the cluster work ends before the validation's and teardown's reserves, inside the wrap-up reserve
        assert b.traffic_end_s < b.cluster_work_end_s < b.duration_s
        assert 0 < b.quiet_s < b.traffic_end_s
        assert b.final_read_s() > 0 and b.traffic_end_s + b.settle_s + b.final_read_s() <= b.cluster_work_end_s
    with pytest.raises(ValueError, match="at least 20s"):
        check_duration(19.9)


#: What the wall time of a run may exceed its --duration by: the interpreter's start and exit, and the
#: members' SIGTERM shutdown beyond its reserve (a bound on a subprocess, not a performance measure).
_TEARDOWN_SLACK_S = 20.0


def test_a_one_member_run_injects_faults_passes_and_ends_within_its_duration(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    started = time.monotonic()
    proc = _cli("run", "--members=1", "--profile=etcd", "--faults=kill-random,pause-random,blackhole",
                "--duration=40s", "--seed=7", "--clients=4", "--watchers=2", f"--report={report}")
    wall_s = time.monotonic() - started
    # never FAIL; on a saturated host (CI) the run may run out of time and say so (UNKNOWN, exit 3)
    assert proc.returncode in (0, 3), proc.stdout[-3000:] + proc.stderr[-2000:]
    assert wall_s <= 40.0 + _TEARDOWN_SLACK_S, (wall_s, proc.stdout[-3000:])
    # inside the process: everything but the member's SIGTERM shutdown beyond its 2 s reserve is budgeted
    assert json.loads(report.read_text())["elapsed_s"] <= 40.0 + 8.0, proc.stdout[-3000:]
    assert "of 40s" in proc.stdout
    assert "blackhole: skipped with one member" in proc.stdout
    assert "faults injected" in proc.stdout and "FAIL" not in proc.stdout, proc.stdout[-3000:]
    if proc.returncode == 3:
        assert "INCONCLUSIVE" in proc.stdout and "robustness: verdict UNKNOWN" in proc.stdout, proc.stdout[-3000:]
        return  # what follows needs a complete run
    assert "robustness: verdict PASS" in proc.stdout
    assert "reproduce with: quorumkv robustness run --target=quorumkv --members=1 --profile=etcd" in proc.stdout
    data = json.loads(report.read_text())
    assert data["verdict"] == "PASS" and data["stats"]["faults_injected"] >= 1
    assert data["stats"]["operations"] > 0 and data["stats"]["watch_events"] > 0
    assert report.with_suffix(".recording.json").exists()
    assert main(["robustness", "check", str(report.with_suffix(".recording.json"))]) == 0
    # the validators catch anomalies planted into this real recording too
    recorded = Recording.from_json(report.with_suffix(".recording.json").read_text())
    planted = 0
    for name in ("duplicated watch event", "reordered watch event", "early bookmark", "lost watch event"):
        plant, check = PLANTS[name]
        try:
            mutated = plant(recorded, random.Random(1))
        except ValueError:  # no place for it in this recording (a saturated host batches events together)
            continue
        planted += 1
        verdict = validate(mutated)
        assert check in {f.check for f in verdict.findings}, (name, [str(f) for f in verdict.findings])
    assert planted >= 1, "no anomaly could be planted in the recording"


def test_a_cluster_not_ready_within_its_start_up_budget_is_unknown(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def never_ready(cfg: RunConfig, base: Path, ready_timeout_s: float = 60.0) -> None:
        seen.append(ready_timeout_s)
        raise ServerNotReady("quorumkv cluster of 5 did not become ready: timed out\nlogs...")

    monkeypatch.setattr(runner, "_start", never_ready)
    lines: list[str] = []
    report = tmp_path / "r.json"
    verdict = runner.run(RunConfig(members=5, duration_s=40.0, seed=3, report=report), lines.append)
    assert verdict.outcome == "UNKNOWN" and verdict.exit_code == 3
    assert seen and 0 < seen[0] <= Budget(40.0, 5).startup_s
    text = "\n".join(lines)
    assert "INCONCLUSIVE the cluster was not ready within its start-up budget" in text, text
    assert "give a longer --duration" in text and "verdict UNKNOWN" in text and "reproduce with:" in text
    assert json.loads(report.read_text())["verdict"] == "UNKNOWN"


def test_record_against_a_running_etcd_then_check(tmp_path: Path) -> None:
    etcd = start_etcd(tmp_path)
    try:
        out = tmp_path / "rec.json"
        proc = _cli("record", f"--endpoints={etcd.client_url}", "--profile=kubernetes", "--duration=3s",
                    f"--out={out}")
    finally:
        etcd.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "verdict PASS" in proc.stdout
    data = json.loads(out.read_text())
    assert data["format"] == "quorumkv-robustness/1" and data["lists"] and data["watches"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["quorumkv", "etcd"])
def test_a_three_member_run_with_every_fault(target: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = _cli("run", f"--target={target}", "--members=3", "--faults=all", "--duration=60s", "--seed=11",
                f"--report={report}", timeout_s=600)
    data = json.loads(report.read_text())
    assert data["stats"]["faults_injected"] >= 3, proc.stdout[-3000:]
    if target == "quorumkv":
        assert proc.returncode == 0, proc.stdout[-3000:]


def test_the_help_names_every_fault(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["robustness"]) == 0
    assert "run" in capsys.readouterr().out
    assert main(["robustness", "run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    assert all(f in text for f in FAULTS), text
