"""Recovering from quorum loss: ``--cluster-reset`` (K3s), ``--force-new-cluster`` (etcd), and a restore first.

A member whose cluster lost quorum is made the only voter of its cluster, data kept:

1. every entry its log holds is committed and applied (what Raft would do had it won an election: an entry a
   majority acknowledged is in the log of every member of that majority, so no acknowledged write is lost; an
   entry nobody acknowledged may survive too, as after any leader change);
2. its Raft state starts over at the applied index with itself the only voter (``schema.reset_raft_state``, the
   term kept), the member list holds only its own record, and every other member is recorded as removed.

The cluster ID and the member ID are kept (as etcd's ``--force-new-cluster``). An old member that comes back on
its old data is refused by the peer transport as a removed member; it records its removal, stops, and refuses
every later start on that data dir, naming the fix (wipe the data dir, ``member add``, start with
``--initial-cluster-state existing``).

``--cluster-reset`` also leaves :data:`GUARD_FILE` in the data dir: a second start with the flag is refused (the
flag left on the command line would otherwise reset a cluster that others have rejoined since); a start without
the flag removes the file. ``--force-new-cluster`` resets on every start, as etcd does.

``--cluster-reset-restore-path`` first replaces the data dir by one restored from a snapshot (the old one is
kept as ``<data-dir>-old-<unix time>``); the app layer obtains the verified snapshot file
(``backup.restore_source``) and calls :func:`restore_data_dir`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from quorumkv.errors import EtcdError
from quorumkv.storage import membership, schema
from quorumkv.storage.datadir import FORMAT_FILE, fsync_dir

if TYPE_CHECKING:
    from quorumkv.server.raft_node import RaftNode
    from quorumkv.server.settings import ServerSettings
    from quorumkv.storage.backend import Backend

log = logging.getLogger("quorumkv.server")

#: Left in the data dir by a ``--cluster-reset`` (K3s names its file the same).
GUARD_FILE = "reset-flag"
#: The default ``--etcd-snapshot-dir`` inside the data dir (moved into the restored data dir).
SNAPSHOTS_DIR = "snapshots"


def guard_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / GUARD_FILE


def check_guard(data_dir: str | os.PathLike[str]) -> None:
    """Refuse a second ``--cluster-reset`` of the same data dir (raises ``EtcdError``)."""
    guard = guard_path(data_dir)
    if guard.exists():
        raise EtcdError(
            "FAILED_PRECONDITION",
            f"the membership of this member was already reset ({guard} exists): remove --cluster-reset (and "
            "--cluster-reset-restore-path) from the command line and start again; to reset once more, delete "
            f"{guard} first")


def is_fresh(data_dir: str | os.PathLike[str]) -> bool:
    """Whether ``data_dir`` holds no member yet (missing, empty, or without the data-format marker)."""
    return not (Path(data_dir) / FORMAT_FILE).exists()


def write_guard(data_dir: str | os.PathLike[str]) -> None:
    guard = guard_path(data_dir)
    with open(guard, "w", encoding="utf-8") as fh:
        fh.write(f"membership reset to this member alone at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(guard.parent)


def clear_guard(data_dir: str | os.PathLike[str]) -> None:
    """A start without ``--cluster-reset``: a later reset is allowed again."""
    guard = guard_path(data_dir)
    if guard.exists():
        guard.unlink()
        log.info("removed the cluster-reset guard file: this start has no --cluster-reset", extra={"file": str(guard)})


def restore_data_dir(snapshot: Path, settings: ServerSettings,
                     before_swap: Callable[[Path, Path], None] | None = None) -> Path | None:
    """Replace ``settings.data_dir`` by a one-member data dir restored from ``snapshot`` (a verified file).

    The member's identity comes from ``--name`` and ``--initial-advertise-peer-urls`` (``--initial-cluster`` is
    not used: the restored cluster has this member alone). ``before_swap(staging, target)`` runs on the restored
    data dir before it replaces the old one (a managed cluster's CA and token go in there); if it raises,
    nothing is changed. Returns where the old data dir was moved, if any."""
    import shutil

    from quorumkv.server.snapshot import restore

    target = Path(settings.data_dir)
    stamp = int(time.time())
    staging = target.parent / f".{target.name}.reset-{stamp}-{os.getpid()}"
    restore(snapshot, staging, name=settings.name, initial_cluster="",
            initial_cluster_token=settings.initial_cluster_token,
            initial_advertise_peer_urls=list(settings.initial_advertise_peer_urls), skip_hash_check=False)
    if before_swap is not None:
        try:
            before_swap(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    old: Path | None = None
    if target.exists():
        if any(target.iterdir()):
            old = target.parent / f"{target.name}-old-{stamp}"
            os.replace(target, old)
            if (old / SNAPSHOTS_DIR).is_dir():  # the default --etcd-snapshot-dir stays where the flags say
                os.replace(old / SNAPSHOTS_DIR, staging / SNAPSHOTS_DIR)
        else:
            target.rmdir()
    os.replace(staging, target)
    fsync_dir(target.parent)
    log.warning("restored the data dir from a snapshot for a cluster reset",
                extra={"snapshot": str(snapshot), "data-dir": str(target), "old-data-dir": str(old or "")})
    return old


def reset_membership(backend: Backend, make_node: Callable[[], RaftNode], member_id: int, *,
                     data_dir: str) -> list[int]:
    """Make ``member_id`` the only voter and member, data kept (see the module doc). ``make_node`` builds a node
    on ``backend`` (not started); the one built here is spent. Returns the removed member IDs."""
    from quorumkv.raft.ids import Index
    from quorumkv.raft.messages import HardState
    from quorumkv.storage.raftlog import RaftLogTable

    conn = backend.writer
    hs = schema.hard_state(conn)
    if hs is not None:
        last = RaftLogTable().last_index(conn)
        if last is not None and last > hs.commit:
            with backend.write_txn() as c:  # every entry this member holds is committed (see step 1)
                schema.save_hard_state(c, HardState(hs.term, hs.vote, Index(last)))
    applied = make_node().apply_committed()
    hs = schema.hard_state(conn)
    term = int(hs.term) if hs is not None else 1
    members = membership.load_members(conn)
    me = members.get(member_id) or membership.Member(member_id)
    me.is_learner = False
    others = set(members)
    cs = schema.conf_state(conn)
    if cs is not None:
        others |= {int(v) for v in (*cs.voters, *cs.learners)}
    removed = sorted(others - {member_id})
    with backend.write_txn() as c:
        schema.reset_raft_state(c, [member_id], index=applied, term=max(1, term))
        membership.replace_members(c, [me])
        for mid in removed:
            membership.mark_removed(c, mid)
    log.warning(
        "cluster membership reset: this member is now the only member of its cluster, all data kept",
        extra={"member-id": f"{member_id:x}", "applied-index": applied, "term": term,
               "removed-members": ",".join(f"{m:x}" for m in removed), "data-dir": data_dir})
    return removed


def next_steps(member_id: int, removed: list[int], *, cluster_reset: bool, data_dir: str) -> str:
    """What the operator does next (printed on stderr and logged)."""
    lines = [f"quorumkv: membership reset: member {member_id:x} is now the only member of its cluster; "
             "every write it held is kept and it serves writes."]
    if removed:
        lines.append(
            "quorumkv: the other members (" + ", ".join(f"{m:x}" for m in removed) + ") are refused from now on: "
            "on each of them, stop it, delete its data dir, run 'quorumkvctl member add NAME "
            "--peer-urls=URL' here, and start it with --initial-cluster-state existing.")
    if cluster_reset:
        lines.append(f"quorumkv: restart this member without --cluster-reset (and --cluster-reset-restore-path); "
                     f"a start with them is refused while {guard_path(data_dir)} exists.")
    return "\n".join(lines)
