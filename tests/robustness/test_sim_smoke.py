"""CI smoke of the simulator on the cluster sizes docs/reliability.md counts seeds for (3/5/7 members)."""

from __future__ import annotations

import pytest

from quorumkv.testing.sim_cli import main


@pytest.mark.parametrize("nodes", [3, 5, 7])
def test_a_few_seeds_per_cluster_size_run_clean(nodes: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "3", "--start", "1000", "--nodes", str(nodes), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "runs: 3  violations: 0" in out and "determinism self-check" in out
