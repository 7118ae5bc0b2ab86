"""etcdctl 3.4's output formats: simple, json, fields, table (and protobuf), byte for byte.

Everything is written as bytes to stdout (stderr for ``endpoint health``'s simple format), so binary keys
and values come out exactly as stored, like Go's ``fmt.Println(string(kv.Value))``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.cli.ctl.gofmt import go_duration, go_json, go_quote, go_slice, header_fields, humanize_bytes
from quorumkv.cli.ctl.session import EXIT_BAD_FEATURE, CtlError

__all__ = [
    "EndpointHashKV",
    "EndpointHealth",
    "EndpointStatus",
    "Printer",
    "render_table",
    "write_err",
    "write_out",
]

FORMATS = ("simple", "json", "fields", "table", "protobuf")


def _bytes(data: str | bytes) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")


def write_out(data: str | bytes) -> None:
    sys.stdout.buffer.write(_bytes(data))


def write_err(data: str | bytes) -> None:
    sys.stdout.flush()
    sys.stderr.buffer.write(_bytes(data))
    sys.stderr.flush()


def _hex(data: bytes) -> bytes:
    return "".join(f"\\x{byte:02x}" for byte in data).encode("ascii")


@dataclass
class EndpointHealth:
    ep: str
    health: bool
    took: float
    error: str = ""


@dataclass
class EndpointStatus:
    ep: str
    resp: rpc_pb2.StatusResponse


@dataclass
class EndpointHashKV:
    ep: str
    resp: rpc_pb2.HashKVResponse


def _pad_center(text: str, width: int) -> str:
    gap = width - len(text)
    left = gap // 2
    return " " * left + text + " " * (gap - left)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """olekukonko/tablewriter as etcdctl configures it: centred upper-case header, right-aligned cells."""
    widths = [len(title) for title in header]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    border = "+" + "+".join("-" * (width + 2) for width in widths) + "+\n"
    lines = [border]
    lines.append(
        "|" + "|".join(f" {_pad_center(title.upper(), w)} " for title, w in zip(header, widths, strict=True)) + "|\n"
    )
    lines.append(border)
    for row in rows:
        lines.append("|" + "|".join(f" {cell.rjust(w)} " for cell, w in zip(row, widths, strict=True)) + "|\n")
    lines.append(border)
    return "".join(lines)


def _member_rows(resp: rpc_pb2.MemberListResponse) -> tuple[list[str], list[list[str]]]:
    header = ["ID", "Status", "Name", "Peer Addrs", "Client Addrs", "Is Learner"]
    rows = []
    for member in resp.members:
        rows.append(
            [
                f"{member.ID:x}",
                "started" if member.name else "unstarted",
                member.name,
                ",".join(member.peerURLs),
                ",".join(member.clientURLs),
                "true" if member.isLearner else "false",
            ]
        )
    return header, rows


def _status_rows(statuses: Sequence[EndpointStatus]) -> tuple[list[str], list[list[str]]]:
    header = [
        "endpoint", "ID", "version", "db size", "is leader", "is learner", "raft term", "raft index",
        "raft applied index", "errors",
    ]  # fmt: skip
    rows = []
    for status in statuses:
        resp = status.resp
        rows.append(
            [
                status.ep,
                f"{resp.header.member_id:x}",
                resp.version,
                humanize_bytes(resp.dbSize),
                "true" if resp.leader == resp.header.member_id else "false",
                "true" if resp.isLearner else "false",
                str(resp.raftTerm),
                str(resp.raftIndex),
                str(resp.raftAppliedIndex),
                ", ".join(resp.errors),
            ]
        )
    return header, rows


def _health_rows(healths: Sequence[EndpointHealth]) -> tuple[list[str], list[list[str]]]:
    header = ["endpoint", "health", "took", "error"]
    rows = [[h.ep, "true" if h.health else "false", go_duration(h.took), h.error] for h in healths]
    return header, rows


def _hashkv_rows(hashes: Sequence[EndpointHashKV]) -> tuple[list[str], list[list[str]]]:
    return ["endpoint", "hash"], [[h.ep, str(h.resp.hash)] for h in hashes]


class Printer:
    """One output format (``-w``); method names follow etcdctl's printer interface."""

    def __init__(self, fmt: str, is_hex: bool = False, value_only: bool = False) -> None:
        if fmt not in FORMATS:
            raise CtlError(EXIT_BAD_FEATURE, "unsupported output format")
        self.fmt = fmt
        self.is_hex = is_hex
        self.value_only = value_only

    # ------------------------------------------------------------------ helpers
    def _unsupported(self) -> CtlError:
        return CtlError(EXIT_BAD_FEATURE, f"{self.fmt} not supported as output format")

    def _json(self, value: Any) -> None:
        write_out(go_json(value) + "\n")

    def _pb(self, msg: Any) -> None:
        write_out(msg.SerializeToString())

    def _kv(self, kv: kv_pb2.KeyValue) -> None:
        key, value = kv.key, kv.value
        if self.is_hex:
            key, value = _hex(key), _hex(value)
        if not self.value_only:
            write_out(key + b"\n")
        write_out(value + b"\n")

    def _hdr(self, header: rpc_pb2.ResponseHeader) -> None:
        write_out(
            f'"ClusterID" : {header.cluster_id}\n"MemberID" : {header.member_id}\n'
            f'"Revision" : {header.revision}\n"RaftTerm" : {header.raft_term}\n'
        )

    def _fkv(self, prefix: str, kv: kv_pb2.KeyValue) -> None:
        write_out(
            f'"{prefix}Key" : {go_quote(kv.key)}\n"{prefix}CreateRevision" : {kv.create_revision}\n'
            f'"{prefix}ModRevision" : {kv.mod_revision}\n"{prefix}Version" : {kv.version}\n'
            f'"{prefix}Value" : {go_quote(kv.value)}\n"{prefix}Lease" : {kv.lease}\n'
        )

    def _table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        write_out(render_table(header, rows))

    def _simple_rows(self, rows: Sequence[Sequence[str]]) -> None:
        for row in rows:
            write_out(", ".join(row) + "\n")

    # ------------------------------------------------------------------ KV
    def get(self, resp: rpc_pb2.RangeResponse) -> None:
        if self.fmt == "simple":
            for kv in resp.kvs:
                self._kv(kv)
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
            for kv in resp.kvs:
                self._fkv("", kv)
            write_out(f'"More" : {"true" if resp.more else "false"}\n"Count" : {resp.count}\n')
        elif self.fmt == "protobuf":
            self._pb(resp)
        else:
            raise self._unsupported()

    def put(self, resp: rpc_pb2.PutResponse) -> None:
        if self.fmt == "simple":
            write_out("OK\n")
            if resp.HasField("prev_kv"):
                self._kv(resp.prev_kv)
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
            if resp.HasField("prev_kv"):
                self._fkv("Prev", resp.prev_kv)
        elif self.fmt == "protobuf":
            self._pb(resp)
        else:
            raise self._unsupported()

    def delete(self, resp: rpc_pb2.DeleteRangeResponse) -> None:
        if self.fmt == "simple":
            write_out(f"{resp.deleted}\n")
            for kv in resp.prev_kvs:
                self._kv(kv)
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
            write_out(f'"Deleted" : {resp.deleted}\n')
            for kv in resp.prev_kvs:
                self._fkv("Prev", kv)
        elif self.fmt == "protobuf":
            self._pb(resp)
        else:
            raise self._unsupported()

    def txn(self, resp: rpc_pb2.TxnResponse) -> None:
        if self.fmt == "simple":
            write_out("SUCCESS\n" if resp.succeeded else "FAILURE\n")
            for op in resp.responses:
                write_out("\n")
                self._txn_op(op)
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
            write_out(f'"Succeeded" : {"true" if resp.succeeded else "false"}\n')
            for op in resp.responses:
                self._txn_op(op)
        elif self.fmt == "protobuf":
            self._pb(resp)
        else:
            raise self._unsupported()

    def _txn_op(self, op: rpc_pb2.ResponseOp) -> None:
        which = op.WhichOneof("response")
        if which == "response_range":
            self.get(op.response_range)
        elif which == "response_put":
            self.put(op.response_put)
        elif which == "response_delete_range":
            self.delete(op.response_delete_range)

    def compaction(self, revision: int) -> None:
        write_out(f"compacted revision {revision}\n")

    # ------------------------------------------------------------------ watch
    def watch(self, resp: rpc_pb2.WatchResponse) -> None:
        if self.fmt == "simple":
            for event in resp.events:
                write_out("DELETE\n" if event.type == kv_pb2.Event.DELETE else "PUT\n")
                if event.HasField("prev_kv"):
                    self._kv(event.prev_kv)
                self._kv(event.kv)
        elif self.fmt == "json":
            self._json(
                {
                    "Header": resp.header,
                    "Events": list(resp.events),
                    "CompactRevision": resp.compact_revision,
                    "Canceled": resp.canceled,
                    "Created": resp.created,
                }
            )
        elif self.fmt == "fields":
            self._hdr(resp.header)
            for event in resp.events:
                write_out(f'"Type" : {"DELETE" if event.type == kv_pb2.Event.DELETE else "PUT"}\n')
                if event.HasField("prev_kv"):
                    self._fkv("Prev", event.prev_kv)
                self._fkv("", event.kv)
        elif self.fmt == "protobuf":
            for event in resp.events:
                self._pb(event)
        else:
            raise self._unsupported()

    # ------------------------------------------------------------------ lease
    def grant(self, resp: rpc_pb2.LeaseGrantResponse) -> None:
        if self.fmt == "simple":
            write_out(f"lease {resp.ID:016x} granted with TTL({resp.TTL}s)\n")
        elif self.fmt == "json":
            self._json({**header_fields(resp), "ID": resp.ID, "TTL": resp.TTL, "Error": resp.error})
        elif self.fmt == "fields":
            self._hdr(resp.header)
            write_out(f'"ID" : {resp.ID}\n"TTL" : {resp.TTL}\n')
        else:
            raise self._unsupported()

    def revoke(self, lease_id: int, resp: rpc_pb2.LeaseRevokeResponse) -> None:
        if self.fmt == "simple":
            write_out(f"lease {lease_id:016x} revoked\n")
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
        else:
            raise self._unsupported()

    def keepalive(self, resp: rpc_pb2.LeaseKeepAliveResponse) -> None:
        if self.fmt == "simple":
            write_out(f"lease {resp.ID:016x} keepalived with TTL({resp.TTL})\n")
        elif self.fmt == "json":
            self._json({**header_fields(resp), "ID": resp.ID, "TTL": resp.TTL})
        elif self.fmt == "fields":
            self._hdr(resp.header)
            write_out(f'"ID" : {resp.ID}\n"TTL" : {resp.TTL}\n')
        else:
            raise self._unsupported()

    def timetolive(self, resp: rpc_pb2.LeaseTimeToLiveResponse, keys: bool) -> None:
        if self.fmt == "simple":
            if resp.grantedTTL == 0 and resp.TTL == -1:
                write_out(f"lease {resp.ID:016x} already expired\n")
                return
            text = _bytes(f"lease {resp.ID:016x} granted with TTL({resp.grantedTTL}s), remaining({resp.TTL}s)")
            if keys:
                text += b", attached keys([" + b" ".join(resp.keys) + b"])"
            write_out(text + b"\n")
        elif self.fmt == "json":
            self._json(
                {
                    **header_fields(resp),
                    "id": resp.ID,
                    "ttl": resp.TTL,
                    "granted-ttl": resp.grantedTTL,
                    "keys": list(resp.keys) if resp.keys else None,
                }
            )
        elif self.fmt == "fields":
            self._hdr(resp.header)
            write_out(f'"ID" : {resp.ID}\n"TTL" : {resp.TTL}\n"GrantedTTL" : {resp.grantedTTL}\n')
            for key in resp.keys:
                write_out(f'"Key" : {go_quote(key)}\n')
        else:
            raise self._unsupported()

    def leases(self, resp: rpc_pb2.LeaseLeasesResponse) -> None:
        if self.fmt == "simple":
            write_out(f"found {len(resp.leases)} leases\n")
            for item in resp.leases:
                write_out(f"{item.ID:016x}\n")
        elif self.fmt == "json":
            self._json({**header_fields(resp), "leases": [{"id": item.ID} for item in resp.leases]})
        elif self.fmt == "fields":
            self._hdr(resp.header)
            for item in resp.leases:
                write_out(f'"ID" : {item.ID}\n')
        else:
            raise self._unsupported()

    # ------------------------------------------------------------------ cluster
    def member_list(self, resp: rpc_pb2.MemberListResponse) -> None:
        if self.fmt == "simple":
            self._simple_rows(_member_rows(resp)[1])
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
            for member in resp.members:
                write_out(f'"ID" : {member.ID}\n"Name" : {go_quote(member.name)}\n')
                for url in member.peerURLs:
                    write_out(f'"PeerURL" : {go_quote(url)}\n')
                for url in member.clientURLs:
                    write_out(f'"ClientURL" : {go_quote(url)}\n')
                write_out(f'"IsLearner" : {"true" if member.isLearner else "false"}\n\n')
        elif self.fmt == "table":
            self._table(*_member_rows(resp))
        else:
            self._pb(resp)

    def member_add(self, resp: rpc_pb2.MemberAddResponse) -> None:
        if self.fmt == "simple":
            write_out(f"Member {resp.member.ID:16x} added to cluster {resp.header.cluster_id:16x}\n")
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
            write_out(f'"Member" : {go_quote(str(resp.member.ID))}\n')
        else:
            raise self._unsupported()

    def member_changed(self, verb: str, member_id: int, resp: Any) -> None:
        if self.fmt == "simple":
            write_out(f"Member {member_id:16x} {verb} cluster {resp.header.cluster_id:16x}\n")
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
        else:
            raise self._unsupported()

    def endpoint_health(self, healths: Sequence[EndpointHealth]) -> None:
        if self.fmt == "simple":
            for h in healths:
                if not h.error:
                    write_err(f"{h.ep} is healthy: successfully committed proposal: took = {go_duration(h.took)}\n")
                else:
                    write_err(f"{h.ep} is unhealthy: failed to commit proposal: {h.error}\n")
        elif self.fmt == "json":
            items: list[dict[str, Any]] = []
            for h in healths:
                item: dict[str, Any] = {"endpoint": h.ep, "health": h.health, "took": go_duration(h.took)}
                if h.error:
                    item["error"] = h.error
                items.append(item)
            self._json(items)
        elif self.fmt == "fields":
            for h in healths:
                write_out(
                    f'"Endpoint" : {go_quote(h.ep)}\n"Health" : {"true" if h.health else "false"}\n'
                    f'"Took" : {go_duration(h.took)}\n"Error" : {h.error}\n\n'
                )
        elif self.fmt == "table":
            self._table(*_health_rows(healths))
        else:
            raise CtlError(EXIT_BAD_FEATURE, "only support simple or json as output format")

    def endpoint_status(self, statuses: Sequence[EndpointStatus]) -> None:
        if self.fmt == "simple":
            self._simple_rows(_status_rows(statuses)[1])
        elif self.fmt == "json":
            self._json([{"Endpoint": s.ep, "Status": s.resp} for s in statuses])
        elif self.fmt == "fields":
            for s in statuses:
                resp = s.resp
                self._hdr(resp.header)
                write_out(
                    f'"Version" : {go_quote(resp.version)}\n"DBSize" : {resp.dbSize}\n"Leader" : {resp.leader}\n'
                    f'"IsLearner" : {"true" if resp.isLearner else "false"}\n"RaftIndex" : {resp.raftIndex}\n'
                    f'"RaftTerm" : {resp.raftTerm}\n"RaftAppliedIndex" : {resp.raftAppliedIndex}\n'
                    f'"Errors" : {go_slice(resp.errors)}\n"Endpoint" : {go_quote(s.ep)}\n\n'
                )
        elif self.fmt == "table":
            self._table(*_status_rows(statuses))
        else:
            raise CtlError(EXIT_BAD_FEATURE, "only support simple or json as output format")

    def endpoint_hashkv(self, hashes: Sequence[EndpointHashKV]) -> None:
        if self.fmt == "simple":
            self._simple_rows(_hashkv_rows(hashes)[1])
        elif self.fmt == "json":
            self._json([{"Endpoint": h.ep, "HashKV": h.resp} for h in hashes])
        elif self.fmt == "fields":
            for h in hashes:
                self._hdr(h.resp.header)
                write_out(f'"Endpoint" : {go_quote(h.ep)}\n"Hash" : {h.resp.hash}\n\n')
        elif self.fmt == "table":
            self._table(*_hashkv_rows(hashes))
        else:
            raise CtlError(EXIT_BAD_FEATURE, "only support simple or json as output format")

    def alarm(self, resp: rpc_pb2.AlarmResponse) -> None:
        if self.fmt == "simple":
            for alarm in resp.alarms:
                name = rpc_pb2.AlarmType.Name(alarm.alarm)
                write_out(f"memberID:{alarm.memberID} alarm:{name} \n")
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
            for alarm in resp.alarms:
                write_out(f'"MemberID" : {alarm.memberID}\n"AlarmType" : {rpc_pb2.AlarmType.Name(alarm.alarm)}\n\n')
        elif self.fmt == "protobuf":
            self._pb(resp)
        else:
            raise self._unsupported()

    def move_leader(self, leader: int, target: int, resp: rpc_pb2.MoveLeaderResponse) -> None:
        if self.fmt == "simple":
            write_out(f"Leadership transferred from {leader:x} to {target:x}\n")
        elif self.fmt == "json":
            self._json(resp)
        elif self.fmt == "fields":
            self._hdr(resp.header)
        else:
            raise self._unsupported()
