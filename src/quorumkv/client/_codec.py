"""Request building and response decoding shared by :class:`Client` and :class:`AsyncClient` (pure, no I/O).

Every client method is a :class:`Call`: the service and method to invoke, the request message, the decoder
for the answer and whether the call is idempotent (safe to resend to another endpoint after an ambiguous
failure). The sync and async transports only differ in how they run a ``Call``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.client._txn import TxnSpec, delete_request, put_request, range_request
from quorumkv.client._types import (
    Alarm,
    DeleteResult,
    Event,
    GetResult,
    HashKVResult,
    KeyValue,
    LeaseGrant,
    LeaseInfo,
    Member,
    MemberChange,
    PutResult,
    ResponseHeader,
    Status,
    TxnResult,
    WatchResponse,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One unary RPC: ``service.method(request)`` whose answer ``decode`` turns into ``T``."""

    service: str
    method: str
    request: Message
    decode: Callable[[Any], T]
    idempotent: bool


def header(h: rpc_pb2.ResponseHeader) -> ResponseHeader:
    return ResponseHeader(int(h.cluster_id), int(h.member_id), int(h.revision), int(h.raft_term))


def kv(m: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(bytes(m.key), bytes(m.value), int(m.create_revision), int(m.mod_revision), int(m.version),
                    int(m.lease))


def event(m: kv_pb2.Event, with_prev: bool) -> Event:
    prev = kv(m.prev_kv) if with_prev and m.HasField("prev_kv") else None
    return Event("DELETE" if m.type == kv_pb2.Event.DELETE else "PUT", kv(m.kv), prev)


def watch_response(m: rpc_pb2.WatchResponse) -> WatchResponse:
    events = tuple(event(e, True) for e in m.events)
    progress = not events and not m.created and not m.canceled
    return WatchResponse(header(m.header), events, progress)


def range_result(m: rpc_pb2.RangeResponse) -> GetResult:
    return GetResult(header(m.header), tuple(kv(x) for x in m.kvs), bool(m.more), int(m.count))


def put_result(m: rpc_pb2.PutResponse) -> PutResult:
    return PutResult(header(m.header), kv(m.prev_kv) if m.HasField("prev_kv") else None)


def delete_result(m: rpc_pb2.DeleteRangeResponse) -> DeleteResult:
    return DeleteResult(header(m.header), int(m.deleted), tuple(kv(x) for x in m.prev_kvs))


def txn_result(m: rpc_pb2.TxnResponse) -> TxnResult:
    out: list[GetResult | PutResult | DeleteResult | TxnResult] = []
    for r in m.responses:
        which = r.WhichOneof("response")
        if which == "response_range":
            out.append(range_result(r.response_range))
        elif which == "response_put":
            out.append(put_result(r.response_put))
        elif which == "response_delete_range":
            out.append(delete_result(r.response_delete_range))
        elif which == "response_txn":
            out.append(txn_result(r.response_txn))
    return TxnResult(header(m.header), bool(m.succeeded), tuple(out))


def member(m: rpc_pb2.Member) -> Member:
    return Member(int(m.ID), str(m.name), tuple(m.peerURLs), tuple(m.clientURLs), bool(m.isLearner))


def _member_change(m: Any) -> MemberChange:
    added = member(m.member) if hasattr(m, "member") and m.HasField("member") else None
    return MemberChange(header(m.header), tuple(member(x) for x in m.members), added)


def status(m: rpc_pb2.StatusResponse) -> Status:
    return Status(header(m.header), str(m.version), int(m.dbSize), int(m.leader), int(m.raftIndex),
                  int(m.raftTerm), int(m.raftAppliedIndex), tuple(m.errors), int(m.dbSizeInUse), bool(m.isLearner))


# --------------------------------------------------------------------------------------------------- calls


def range_call(request: rpc_pb2.RangeRequest) -> Call[GetResult]:
    return Call("KV", "Range", request, range_result, True)


def get_call(key: bytes | str, *, revision: int = 0, serializable: bool = False) -> Call[KeyValue | None]:
    def first(m: rpc_pb2.RangeResponse) -> KeyValue | None:
        return kv(m.kvs[0]) if m.kvs else None

    return Call("KV", "Range", range_request(key, revision=revision, serializable=serializable), first, True)


def put_call(key: bytes | str, val: bytes | str, *, lease: int = 0, prev_kv: bool = False,
             ignore_value: bool = False, ignore_lease: bool = False) -> Call[PutResult]:  # fmt: skip
    request = put_request(key, val, lease=lease, prev_kv=prev_kv, ignore_value=ignore_value,
                          ignore_lease=ignore_lease)
    return Call("KV", "Put", request, put_result, False)


def delete_call(key: bytes | str, range_end: bytes | str | None = None, *, prefix: bool = False,
                prev_kv: bool = False) -> Call[DeleteResult]:  # fmt: skip
    return Call("KV", "DeleteRange", delete_request(key, range_end, prefix=prefix, prev_kv=prev_kv), delete_result,
                False)


def txn_call(spec: TxnSpec) -> Call[TxnResult]:
    return Call("KV", "Txn", spec.to_proto(), txn_result, spec.read_only)


def compact_call(revision: int, physical: bool = False) -> Call[ResponseHeader]:
    return Call("KV", "Compact", rpc_pb2.CompactionRequest(revision=revision, physical=physical),
                lambda m: header(m.header), False)


def status_call() -> Call[Status]:
    return Call("Maintenance", "Status", rpc_pb2.StatusRequest(), status, True)


def members_call(linearizable: bool = False) -> Call[tuple[Member, ...]]:
    return Call("Cluster", "MemberList", rpc_pb2.MemberListRequest(linearizable=linearizable),
                lambda m: tuple(member(x) for x in m.members), True)


def member_add_call(peer_urls: Sequence[str], is_learner: bool = False) -> Call[MemberChange]:
    return Call("Cluster", "MemberAdd", rpc_pb2.MemberAddRequest(peerURLs=list(peer_urls), isLearner=is_learner),
                _member_change, False)


def member_remove_call(member_id: int) -> Call[MemberChange]:
    return Call("Cluster", "MemberRemove", rpc_pb2.MemberRemoveRequest(ID=member_id), _member_change, False)


def member_update_call(member_id: int, peer_urls: Sequence[str]) -> Call[MemberChange]:
    return Call("Cluster", "MemberUpdate", rpc_pb2.MemberUpdateRequest(ID=member_id, peerURLs=list(peer_urls)),
                _member_change, False)


def member_promote_call(member_id: int) -> Call[MemberChange]:
    return Call("Cluster", "MemberPromote", rpc_pb2.MemberPromoteRequest(ID=member_id), _member_change, False)


def defragment_call() -> Call[ResponseHeader]:
    return Call("Maintenance", "Defragment", rpc_pb2.DefragmentRequest(), lambda m: header(m.header), False)


def _alarms(m: rpc_pb2.AlarmResponse) -> tuple[Alarm, ...]:
    return tuple(Alarm(int(a.memberID), rpc_pb2.AlarmType.Name(a.alarm)) for a in m.alarms)


def alarms_call() -> Call[tuple[Alarm, ...]]:
    return Call("Maintenance", "Alarm", rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), _alarms, True)


def alarm_disarm_call(member_id: int = 0, alarm: str = "NOSPACE") -> Call[tuple[Alarm, ...]]:
    request = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.DEACTIVATE, memberID=member_id,
                                   alarm=alarm)
    return Call("Maintenance", "Alarm", request, _alarms, False)


def hash_kv_call(revision: int = 0) -> Call[HashKVResult]:
    return Call("Maintenance", "HashKV", rpc_pb2.HashKVRequest(revision=revision),
                lambda m: HashKVResult(header(m.header), int(m.hash), int(m.compact_revision)), True)


def lease_grant_call(ttl: int, lease_id: int = 0) -> Call[LeaseGrant]:
    def decode(m: rpc_pb2.LeaseGrantResponse) -> LeaseGrant:
        return LeaseGrant(header(m.header), int(m.ID), int(m.TTL))

    return Call("Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id), decode, False)


def lease_revoke_call(lease_id: int) -> Call[ResponseHeader]:
    return Call("Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease_id), lambda m: header(m.header), False)


def lease_ttl_call(lease_id: int, keys: bool = False) -> Call[LeaseInfo]:
    def decode(m: rpc_pb2.LeaseTimeToLiveResponse) -> LeaseInfo:
        return LeaseInfo(int(m.ID), int(m.TTL), int(m.grantedTTL), tuple(bytes(k) for k in m.keys))

    return Call("Lease", "LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), decode, True)


def leases_call() -> Call[tuple[int, ...]]:
    return Call("Lease", "LeaseLeases", rpc_pb2.LeaseLeasesRequest(), lambda m: tuple(int(x.ID) for x in m.leases),
                True)


def authenticate_call(name: str, password: str) -> Call[str]:
    return Call("Auth", "Authenticate", rpc_pb2.AuthenticateRequest(name=name, password=password),
                lambda m: str(m.token), True)


def keepalive_request(lease_id: int) -> rpc_pb2.LeaseKeepAliveRequest:
    return rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)


def watch_create_request(
    key: bytes, range_end: bytes, start_revision: int, *, prev_kv: bool, progress_notify: bool,
    filters: Sequence[str] = (),
) -> rpc_pb2.WatchRequest:  # fmt: skip
    create = rpc_pb2.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision,
                                        prev_kv=prev_kv, progress_notify=progress_notify)
    for f in filters:
        create.filters.append(rpc_pb2.WatchCreateRequest.FilterType.Value(f))  # type: ignore[arg-type]
    return rpc_pb2.WatchRequest(create_request=create)
