"""Differential tests: every scenario in scenarios/*.txt must produce the same (normalised) etcdctl output
against the candidate server as against a real etcd 3.4.

The candidate comes from env QUORUMKV_DIFF_CANDIDATE (default "quorumkv"); "etcd" runs etcd against etcd,
which checks that the scenarios and the normaliser are deterministic.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quorumkv.testing.processes import ServerProcess
from quorumkv.testing.scenarios import StepResult, diff_transcripts, load_scenario, run_scenario

from .conftest import SCENARIO_DIR, ServerFactory

pytestmark = pytest.mark.interop

SCENARIOS = sorted(SCENARIO_DIR.glob("*.txt"))


def _failure_context(server: ServerProcess) -> str:
    return f"--- {server.kind} log tail ({server.log_path}) ---\n{server.log_tail(30)}"


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_scenario_matches_etcd(path: Path, candidate_kind: str, server_factory: ServerFactory) -> None:
    scenario = load_scenario(path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        reference_future = pool.submit(server_factory, "etcd")
        candidate_future = pool.submit(server_factory, candidate_kind)
        reference, candidate = reference_future.result(), candidate_future.result()
        reference_run = pool.submit(run_scenario, scenario, reference)
        candidate_run = pool.submit(run_scenario, scenario, candidate)
        reference_results: list[StepResult] = reference_run.result()
        candidate_results: list[StepResult] = candidate_run.result()

    # A wait that times out against real etcd is a bug in the scenario, not in the candidate.
    broken = [result for result in reference_results if result.note]
    assert not broken, "scenario problem (against the reference etcd):\n" + "\n".join(
        result.render() for result in broken
    )
    report = diff_transcripts(
        reference_results, candidate_results, "etcd (reference)", f"{candidate_kind} (candidate)"
    )
    assert report is None, f"{path.name}: {report}\n{_failure_context(candidate)}"
