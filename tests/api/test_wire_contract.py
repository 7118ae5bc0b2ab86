"""Field numbers, types, enum values and method names that etcd clients depend on.

The facts below are etcd's v3 wire contract (etcdserverpb / mvccpb / authpb); they are asserted
against the descriptors of the generated stubs so an accidental renumbering cannot slip through.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor

from quorumkv.api.authpb import auth_pb2
from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.mvccpb import kv_pb2

assert auth_pb2 and kv_pb2 and rpc_pb2  # importing registers the descriptors in the default pool

POOL = descriptor_pool.Default()

SCALARS = {
    "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "bool": FieldDescriptor.TYPE_BOOL,
    "bytes": FieldDescriptor.TYPE_BYTES,
    "string": FieldDescriptor.TYPE_STRING,
}

E = "etcdserverpb."
# (message, field, number, type); type is a scalar name, or a message/enum full name,
# prefixed with "repeated " for repeated fields.
FIELDS: list[tuple[str, str, int, str]] = [
    ("mvccpb.KeyValue", "key", 1, "bytes"),
    ("mvccpb.KeyValue", "create_revision", 2, "int64"),
    ("mvccpb.KeyValue", "mod_revision", 3, "int64"),
    ("mvccpb.KeyValue", "version", 4, "int64"),
    ("mvccpb.KeyValue", "value", 5, "bytes"),
    ("mvccpb.KeyValue", "lease", 6, "int64"),
    ("mvccpb.Event", "type", 1, "mvccpb.Event.EventType"),
    ("mvccpb.Event", "kv", 2, "mvccpb.KeyValue"),
    ("mvccpb.Event", "prev_kv", 3, "mvccpb.KeyValue"),
    ("authpb.UserAddOptions", "no_password", 1, "bool"),
    ("authpb.User", "name", 1, "bytes"),
    ("authpb.User", "password", 2, "bytes"),
    ("authpb.User", "roles", 3, "repeated string"),
    ("authpb.User", "options", 4, "authpb.UserAddOptions"),
    ("authpb.Permission", "permType", 1, "authpb.Permission.Type"),
    ("authpb.Permission", "key", 2, "bytes"),
    ("authpb.Permission", "range_end", 3, "bytes"),
    ("authpb.Role", "name", 1, "bytes"),
    ("authpb.Role", "keyPermission", 2, "repeated authpb.Permission"),
    (E + "ResponseHeader", "cluster_id", 1, "uint64"),
    (E + "ResponseHeader", "member_id", 2, "uint64"),
    (E + "ResponseHeader", "revision", 3, "int64"),
    (E + "ResponseHeader", "raft_term", 4, "uint64"),
    (E + "RangeRequest", "key", 1, "bytes"),
    (E + "RangeRequest", "range_end", 2, "bytes"),
    (E + "RangeRequest", "limit", 3, "int64"),
    (E + "RangeRequest", "revision", 4, "int64"),
    (E + "RangeRequest", "sort_order", 5, E + "RangeRequest.SortOrder"),
    (E + "RangeRequest", "sort_target", 6, E + "RangeRequest.SortTarget"),
    (E + "RangeRequest", "serializable", 7, "bool"),
    (E + "RangeRequest", "keys_only", 8, "bool"),
    (E + "RangeRequest", "count_only", 9, "bool"),
    (E + "RangeRequest", "min_mod_revision", 10, "int64"),
    (E + "RangeRequest", "max_mod_revision", 11, "int64"),
    (E + "RangeRequest", "min_create_revision", 12, "int64"),
    (E + "RangeRequest", "max_create_revision", 13, "int64"),
    (E + "RangeResponse", "header", 1, E + "ResponseHeader"),
    (E + "RangeResponse", "kvs", 2, "repeated mvccpb.KeyValue"),
    (E + "RangeResponse", "more", 3, "bool"),
    (E + "RangeResponse", "count", 4, "int64"),
    (E + "PutRequest", "key", 1, "bytes"),
    (E + "PutRequest", "value", 2, "bytes"),
    (E + "PutRequest", "lease", 3, "int64"),
    (E + "PutRequest", "prev_kv", 4, "bool"),
    (E + "PutRequest", "ignore_value", 5, "bool"),
    (E + "PutRequest", "ignore_lease", 6, "bool"),
    (E + "PutResponse", "prev_kv", 2, "mvccpb.KeyValue"),
    (E + "DeleteRangeRequest", "key", 1, "bytes"),
    (E + "DeleteRangeRequest", "range_end", 2, "bytes"),
    (E + "DeleteRangeRequest", "prev_kv", 3, "bool"),
    (E + "DeleteRangeResponse", "deleted", 2, "int64"),
    (E + "DeleteRangeResponse", "prev_kvs", 3, "repeated mvccpb.KeyValue"),
    (E + "RequestOp", "request_range", 1, E + "RangeRequest"),
    (E + "RequestOp", "request_put", 2, E + "PutRequest"),
    (E + "RequestOp", "request_delete_range", 3, E + "DeleteRangeRequest"),
    (E + "RequestOp", "request_txn", 4, E + "TxnRequest"),
    (E + "ResponseOp", "response_range", 1, E + "RangeResponse"),
    (E + "ResponseOp", "response_put", 2, E + "PutResponse"),
    (E + "ResponseOp", "response_delete_range", 3, E + "DeleteRangeResponse"),
    (E + "ResponseOp", "response_txn", 4, E + "TxnResponse"),
    (E + "Compare", "result", 1, E + "Compare.CompareResult"),
    (E + "Compare", "target", 2, E + "Compare.CompareTarget"),
    (E + "Compare", "key", 3, "bytes"),
    (E + "Compare", "version", 4, "int64"),
    (E + "Compare", "create_revision", 5, "int64"),
    (E + "Compare", "mod_revision", 6, "int64"),
    (E + "Compare", "value", 7, "bytes"),
    (E + "Compare", "lease", 8, "int64"),
    (E + "Compare", "range_end", 64, "bytes"),
    (E + "TxnRequest", "compare", 1, "repeated " + E + "Compare"),
    (E + "TxnRequest", "success", 2, "repeated " + E + "RequestOp"),
    (E + "TxnRequest", "failure", 3, "repeated " + E + "RequestOp"),
    (E + "TxnResponse", "succeeded", 2, "bool"),
    (E + "TxnResponse", "responses", 3, "repeated " + E + "ResponseOp"),
    (E + "CompactionRequest", "revision", 1, "int64"),
    (E + "CompactionRequest", "physical", 2, "bool"),
    (E + "HashResponse", "hash", 2, "uint32"),
    (E + "HashKVRequest", "revision", 1, "int64"),
    (E + "HashKVResponse", "hash", 2, "uint32"),
    (E + "HashKVResponse", "compact_revision", 3, "int64"),
    (E + "HashKVResponse", "hash_revision", 4, "int64"),
    (E + "SnapshotResponse", "remaining_bytes", 2, "uint64"),
    (E + "SnapshotResponse", "blob", 3, "bytes"),
    (E + "SnapshotResponse", "version", 4, "string"),
    (E + "WatchRequest", "create_request", 1, E + "WatchCreateRequest"),
    (E + "WatchRequest", "cancel_request", 2, E + "WatchCancelRequest"),
    (E + "WatchRequest", "progress_request", 3, E + "WatchProgressRequest"),
    (E + "WatchCreateRequest", "key", 1, "bytes"),
    (E + "WatchCreateRequest", "range_end", 2, "bytes"),
    (E + "WatchCreateRequest", "start_revision", 3, "int64"),
    (E + "WatchCreateRequest", "progress_notify", 4, "bool"),
    (E + "WatchCreateRequest", "filters", 5, "repeated " + E + "WatchCreateRequest.FilterType"),
    (E + "WatchCreateRequest", "prev_kv", 6, "bool"),
    (E + "WatchCreateRequest", "watch_id", 7, "int64"),
    (E + "WatchCreateRequest", "fragment", 8, "bool"),
    (E + "WatchCancelRequest", "watch_id", 1, "int64"),
    (E + "WatchResponse", "header", 1, E + "ResponseHeader"),
    (E + "WatchResponse", "watch_id", 2, "int64"),
    (E + "WatchResponse", "created", 3, "bool"),
    (E + "WatchResponse", "canceled", 4, "bool"),
    (E + "WatchResponse", "compact_revision", 5, "int64"),
    (E + "WatchResponse", "cancel_reason", 6, "string"),
    (E + "WatchResponse", "fragment", 7, "bool"),
    (E + "WatchResponse", "events", 11, "repeated mvccpb.Event"),
    (E + "LeaseGrantRequest", "TTL", 1, "int64"),
    (E + "LeaseGrantRequest", "ID", 2, "int64"),
    (E + "LeaseGrantResponse", "ID", 2, "int64"),
    (E + "LeaseGrantResponse", "TTL", 3, "int64"),
    (E + "LeaseGrantResponse", "error", 4, "string"),
    (E + "LeaseRevokeRequest", "ID", 1, "int64"),
    (E + "LeaseCheckpoint", "ID", 1, "int64"),
    (E + "LeaseCheckpoint", "remaining_TTL", 2, "int64"),
    (E + "LeaseCheckpointRequest", "checkpoints", 1, "repeated " + E + "LeaseCheckpoint"),
    (E + "LeaseKeepAliveRequest", "ID", 1, "int64"),
    (E + "LeaseKeepAliveResponse", "ID", 2, "int64"),
    (E + "LeaseKeepAliveResponse", "TTL", 3, "int64"),
    (E + "LeaseTimeToLiveRequest", "ID", 1, "int64"),
    (E + "LeaseTimeToLiveRequest", "keys", 2, "bool"),
    (E + "LeaseTimeToLiveResponse", "ID", 2, "int64"),
    (E + "LeaseTimeToLiveResponse", "TTL", 3, "int64"),
    (E + "LeaseTimeToLiveResponse", "grantedTTL", 4, "int64"),
    (E + "LeaseTimeToLiveResponse", "keys", 5, "repeated bytes"),
    (E + "LeaseStatus", "ID", 1, "int64"),
    (E + "LeaseLeasesResponse", "leases", 2, "repeated " + E + "LeaseStatus"),
    (E + "Member", "ID", 1, "uint64"),
    (E + "Member", "name", 2, "string"),
    (E + "Member", "peerURLs", 3, "repeated string"),
    (E + "Member", "clientURLs", 4, "repeated string"),
    (E + "Member", "isLearner", 5, "bool"),
    (E + "MemberAddRequest", "peerURLs", 1, "repeated string"),
    (E + "MemberAddRequest", "isLearner", 2, "bool"),
    (E + "MemberAddResponse", "member", 2, E + "Member"),
    (E + "MemberAddResponse", "members", 3, "repeated " + E + "Member"),
    (E + "MemberRemoveRequest", "ID", 1, "uint64"),
    (E + "MemberUpdateRequest", "ID", 1, "uint64"),
    (E + "MemberUpdateRequest", "peerURLs", 2, "repeated string"),
    (E + "MemberListRequest", "linearizable", 1, "bool"),
    (E + "MemberListResponse", "members", 2, "repeated " + E + "Member"),
    (E + "MemberPromoteRequest", "ID", 1, "uint64"),
    (E + "MoveLeaderRequest", "targetID", 1, "uint64"),
    (E + "AlarmRequest", "action", 1, E + "AlarmRequest.AlarmAction"),
    (E + "AlarmRequest", "memberID", 2, "uint64"),
    (E + "AlarmRequest", "alarm", 3, E + "AlarmType"),
    (E + "AlarmMember", "memberID", 1, "uint64"),
    (E + "AlarmMember", "alarm", 2, E + "AlarmType"),
    (E + "AlarmResponse", "alarms", 2, "repeated " + E + "AlarmMember"),
    (E + "DowngradeRequest", "action", 1, E + "DowngradeRequest.DowngradeAction"),
    (E + "DowngradeRequest", "version", 2, "string"),
    (E + "DowngradeResponse", "version", 2, "string"),
    (E + "StatusResponse", "header", 1, E + "ResponseHeader"),
    (E + "StatusResponse", "version", 2, "string"),
    (E + "StatusResponse", "dbSize", 3, "int64"),
    (E + "StatusResponse", "leader", 4, "uint64"),
    (E + "StatusResponse", "raftIndex", 5, "uint64"),
    (E + "StatusResponse", "raftTerm", 6, "uint64"),
    (E + "StatusResponse", "raftAppliedIndex", 7, "uint64"),
    (E + "StatusResponse", "errors", 8, "repeated string"),
    (E + "StatusResponse", "dbSizeInUse", 9, "int64"),
    (E + "StatusResponse", "isLearner", 10, "bool"),
    (E + "StatusResponse", "storageVersion", 11, "string"),
    (E + "StatusResponse", "dbSizeQuota", 12, "int64"),
    (E + "StatusResponse", "downgradeInfo", 13, E + "DowngradeInfo"),
    (E + "DowngradeInfo", "enabled", 1, "bool"),
    (E + "DowngradeInfo", "targetVersion", 2, "string"),
    (E + "AuthenticateRequest", "name", 1, "string"),
    (E + "AuthenticateRequest", "password", 2, "string"),
    (E + "AuthenticateResponse", "token", 2, "string"),
    (E + "AuthStatusResponse", "enabled", 2, "bool"),
    (E + "AuthStatusResponse", "authRevision", 3, "uint64"),
    (E + "AuthUserAddRequest", "name", 1, "string"),
    (E + "AuthUserAddRequest", "password", 2, "string"),
    (E + "AuthUserAddRequest", "options", 3, "authpb.UserAddOptions"),
    (E + "AuthUserAddRequest", "hashedPassword", 4, "string"),
    (E + "AuthUserGetResponse", "roles", 2, "repeated string"),
    (E + "AuthUserChangePasswordRequest", "hashedPassword", 3, "string"),
    (E + "AuthUserGrantRoleRequest", "user", 1, "string"),
    (E + "AuthUserGrantRoleRequest", "role", 2, "string"),
    (E + "AuthUserRevokeRoleRequest", "name", 1, "string"),
    (E + "AuthUserRevokeRoleRequest", "role", 2, "string"),
    (E + "AuthRoleGetRequest", "role", 1, "string"),
    (E + "AuthRoleGetResponse", "perm", 2, "repeated authpb.Permission"),
    (E + "AuthRoleListResponse", "roles", 2, "repeated string"),
    (E + "AuthUserListResponse", "users", 2, "repeated string"),
    (E + "AuthRoleGrantPermissionRequest", "name", 1, "string"),
    (E + "AuthRoleGrantPermissionRequest", "perm", 2, "authpb.Permission"),
    (E + "AuthRoleRevokePermissionRequest", "role", 1, "string"),
    (E + "AuthRoleRevokePermissionRequest", "key", 2, "bytes"),
    (E + "AuthRoleRevokePermissionRequest", "range_end", 3, "bytes"),
]

# (enum full name, value name, number)
ENUM_VALUES: list[tuple[str, str, int]] = [
    ("mvccpb.Event.EventType", "PUT", 0),
    ("mvccpb.Event.EventType", "DELETE", 1),
    ("authpb.Permission.Type", "READ", 0),
    ("authpb.Permission.Type", "WRITE", 1),
    ("authpb.Permission.Type", "READWRITE", 2),
    (E + "RangeRequest.SortOrder", "NONE", 0),
    (E + "RangeRequest.SortOrder", "ASCEND", 1),
    (E + "RangeRequest.SortOrder", "DESCEND", 2),
    (E + "RangeRequest.SortTarget", "KEY", 0),
    (E + "RangeRequest.SortTarget", "VERSION", 1),
    (E + "RangeRequest.SortTarget", "CREATE", 2),
    (E + "RangeRequest.SortTarget", "MOD", 3),
    (E + "RangeRequest.SortTarget", "VALUE", 4),
    (E + "Compare.CompareResult", "EQUAL", 0),
    (E + "Compare.CompareResult", "GREATER", 1),
    (E + "Compare.CompareResult", "LESS", 2),
    (E + "Compare.CompareResult", "NOT_EQUAL", 3),
    (E + "Compare.CompareTarget", "VERSION", 0),
    (E + "Compare.CompareTarget", "CREATE", 1),
    (E + "Compare.CompareTarget", "MOD", 2),
    (E + "Compare.CompareTarget", "VALUE", 3),
    (E + "Compare.CompareTarget", "LEASE", 4),
    (E + "WatchCreateRequest.FilterType", "NOPUT", 0),
    (E + "WatchCreateRequest.FilterType", "NODELETE", 1),
    (E + "AlarmType", "NONE", 0),
    (E + "AlarmType", "NOSPACE", 1),
    (E + "AlarmType", "CORRUPT", 2),
    (E + "AlarmRequest.AlarmAction", "GET", 0),
    (E + "AlarmRequest.AlarmAction", "ACTIVATE", 1),
    (E + "AlarmRequest.AlarmAction", "DEACTIVATE", 2),
    (E + "DowngradeRequest.DowngradeAction", "VALIDATE", 0),
    (E + "DowngradeRequest.DowngradeAction", "ENABLE", 1),
    (E + "DowngradeRequest.DowngradeAction", "CANCEL", 2),
]

# (full gRPC method path, client streaming, server streaming)
METHODS: list[tuple[str, bool, bool]] = [
    ("/etcdserverpb.KV/Range", False, False),
    ("/etcdserverpb.KV/Put", False, False),
    ("/etcdserverpb.KV/DeleteRange", False, False),
    ("/etcdserverpb.KV/Txn", False, False),
    ("/etcdserverpb.KV/Compact", False, False),
    ("/etcdserverpb.Watch/Watch", True, True),
    ("/etcdserverpb.Lease/LeaseGrant", False, False),
    ("/etcdserverpb.Lease/LeaseRevoke", False, False),
    ("/etcdserverpb.Lease/LeaseKeepAlive", True, True),
    ("/etcdserverpb.Lease/LeaseTimeToLive", False, False),
    ("/etcdserverpb.Lease/LeaseLeases", False, False),
    ("/etcdserverpb.Cluster/MemberAdd", False, False),
    ("/etcdserverpb.Cluster/MemberRemove", False, False),
    ("/etcdserverpb.Cluster/MemberUpdate", False, False),
    ("/etcdserverpb.Cluster/MemberList", False, False),
    ("/etcdserverpb.Cluster/MemberPromote", False, False),
    ("/etcdserverpb.Maintenance/Alarm", False, False),
    ("/etcdserverpb.Maintenance/Status", False, False),
    ("/etcdserverpb.Maintenance/Defragment", False, False),
    ("/etcdserverpb.Maintenance/Hash", False, False),
    ("/etcdserverpb.Maintenance/HashKV", False, False),
    ("/etcdserverpb.Maintenance/Snapshot", False, True),
    ("/etcdserverpb.Maintenance/MoveLeader", False, False),
    ("/etcdserverpb.Maintenance/Downgrade", False, False),
    ("/etcdserverpb.Auth/AuthEnable", False, False),
    ("/etcdserverpb.Auth/AuthDisable", False, False),
    ("/etcdserverpb.Auth/AuthStatus", False, False),
    ("/etcdserverpb.Auth/Authenticate", False, False),
    ("/etcdserverpb.Auth/UserAdd", False, False),
    ("/etcdserverpb.Auth/UserGet", False, False),
    ("/etcdserverpb.Auth/UserList", False, False),
    ("/etcdserverpb.Auth/UserDelete", False, False),
    ("/etcdserverpb.Auth/UserChangePassword", False, False),
    ("/etcdserverpb.Auth/UserGrantRole", False, False),
    ("/etcdserverpb.Auth/UserRevokeRole", False, False),
    ("/etcdserverpb.Auth/RoleAdd", False, False),
    ("/etcdserverpb.Auth/RoleGet", False, False),
    ("/etcdserverpb.Auth/RoleList", False, False),
    ("/etcdserverpb.Auth/RoleDelete", False, False),
    ("/etcdserverpb.Auth/RoleGrantPermission", False, False),
    ("/etcdserverpb.Auth/RoleRevokePermission", False, False),
]

ONEOFS: list[tuple[str, str, set[str]]] = [
    (E + "RequestOp", "request", {"request_range", "request_put", "request_delete_range", "request_txn"}),
    (
        E + "ResponseOp",
        "response",
        {"response_range", "response_put", "response_delete_range", "response_txn"},
    ),
    (E + "Compare", "target_union", {"version", "create_revision", "mod_revision", "value", "lease"}),
    (E + "WatchRequest", "request_union", {"create_request", "cancel_request", "progress_request"}),
]


def describe_type(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        base = field.message_type.full_name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        base = field.enum_type.full_name
    else:
        names = {v: k for k, v in SCALARS.items()}
        base = names.get(field.type, f"type#{field.type}")
    return ("repeated " + base) if field.is_repeated else base


def test_table_is_substantial() -> None:
    assert len(FIELDS) + len(ENUM_VALUES) >= 60


@pytest.mark.parametrize(("message", "field", "number", "type_"), FIELDS, ids=lambda v: str(v))
def test_field_number_and_type(message: str, field: str, number: int, type_: str) -> None:
    desc = POOL.FindMessageTypeByName(message)
    assert field in desc.fields_by_name, f"{message} has no field {field!r}"
    fd = desc.fields_by_name[field]
    assert fd.number == number
    assert describe_type(fd) == type_


@pytest.mark.parametrize(("enum", "name", "number"), ENUM_VALUES, ids=lambda v: str(v))
def test_enum_value(enum: str, name: str, number: int) -> None:
    desc = POOL.FindEnumTypeByName(enum)
    assert desc.values_by_name[name].number == number


def test_enum_shortcuts_on_generated_classes() -> None:
    assert rpc_pb2.RangeRequest.MOD == 3
    assert rpc_pb2.Compare.LEASE == 4
    assert rpc_pb2.Compare.NOT_EQUAL == 3
    assert rpc_pb2.NOSPACE == 1
    assert rpc_pb2.WatchCreateRequest.NODELETE == 1
    assert kv_pb2.Event.DELETE == 1


@pytest.mark.parametrize(("message", "oneof", "members"), ONEOFS, ids=lambda v: str(v))
def test_oneof_members(message: str, oneof: str, members: set[str]) -> None:
    desc = POOL.FindMessageTypeByName(message)
    assert {f.name for f in desc.oneofs_by_name[oneof].fields} == members


@pytest.mark.parametrize(("path", "client_streaming", "server_streaming"), METHODS, ids=lambda v: str(v))
def test_service_method(path: str, client_streaming: bool, server_streaming: bool) -> None:
    _, service_name, method_name = path.split("/")
    service = POOL.FindServiceByName(service_name)
    method = service.methods_by_name[method_name]
    assert f"/{service.full_name}/{method.name}" == path
    assert method.client_streaming is client_streaming
    assert method.server_streaming is server_streaming


def test_every_service_method_is_listed() -> None:
    listed = {path for path, _, _ in METHODS}
    declared = {
        f"/{svc.full_name}/{m.name}"
        for svc in rpc_pb2.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    assert declared == listed
