"""Client differential: every interop scenario run with etcdctl 3.4 and with quorumkvctl, each against its own
fresh real etcd 3.4 (same binary, same flags), must give the same normalised transcript.

The server is held fixed (real etcd) so any difference is the client's. Steps preceded by a
``#! client-quirk: <reason>`` line are etcdctl 3.4 behaviour quorumkvctl deliberately does not copy; they
still run (so later state matches) but are not compared.

quorumkvctl is a Python process (~0.3 s of CPU per invocation against etcdctl's ~20 ms), so the scenarios run
concurrently and the remaining-TTL tolerance of the normaliser is widened for this comparison only: a lease
granted a few steps earlier has simply aged more by the time the slower client asks.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from quorumkv.testing import processes
from quorumkv.testing.processes import ETCD_BIN, ETCDCTL_BIN, start_etcd
from quorumkv.testing.scenarios import StepResult, diff_transcripts, load_scenario, run_scenario

pytestmark = pytest.mark.interop

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "interop" / "scenarios"
SCENARIOS = sorted(SCENARIO_DIR.glob("*.txt"))
#: Remaining-TTL tolerance (seconds) for this comparison; see the module docstring.
CLIENT_TTL_SLACK_S = 30
WORKERS = 3


def _run(path: Path, client: str, tmp: Path) -> list[StepResult]:
    server = start_etcd(tmp / f"{path.stem}-{client}")
    try:
        return run_scenario(load_scenario(path), server, client=client)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def transcripts() -> Iterator[dict[tuple[str, str], Future[list[StepResult]]]]:
    """All scenarios with both clients, started at once on a small pool; keyed by (scenario stem, client)."""
    missing = [name for name in (ETCD_BIN, ETCDCTL_BIN) if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH")
    saved = processes.TTL_SLACK_S
    processes.TTL_SLACK_S = CLIENT_TTL_SLACK_S
    try:
        with tempfile.TemporaryDirectory(prefix="quorumkvctl-diff-") as tmp, ThreadPoolExecutor(WORKERS) as pool:
            # the slowest (most steps, sleeps) first so the pool finishes together
            order = sorted(SCENARIOS, key=lambda p: -len(load_scenario(p).steps))
            futures = {
                (path.stem, client): pool.submit(_run, path, client, Path(tmp))
                for path in order
                for client in ("quorumkvctl", "etcdctl")
            }
            for future in futures.values():
                future.exception()
            yield futures
    finally:
        processes.TTL_SLACK_S = saved


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_quorumkvctl_matches_etcdctl(path: Path, transcripts: dict[tuple[str, str], Future[list[StepResult]]]) -> None:
    reference_results = transcripts[(path.stem, "etcdctl")].result()
    candidate_results = transcripts[(path.stem, "quorumkvctl")].result()
    broken = [result for result in reference_results if result.note]
    assert not broken, "scenario problem (with etcdctl):\n" + "\n".join(result.render() for result in broken)
    report = diff_transcripts(
        reference_results, candidate_results, "etcdctl 3.4", "quorumkvctl", skip_client_quirks=True
    )
    assert report is None, f"{path.name}: {report}"
