"""Data-driven etcdctl scenarios for the differential tests (quorumkv vs. real etcd).

A scenario file is a list of steps run in order against one fresh server.  Syntax, one step per line::

    # comment (also blank lines are ignored)
    $ put foo bar                   run `etcdctl put foo bar` (arguments split with shlex)
    < mod("foo") = "0"              a stdin line for the preceding `$` step ("<" alone: an empty line)
    <*3 put k{i} v{i}               3 stdin lines, {i} = 0, 1, 2
    &w1 $ watch foo --prefix        start `etcdctl watch foo --prefix` in the background, named w1
    wait &w1 lines=6 [timeout=10]   wait (bounded) until w1 printed 6 stdout lines
    wait &w1 exit [timeout=10]      wait (bounded) until w1 exits by itself
    stop &w1 [quiet=0.3]            wait until w1's output is quiet, SIGTERM it, record its output
    sleep 1.5                       pause (e.g. to let a lease expire)

Inside arguments and stdin lines, ``{LEASE-n}`` is replaced by the hex ID of the n-th lease this server
printed (the one :func:`~quorumkv.testing.processes.normalize` calls ``<LEASE-n>``), and ``{x:HEX}`` by
the raw bytes HEX (non-NUL) so values can be binary.  Every step is recorded with its normalised
stdout, stderr and exit code; two servers behave the same when their transcripts are equal.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from quorumkv.testing.processes import BackgroundEtcdctl, ServerProcess, normalize, run_etcdctl, start_etcdctl

__all__ = [
    "Scenario",
    "ScenarioError",
    "Step",
    "StepResult",
    "diff_transcripts",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
]

StepKind = Literal["run", "start", "wait", "stop", "sleep"]

_BG_NAME_RE = re.compile(r"^&([A-Za-z_][\w-]*)$")
_QUIRK_RE = re.compile(r"^\s*#!\s*client-((?:quirk|timing):.*)$")
_SUBST_RE = re.compile(r"\{LEASE-(\d+)\}|\{x:([0-9A-Fa-f]*)\}")
DEFAULT_WAIT_TIMEOUT_S = 10.0
DEFAULT_QUIET_S = 0.3


class ScenarioError(ValueError):
    """A malformed scenario file (the message names the file and line)."""


class SubstitutionError(RuntimeError):
    """A ``{LEASE-n}`` placeholder refers to a lease the server has not printed (yet)."""


@dataclass(frozen=True)
class Step:
    kind: StepKind
    line_no: int
    source: str
    args: tuple[str, ...] = ()
    stdin_lines: tuple[str, ...] | None = None
    name: str | None = None
    lines: int | None = None
    until_exit: bool = False
    timeout_s: float = DEFAULT_WAIT_TIMEOUT_S
    quiet_s: float = DEFAULT_QUIET_S
    seconds: float = 0.0
    #: Reason from a preceding ``#! client-quirk: ...`` line (etcdctl 3.4 behaviour quorumkvctl does not copy on
    #: purpose) or ``#! client-timing: ...`` line (the step only works if the client is as fast as etcdctl, e.g.
    #: within a 3 s lease); the client differential runs the step but does not compare its output.
    client_quirk: str | None = None

    @property
    def stdin_text(self) -> str | None:
        """The stdin as written in the scenario (before substitutions), or None."""
        if self.stdin_lines is None:
            return None
        return "".join(line + "\n" for line in self.stdin_lines)


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]


def _err(name: str, line_no: int, message: str) -> ScenarioError:
    return ScenarioError(f"{name}:{line_no}: {message}")


def _parse_options(name: str, line_no: int, words: list[str], allowed: set[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if key == "exit" and not sep and "exit" in allowed:
            options["exit"] = ""
            continue
        if not sep or key not in allowed:
            raise _err(name, line_no, f"unexpected option {word!r} (allowed: {sorted(allowed)})")
        options[key] = value
    return options


def _number(name: str, line_no: int, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _err(name, line_no, f"not a number: {value!r}") from None
    if number < 0:
        raise _err(name, line_no, f"negative number: {value!r}")
    return number


def _split(name: str, line_no: int, command: str) -> tuple[str, ...]:
    try:
        args = tuple(shlex.split(command))
    except ValueError as exc:
        raise _err(name, line_no, f"cannot split command: {exc}") from None
    if not args:
        raise _err(name, line_no, "empty etcdctl command")
    return args


def parse_scenario(text: str, name: str = "<scenario>") -> Scenario:
    """Parse scenario ``text`` (see the module docstring); raises :class:`ScenarioError` on bad input."""
    steps: list[Step] = []
    started: set[str] = set()
    pending_stdin: list[str] | None = None
    last_run: int | None = None  # index in steps of the `$` step stdin lines attach to

    def flush() -> None:
        nonlocal pending_stdin
        if pending_stdin is not None and last_run is not None:
            step = steps[last_run]
            steps[last_run] = dataclasses.replace(step, stdin_lines=tuple(pending_stdin))
        pending_stdin = None

    quirk: str | None = None

    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        quirk_match = _QUIRK_RE.match(line)
        if quirk_match:
            flush()
            last_run = None
            quirk = quirk_match.group(1).strip()
            continue
        if line.startswith("<"):
            if last_run is None:
                raise _err(name, line_no, "stdin line without a preceding '$' step")
            if pending_stdin is None:
                pending_stdin = []
            repeat = re.match(r"^<\*(\d+)(?: (.*))?$", line)
            if repeat:
                body = repeat.group(2) or ""
                pending_stdin.extend(body.replace("{i}", str(i)) for i in range(int(repeat.group(1))))
            else:
                pending_stdin.append(line[2:] if line.startswith("< ") else line[1:])
            continue
        flush()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            last_run = None
            continue
        if stripped.startswith("$"):
            steps.append(
                Step("run", line_no, stripped, args=_split(name, line_no, stripped[1:]), client_quirk=quirk)
            )
            quirk = None
            last_run = len(steps) - 1
            continue
        last_run = None
        words = stripped.split()
        bg = _BG_NAME_RE.match(words[0])
        if bg:
            rest = stripped[len(words[0]) :].strip()
            if not rest.startswith("$"):
                raise _err(name, line_no, "expected '&NAME $ etcdctl args...'")
            handle = bg.group(1)
            if handle in started:
                raise _err(name, line_no, f"background process &{handle} already started")
            started.add(handle)
            steps.append(
                Step("start", line_no, stripped, args=_split(name, line_no, rest[1:]), name=handle, client_quirk=quirk)
            )
            quirk = None
            continue
        verb = words[0]
        if verb in ("wait", "stop"):
            target = _BG_NAME_RE.match(words[1]) if len(words) > 1 else None
            if target is None:
                raise _err(name, line_no, f"expected '{verb} &NAME ...'")
            handle = target.group(1)
            if handle not in started:
                raise _err(name, line_no, f"&{handle} was never started")
            if verb == "wait":
                opts = _parse_options(name, line_no, words[2:], {"lines", "exit", "timeout"})
                if ("lines" in opts) == ("exit" in opts):
                    raise _err(name, line_no, "wait needs exactly one of lines=N or exit")
                steps.append(
                    Step(
                        "wait",
                        line_no,
                        stripped,
                        name=handle,
                        lines=int(_number(name, line_no, opts["lines"])) if "lines" in opts else None,
                        until_exit="exit" in opts,
                        timeout_s=_number(name, line_no, opts.get("timeout", str(DEFAULT_WAIT_TIMEOUT_S))),
                    )
                )
            else:
                opts = _parse_options(name, line_no, words[2:], {"quiet", "timeout"})
                started.discard(handle)
                steps.append(
                    Step(
                        "stop",
                        line_no,
                        stripped,
                        name=handle,
                        quiet_s=_number(name, line_no, opts.get("quiet", str(DEFAULT_QUIET_S))),
                        timeout_s=_number(name, line_no, opts.get("timeout", str(DEFAULT_WAIT_TIMEOUT_S))),
                    )
                )
            continue
        if verb == "sleep":
            if len(words) != 2:
                raise _err(name, line_no, "expected 'sleep SECONDS'")
            steps.append(Step("sleep", line_no, stripped, seconds=_number(name, line_no, words[1])))
            continue
        raise _err(name, line_no, f"unrecognised line: {stripped!r}")
    flush()
    if started:
        raise _err(name, len(text.splitlines()), f"background process(es) never stopped: {sorted(started)}")
    return Scenario(name, tuple(steps))


def load_scenario(path: Path) -> Scenario:
    path = Path(path)
    return parse_scenario(path.read_text(encoding="utf-8"), name=path.name)


@dataclass
class StepResult:
    """What one step produced on one server (normalised unless stated otherwise)."""

    step: Step
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    note: str = ""
    raw_stdout: str = field(default="", repr=False)
    raw_stderr: str = field(default="", repr=False)

    def render(self) -> str:
        parts = [f"line {self.step.line_no}: {self.step.source}"]
        if self.step.stdin_text is not None:
            parts.append("stdin:\n" + _indent(self.step.stdin_text))
        if self.note:
            parts.append(f"note: {self.note}")
        if self.step.kind in ("run", "stop"):
            parts.append(f"exit code: {self.returncode}")
            parts.append("stdout:\n" + _indent(self.stdout))
            parts.append("stderr:\n" + _indent(self.stderr))
        return "\n".join(parts) + "\n"

    def comparable(self) -> tuple[str, str, str, int | None, str]:
        return (self.step.source, self.stdout, self.stderr, self.returncode, self.note)


def _indent(text: str) -> str:
    if not text:
        return "    (empty)"
    body = "\n".join("    " + line for line in text.splitlines())
    return body if text.endswith("\n") else body + "\n    (no newline at end)"


def _substitute(text: str, server: ServerProcess, step: Step) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            index = int(m.group(1))
            if not 1 <= index <= len(server.lease_ids):
                raise SubstitutionError(
                    f"line {step.line_no}: {{LEASE-{index}}} used but only {len(server.lease_ids)} lease(s) "
                    "have been seen so far"
                )
            return f"{server.lease_ids[index - 1]:016x}"
        data = bytes.fromhex(m.group(2))
        if b"\0" in data:
            raise ScenarioError(f"line {step.line_no}: NUL bytes cannot be passed to etcdctl")
        return os.fsdecode(data)

    return _SUBST_RE.sub(repl, text)


def run_scenario(
    scenario: Scenario, server: ServerProcess, command_timeout_s: float = 20.0, client: str = "etcdctl"
) -> list[StepResult]:
    """Run every step of ``scenario`` against ``server``; one normalised :class:`StepResult` per step.

    ``client`` picks the command-line client that runs the steps: ``etcdctl`` (default) or ``quorumkvctl``.

    Background processes still running at the end (only after an exception) are killed.
    """
    background: dict[str, BackgroundEtcdctl] = {}
    results: list[StepResult] = []
    try:
        for step in scenario.steps:
            try:
                results.append(_run_step(step, server, background, command_timeout_s, client))
            except SubstitutionError as exc:
                # e.g. {LEASE-2} when this server never printed a second lease: a difference, not a crash
                results.append(StepResult(step, note=str(exc)))
    finally:
        for proc in background.values():
            proc.stop(signal.SIGKILL)
    return results


def _run_step(
    step: Step,
    server: ServerProcess,
    background: dict[str, BackgroundEtcdctl],
    command_timeout_s: float,
    client: str = "etcdctl",
) -> StepResult:
    if step.kind == "run":
        args = [_substitute(arg, server, step) for arg in step.args]
        stdin: bytes | None = None
        if step.stdin_text is not None:
            stdin = os.fsencode(_substitute(step.stdin_text, server, step))
        try:
            proc = run_etcdctl(server.client_url, *args, stdin=stdin, timeout_s=command_timeout_s, client=client)
        except subprocess.TimeoutExpired:
            return StepResult(step, note=f"etcdctl did not finish within {command_timeout_s}s (killed)")
        return StepResult(
            step,
            stdout=normalize(proc.stdout, server),
            stderr=normalize(proc.stderr, server),
            returncode=proc.returncode,
            raw_stdout=proc.stdout,
            raw_stderr=proc.stderr,
        )
    if step.kind == "start":
        assert step.name is not None
        args = [_substitute(arg, server, step) for arg in step.args]
        background[step.name] = start_etcdctl(server.client_url, *args, client=client)
        return StepResult(step)
    if step.kind == "wait":
        assert step.name is not None
        proc_bg = background.get(step.name)
        if proc_bg is None:
            return StepResult(step, note=f"&{step.name} is not running (its start step failed)")
        if step.until_exit:
            code = proc_bg.wait_exit(step.timeout_s)
            note = "" if code is not None else f"still running after {step.timeout_s}s"
        else:
            assert step.lines is not None
            ok = proc_bg.wait_lines(step.lines, step.timeout_s)
            got = proc_bg.stdout.count("\n")
            note = "" if ok else f"timed out after {step.timeout_s}s with {got} of {step.lines} lines"
        return StepResult(step, note=note)
    if step.kind == "stop":
        assert step.name is not None
        stopped = background.pop(step.name, None)
        if stopped is None:
            return StepResult(step, note=f"&{step.name} is not running (its start step failed)")
        proc_bg = stopped
        if proc_bg.returncode is None:
            proc_bg.wait_quiet(step.quiet_s, step.timeout_s)
        code = proc_bg.stop(signal.SIGTERM)
        out, err = proc_bg.stdout, proc_bg.stderr
        return StepResult(
            step,
            stdout=normalize(out, server),
            stderr=normalize(err, server),
            returncode=code,
            raw_stdout=out,
            raw_stderr=err,
        )
    assert step.kind == "sleep"
    time.sleep(step.seconds)
    return StepResult(step)


def diff_transcripts(
    reference: list[StepResult],
    candidate: list[StepResult],
    reference_label: str = "reference",
    candidate_label: str = "candidate",
    skip_client_quirks: bool = False,
) -> str | None:
    """None when both transcripts are equal, else a readable report of the first differing step.

    ``skip_client_quirks`` leaves steps marked ``#! client-quirk:`` out of the comparison.
    """
    for index, (ref, cand) in enumerate(zip(reference, candidate, strict=False)):
        if skip_client_quirks and ref.step.client_quirk is not None:
            continue
        if ref.comparable() != cand.comparable():
            ref_text, cand_text = ref.render(), cand.render()
            diff = "".join(
                difflib.unified_diff(
                    ref_text.splitlines(keepends=True),
                    cand_text.splitlines(keepends=True),
                    fromfile=reference_label,
                    tofile=candidate_label,
                )
            )
            return (
                f"step {index + 1} differs ({ref.step.source!r}, line {ref.step.line_no})\n"
                f"=== {reference_label} ===\n{ref_text}=== {candidate_label} ===\n{cand_text}"
                f"=== diff ===\n{diff}"
            )
    if len(reference) != len(candidate):
        return (
            f"transcripts differ in length: {reference_label} has {len(reference)} steps, "
            f"{candidate_label} has {len(candidate)}"
        )
    return None


def render_transcript(results: list[StepResult]) -> str:
    """The whole normalised transcript, for debugging and for writing a golden file."""
    return "\n".join(result.render() for result in results)


def main(argv: list[str] | None = None) -> int:
    """``python -m quorumkv.testing.scenarios [--server etcd|quorumkv] FILE...``: print transcripts."""
    import argparse
    import tempfile

    from quorumkv.testing.processes import start_etcd, start_quorumkv

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--server", choices=("etcd", "quorumkv"), default="etcd")
    parser.add_argument("--raw", action="store_true", help="print raw (unnormalised) output too")
    parser.add_argument("--client", choices=("etcdctl", "quorumkvctl"), default="etcdctl")
    parser.add_argument("files", nargs="+", type=Path)
    options = parser.parse_args(argv)
    start = start_etcd if options.server == "etcd" else start_quorumkv
    for path in options.files:
        scenario = load_scenario(path)
        with tempfile.TemporaryDirectory(prefix="quorumkv-scenario-") as tmp:
            server = start(Path(tmp))
            try:
                results = run_scenario(scenario, server, client=options.client)
            finally:
                server.stop()
        print(f"##### {path} ({options.server}, {options.client})")
        for result in results:
            print(result.render())
            if options.raw and result.step.kind in ("run", "stop"):
                print(
                    "raw stdout:\n"
                    + _indent(result.raw_stdout)
                    + "\nraw stderr:\n"
                    + _indent(result.raw_stderr)
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
