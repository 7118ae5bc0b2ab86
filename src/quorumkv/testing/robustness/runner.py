"""One robustness run (``quorumkv robustness run``), offline checking (``check``) and recording (``record``).

A run starts its own cluster on loopback (each member on its own 127.x address; quorumkv members dial their
peers through one fault proxy per directed link), drives a traffic profile from a background thread, injects the
chosen faults one after another from the main thread until the traffic phase ends, heals everything, lets the
watches catch up, and validates:

1. the history is linearizable (:func:`quorumkv.testing.linearizability.check`, revision-aware; failed writes
   resolved with the watch);
2. the watch guarantees and the cross-checks of :mod:`.watchcheck` (every acknowledged write present, lists
   agree with the watch);
3. HashKV is equal on every member at one revision;
4. no member died other than by an injected fault.

The verdict: ``PASS`` (exit 0), ``FAIL`` (exit 1) or ``UNKNOWN`` (exit 3: the linearizability search ran out of
budget). ``--duration`` bounds the traffic-and-fault phase; cluster start-up and validation come on top (both
bounded) and the total is printed.
"""

from __future__ import annotations

import asyncio
import json
import random
import shlex
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.cluster import Cluster, start_etcd_cluster, start_quorumkv_cluster
from quorumkv.testing.linearizability import check as check_linearizable
from quorumkv.testing.robustness.faults import (
    PROXY_FAULTS,
    FaultContext,
    Skipped,
    applicable,
    dead_members,
    inject,
    unmount,
)
from quorumkv.testing.robustness.record import Recording
from quorumkv.testing.robustness.traffic import TrafficConfig, record_traffic
from quorumkv.testing.robustness.watchcheck import Finding, history_watch, validate_watches

TARGETS = ("quorumkv", "etcd")
MEMBER_COUNTS = (1, 3, 5)
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


@dataclass(frozen=True)
class RunConfig:
    target: str = "quorumkv"
    members: int = 3
    profile: str = "kubernetes"
    faults: tuple[str, ...] = ()
    #: the --faults text as given (for the reproduce command)
    faults_text: str = ""
    duration_s: float = 30.0
    seed: int = 0
    report: Path | None = None
    clients: int = 8
    watchers: int = 3
    workdir: Path | None = None


def reproduce_command(cfg: RunConfig) -> str:
    args = ["quorumkv", "robustness", "run", f"--target={cfg.target}", f"--members={cfg.members}",
            f"--profile={cfg.profile}", f"--faults={cfg.faults_text or 'none'}", f"--duration={cfg.duration_s:g}s",
            f"--seed={cfg.seed}"]
    if cfg.clients != 8:
        args.append(f"--clients={cfg.clients}")
    if cfg.watchers != 3:
        args.append(f"--watchers={cfg.watchers}")
    if cfg.report is not None:
        args.append(f"--report={cfg.report}")
    return shlex.join(args)


@dataclass
class Verdict:
    outcome: str  # PASS / FAIL / UNKNOWN
    findings: list[Finding] = field(default_factory=list)
    linearizability: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"PASS": 0, "FAIL": 1, "UNKNOWN": 3}[self.outcome]


def validate(rec: Recording, *, max_seconds: float = 60.0) -> Verdict:
    """The offline part of the validation: watches, acknowledged writes, lists, linearizability."""
    findings, through = validate_watches(rec)
    history = rec.history
    if rec.watches and not findings:
        history.watch = history_watch(rec)
        history.watch_through = min(through, rec.final_revision) if rec.final_revision else through
    result = check_linearizable(history, max_seconds=max_seconds)
    if result.outcome == "violation":
        findings.insert(0, Finding("linearizable", result.explanation))
    outcome = "FAIL" if findings else ("UNKNOWN" if result.outcome == "unknown" else "PASS")
    stats: dict[str, Any] = {**history.stats(), "watch_streams": len(rec.watches),
                             "watch_events": sum(len(s.events()) for s in rec.watches),
                             "progress_notifications": sum(1 for s in rec.watches for r in s.responses if r.progress),
                             "lists": len(rec.lists), "final_revision": rec.final_revision, **rec.counters}
    return Verdict(outcome, findings, f"{result.outcome} ({result.nodes} steps, {result.elapsed_s:.1f}s)", stats)


def _hashkv(cluster: Cluster, timeout_s: float = 60.0) -> tuple[list[Finding], dict[str, Any]]:
    """Wait until every member reports one revision, then compare HashKV at it."""
    deadline = time.monotonic() + timeout_s
    revisions: dict[str, int] = {}
    last_error = ""
    while time.monotonic() < deadline:
        revisions = {}
        for m in cluster.members:
            try:
                with grpc.insecure_channel(m.grpc_target, options=_CHANNEL_OPTIONS) as ch:
                    resp = pb_grpc.KVStub(ch).Range(  # type: ignore[no-untyped-call]
                        pb.RangeRequest(key=b"\0", serializable=True), timeout=5)
                revisions[m.name] = int(resp.header.revision)
            except grpc.RpcError as exc:
                last_error = f"{m.name}: {exc.code().name}"
        if len(revisions) == len(cluster.members) and len(set(revisions.values())) == 1:
            break
        time.sleep(0.5)
    else:
        return [Finding("hashkv", f"members never reached one revision in {timeout_s:.0f}s: {revisions} "
                                  f"{last_error}")], {"revisions": revisions}
    revision = next(iter(revisions.values()))
    hashes: dict[str, tuple[int, int]] = {}
    for m in cluster.members:
        try:
            with grpc.insecure_channel(m.grpc_target, options=_CHANNEL_OPTIONS) as ch:
                resp = pb_grpc.MaintenanceStub(ch).HashKV(  # type: ignore[no-untyped-call]
                    pb.HashKVRequest(revision=revision), timeout=30)
            hashes[m.name] = (int(resp.hash), int(resp.compact_revision))
        except grpc.RpcError as exc:
            return [Finding("hashkv", f"HashKV on {m.name} failed: {exc.code().name}")], {}
    info = {"revision": revision, "hashes": {k: list(v) for k, v in hashes.items()}}
    return compare_hashes(revision, hashes), info


def compare_hashes(revision: int, hashes: dict[str, tuple[int, int]]) -> list[Finding]:
    """``hashes``: member -> (HashKV hash, compact revision) at ``revision``; members must all agree."""
    if len(set(hashes.values())) > 1:
        shown = ", ".join(f"{m}={h:#x} (compacted at {c})" for m, (h, c) in sorted(hashes.items()))
        return [Finding("hashkv", f"HashKV differs at revision {revision}: {shown}")]
    return []


def _crashed(cluster: Cluster, excused: set[str], when: str) -> list[Finding]:
    out = []
    for m in dead_members(cluster):
        if m.name not in excused:
            code = m.process.returncode if m.process is not None else None
            out.append(Finding("crashed", f"{m.name} exited {code} {when}: {m.log_tail(5)}"))
    return out


def _start(cfg: RunConfig, base: Path) -> Cluster:
    hosts = [f"127.0.{(cfg.seed % 200) + 10}.{i + 1}" for i in range(cfg.members)]
    extra: list[str] = []
    if "restart-during-snapshot" in cfg.faults:
        extra.append("--snapshot-count=100")
    if cfg.target == "etcd":
        return start_etcd_cluster(cfg.members, base, hosts=hosts, extra_args=extra, ready_timeout_s=60.0)
    proxies = cfg.members > 1 and bool(PROXY_FAULTS & set(cfg.faults))
    return start_quorumkv_cluster(cfg.members, base, with_proxies=proxies, hosts=hosts, extra_args=extra,
                                  ready_timeout_s=60.0)


def run(cfg: RunConfig, echo: Callable[[str], None] = print) -> Verdict:
    """One robustness run (module docstring); prints progress, the verdict and the reproduce command."""
    started = time.monotonic()
    rng = random.Random(cfg.seed)
    runnable: list[str] = []
    skipped: list[str] = []
    for f in cfg.faults:
        why = applicable(f, cfg.target, cfg.members)
        if why is None:
            runnable.append(f)
        else:
            skipped.append(why)
            echo(f"robustness: {why}")
    with tempfile.TemporaryDirectory(prefix="quorumkv-robustness-",
                                     dir=str(cfg.workdir) if cfg.workdir else None) as tmp:
        base = Path(tmp)
        echo(f"robustness: starting {cfg.members}-member {cfg.target} cluster under {base}")
        cluster = _start(cfg, base)
        injected: list[dict[str, Any]] = []
        crash_findings: list[Finding] = []
        recording: Recording | None = None
        hash_findings: list[Finding] = []
        hash_info: dict[str, Any] = {}
        counts: Counter[str] = Counter()
        ctx = FaultContext(cluster, cfg.target, rng, echo)
        try:
            echo(f"robustness: members {', '.join(f'{m.name}={m.client_url}' for m in cluster.members)}")
            tcfg = TrafficConfig(cluster.client_urls, profile=cfg.profile, clients=cfg.clients,
                                 watchers=cfg.watchers, duration_s=cfg.duration_s, seed=cfg.seed)
            box: dict[str, Any] = {}

            def traffic() -> None:
                try:
                    box["rec"] = asyncio.run(record_traffic(tcfg))
                except BaseException as exc:  # reported below
                    box["error"] = exc

            thread = threading.Thread(target=traffic, name="robustness-traffic", daemon=True)
            thread.start()
            fault_deadline = time.monotonic() + cfg.duration_s - 1.0
            for _ in range(100_000):
                if not runnable or time.monotonic() >= fault_deadline or not thread.is_alive():
                    break
                time.sleep(rng.uniform(0.3, 1.0))
                if time.monotonic() >= fault_deadline:
                    break
                fault = rng.choice(runnable)
                at = time.monotonic() - started
                try:
                    text = inject(ctx, fault)
                except Skipped as exc:
                    echo(f"robustness: {exc}")
                    counts[f"skipped:{fault}"] += 1
                    continue
                except Exception as exc:
                    crash_findings.append(Finding("fault", f"{fault} could not be undone: {exc}"))
                    echo(f"robustness: {fault} FAILED: {exc}")
                    break
                counts[fault] += 1
                injected.append({"fault": fault, "at_s": round(at, 2), "what": text})
                echo(f"robustness: [{at:6.1f}s] {fault}: {text}")
                crash_findings.extend(_crashed(cluster, ctx.excused, "outside any fault"))
                ctx.excused.clear()
            if cluster.proxies:
                cluster.heal()
            dead = _crashed(cluster, set(), "outside any fault")
            crash_findings.extend(dead)
            for m in dead_members(cluster):
                cluster.restart(m.name, ready_timeout_s=60.0)
            thread.join(cfg.duration_s + 180.0)
            if thread.is_alive():
                crash_findings.append(Finding("traffic", "the traffic did not stop in time"))
            elif "error" in box:
                crash_findings.append(Finding("traffic", f"the traffic failed: {box['error']!r}"))
            recording = box.get("rec")
            hash_findings, hash_info = _hashkv(cluster)
            crash_findings.extend(_crashed(cluster, set(), "after the run"))
        finally:
            cluster.close()
            for path in list(ctx.mounts):  # a run cut short inside a disk-full fault
                unmount(path)
        if recording is not None:
            verdict = validate(recording)
        else:
            verdict = Verdict("FAIL", [], "not checked (no recording)")
        verdict.findings = [*crash_findings, *hash_findings, *verdict.findings]
        if verdict.findings:
            verdict.outcome = "FAIL"
        verdict.stats["faults_injected"] = len(injected)
        verdict.stats["faults_by_kind"] = dict(sorted(counts.items()))
        verdict.stats["hashkv"] = hash_info
        elapsed = time.monotonic() - started
        repro = reproduce_command(cfg)
        if cfg.report is not None:
            report = {"config": {"target": cfg.target, "members": cfg.members, "profile": cfg.profile,
                                 "faults": list(cfg.faults), "duration_s": cfg.duration_s, "seed": cfg.seed},
                      "verdict": verdict.outcome, "linearizability": verdict.linearizability,
                      "findings": [{"check": f.check, "detail": f.detail} for f in verdict.findings],
                      "skipped": skipped, "injected": injected, "stats": verdict.stats,
                      "elapsed_s": round(elapsed, 1), "reproduce": repro,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            cfg.report.write_text(json.dumps(report, indent=1))
            if recording is not None:
                cfg.report.with_suffix(".recording.json").write_text(recording.to_json())
    s = verdict.stats
    echo(f"robustness: {s.get('operations', 0)} operations ({s.get('failed', 0)} failed), "
         f"{s.get('watch_events', 0)} watch events in {s.get('watch_streams', 0)} streams, "
         f"{s.get('lists', 0)} lists, {len(injected)} faults injected in {elapsed:.0f}s; "
         f"linearizability: {verdict.linearizability}")
    for finding in verdict.findings:
        echo(f"robustness: VIOLATION {finding}")
    echo(f"robustness: verdict {verdict.outcome}")
    echo(f"robustness: reproduce with: {repro}")
    return verdict


def check_file(path: Path, echo: Callable[[str], None] = print) -> Verdict:
    rec = Recording.from_json(path.read_text())
    verdict = validate(rec)
    echo(f"robustness check: {path}: {verdict.stats.get('operations', 0)} operations, "
         f"{verdict.stats.get('watch_streams', 0)} watch streams; linearizability: {verdict.linearizability}")
    for finding in verdict.findings:
        echo(f"robustness check: VIOLATION {finding}")
    echo(f"robustness check: verdict {verdict.outcome}")
    return verdict


def record_endpoints(endpoints: Sequence[str], profile: str, duration_s: float, seed: int, out: Path,
                     clients: int = 8, watchers: int = 3, echo: Callable[[str], None] = print) -> Verdict:
    tcfg = TrafficConfig(list(endpoints), profile=profile, clients=clients, watchers=watchers,
                         duration_s=duration_s, seed=seed)
    rec = asyncio.run(record_traffic(tcfg))
    out.write_text(rec.to_json())
    echo(f"robustness record: {len(rec.history)} operations, {len(rec.watches)} watch streams, "
         f"{len(rec.lists)} lists written to {out}")
    return check_file(out, echo)
