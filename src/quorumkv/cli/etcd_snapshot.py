"""``quorumkv etcd-snapshot save|ls|list|l|delete|prune``: K3s's snapshot commands.

``save`` streams a snapshot from a running member (``--endpoints``, through :mod:`quorumkv.client`), verifies
and records it in the snapshot directory (``--dir``/``--etcd-snapshot-dir``, default ``<data-dir>/snapshots``)
and uploads it when S3 is enabled. ``ls``, ``delete`` and ``prune`` work on the directory and the bucket.
Every option may be given before the subcommand (as K3s's ``etcd-snapshot --s3 ... save``) or after it; both
K3s spellings are accepted (``--s3-bucket`` and ``--etcd-s3-bucket``). Errors are one ``quorumkv: ...`` line
and exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click
import yaml

from quorumkv.backup.local import ON_DEMAND_NAME, SnapshotRecord
from quorumkv.backup.manager import BackupOptions, SnapshotManager
from quorumkv.backup.progress import Progress
from quorumkv.backup.s3 import S3Config, S3Error
from quorumkv.client import Client, EtcdError
from quorumkv.server.durations import DurationError, parse_duration_ns
from quorumkv.server.snapshot import SnapshotError

__all__ = ["main"]

_PROG = "quorumkv etcd-snapshot"

#: (parameter name, option spellings, is_flag, help)
_COMMON: list[tuple[str, list[str], bool, str]] = [
    ("endpoints", ["--endpoints"], False, "Member to snapshot (host:port; default 127.0.0.1:2379)."),
    ("cacert", ["--cacert"], False, "CA bundle to verify a TLS member."),
    ("cert", ["--cert"], False, "Client certificate for a TLS member."),
    ("key", ["--key"], False, "Client key for a TLS member."),
    ("node_name", ["--node-name"], False, "Node name in snapshot names (default: the member's name)."),
    ("data_dir", ["--data-dir"], False, "The member's data dir (default default.quorumkv)."),
    ("dir", ["--dir", "--etcd-snapshot-dir"], False, "Snapshot directory (default <data-dir>/snapshots)."),
    ("compress", ["--compress", "--etcd-snapshot-compress"], True, "Compress snapshots (zip)."),
    ("s3", ["--s3", "--etcd-s3"], True, "Use S3 as well."),
    ("s3_endpoint", ["--s3-endpoint", "--etcd-s3-endpoint"], False, "S3 endpoint (default s3.amazonaws.com)."),
    ("s3_bucket", ["--s3-bucket", "--etcd-s3-bucket"], False, "S3 bucket."),
    ("s3_folder", ["--s3-folder", "--etcd-s3-folder"], False, "S3 folder."),
    ("s3_access_key", ["--s3-access-key", "--etcd-s3-access-key"], False, "S3 access key."),
    ("s3_secret_key", ["--s3-secret-key", "--etcd-s3-secret-key"], False,
     "S3 secret key (or QUORUMKV_ETCD_S3_SECRET_KEY)."),
    ("s3_region", ["--s3-region", "--etcd-s3-region"], False, "S3 region (default us-east-1)."),
    ("s3_insecure", ["--s3-insecure", "--etcd-s3-insecure"], True, "S3 over plain HTTP."),
    ("s3_timeout", ["--s3-timeout", "--etcd-s3-timeout"], False, "S3 timeout (Go duration, default 5m)."),
    ("s3_retention", ["--s3-retention", "--etcd-s3-retention"], False, "Snapshots kept in S3 by prune."),
]
_ENV = {"s3_access_key": "QUORUMKV_ETCD_S3_ACCESS_KEY", "s3_secret_key": "QUORUMKV_ETCD_S3_SECRET_KEY"}
_DEFAULTS: dict[str, Any] = {"endpoints": "127.0.0.1:2379", "data_dir": "default.quorumkv",
                             "s3_endpoint": "s3.amazonaws.com", "s3_region": "us-east-1", "s3_timeout": "5m",
                             "s3_retention": "5"}


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    for dest, decls, is_flag, help_ in reversed(_COMMON):
        if is_flag:
            fn = click.option(*decls, dest, is_flag=True, default=None, help=help_)(fn)
        else:
            fn = click.option(*decls, dest, default=None, help=help_, envvar=_ENV.get(dest))(fn)
    return fn


class UsageError(Exception):
    pass


def _settings(local: dict[str, Any]) -> dict[str, Any]:
    """Subcommand option > group option > default."""
    ctx = click.get_current_context()
    group: dict[str, Any] = ctx.obj or {}
    out: dict[str, Any] = {}
    for dest, _, is_flag, _ in _COMMON:
        value = local.get(dest)
        if value is None:
            value = group.get(dest)
        if value is None:
            value = False if is_flag else _DEFAULTS.get(dest, "")
        out[dest] = value
    return out


def _int(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag}={text!r} is not a whole number; use e.g. {flag}=5") from None
    if value < 1:
        raise UsageError(f"{flag} must be at least 1 (got {value})")
    return value


def _s3_config(s: dict[str, Any]) -> S3Config | None:
    if not s["s3"]:
        return None
    if not s["s3_bucket"]:
        raise UsageError("--s3 needs --s3-bucket (or --etcd-s3-bucket): name the bucket")
    try:
        timeout_ns = parse_duration_ns(str(s["s3_timeout"]))
    except DurationError as exc:
        raise UsageError(f"--s3-timeout={s['s3_timeout']!r} is not a Go duration ({exc}); use e.g. 5m") from None
    return S3Config(bucket=s["s3_bucket"], endpoint=s["s3_endpoint"], folder=s["s3_folder"],
                    access_key=s["s3_access_key"], secret_key=s["s3_secret_key"], region=s["s3_region"],
                    insecure=bool(s["s3_insecure"]), timeout_s=max(1.0, timeout_ns / 1e9),
                    retention=_int(str(s["s3_retention"]), "--s3-retention"))


def _client(s: dict[str, Any], timeout: float | None) -> Client:
    return Client(str(s["endpoints"]).split(","), timeout=timeout, ca_cert=s["cacert"] or None,
                  cert=s["cert"] or None, key=s["key"] or None)


def _node_name(s: dict[str, Any]) -> str:
    if s["node_name"]:
        return str(s["node_name"])
    try:
        with _client(s, 5.0) as client:
            me = client.status().header.member_id
            for member in client.members():
                if member.id == me and member.name:
                    return member.name
    except EtcdError:
        pass
    return socket.gethostname()


def _manager(s: dict[str, Any], node: str = "") -> SnapshotManager:
    directory = s["dir"] or f"{s['data_dir']}/snapshots"
    opts = BackupOptions(directory=directory, node=node or "local", compress=bool(s["compress"]), s3=_s3_config(s))
    return SnapshotManager(opts)


@click.group(name="etcd-snapshot", context_settings={"help_option_names": ["-h", "--help"]})
@_common
@click.pass_context
def cli(ctx: click.Context, /, **options: Any) -> None:
    """Manage snapshots: save, ls (list, l), delete, prune."""
    ctx.obj = options


@cli.command()
@_common
@click.option("--name", "prefix", default=ON_DEMAND_NAME, show_default=True, help="Base name of the snapshot.")
def save(prefix: str, **local: Any) -> None:
    """Take an on-demand snapshot of a running member."""
    s = _settings(local)
    manager = _manager(s, _node_name(s))
    created = time.time()
    name = manager.new_name(prefix, created)
    part = manager.local.part_path(name)
    with Progress(f"saving snapshot {name}", total=None) as bar, _client(s, None) as client:
        bar.advance(client.snapshot(to=part))
    with Progress(f"verifying{' and uploading' if manager.s3 else ''} snapshot {name}") as bar:
        record = manager.complete(part, name, created, prefix=prefix, prune=False, upload_progress=bar.advance)
    click.echo(f"Snapshot {record.name} saved.")
    if record.upload_status == "failed":
        raise click.ClickException(f"snapshot {record.name} was saved locally but its upload to S3 failed: "
                                   f"{record.upload_message}")


def _rows(records: list[SnapshotRecord]) -> list[list[str]]:
    return [[r.name, r.location, str(r.size), r.created_at, r.status] for r in records]


def _ls(output: str, local: dict[str, Any]) -> None:
    s = _settings(local)
    records = _manager(s).records()
    if output == "json":
        click.echo(json.dumps([asdict(r) for r in records], indent=1))
    elif output == "yaml":
        click.echo(yaml.safe_dump([asdict(r) for r in records], sort_keys=False), nl=False)
    else:
        head = ["Name", "Location", "Size", "Created", "Status"]
        rows = [head, *_rows(records)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        for row in rows:
            click.echo(" ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        for r in records:
            if r.status != "success" and r.message:
                click.echo(f"{r.name} ({r.location}): {r.status}: {r.message}", err=True)


def _ls_command(name: str, hidden: bool) -> click.Command:
    @click.command(name=name, hidden=hidden)
    @_common
    @click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
                  show_default=True, help="Output format.")
    def ls(output: str, **local: Any) -> None:
        """List local and S3 snapshots (status shows failed saves and uploads)."""
        _ls(output, local)

    return ls


cli.add_command(_ls_command("ls", False))
cli.add_command(_ls_command("list", True))
cli.add_command(_ls_command("l", True))


@cli.command()
@_common
@click.argument("names", nargs=-1, required=True)
def delete(names: tuple[str, ...], **local: Any) -> None:
    """Delete the named snapshots (local and S3)."""
    manager = _manager(_settings(local))
    missing = [n for n in names if not manager.delete(n)]
    for n in names:
        if n not in missing:
            click.echo(f"Snapshot {n} deleted.")
    if missing:
        raise click.ClickException(f"no snapshot named {', '.join(missing)}: run `{_PROG} ls` for the names")


@cli.command()
@_common
@click.option("--name", "prefix", default=ON_DEMAND_NAME, show_default=True, help="Base name of snapshots to prune.")
@click.option("--snapshot-retention", "--etcd-snapshot-retention", "retention", required=True,
              help="Number of snapshots to keep.")
def prune(prefix: str, retention: str, **local: Any) -> None:
    """Delete the oldest snapshots of --name beyond the retention (S3: --s3-retention)."""
    s = _settings(local)
    keep = _int(retention, "--snapshot-retention")
    manager = _manager(s)
    s3_keep = _int(str(s["s3_retention"]), "--s3-retention")
    for name in manager.prune(prefix, keep, s3_keep):
        click.echo(f"Snapshot {name} deleted.")


def main(argv: list[str]) -> int:
    """Run ``quorumkv etcd-snapshot ARGV``; the exit status."""
    try:
        cli.main(args=argv, prog_name=_PROG, standalone_mode=False)
    except UsageError as exc:
        click.echo(f"quorumkv: {exc}", err=True)
        return 2
    except click.UsageError as exc:
        click.echo(f"quorumkv: {' '.join(exc.format_message().split())} (run `{_PROG} --help`)", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"quorumkv: {exc.format_message()}", err=True)
        return 1
    except (SnapshotError, S3Error, ValueError, OSError) as exc:
        click.echo(f"quorumkv: {exc}", err=True)
        return 1
    except EtcdError as exc:
        click.echo(f"quorumkv: the member at --endpoints did not answer ({exc}): check --endpoints and TLS flags",
                   err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return 130
    finally:
        sys.stdout.flush()
    return 0
