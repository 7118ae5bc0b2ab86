"""The cluster-level validators of a run (HashKV agreement, no unexplained member death) can fail."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from quorumkv.testing.cluster import Cluster
from quorumkv.testing.robustness.runner import _crashed, compare_hashes


def test_hashkv_must_agree_on_every_member() -> None:
    assert compare_hashes(42, {"m1": (0xABC, 10), "m2": (0xABC, 10), "m3": (0xABC, 10)}) == []
    [finding] = compare_hashes(42, {"m1": (0xABC, 10), "m2": (0xABD, 10), "m3": (0xABC, 10)})
    assert finding.check == "hashkv" and "m2=0xabd" in finding.detail and "revision 42" in finding.detail
    [finding] = compare_hashes(42, {"m1": (0xABC, 10), "m2": (0xABC, 12)})
    assert "compacted at 12" in finding.detail


def _member(name: str, alive: bool, code: int | None) -> Any:
    return SimpleNamespace(name=name, alive=alive, process=SimpleNamespace(returncode=code),
                           log_tail=lambda n=40: f"{name}: panic: something broke")


def test_a_member_dead_outside_its_fault_is_a_crash() -> None:
    cluster = cast(Cluster, SimpleNamespace(members=[_member("m1", True, None), _member("m2", False, 86),
                                                     _member("m3", False, -9)]))
    found = _crashed(cluster, {"m3"}, "outside any fault")  # m3 was being killed by the fault: excused
    assert [f.check for f in found] == ["crashed"]
    assert "m2 exited 86 outside any fault" in found[0].detail and "panic" in found[0].detail
    assert len(_crashed(cluster, set(), "after the run")) == 2
