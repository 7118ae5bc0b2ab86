"""bench/datascale.py at a tiny scale (seconds), against both servers, so the script cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import datascale  # noqa: E402


def test_keys_and_values_have_the_announced_shape() -> None:
    import random

    assert datascale.flat_key(7) == b"/bench/datascale/00000007"
    assert datascale.k8s_key(9).startswith(b"/registry/configmaps/ns-01/obj-0000009")
    rng = random.Random(1)
    sizes = [len(datascale.k8s_value(rng, 0)) for _ in range(50)]
    assert all(2048 - 2 <= n <= 8192 for n in sizes) and max(sizes) - min(sizes) > 1000
    puts = list(datascale.requests(3, 2, 1, seed=1))
    assert len(puts) == 3 + 2 * 2


@pytest.mark.interop
def test_tiny_run_against_both_servers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = datascale.main(["--keys", "300", "--k8s-objects", "30", "--k8s-updates", "1", "--list-keys", "200",
                           "--compact-revs", "200", "--tmp-dir", str(tmp_path), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    results = {r["server"]: r for r in report["results"]}
    assert set(results) == {"etcd", "quorumkv"}
    for r in results.values():
        assert r["revisions"] == 1 + 300 + 30 * 2, r
        assert r["compacted_revs"] == 200 and r["list_pages"] == 1, r
        assert r["restart_s"] > 0 and r["peak_rss_mb"] > 0 and r["data_dir_mb"] > 0 and r["db_file_mb"] > 0, r
        assert r["stall_puts"] >= 1 and r["max_stall_ms"] > 0, r
    assert set(report["ratios"]) == {"restart", "peak_rss", "data_dir", "list"}
    assert all(value is not None and value > 0 for value in report["ratios"].values()), report["ratios"]
