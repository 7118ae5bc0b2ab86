"""``quorumkv robustness run|check|record``: etcd-style robustness testing (docs/reliability.md).

The command line only parses and validates; the work is done by :mod:`quorumkv.testing.robustness` (this
module is imported only for ``quorumkv robustness``, so the server's start-up never loads the test harness).
"""

from __future__ import annotations

from pathlib import Path

import click

from quorumkv.server.durations import DurationError, parse_duration_ns
from quorumkv.testing.robustness.faults import FAULTS

_PROG = "quorumkv robustness"
#: Flag errors, as the server's own command line (verdicts: 0 PASS, 1 FAIL, 3 UNKNOWN).
EXIT_USAGE = 2
_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _seconds(text: str, flag: str) -> float:
    try:
        ns = parse_duration_ns(text if any(c.isalpha() for c in text) else f"{text}s")
    except DurationError as exc:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 90s, 5m): {exc}", param_hint=flag) from exc
    if ns <= 0:
        raise click.BadParameter("must be positive", param_hint=flag)
    return ns / 1e9


@click.group(name="robustness", context_settings=_SETTINGS)
def cli() -> None:
    """Robustness testing: traffic + faults against a cluster this command starts, then validation."""


@cli.command()
@click.option("--target", type=click.Choice(["quorumkv", "etcd"]), default="quorumkv", show_default=True)
@click.option("--members", type=click.Choice(["1", "3", "5"]), default="3", show_default=True)
@click.option("--profile", type=click.Choice(["kubernetes", "etcd", "lease-heavy"]), default="kubernetes",
              show_default=True)
@click.option("--faults", "faults_text", default="all", show_default=True,
              help=f"Comma-separated fault names, 'all', or 'none'. Faults: {', '.join(FAULTS)}.")
@click.option("--duration", default="30s", show_default=True,
              help="The whole run: start-up, traffic and faults, catch-up and validation (e.g. 90s, 5m; "
                   "at least 20s).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a JSON report here (and the recording next to it, *.recording.json).")
@click.option("--clients", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--watchers", type=click.IntRange(1, 16), default=3, show_default=True)
def run(target: str, members: str, profile: str, faults_text: str, duration: str, seed: int,
        report: Path | None, clients: int, watchers: int) -> None:
    """Start a cluster, drive traffic, inject faults, validate; exit 0 PASS, 1 FAIL, 3 UNKNOWN."""
    from quorumkv.testing.robustness.faults import parse_faults
    from quorumkv.testing.robustness.runner import RunConfig, check_duration
    from quorumkv.testing.robustness.runner import run as run_robustness

    seconds = _seconds(duration, "--duration")
    try:
        check_duration(seconds)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--duration") from exc
    try:
        faults = [] if faults_text.strip() == "none" else parse_faults(faults_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from exc
    if report is not None and not report.parent.resolve().is_dir():
        raise click.BadParameter(f"directory {report.parent} does not exist", param_hint="--report")
    cfg = RunConfig(target=target, members=int(members), profile=profile, faults=tuple(faults),
                    faults_text=faults_text.strip(), duration_s=seconds, seed=seed, report=report, clients=clients,
                    watchers=watchers)
    raise SystemExit(run_robustness(cfg, click.echo).exit_code)


@cli.command()
@click.argument("history", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check(history: Path) -> None:
    """Check a recorded history (a *.recording.json, or a bare history JSON) offline."""
    from quorumkv.testing.robustness.runner import check_file

    try:
        verdict = check_file(history, click.echo)
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"{history} is not a robustness recording or history: {exc}") from exc
    raise SystemExit(verdict.exit_code)


@cli.command()
@click.option("--endpoints", required=True, help="Comma-separated loopback client URLs of a running cluster.")
@click.option("--profile", type=click.Choice(["kubernetes", "etcd", "lease-heavy"]), default="kubernetes",
              show_default=True)
@click.option("--duration", default="10s", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--clients", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--watchers", type=click.IntRange(1, 16), default=3, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the recording (JSON).")
def record(endpoints: str, profile: str, duration: str, seed: int, clients: int, watchers: int, out: Path) -> None:
    """Record a history against running endpoints (no faults), write it, and check it."""
    from quorumkv.testing.robustness.runner import record_endpoints

    seconds = _seconds(duration, "--duration")
    eps = [e.strip() for e in endpoints.split(",") if e.strip()]
    from urllib.parse import urlsplit

    for e in eps:
        host = urlsplit(e if "://" in e else f"http://{e}").hostname or ""
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise click.BadParameter(f"{e!r}: only loopback endpoints (the traffic writes under its own prefix, "
                                     "but this is a test tool)", param_hint="--endpoints")
    verdict = record_endpoints(eps, profile, seconds, seed, out, clients, watchers, click.echo)
    raise SystemExit(verdict.exit_code)


def main(argv: list[str]) -> int:
    if not argv:
        with click.Context(cli, info_name=_PROG) as ctx:
            click.echo(cli.get_help(ctx))
        return 0
    try:
        cli.main(argv, prog_name=_PROG, standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"{_PROG}: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.Abort:
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
