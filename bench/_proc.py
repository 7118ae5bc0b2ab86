"""Helpers shared by the benchmark scripts: /proc sampling of a server process, machine description, servers."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quorumkv.testing.processes import ServerProcess, start_etcd, start_quorumkv

SERVER_KINDS = ("etcd", "quorumkv")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (from /proc/PID/task/*/children; empty if unreadable)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` plus those of its live descendants (e.g. quorumkv's apply process)."""
    total = read_cpu_seconds(pid)
    for kid in descendants(pid):
        try:
            total += read_cpu_seconds(kid)
        except (OSError, ValueError):
            pass
    return total


def read_status_kb(pid: int, key: str = "VmRSS") -> int | None:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM, ...), or None if absent/unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return parse_status_kb(text, key)


def parse_status_kb(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            parts = rest.split()
            if parts and parts[0].isdigit():
                return int(parts[0])
    return None


@dataclass
class ProcStats:
    """Resource use of one server process over one benchmark run."""

    peak_rss_mb: float
    #: The kernel's own high-water mark (VmHWM) at the end of the run: a cross-check of the sampled peak.
    hwm_mb: float
    #: CPU of the process and its children (quorumkv's apply process).
    cpu_s: float
    wall_s: float
    samples: int
    #: CPU of the process itself (the one serving gRPC), children excluded.
    main_cpu_s: float = 0.0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_percent": round(self.cpu_percent, 1)}


class ProcSampler:
    """Samples VmRSS of one pid every ``interval_s`` in a daemon thread; CPU time is a /proc/PID/stat delta."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-sampler-{pid}", daemon=True)
        self._peak_kb = 0
        self._samples = 0
        self._cpu0 = 0.0
        self._main_cpu0 = 0.0
        self._t0 = 0.0

    def __enter__(self) -> ProcSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5.0)

    def start(self) -> None:
        self._cpu0 = tree_cpu_seconds(self.pid)
        self._main_cpu0 = read_cpu_seconds(self.pid)
        self._t0 = time.monotonic()
        self._thread.start()

    def _sample(self) -> None:
        rss = read_status_kb(self.pid, "VmRSS")
        if rss is not None:
            rss += sum(read_status_kb(kid, "VmRSS") or 0 for kid in descendants(self.pid))
            self._peak_kb = max(self._peak_kb, rss)
            self._samples += 1

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> ProcStats:
        """Stop sampling (the process must still be alive) and return the figures."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._sample()
        cpu = tree_cpu_seconds(self.pid) - self._cpu0
        main_cpu = read_cpu_seconds(self.pid) - self._main_cpu0
        hwm = (read_status_kb(self.pid, "VmHWM") or 0) + sum(
            read_status_kb(kid, "VmHWM") or 0 for kid in descendants(self.pid))
        return ProcStats(
            peak_rss_mb=round(self._peak_kb / 1024, 1),
            hwm_mb=round(hwm / 1024, 1),
            cpu_s=round(cpu, 2),
            wall_s=round(time.monotonic() - self._t0, 2),
            samples=self._samples,
            main_cpu_s=round(main_cpu, 2),
        )


def children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (for client-side CPU deltas around a child's life)."""
    usage = os.times()
    return usage.children_user + usage.children_system


@contextmanager
def running_server(kind: str, tmp_dir: Path, quorumkv_args: Sequence[str] = (),
                   quorumkv_env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """A fresh single-member server of ``kind`` (data under ``tmp_dir``), stopped (only its pid) on exit.
    ``quorumkv_args``/``quorumkv_env``: extra flags and environment for a quorumkv server."""
    if kind == "etcd":
        server = start_etcd(tmp_dir)
    elif kind == "quorumkv":
        server = start_quorumkv(tmp_dir, extra_args=quorumkv_args, env=quorumkv_env)
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    try:
        yield server
    finally:
        server.stop()


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, kernel, Python, load average: enough to tell runs on different machines apart."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table (readable in a terminal too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.extend("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows)
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (user+nice+system+irq+softirq+steal), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def machine_busy_percent(window_s: float = 2.0) -> float:
    """Machine-wide CPU busy over the next ``window_s`` seconds, in % of one core (2 cores busy = 200 %)."""
    busy0, t0 = read_machine_busy_seconds(), time.monotonic()
    time.sleep(window_s)
    return 100.0 * (read_machine_busy_seconds() - busy0) / (time.monotonic() - t0)


def wait_for_quiet(max_wait_s: float, threshold_percent: float = 30.0) -> float:
    """Wait (bounded) for a 2 s window in which the whole machine is busy below ``threshold_percent``.

    Other work on a shared machine skews a benchmark; this waits for it to pause, up to ``max_wait_s``, and
    returns the last measured busy % either way (the caller records it).
    """
    deadline = time.monotonic() + max_wait_s
    busy = machine_busy_percent()
    while busy >= threshold_percent and time.monotonic() < deadline:
        log(f"machine busy {busy:.0f} % (other processes); waiting for < {threshold_percent:.0f} %")
        busy = machine_busy_percent()
    return round(busy, 1)
