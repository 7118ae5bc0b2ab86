"""``member list|add|remove|update|promote|progress`` and ``endpoint health|status|hashkv``."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.cli.ctl.app import CLUSTER_FLAG, GoFlag, bad_args, command, group, parse_go_int, printer, root
from quorumkv.cli.ctl.printers import (
    EndpointHashKV,
    EndpointHealth,
    EndpointStatus,
    render_table,
    write_err,
    write_out,
)
from quorumkv.cli.ctl.session import EXIT_ERROR, CtlError, Session, Settings

__all__ = ["endpoints_from_cluster"]

member_group = group(root, "member", short="Membership related commands", usage="member <subcommand>")
endpoint_group = group(root, "endpoint", short="Endpoint related commands", usage="endpoint <subcommand>")


def _member_id(args: list[str]) -> int:
    if len(args) != 1:
        bad_args("member ID is not provided")
    try:
        return parse_go_int(args[0], base=16, unsigned=True)
    except ValueError as exc:
        bad_args(f"bad member ID arg ({exc}), expecting ID in Hex")


@command(
    member_group,
    "list",
    short="Lists all members in the cluster",
    usage="member list",
    long=(
        "When --write-out is set to simple, this command prints out comma-separated member lists for each endpoint.\n"
        "The items in the lists are ID, Status, Name, Peer Addrs, Client Addrs, Is Learner."
    ),
)
def member_list_cmd(settings: Settings, args: list[str]) -> None:
    with Session(settings) as session:
        resp = session.call("Cluster", "MemberList", rpc_pb2.MemberListRequest(), idempotent=True)
    printer(settings).member_list(resp)


@command(
    member_group,
    "add",
    short="Adds a member into the cluster",
    usage="member add <memberName> [options]",
    flags=(
        GoFlag("learner", "bool", False, "indicates if the new member is raft learner"),
        GoFlag("peer-urls", "string", "", "comma separated peer URLs for the new member."),
    ),
)
def member_add_cmd(settings: Settings, args: list[str], learner: bool, peer_urls: str) -> None:
    if len(args) < 1:
        bad_args("member name not provided")
    if len(args) > 1:
        bad_args(f"too many arguments ({' '.join(args)}), did you mean --peer-urls={args[1]}")
    if not peer_urls:
        bad_args("member peer urls not provided")
    name = args[0]
    urls = peer_urls.split(",")
    with Session(settings) as session:
        resp = session.call("Cluster", "MemberAdd", rpc_pb2.MemberAddRequest(peerURLs=urls, isLearner=learner))
    show = printer(settings)
    show.member_add(resp)
    if settings.write_out == "simple":
        conf = []
        for member in resp.members:
            for url in member.peerURLs:
                member_name = name if member.ID == resp.member.ID else member.name
                conf.append(f"{member_name}={url}")
        write_out(
            f'\nETCD_NAME="{name}"\nETCD_INITIAL_CLUSTER="{",".join(conf)}"\n'
            f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{",".join(resp.member.peerURLs)}"\n'
            'ETCD_INITIAL_CLUSTER_STATE="existing"\n'
        )


@command(member_group, "remove", short="Removes a member from the cluster", usage="member remove <memberID>")
def member_remove_cmd(settings: Settings, args: list[str]) -> None:
    member_id = _member_id(args)
    with Session(settings) as session:
        resp = session.call("Cluster", "MemberRemove", rpc_pb2.MemberRemoveRequest(ID=member_id))
    printer(settings).member_changed("removed from", member_id, resp)


@command(
    member_group,
    "update",
    short="Updates a member in the cluster",
    usage="member update <memberID> [options]",
    flags=(GoFlag("peer-urls", "string", "", "comma separated peer URLs for the updated member."),),
)
def member_update_cmd(settings: Settings, args: list[str], peer_urls: str) -> None:
    member_id = _member_id(args)
    if not peer_urls:
        bad_args("member peer urls not provided")
    req = rpc_pb2.MemberUpdateRequest(ID=member_id, peerURLs=peer_urls.split(","))
    with Session(settings) as session:
        resp = session.call("Cluster", "MemberUpdate", req)
    printer(settings).member_changed("updated in", member_id, resp)


@command(
    member_group,
    "promote",
    short="Promotes a non-voting member in the cluster",
    usage="member promote <memberID>",
    long="Promotes a non-voting learner member to a voting one in the cluster.",
)
def member_promote_cmd(settings: Settings, args: list[str]) -> None:
    member_id = _member_id(args)
    with Session(settings) as session:
        resp = session.call("Cluster", "MemberPromote", rpc_pb2.MemberPromoteRequest(ID=member_id))
    printer(settings).member_changed("promoted in", member_id, resp)


def _status_of(settings: Settings, urls: list[str]) -> rpc_pb2.StatusResponse | str:
    """The Status of the first of ``urls`` that answers, else the last error."""
    error = "no client URL (the member has not started)"
    for url in urls:
        with Session(settings, url) as session:
            try:
                resp: rpc_pb2.StatusResponse = session.call("Maintenance", "Status", rpc_pb2.StatusRequest(),
                                                            idempotent=True, log=False)
                return resp
            except CtlError as exc:
                error = exc.message
    return error


@command(
    member_group,
    "progress",
    short="Shows how far each member (learners above all) has caught up with the leader (quorumkv)",
    usage="member progress",
    long=(
        "Not in etcdctl. Lists the members with each one's raft applied index (from its own endpoint status) and\n"
        "the leader's raft index; a learner is promoted (managed clusters, automatically) once it reaches 90%."
    ),
)
def member_progress_cmd(settings: Settings, args: list[str]) -> None:
    from quorumkv.server.cluster import LEARNER_READY_FRACTION

    with Session(settings) as session:
        members = session.call("Cluster", "MemberList", rpc_pb2.MemberListRequest(), idempotent=True).members
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(members)))) as pool:
        statuses = list(pool.map(lambda m: _status_of(settings, list(m.clientURLs)), members))
    leader_ids = {st.leader for st in statuses if not isinstance(st, str) and st.leader}
    leader_index = max((st.raftIndex for st, m in zip(statuses, members, strict=True)
                        if not isinstance(st, str) and m.ID in leader_ids), default=0)
    rows: list[dict[str, object]] = []
    for member, st in zip(members, statuses, strict=True):
        row: dict[str, object] = {"ID": f"{member.ID:x}", "name": member.name, "isLearner": member.isLearner,
                                  "isLeader": member.ID in leader_ids, "leaderRaftIndex": leader_index}
        if isinstance(st, str):
            row.update(raftAppliedIndex=None, progress=None, ready=False, error=st)
        else:
            fraction = min(1.0, st.raftAppliedIndex / leader_index) if leader_index else 0.0
            row.update(raftAppliedIndex=st.raftAppliedIndex, progress=round(100 * fraction, 1),
                       ready=bool(leader_index) and fraction >= LEARNER_READY_FRACTION, error="")
        rows.append(row)
    if settings.write_out == "json":
        write_out(json.dumps({"members": rows}) + "\n")
        return
    cells = [[str(r["ID"]), str(r["name"]), str(r["isLearner"]).lower(), str(r["isLeader"]).lower(),
              "" if r["raftAppliedIndex"] is None else str(r["raftAppliedIndex"]), str(r["leaderRaftIndex"]),
              "" if r["progress"] is None else f"{r['progress']}%", str(r["ready"]).lower(), str(r["error"])]
             for r in rows]
    header = ["ID", "Name", "Is Learner", "Is Leader", "Raft Applied Index", "Leader Raft Index", "Progress",
              "Ready", "Errors"]
    if settings.write_out == "table":
        write_out(render_table(header, cells))
    else:
        for row_cells in cells:
            write_out(", ".join(row_cells) + "\n")
    if leader_index == 0:
        raise CtlError(EXIT_ERROR, "no member reported a leader")


member_progress_cmd.hidden = True  # not etcdctl's: absent from the help listings, which match etcdctl 3.4's


def endpoints_from_cluster(settings: Settings) -> list[str]:
    """``--cluster``: every client URL of every member; otherwise ``--endpoints``."""
    if not settings.cluster:
        return list(settings.endpoints)
    with Session(settings) as session:
        try:
            resp = session.call("Cluster", "MemberList", rpc_pb2.MemberListRequest(), idempotent=True)
        except CtlError as exc:
            raise CtlError(
                EXIT_ERROR, f"failed to fetch endpoints from etcd cluster member list: {exc.message}"
            ) from None
    return [url for member in resp.members for url in member.clientURLs]


def _health(settings: Settings, endpoint: str) -> EndpointHealth:
    start = time.monotonic()
    with Session(settings, endpoint) as session:
        try:
            session.call("KV", "Range", rpc_pb2.RangeRequest(key=b"health"), idempotent=True)
        except CtlError as exc:
            if exc.message != "etcdserver: permission denied":
                return EndpointHealth(endpoint, False, time.monotonic() - start, exc.message)
        took = time.monotonic() - start
        try:
            request = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET)
            alarms = session.call("Maintenance", "Alarm", request, idempotent=True, log=False)
        except CtlError:
            return EndpointHealth(endpoint, False, took, "Unable to fetch the alarm list")
        if alarms.alarms:
            names = "".join(
                {rpc_pb2.NOSPACE: "NOSPACE ", rpc_pb2.CORRUPT: "CORRUPT "}.get(a.alarm, "UNKNOWN ")
                for a in alarms.alarms
            )
            return EndpointHealth(endpoint, False, took, "Active Alarm(s): " + names)
        return EndpointHealth(endpoint, True, took)


@command(
    endpoint_group,
    "health",
    short="Checks the healthiness of endpoints specified in `--endpoints` flag",
    usage="endpoint health",
    inherited=(CLUSTER_FLAG,),
)
def health_cmd(settings: Settings, args: list[str]) -> None:
    endpoints = endpoints_from_cluster(settings)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(endpoints)))) as pool:
        results = list(pool.map(lambda ep: _health(settings, ep), endpoints))
    printer(settings).endpoint_health(results)
    if any(not h.health for h in results):
        raise CtlError(EXIT_ERROR, "unhealthy cluster")


@command(
    endpoint_group,
    "status",
    short="Prints out the status of endpoints specified in `--endpoints` flag",
    usage="endpoint status",
    long=(
        "When --write-out is set to simple, this command prints out comma-separated status lists for each endpoint.\n"
        "The items in the lists are endpoint, ID, version, db size, is leader, is learner, raft term, raft index, "
        "raft applied index, errors."
    ),
    inherited=(CLUSTER_FLAG,),
)
def status_cmd(settings: Settings, args: list[str]) -> None:
    statuses: list[EndpointStatus] = []
    failed = False
    for endpoint in endpoints_from_cluster(settings):
        with Session(settings, endpoint) as session:
            try:
                resp = session.call("Maintenance", "Status", rpc_pb2.StatusRequest(), idempotent=True)
            except CtlError as exc:
                write_err(f"Failed to get the status of endpoint {endpoint} ({exc.message})\n")
                failed = True
                continue
        statuses.append(EndpointStatus(endpoint, resp))
    printer(settings).endpoint_status(statuses)
    if failed:
        raise CtlError(EXIT_ERROR, "")


@command(
    endpoint_group,
    "hashkv",
    short="Prints the KV history hash for each endpoint in --endpoints",
    usage="endpoint hashkv",
    flags=(GoFlag("rev", "int", "0", "maximum revision to hash (default: all revisions)"),),
    inherited=(CLUSTER_FLAG,),
)
def hashkv_cmd(settings: Settings, args: list[str], rev: int) -> None:
    hashes: list[EndpointHashKV] = []
    last_error: CtlError | None = None
    for endpoint in endpoints_from_cluster(settings):
        with Session(settings, endpoint) as session:
            try:
                resp = session.call("Maintenance", "HashKV", rpc_pb2.HashKVRequest(revision=rev), idempotent=True)
            except CtlError as exc:
                write_err(f"Failed to get the hash of endpoint {endpoint} ({exc.message})\n")
                last_error = exc
                continue
        hashes.append(EndpointHashKV(endpoint, resp))
    printer(settings).endpoint_hashkv(hashes)
    if last_error is not None:  # etcdctl 3.4 exits with the last endpoint error ("Error: <message>")
        raise CtlError(EXIT_ERROR, last_error.message)
