"""A busy host: ``etcdctl check perf`` while a CPU hog runs, real etcd 3.4 against quorumkv in the same run.

Issue 21, target 2: with one busy process per core at ordinary priority, quorumkv's slowest request is at most
etcd's and no request takes over 1 s, both for the default single member (``python -m quorumkv``) and for
``quorumkv.embed``'s child-process mode under a host program that hogs its own GIL (``bench/_gil_hog_host.py``:
a pure-Python loop on the main thread and one more thread, for as long as the member serves).

For each round, one server at a time (etcd, quorumkv, quorumkv embedded), each on a fresh data dir: start the
server, start the hog (``nproc`` processes spinning in Python; killed by pid after the run), run
``etcdctl check perf --load=LOAD`` (default m: 200 clients, 1,000 writes/s asked), stop both. Prints a table, the
medians and the verdicts. Exit status 0 even when targets are missed: a measurement, not a test.

    PYTHONPATH=src:. python3.11 -m bench.busy_host                   # load m, 1 round
    PYTHONPATH=src:. python3.11 -m bench.busy_host --rounds 3 --load s --load m
    PYTHONPATH=src:. python3.11 -m bench.busy_host --hog 0           # no hog: the same run on an idle host
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/busy_host.py): make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import format_table, log, machine_info, running_server
from bench.check_perf import LOADS, RunResult, measure
from quorumkv.testing.processes import free_port, quorumkv_env

MODES = ("etcd", "quorumkv", "quorumkv-embed")
MAX_SLOWEST_S = 1.0
HOST_SCRIPT = Path(__file__).resolve().parent / "_gil_hog_host.py"
HOST_READY_TIMEOUT_S = 90.0
_HOG_CODE = "while True:\n    pass\n"


@contextmanager
def cpu_hog(processes: int) -> Iterator[list[int]]:
    """``processes`` Python processes spinning at ordinary priority; each killed by its own pid on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", _HOG_CODE]) for _ in range(processes)]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)


class EmbeddedMember:
    """``bench/_gil_hog_host.py`` running a member in ``quorumkv.embed``'s process mode while it hogs its GIL.

    :func:`bench.check_perf.measure` samples :attr:`pid`: the member's child process (the host's own CPU is
    the hog's, not the server's)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log_path = data_dir.parent / "embedded-member.log"
        env = quorumkv_env(None)
        self._host = subprocess.Popen(
            [sys.executable, str(HOST_SCRIPT), "--data-dir", str(data_dir), "--client-port", str(self.client_port),
             "--peer-port", str(self.peer_port), "--log-path", str(self.log_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        assert self._host.stdout is not None
        deadline = time.monotonic() + HOST_READY_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and self._host.poll() is None:
            line = self._host.stdout.readline()
            if line.startswith("READY "):
                break
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"the embedding host did not get ready: {line!r}; log tail:\n{self.log_tail(20)}")
        self.pid = int(line.split()[1])

    def alive(self) -> bool:
        if self._host.poll() is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    @property
    def returncode(self) -> int | None:
        return self._host.returncode

    def log_tail(self, max_lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-max_lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Closing the host's stdin ends it: it stops the member (``Handle.close``) and exits."""
        if self._host.stdin is not None:
            self._host.stdin.close()
        try:
            self._host.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._host.send_signal(signal.SIGKILL)  # the member's child dies with it (PR_SET_PDEATHSIG)
            self._host.wait(timeout=10)


def run_mode(mode: str, load: str, tmp_root: Path, hog: int, timeout_s: float) -> RunResult:
    with tempfile.TemporaryDirectory(prefix=f"busy-host-{mode}-{load}-", dir=tmp_root) as tmp:
        if mode == "quorumkv-embed":
            member = EmbeddedMember(Path(tmp) / "data")
            try:
                with cpu_hog(hog):
                    return measure(mode, load, member, timeout_s)
            finally:
                member.close()
        with running_server(mode, Path(tmp)) as server, cpu_hog(hog):
            return measure(mode, load, server, timeout_s)


def verdicts(results: list[RunResult]) -> list[str]:
    """The issue's two targets per quorumkv mode and load, on the medians of the rounds."""
    out = []
    for load in dict.fromkeys(r.load for r in results):
        def slowest(mode: str, load: str = load) -> float | None:
            values = [r.parsed.slowest_s for r in results
                      if r.server == mode and r.load == load and r.parsed.slowest_s is not None and r.error is None]
            return statistics.median(values) if values else None

        etcd = slowest("etcd")
        for mode in MODES[1:]:
            ours = slowest(mode)
            if ours is None or etcd is None:
                out.append(f"load {load}, {mode}: NOT MEASURED")
                continue
            worst = max(r.parsed.slowest_s or 0.0 for r in results if r.server == mode and r.load == load)
            out.append(f"load {load}, {mode}: slowest {ours:.3f} s vs etcd {etcd:.3f} s (ratio {ours / etcd:.2f}): "
                       f"{'MET' if ours <= etcd else 'NOT MET'}; no request over {MAX_SLOWEST_S:g} s: "
                       f"{'MET' if worst <= MAX_SLOWEST_S else f'NOT MET (worst {worst:.3f} s)'}")
    return out


def render(results: list[RunResult]) -> str:
    rows = [[r.server, r.load, f"{r.parsed.writes_per_s or 0:,}", f"{r.parsed.slowest_s}", f"{r.parsed.stddev_s}",
             str(r.parsed.errors), str(r.server_stats.cpu_s if r.server_stats else "-"),
             str(r.other_cpu_percent), r.error or ""] for r in results]  # fmt: skip
    return format_table(["server", "load", "writes/s", "slowest (s)", "stddev (s)", "errors", "server CPU (s)",
                         "other procs CPU %", "error"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", action="append", choices=LOADS, help="check perf load (repeatable; default m)")
    parser.add_argument("--mode", action="append", choices=MODES, help="servers to run (repeatable; default all)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; verdicts use the medians")
    parser.add_argument("--hog", type=int, default=os.cpu_count() or 1,
                        help="busy processes during each run (default: one per core; 0: none)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before a check perf is killed")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the table goes to stderr)")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="parent of the servers' data dirs")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.hog < 0:
        parser.error("--rounds must be >= 1 and --hog >= 0")
    loads = list(dict.fromkeys(args.load or ["m"]))
    modes = [m for m in MODES if m in (args.mode or MODES)]
    info = machine_info()
    log(f"machine: {info}; hog: {args.hog} busy processes")
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="qkv-busy-host-", dir=args.tmp_dir) as tmp_root:
        for load in loads:
            for _round in range(args.rounds):
                for mode in modes:
                    result = run_mode(mode, load, Path(tmp_root), args.hog, args.timeout)
                    log(f"{mode} load {load}: {result.parsed.writes_per_s} writes/s, slowest "
                        f"{result.parsed.slowest_s}s, errors {result.parsed.errors}"
                        + (f", ERROR {result.error}" if result.error else ""))
                    results.append(result)
    table, lines = render(results), verdicts(results)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps({"benchmark": "busy host", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
                          "hog": args.hog, "results": [r.as_dict() for r in results], "verdicts": lines}, indent=2))
    else:
        print(f"machine: nproc={info['nproc']}, {info['cpu_model']}; {args.hog} busy processes during each run\n")
        print(table)
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
