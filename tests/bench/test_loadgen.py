"""bench/loadgen.py's table (no benchmark runs here) and bench/defrag.py's room check."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import defrag, loadgen  # noqa: E402


def test_loadgen_table_marks_missing_figures() -> None:
    ok = loadgen.LoadgenResult("quorumkv", "quorumkvctl", "l", 1699, 1.323146, 0.134908, 0, "FAIL", 30.6, 88.3, 59.1,
                               6.5, 63.4)
    dead = loadgen.LoadgenResult("etcd", "etcdctl", "l", None, None, None, 0, None, 1.0, None, None, 0.0, 5.0)
    lines = loadgen.render([ok, dead]).splitlines()
    assert lines[0].startswith("| server") and len(lines) == 4
    assert "| 1,699 " in lines[2] and "| 1.323 " in lines[2] and "| 0.1349 " in lines[2] and "| 59 " in lines[2]
    assert lines[3].count("—") == 6  # writes/s, slowest, stddev, verdict, server CPU, other CPU


def test_defrag_preflight_refuses_runs_that_do_not_fit(tmp_path: Path) -> None:
    assert defrag.preflight(1, tmp_path) == []
    problems = defrag.preflight(10**8, tmp_path)  # 100 TB
    assert len(problems) == 2 and "free" in problems[0] and "memory" in problems[1]
