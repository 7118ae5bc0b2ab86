"""``alarm list|disarm``, ``defrag``, ``snapshot save|status|restore``, ``move-leader`` and ``version``.

Snapshots: ``save`` streams the server's snapshot (etcd's format: a bbolt database plus its SHA-256);
``status`` and ``restore`` read etcd-format snapshots (from quorumkv or a real etcd) and quorumkv's older SQLite
snapshots, printing what etcdctl 3.4 prints."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import quorumkv
from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.cli.ctl.app import API_VERSION, GoFlag, bad_args, command, group, parse_go_int, printer, root
from quorumkv.cli.ctl.cluster import endpoints_from_cluster
from quorumkv.cli.ctl.gofmt import humanize_bytes
from quorumkv.cli.ctl.printers import render_table, write_err, write_out
from quorumkv.cli.ctl.session import (
    EXIT_BAD_ARGS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    CtlError,
    Session,
    Settings,
    error_text,
    strip_scheme,
    zap_line,
)
from quorumkv.client import EtcdError

__all__ = ["save_snapshot"]

alarm_group = group(root, "alarm", short="Alarm related commands", usage="alarm <subcommand>")
#: Maintenance.Alarm's "list the alarms" request.
ALARM_LIST = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET)
snapshot_group = group(root, "snapshot", short="Manages etcd node snapshots", usage="snapshot <subcommand>")


@command(alarm_group, "list", short="Lists all alarms", usage="alarm list")
def alarm_list_cmd(settings: Settings, args: list[str]) -> None:
    with Session(settings) as session:
        resp = session.call("Maintenance", "Alarm", ALARM_LIST, idempotent=True)
    printer(settings).alarm(resp)


@command(alarm_group, "disarm", short="Disarms all alarms", usage="alarm disarm")
def alarm_disarm_cmd(settings: Settings, args: list[str]) -> None:
    # clientv3's AlarmDisarm with an empty member: list the alarms, disarm each one, merge the answers.
    merged = rpc_pb2.AlarmResponse()
    with Session(settings) as session:
        listed = session.call("Maintenance", "Alarm", ALARM_LIST, idempotent=True)
        for alarm in listed.alarms:
            request = rpc_pb2.AlarmRequest(
                action=rpc_pb2.AlarmRequest.DEACTIVATE, memberID=alarm.memberID, alarm=alarm.alarm
            )
            resp = session.call("Maintenance", "Alarm", request)
            merged.alarms.extend(resp.alarms)
    printer(settings).alarm(merged)


@command(
    root,
    "defrag",
    short="Defragments the storage of the etcd members with given endpoints",
    usage="defrag",
    flags=(
        GoFlag("cluster", "bool", False, "use all endpoints from the cluster member list"),
        GoFlag("data-dir", "string", "", "Optional. If present, defragments a data directory not in use by etcd."),
    ),
)
def defrag_cmd(settings: Settings, args: list[str], cluster: bool, data_dir: str) -> None:
    if data_dir:
        from quorumkv.storage.datadir import DataDirError
        from quorumkv.storage.offline import defragment_data_dir

        # etcdctl 3.4: nothing on success; one line on stderr and exit 1 on failure (its panics become a line)
        try:
            defragment_data_dir(data_dir)
        except DataDirError as exc:
            write_err(f"Failed to defragment etcd data[{data_dir}] ({exc})\n")
            raise CtlError(EXIT_ERROR, "") from None
        return
    settings.cluster = cluster
    failures = 0
    for endpoint in endpoints_from_cluster(settings):
        with Session(settings, endpoint) as session:
            try:
                session.call("Maintenance", "Defragment", rpc_pb2.DefragmentRequest())
            except CtlError as exc:
                write_err(f"Failed to defragment etcd member[{endpoint}] ({exc.message})\n")
                failures += 1
                continue
        write_out(f"Finished defragmenting etcd member[{endpoint}]\n")
    if failures:
        raise CtlError(EXIT_ERROR, "")


def _info(caller: str, msg: str, **fields: object) -> None:
    write_err(zap_line("info", caller, msg, **fields) + "\n")


def save_snapshot(settings: Settings, path: str, timeout: float | None, progress: bool = False) -> int:
    """Stream Maintenance.Snapshot into ``path.part``, check etcd's trailing sha256, rename; the size."""
    if len(settings.endpoints) != 1:
        raise CtlError(
            EXIT_INTERRUPTED,
            f"snapshot must be requested to one selected node, not multiple [{' '.join(settings.endpoints)}]",
        )
    part = Path(path + ".part")
    endpoint = settings.endpoints[0]
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise CtlError(EXIT_INTERRUPTED, f"could not open {part} ({exc.strerror})") from None
    _info("snapshot/v3_snapshot.go:119", "created temporary db file", path=str(part))
    start = time.monotonic()
    size = 0
    digest = hashlib.sha256()
    tail = b""
    bar = None
    try:
        with os.fdopen(fd, "wb") as out, Session(settings) as session:
            _info("snapshot/v3_snapshot.go:127", "fetching snapshot", endpoint=strip_scheme(endpoint))
            if progress and sys.stderr.isatty():
                from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

                bar = Progress(
                    "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn()
                )
                bar.start()
            task = bar.add_task("snapshot", total=None) if bar is not None else None
            try:
                for chunk in session.stream("Maintenance", "Snapshot", rpc_pb2.SnapshotRequest(), timeout=timeout):
                    out.write(chunk.blob)
                    size += len(chunk.blob)
                    # keep the last 32 bytes out of the running hash: they are the hash (etcd >= 3.3)
                    data = tail + chunk.blob
                    digest.update(data[:-32] if len(data) > 32 else b"")
                    tail = data[-32:] if len(data) >= 32 else data
                    if bar is not None and task is not None:
                        bar.update(task, completed=size, total=size + chunk.remaining_bytes)
            except EtcdError as err:
                raise CtlError(EXIT_INTERRUPTED, error_text(err)) from None
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.stop()
    if size % 512 == 32 and digest.digest() != tail:
        part.unlink(missing_ok=True)
        raise CtlError(EXIT_INTERRUPTED, "snapshot: sha256 checksum mismatch (the download is corrupt)")
    _info(
        "snapshot/v3_snapshot.go:142",
        "fetched snapshot",
        endpoint=strip_scheme(endpoint),
        size=humanize_bytes(size),
        took=round(time.monotonic() - start, 9),
    )
    os.replace(part, path)
    _info("snapshot/v3_snapshot.go:152", "saved", path=path)
    return size


@command(
    snapshot_group,
    "save",
    short="Stores an etcd node backend snapshot to a given file",
    usage="snapshot save <filename>",
)
def snapshot_save_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 1:
        raise CtlError(EXIT_BAD_ARGS, "snapshot save expects one argument")
    import click

    ctx = click.get_current_context()
    explicit = ctx.get_parameter_source("command_timeout") == click.core.ParameterSource.COMMANDLINE
    save_snapshot(settings, args[0], settings.command_timeout if explicit else None, progress=True)
    write_out(f"Snapshot saved at {args[0]}\n")


@command(
    snapshot_group,
    "status",
    short="Gets backend snapshot status of a given file",
    usage="snapshot status <filename>",
)
def snapshot_status_cmd(settings: Settings, args: list[str]) -> None:
    from quorumkv.server.snapshot import SnapshotError, snapshot_status

    if len(args) != 1:
        raise CtlError(EXIT_BAD_ARGS, "snapshot status requires exactly one argument")
    try:
        st = snapshot_status(args[0])
    except SnapshotError as exc:
        raise CtlError(EXIT_ERROR, str(exc)) from exc
    fmt = settings.write_out
    if fmt == "json":
        write_out(json.dumps({"hash": st.hash, "revision": st.revision, "totalKey": st.total_key,
                              "totalSize": st.total_size}, separators=(",", ":")) + "\n")
    elif fmt == "table":
        write_out(render_table(["Hash", "Revision", "Total Keys", "Total Size"],
                               [[f"{st.hash:x}", str(st.revision), str(st.total_key), humanize_bytes(st.total_size)]]))
    elif fmt == "fields":
        write_out(f'"Hash" : {st.hash}\n"Revision" : {st.revision}\n"Keys" : {st.total_key}\n'
                  f'"Size" : {st.total_size}\n')
    else:
        write_out(f"{st.hash:x}, {st.revision}, {st.total_key}, {humanize_bytes(st.total_size)}\n")


@command(
    snapshot_group,
    "restore",
    short="Restores an etcd member snapshot to an etcd directory",
    usage="snapshot restore <filename> [options]",
    flags=(
        GoFlag("data-dir", "string", "", "Path to the data directory"),
        GoFlag("initial-advertise-peer-urls", "string", "http://localhost:2380",
               "List of this member's peer URLs to advertise to the rest of the cluster"),
        GoFlag("initial-cluster", "string", "default=http://localhost:2380",
               "Initial cluster configuration for restore bootstrap"),
        GoFlag("initial-cluster-token", "string", "etcd-cluster",
               "Initial cluster token for the etcd cluster during restore bootstrap"),
        GoFlag("name", "string", "default", "Human-readable name for this member"),
        GoFlag("skip-hash-check", "bool", False,
               "Ignore snapshot integrity hash value (required if copied from data directory)"),
    ),
)
def snapshot_restore_cmd(settings: Settings, args: list[str], data_dir: str, initial_advertise_peer_urls: str,
                         initial_cluster: str, initial_cluster_token: str, name: str, skip_hash_check: bool) -> None:
    from quorumkv.server.snapshot import SnapshotError, restore

    if len(args) != 1:
        raise CtlError(EXIT_BAD_ARGS, "snapshot restore requires exactly one argument")
    target = data_dir or f"{name}.quorumkv"
    peers = [u.strip() for u in initial_advertise_peer_urls.split(",") if u.strip()]
    # etcdctl 3.4 logs "restoring snapshot" before and "restored snapshot" after (both etcd and SQLite snapshots)
    write_err(zap_line("info", "snapshot/v3_snapshot.go:296", "restoring snapshot", path=args[0],
                       **{"data-dir": target}) + "\n")
    import tempfile

    from quorumkv.backup.restore_source import RestoreSourceError, resolve_restore_source

    try:
        # a .zip (--etcd-snapshot-compress) or s3://bucket/folder/name is fetched and verified first
        Path(target).absolute().parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".restore-source-", dir=Path(target).absolute().parent) as work:
            if args[0].startswith("s3://") and sys.stdout.isatty():  # plain output stays etcdctl's
                from quorumkv.backup.progress import Progress

                with Progress(f"downloading {args[0]}") as bar:
                    source = resolve_restore_source(args[0], work_dir=work, progress=bar.advance)
            else:
                source = resolve_restore_source(args[0], work_dir=work, skip_hash_check=skip_hash_check)
            result = restore(source, target, name=name, initial_cluster=initial_cluster,
                             initial_cluster_token=initial_cluster_token, initial_advertise_peer_urls=peers,
                             skip_hash_check=skip_hash_check)
    except (SnapshotError, RestoreSourceError, ValueError, OSError) as exc:
        raise CtlError(EXIT_ERROR, str(exc)) from exc
    write_err(zap_line("info", "snapshot/v3_snapshot.go:309", "restored snapshot", path=args[0],
                       **{"data-dir": str(result.data_dir), "revision": result.revision,
                          "member-id": f"{result.member_id:x}", "cluster-id": f"{result.cluster_id:x}"}) + "\n")


@command(
    root,
    "move-leader",
    short="Transfers leadership to another etcd cluster member.",
    usage="move-leader <transferee-member-id>",
)
def move_leader_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 1:
        bad_args("move-leader command needs 1 argument")
    try:
        target = parse_go_int(args[0], base=16, unsigned=True)
    except ValueError as exc:
        bad_args(str(exc))
    leader: Session | None = None
    leader_id = 0
    for endpoint in settings.endpoints:
        session = Session(settings, endpoint)
        status = session.call("Maintenance", "Status", rpc_pb2.StatusRequest(), idempotent=True)
        if status.header.member_id == status.leader:
            leader, leader_id = session, status.leader
            break
        session.close()
    if leader is None:
        bad_args(f"no leader endpoint given at [{' '.join(settings.endpoints)}]")
    with leader:
        resp = leader.call("Maintenance", "MoveLeader", rpc_pb2.MoveLeaderRequest(targetID=target))
    printer(settings).move_leader(leader_id, target, resp)


@command(
    root,
    "migrate",
    short="Migrates keys in a v2 store to a mvcc store",
    usage="migrate",
    flags=(
        GoFlag("data-dir", "string", "", "Path to the data directory"),
        GoFlag("no-ttl", "bool", False, "Do not convert TTL keys"),
        GoFlag("transformer", "string", "", "Path to the user-provided transformer program"),
        GoFlag("wal-dir", "string", "", "Path to the WAL directory"),
    ),
)
def migrate_cmd(settings: Settings, args: list[str], data_dir: str, no_ttl: bool, transformer: str,
                wal_dir: str) -> None:
    """etcdctl 3.4 converts a v2 store (rebuilt from the member's snapshot and WAL) into v3 keys. quorumkv never
    had a v2 store, so a quorumkv data dir has no v2 keys: the answer etcdctl gives for a data dir without any.
    The transformer is never started (it would be fed nothing)."""
    from quorumkv.storage.datadir import DATA_FORMAT, FORMAT_FILE

    if not transformer:
        write_out("using default transformer\n")
    root_dir = Path(data_dir) if data_dir else Path()
    if wal_dir:
        raise CtlError(EXIT_ERROR, "--wal-dir: a quorumkv member keeps its log inside its data dir (there is no "
                                   "v2 WAL to read); omit --wal-dir")
    if (root_dir / "member" / "snap" / "db").exists():
        raise CtlError(EXIT_ERROR, f"{data_dir or '.'} is an etcd data dir: migrate its v2 keys with etcdctl 3.4, "
                                   "then snapshot save / quorumkvctl snapshot restore the result")
    marker = root_dir / FORMAT_FILE
    try:
        found = marker.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        raise CtlError(EXIT_ERROR, f"open {marker}: {(exc.strerror or str(exc)).lower()} (give the --data-dir of "
                                   "a quorumkv member)") from None
    if found != DATA_FORMAT:
        raise CtlError(EXIT_ERROR, f"data dir {data_dir or '.'} has format {found!r}, not {DATA_FORMAT!r}")
    write_out("no v2 keys to migrate\n")


@command(root, "version", short="Prints the version of etcdctl", usage="version")
def version_cmd(settings: Settings, args: list[str]) -> None:
    write_out(f"quorumkvctl version: {quorumkv.__version__}\nAPI version: {API_VERSION}\n")
