"""The fault catalogue of ``quorumkv robustness run`` and its injectors on a process cluster.

Every injector applies one fault, holds it, undoes it (restart, SIGCONT, heal, restore the disk) and returns a
one-line description. A fault that cannot be injected on this target or host raises :class:`Skipped` with the
reason (the runner prints it and counts it as skipped, never as injected).

Members that die *because of* a fault (SIGKILL, a ``crash`` failpoint, a failing fsync, a full disk) are
excused; any other death is a finding of the run (``crashed``).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.testing.cluster import Cluster, ClusterMember

FAILPOINTS_ENV = "QUORUMKV_FAILPOINTS"

FAULTS: tuple[str, ...] = (
    "kill-leader", "kill-follower", "kill-random",
    "pause-leader", "pause-random",
    "blackhole", "delay", "drop", "one-way",
    "member-replace",
    "disk-full",
    "slow-fsync", "failing-fsync",
    "restart-during-snapshot", "restart-during-defrag",
)  # fmt: skip
#: Faults that need the fault proxy between members (quorumkv honours the test dial map; etcd cannot).
PROXY_FAULTS = frozenset({"blackhole", "delay", "drop", "one-way"})
#: Faults that need quorumkv's failpoints (``server/failpoints.py``).
FAILPOINT_FAULTS = frozenset({"slow-fsync", "failing-fsync", "restart-during-snapshot"})
#: Faults that need more than one member.
MULTI_MEMBER = frozenset({"kill-follower", "blackhole", "delay", "drop", "one-way", "member-replace"})


class Skipped(Exception):
    """The fault cannot be injected here (the message says why)."""


def parse_faults(text: str) -> list[str]:
    """``all`` or a comma-separated list of fault names; an unknown name is refused with the list."""
    if text.strip() == "all":
        return list(FAULTS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown or not names:
        raise ValueError(f"unknown fault {', '.join(unknown) or '(none given)'}: choose from {', '.join(FAULTS)} "
                         "or 'all'")
    return names


def applicable(fault: str, target: str, members: int) -> str | None:
    """Why ``fault`` cannot run on ``target`` with ``members`` members (None: it can)."""
    if target == "etcd" and fault in PROXY_FAULTS:
        return f"{fault}: skipped on etcd (peer links go through the fault proxy only for quorumkv's test dial map)"
    if target == "etcd" and fault in FAILPOINT_FAULTS:
        return f"{fault}: skipped on etcd (quorumkv failpoints only; etcd 3.4's gofail needs a special build)"
    if members == 1 and fault in MULTI_MEMBER:
        return f"{fault}: skipped with one member (needs peers)"
    if fault == "disk-full" and (os.geteuid() != 0 or not shutil.which("mount")):
        return "disk-full: refused: needs root and mount(8) to put the member's data dir on a size-limited tmpfs"
    return None


@dataclass
class FaultContext:
    cluster: Cluster
    target: str
    rng: random.Random
    log: Callable[[str], None]
    #: Members that are down or may die because of the fault being injected now.
    excused: set[str] = field(default_factory=set)
    hold_s: tuple[float, float] = (0.5, 2.0)
    #: tmpfs mounts a disk-full fault has not undone yet (the runner unmounts them if the run is cut short)
    mounts: list[Path] = field(default_factory=list)
    ready_timeout_s: float = 60.0

    def hold(self) -> float:
        seconds = self.rng.uniform(*self.hold_s)
        time.sleep(seconds)
        return seconds

    def leader(self) -> str:
        name = self.cluster.find_leader()
        return name if name is not None else self.rng.choice(self.cluster.names)

    def follower(self) -> str:
        leader = self.cluster.find_leader()
        return self.rng.choice([n for n in self.cluster.names if n != leader])

    def restart(self, name: str, env: dict[str, str] | None = None, *, wait: bool = True) -> None:
        member = self.cluster.member(name)
        if member.env is not None or env:
            base = {k: v for k, v in (member.env or {}).items() if k != FAILPOINTS_ENV}
            member.env = {**base, **(env or {})}
        if member.alive:
            self.cluster.kill(name)
        self.cluster.restart(name, wait_ready=wait, ready_timeout_s=self.ready_timeout_s)


def _kill(ctx: FaultContext, name: str) -> str:
    ctx.excused.add(name)
    ctx.cluster.kill(name)
    held = ctx.hold()
    ctx.restart(name)
    return f"SIGKILL {name}, restarted after {held:.1f}s"


def _pause(ctx: FaultContext, name: str) -> str:
    pid = ctx.cluster.member(name).pid
    if pid is None:
        raise Skipped(f"{name} is not running")
    os.kill(pid, signal.SIGSTOP)
    try:
        held = ctx.hold()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return f"SIGSTOP {name} for {held:.1f}s, SIGCONT"


def _network(ctx: FaultContext, kind: str) -> str:
    c = ctx.cluster
    name = ctx.rng.choice([ctx.leader(), ctx.rng.choice(c.names)])
    try:
        if kind == "blackhole":
            c.isolate(name)
            what = f"blackholed every peer link of {name}"
        elif kind == "drop":
            c.isolate(name, how="drop")
            what = f"dropped every peer connection of {name}"
        elif kind == "delay":
            ms = ctx.rng.choice((50, 150, 400))
            for other in c.names:
                if other != name:
                    c.link(name, other).delay(ms, jitter_ms=ms / 4)
                    c.link(other, name).delay(ms, jitter_ms=ms / 4)
            what = f"delayed {name}'s peer links by {ms}ms"
        else:
            other = ctx.rng.choice([n for n in c.names if n != name])
            c.one_way(name, other)
            what = f"one-way link {name} -> {other} only"
        held = ctx.hold()
    finally:
        c.heal()
    return f"{what} for {held:.1f}s, healed"


def _failpoint(ctx: FaultContext, kind: str) -> str:
    name = ctx.rng.choice(ctx.cluster.names)
    ctx.excused.add(name)
    if kind == "slow-fsync":
        ms = ctx.rng.choice((50, 200, 500))
        ctx.restart(name, {FAILPOINTS_ENV: f"after_log_save=sleep({ms})"})
        held = ctx.hold()
        ctx.restart(name)
        return f"{name} restarted with after_log_save=sleep({ms}) for {held:.1f}s, then without"
    n = ctx.rng.randint(5, 50)
    ctx.restart(name, {FAILPOINTS_ENV: f"before_log_save={n}*off->error"}, wait=False)
    held = ctx.hold()
    ctx.restart(name)
    return f"{name} restarted with before_log_save={n}*off->error for {held:.1f}s, then without"


def _snapshot(ctx: FaultContext) -> str:
    name = ctx.follower() if len(ctx.cluster.names) > 1 else ctx.cluster.names[0]
    ctx.excused.add(name)
    ctx.cluster.kill(name)
    held = ctx.hold() + ctx.hold()  # the others move on; with a small --snapshot-count the log is compacted
    member = ctx.cluster.member(name)
    ctx.restart(name, {FAILPOINTS_ENV: "before_snapshot_install=crash"}, wait=False)
    deadline = time.monotonic() + 10.0
    while member.alive and time.monotonic() < deadline:
        time.sleep(0.1)
    crashed = not member.alive
    ctx.restart(name)
    how = "crashed at snapshot install" if crashed else "needed no snapshot (log not compacted yet)"
    return f"{name} down {held:.1f}s, restarted with before_snapshot_install=crash: {how}; restarted clean"


def _defrag(ctx: FaultContext) -> str:
    name = ctx.rng.choice(ctx.cluster.names)
    member = ctx.cluster.member(name)
    ctx.excused.add(name)
    result: list[str] = []

    def defrag() -> None:
        try:
            with grpc.insecure_channel(member.grpc_target, options=[("grpc.enable_http_proxy", 0)]) as ch:
                pb_grpc.MaintenanceStub(ch).Defragment(pb.DefragmentRequest(), timeout=10)  # type: ignore[no-untyped-call]
            result.append("defrag finished")
        except grpc.RpcError as exc:
            result.append(f"defrag failed: {exc.code().name}")

    t = threading.Thread(target=defrag, daemon=True)
    t.start()
    delay = ctx.rng.uniform(0.0, 0.3)
    time.sleep(delay)
    ctx.cluster.kill(name)
    t.join(15)
    ctx.restart(name)
    return f"Defragment {name}, SIGKILL after {delay * 1000:.0f}ms ({result[0] if result else 'no answer'}), restarted"


def _replace(ctx: FaultContext) -> str:
    c = ctx.cluster
    name = ctx.follower()
    member = c.member(name)
    ctx.excused.add(name)
    others = [m for m in c.members if m.name != name]
    endpoints = ",".join(m.client_url for m in others)
    from quorumkv.testing.cluster import patient_etcdctl

    listing = patient_etcdctl(endpoints, "member", "list", "-w", "simple")
    member_hex = next((line.split(",")[0].strip() for line in listing.stdout.splitlines()
                       if f", {name}, " in line), None)
    if member_hex is None:
        raise Skipped(f"member-replace: {name} not in the member list: {listing.stdout.strip()[:200]}")
    for _ in range(10):  # etcd refuses while a member is recently (re)started ("unhealthy cluster"): retry
        removed = patient_etcdctl(endpoints, "member", "remove", member_hex)
        if removed.returncode == 0 or "unhealthy" not in removed.stderr:
            break
        time.sleep(1.0)
    if removed.returncode != 0:
        raise Skipped(f"member-replace: member remove failed: {_last(removed.stderr)}")
    c.kill(name)
    shutil.rmtree(member.data_dir, ignore_errors=True)
    added = patient_etcdctl(endpoints, "member", "add", name, f"--peer-urls={member.peer_url}")
    if added.returncode != 0:
        raise RuntimeError(f"member-replace: member add {name} failed after its removal: "
                           f"{_last(added.stderr)}")
    initial = next((line.split("=", 1)[1].strip().strip('"') for line in added.stdout.splitlines()
                    if line.startswith("ETCD_INITIAL_CLUSTER=")), None)
    argv = list(member.argv)
    argv[argv.index("--initial-cluster-state") + 1] = "existing"
    if initial:
        argv[argv.index("--initial-cluster") + 1] = initial
    member.argv = argv
    ctx.restart(name)
    return f"removed {name} ({member_hex}), wiped its data dir, added it back and restarted it"


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(no output)"


def _disk_full(ctx: FaultContext) -> str:
    name = ctx.rng.choice(ctx.cluster.names)
    member = ctx.cluster.member(name)
    ctx.excused.add(name)
    ctx.cluster.kill(name)
    data = member.data_dir
    saved = data.with_name(data.name + ".saved")
    used = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    size_kb = used // 1024 + 1024
    data.rename(saved)
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(data)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode == 0:
        ctx.mounts.append(data)
    else:
        data.rmdir()
        saved.rename(data)
        ctx.restart(name)
        raise Skipped(f"disk-full: refused: mount tmpfs failed: {mounted.stderr.strip()[:200]}")
    try:
        for item in saved.iterdir():
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, data / item.name)
        st = os.statvfs(data)  # leave only a few KiB free: the member's next writes hit ENOSPC
        filler = data / ".robustness-filler"
        with filler.open("wb") as fh:
            with contextlib.suppress(OSError):
                fh.write(b"\0" * max(st.f_bavail * st.f_frsize - ctx.rng.randint(8, 64) * 1024, 0))
        ctx.restart(name, wait=False)
        with contextlib.suppress(Exception):  # it may well not come up on a full disk
            if member.process is not None:
                member.process.wait_ready(15.0)
        held = ctx.hold() + ctx.hold()
        filler.unlink()
        died = not member.alive
        full = any(w in member.log_tail(200).lower() for w in ("no space", "disk is full", "enospc"))
        ctx.cluster.kill(name)
        shutil.rmtree(saved)
        saved.mkdir()
        for item in data.iterdir():
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, saved / item.name)
    finally:
        unmount(data)
        ctx.mounts.remove(data)
    shutil.rmtree(data, ignore_errors=True)
    saved.rename(data)
    ctx.restart(name)
    state = ("it died" if died else "it kept running") + (", its log reports the full disk" if full else "")
    return (f"{name} on a full {size_kb} KiB tmpfs for {held:.1f}s ({state}), "
            "moved back and restarted")


def inject(ctx: FaultContext, fault: str) -> str:
    """Inject ``fault`` once (apply, hold, undo); its description."""
    if fault == "kill-leader":
        return _kill(ctx, ctx.leader())
    if fault == "kill-follower":
        return _kill(ctx, ctx.follower())
    if fault == "kill-random":
        return _kill(ctx, ctx.rng.choice(ctx.cluster.names))
    if fault == "pause-leader":
        return _pause(ctx, ctx.leader())
    if fault == "pause-random":
        return _pause(ctx, ctx.rng.choice(ctx.cluster.names))
    if fault in PROXY_FAULTS:
        return _network(ctx, fault)
    if fault in ("slow-fsync", "failing-fsync"):
        return _failpoint(ctx, fault)
    if fault == "restart-during-snapshot":
        return _snapshot(ctx)
    if fault == "restart-during-defrag":
        return _defrag(ctx)
    if fault == "member-replace":
        return _replace(ctx)
    if fault == "disk-full":
        return _disk_full(ctx)
    raise ValueError(f"unknown fault {fault!r}")


def dead_members(cluster: Cluster) -> list[ClusterMember]:
    return [m for m in cluster.members if m.process is not None and not m.alive]


__all__ = [
    "FAULTS",
    "FaultContext",
    "Path",
    "Skipped",
    "applicable",
    "dead_members",
    "inject",
    "parse_faults",
]
