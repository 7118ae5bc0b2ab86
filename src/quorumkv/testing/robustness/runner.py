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

The verdict: ``PASS`` (exit 0), ``FAIL`` (exit 1) or ``UNKNOWN`` (exit 3: the run could not finish a check
within its time, e.g. the linearizability search ran out of budget).

``--duration`` bounds the whole run (:class:`Budget`): the cluster's start-up, the traffic and faults, the
wrap-up (heal, restart dead members, let the watches catch up, compare HashKV, stop the cluster) and the
validation all come out of it. The wrap-up reserve is 30% of the duration (at least 10 s, at most 150 s); the
start-up gets what is left before it, minus 3 s of traffic (at most 60 s); the traffic runs until the wrap-up
reserve begins (no fault starts in its last 10%; its final read waits for the healing); the linearizability
search gets whatever is left at the end and answers ``UNKNOWN`` when it runs out. A duration below
:data:`MIN_DURATION_S` is refused. Only the interpreter's own start and exit (and a member that ignores SIGTERM
for 10 s) are outside the bound.
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
from quorumkv.testing.processes import ServerNotReady
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
from quorumkv.testing.robustness.traffic import PrefixReadTimeout, TrafficConfig, record_traffic
from quorumkv.testing.robustness.watchcheck import Finding, history_watch, validate_watches

TARGETS = ("quorumkv", "etcd")
#: The shortest ``--duration`` a run accepts: wrap-up reserve (10 s) + start-up + at least 3 s of traffic.
MIN_DURATION_S = 20.0
#: The least traffic a run is worth doing with (start-up must leave this much before the wrap-up reserve).
MIN_TRAFFIC_S = 3.0
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


@dataclass(frozen=True)
class Budget:
    """How a run spends ``--duration`` (module docstring). Times are offsets from the run's start, in seconds."""

    duration_s: float
    members: int

    @property
    def wrapup_s(self) -> float:
        """Reserved after the traffic: heal, restarts, watch catch-up, HashKV, teardown, validation."""
        return min(150.0, max(10.0, 0.3 * self.duration_s))

    @property
    def traffic_end_s(self) -> float:
        return self.duration_s - self.wrapup_s

    @property
    def startup_s(self) -> float:
        """The most the cluster's start-up may take (it must leave MIN_TRAFFIC_S of traffic)."""
        return min(60.0, self.traffic_end_s - MIN_TRAFFIC_S)

    @property
    def validation_min_s(self) -> float:
        """Kept back for the offline validation (the linearizability search gets at least this)."""
        return max(2.0, 0.15 * self.wrapup_s)

    @property
    def teardown_s(self) -> float:
        """Kept back for stopping the members (SIGTERM, one after the other)."""
        return 1.0 + 1.0 * self.members

    @property
    def quiet_s(self) -> float:
        """No fault starts in the traffic's last ``quiet_s`` (10% of the duration, at least 1 s): a fault under
        way at the traffic's end delays the healing the final read waits for."""
        return max(1.0, 0.1 * self.duration_s)

    @property
    def settle_s(self) -> float:
        """How long the watchers get, after the final read, to deliver its revision."""
        return min(20.0, 0.25 * self.wrapup_s)

    def final_read_s(self) -> float:
        """The bound of the traffic's final read: the cluster work's time after the traffic, less the settling."""
        return min(60.0, self.cluster_work_end_s - self.traffic_end_s - self.settle_s)

    @property
    def cluster_work_end_s(self) -> float:
        """When restarts, the traffic's tail and the HashKV comparison must be done."""
        return self.duration_s - self.validation_min_s - self.teardown_s


def check_duration(duration_s: float) -> None:
    """Raise ``ValueError`` (one line naming the minimum) for a duration a run cannot be done in."""
    if duration_s < MIN_DURATION_S:
        raise ValueError(f"{duration_s:g}s is too short: a run needs at least {MIN_DURATION_S:g}s (cluster start-up, "
                         f"traffic, catch-up and validation all come out of --duration)")


@dataclass
class Verdict:
    outcome: str  # PASS / FAIL / UNKNOWN
    findings: list[Finding] = field(default_factory=list)
    linearizability: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    #: checks that could not be completed within the run's time (the outcome is UNKNOWN unless there is a finding)
    inconclusive: list[str] = field(default_factory=list)

    def settle(self) -> None:
        """The outcome from the findings and what could not be checked."""
        if self.findings:
            self.outcome = "FAIL"
        elif self.inconclusive and self.outcome == "PASS":
            self.outcome = "UNKNOWN"

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


#: A wait this long for every member to reach one revision that still fails is a finding; a shorter one (the
#: run's time ran out) makes the HashKV comparison inconclusive instead.
HASHKV_DECISIVE_S = 30.0


def _hashkv(cluster: Cluster, timeout_s: float = 60.0) -> tuple[list[Finding], dict[str, Any]]:
    """Wait until every member reports one revision, then compare HashKV at it.

    ``info["inconclusive"]`` says why nothing was compared when ``timeout_s`` was too short to tell."""
    timeout_s = max(1.0, timeout_s)
    deadline = time.monotonic() + timeout_s
    revisions: dict[str, int] = {}
    last_error = ""
    while time.monotonic() < deadline:
        revisions = {}
        for m in cluster.members:
            try:
                with grpc.insecure_channel(m.grpc_target, options=_CHANNEL_OPTIONS) as ch:
                    resp = pb_grpc.KVStub(ch).Range(  # type: ignore[no-untyped-call]
                        pb.RangeRequest(key=b"\0", serializable=True),
                        timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                revisions[m.name] = int(resp.header.revision)
            except grpc.RpcError as exc:
                last_error = f"{m.name}: {exc.code().name}"
        if len(revisions) == len(cluster.members) and len(set(revisions.values())) == 1:
            break
        time.sleep(0.5)
    else:
        if timeout_s < HASHKV_DECISIVE_S:
            return [], {"revisions": revisions, "inconclusive": f"hashkv: not compared: the members did not reach "
                                                                f"one revision in the {timeout_s:.0f}s left "
                                                                f"({revisions})"}
        return [Finding("hashkv", f"members never reached one revision in {timeout_s:.0f}s: {revisions} "
                                  f"{last_error}")], {"revisions": revisions}
    revision = next(iter(revisions.values()))
    hashes: dict[str, tuple[int, int]] = {}
    for m in cluster.members:
        try:
            with grpc.insecure_channel(m.grpc_target, options=_CHANNEL_OPTIONS) as ch:
                resp = pb_grpc.MaintenanceStub(ch).HashKV(  # type: ignore[no-untyped-call]
                    pb.HashKVRequest(revision=revision), timeout=max(2.0, deadline - time.monotonic()))
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


def _start(cfg: RunConfig, base: Path, ready_timeout_s: float = 60.0) -> Cluster:
    hosts = [f"127.0.{(cfg.seed % 200) + 10}.{i + 1}" for i in range(cfg.members)]
    extra: list[str] = []
    if "restart-during-snapshot" in cfg.faults:
        extra.append("--snapshot-count=100")
    if cfg.target == "etcd":
        return start_etcd_cluster(cfg.members, base, hosts=hosts, extra_args=extra,
                                  ready_timeout_s=ready_timeout_s)
    proxies = cfg.members > 1 and bool(PROXY_FAULTS & set(cfg.faults))
    return start_quorumkv_cluster(cfg.members, base, with_proxies=proxies, hosts=hosts, extra_args=extra,
                                  ready_timeout_s=ready_timeout_s)


def run(cfg: RunConfig, echo: Callable[[str], None] = print) -> Verdict:
    """One robustness run (module docstring), finished within ``cfg.duration_s``; prints progress, the verdict
    and the reproduce command."""
    started = time.monotonic()
    check_duration(cfg.duration_s)
    budget = Budget(cfg.duration_s, cfg.members)

    def left(until_s: float) -> float:
        """Seconds from now until ``until_s`` (an offset from the start)."""
        return started + until_s - time.monotonic()

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
    injected: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="quorumkv-robustness-",
                                     dir=str(cfg.workdir) if cfg.workdir else None) as tmp:
        base = Path(tmp)
        startup_s = left(budget.startup_s)
        echo(f"robustness: starting {cfg.members}-member {cfg.target} cluster under {base} "
             f"(start-up budget {startup_s:.0f}s of --duration={cfg.duration_s:g}s)")
        try:
            cluster = _start(cfg, base, ready_timeout_s=max(1.0, startup_s))
        except ServerNotReady as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            verdict = Verdict("UNKNOWN", inconclusive=[
                f"the cluster was not ready within its start-up budget of {startup_s:.0f}s (give a longer "
                f"--duration): {first}"])
            verdict.stats = {"faults_injected": 0, "faults_by_kind": {}}
            return _finish(cfg, verdict, started, skipped, injected, None, echo)
        crash_findings: list[Finding] = []
        recording: Recording | None = None
        hash_findings: list[Finding] = []
        hash_info: dict[str, Any] = {}
        ctx = FaultContext(cluster, cfg.target, rng, echo)
        inconclusive: list[str] = []
        healed = threading.Event()  # set once the faults are healed and dead members restarted
        try:
            echo(f"robustness: members {', '.join(f'{m.name}={m.client_url}' for m in cluster.members)}; "
                 f"traffic for {left(budget.traffic_end_s):.0f}s")
            traffic_started = threading.Event()
            final_read_by = started + budget.cluster_work_end_s - budget.settle_s
            tcfg = TrafficConfig(cluster.client_urls, profile=cfg.profile, clients=cfg.clients,
                                 watchers=cfg.watchers, duration_s=max(0.0, left(budget.traffic_end_s)),
                                 seed=cfg.seed, end_at=started + budget.traffic_end_s, settle_s=budget.settle_s,
                                 read_timeout_s=budget.final_read_s(), on_started=traffic_started.set,
                                 wait_healed=lambda: healed.wait(max(0.0, final_read_by - 1.0 - time.monotonic())),
                                 final_read_by=final_read_by)
            box: dict[str, Any] = {}

            def traffic() -> None:
                try:
                    box["rec"] = asyncio.run(record_traffic(tcfg))
                except BaseException as exc:  # reported below
                    box["error"] = exc

            thread = threading.Thread(target=traffic, name="robustness-traffic", daemon=True)
            thread.start()
            fault_deadline = started + budget.traffic_end_s - budget.quiet_s
            # faults go into running traffic: not before its initial read of the (healthy) cluster is done
            for _ in range(100_000):
                if traffic_started.wait(0.1) or not thread.is_alive() or time.monotonic() >= fault_deadline:
                    break
            for _ in range(100_000):
                if not runnable or time.monotonic() >= fault_deadline or not thread.is_alive():
                    break
                time.sleep(rng.uniform(0.3, 1.0))
                if time.monotonic() >= fault_deadline:
                    break
                fault = rng.choice(runnable)
                at = time.monotonic() - started
                # a restart inside the fault may use the time up to the end of the cluster work, not beyond
                ctx.ready_timeout_s = min(60.0, max(5.0, left(budget.cluster_work_end_s)))
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
                wait_s = min(60.0, max(1.0, left(budget.cluster_work_end_s)))
                try:
                    cluster.restart(m.name, ready_timeout_s=wait_s)
                except ServerNotReady as exc:
                    inconclusive.append(f"restart: {m.name} was not ready in the {wait_s:.0f}s left: "
                                        f"{str(exc).splitlines()[0] if str(exc) else exc!r}")
            healed.set()  # the traffic's final read may go
            thread.join(max(0.0, left(budget.cluster_work_end_s)))
            if thread.is_alive():
                inconclusive.append(f"traffic: still running {time.monotonic() - started:.0f}s into the run "
                                    f"(its in-flight calls outlived the budget); nothing was validated")
            elif isinstance(box.get("error"), PrefixReadTimeout) and box["error"].timeout_s < HASHKV_DECISIVE_S:
                inconclusive.append(f"traffic: no member answered the {box['error']} (the run's time ran out)")
            elif "error" in box:
                crash_findings.append(Finding("traffic", f"the traffic failed: {box['error']!r}"))
            recording = box.get("rec")
            hash_findings, hash_info = _hashkv(cluster, left(budget.cluster_work_end_s))
            if "inconclusive" in hash_info:
                inconclusive.append(hash_info.pop("inconclusive"))
            crash_findings.extend(_crashed(cluster, set(), "after the run"))
        finally:
            healed.set()
            cluster.close()
            for path in list(ctx.mounts):  # a run cut short inside a disk-full fault
                unmount(path)
        if recording is not None:
            # the linearizability search gets what is left of the duration (a moment kept for the report)
            verdict = validate(recording, max_seconds=max(0.5, left(cfg.duration_s) - 0.5))
        elif inconclusive:
            verdict = Verdict("UNKNOWN", [], "not checked (no recording)")
        else:
            verdict = Verdict("FAIL", [], "not checked (no recording)")
        verdict.findings = [*crash_findings, *hash_findings, *verdict.findings]
        verdict.inconclusive.extend(inconclusive)
        verdict.settle()
        verdict.stats["faults_injected"] = len(injected)
        verdict.stats["faults_by_kind"] = dict(sorted(counts.items()))
        verdict.stats["hashkv"] = hash_info
        return _finish(cfg, verdict, started, skipped, injected, recording, echo)


def _finish(cfg: RunConfig, verdict: Verdict, started: float, skipped: list[str], injected: list[dict[str, Any]],
            recording: Recording | None, echo: Callable[[str], None]) -> Verdict:
    """Write the report, print the summary, the findings, the verdict and the reproduce command."""
    elapsed = time.monotonic() - started
    repro = reproduce_command(cfg)
    if cfg.report is not None:
        report = {"config": {"target": cfg.target, "members": cfg.members, "profile": cfg.profile,
                             "faults": list(cfg.faults), "duration_s": cfg.duration_s, "seed": cfg.seed},
                  "verdict": verdict.outcome, "linearizability": verdict.linearizability,
                  "findings": [{"check": f.check, "detail": f.detail} for f in verdict.findings],
                  "inconclusive": verdict.inconclusive,
                  "skipped": skipped, "injected": injected, "stats": verdict.stats,
                  "elapsed_s": round(elapsed, 1), "reproduce": repro,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        cfg.report.write_text(json.dumps(report, indent=1))
        if recording is not None:
            cfg.report.with_suffix(".recording.json").write_text(recording.to_json())
    s = verdict.stats
    echo(f"robustness: {s.get('operations', 0)} operations ({s.get('failed', 0)} failed), "
         f"{s.get('watch_events', 0)} watch events in {s.get('watch_streams', 0)} streams, "
         f"{s.get('lists', 0)} lists, {len(injected)} faults injected; run took {elapsed:.0f}s of "
         f"{cfg.duration_s:g}s; linearizability: {verdict.linearizability or 'not checked'}")
    for finding in verdict.findings:
        echo(f"robustness: VIOLATION {finding}")
    for note in verdict.inconclusive:
        echo(f"robustness: INCONCLUSIVE {note}")
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
