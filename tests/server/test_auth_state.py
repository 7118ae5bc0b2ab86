"""The replicated auth state: etcd's permission interval rules, deterministic apply through the log, the auth
revision, failed entries changing nothing, the state snapshot and the schema 2 -> 3 upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from quorumkv import errors
from quorumkv.api.authpb import auth_pb2
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.server.apply import Applier, ApplyResult
from quorumkv.server.auth_state import READ, WRITE, AuthInfo, AuthState
from quorumkv.server.entries import EntryKind, encode_entry
from quorumkv.storage import state_snapshot
from quorumkv.storage.backend import SCHEMA_VERSION, Backend

P = auth_pb2.Permission


def _state(*perms: auth_pb2.Permission) -> AuthState:
    role = auth_pb2.Role(name=b"r", keyPermission=list(perms))
    user = auth_pb2.User(name=b"u", roles=["r"])
    return AuthState(True, 1, {"u": user}, {"r": role})


def _ok(state: AuthState, key: bytes, end: bytes = b"", perm: int = READ) -> bool:
    try:
        state.check(AuthInfo("u", 1), key, end, perm)
    except errors.EtcdError as exc:
        assert exc.message == "etcdserver: permission denied"
        return False
    return True


def test_single_key_prefix_and_from_key_permissions() -> None:
    s = _state(P(permType=P.READ, key=b"k"), P(permType=P.READWRITE, key=b"/p/", range_end=b"/p0"),
               P(permType=P.WRITE, key=b"z", range_end=b"\x00"))
    assert _ok(s, b"k") and not _ok(s, b"k", perm=WRITE) and not _ok(s, b"k1")
    assert _ok(s, b"/p/x") and _ok(s, b"/p/", b"/p0") and _ok(s, b"/p/a", b"/p/b", WRITE)
    assert not _ok(s, b"/p/", b"/p1") and not _ok(s, b"/o", b"/p/a")
    assert _ok(s, b"zz", perm=WRITE) and _ok(s, b"z", b"\x00", WRITE) and not _ok(s, b"z", b"\x00")
    assert not _ok(s, b"y", b"\x00", WRITE)


def test_a_range_needs_the_union_of_intervals_to_cover_it_without_a_gap() -> None:
    adjacent = _state(P(permType=P.READ, key=b"a", range_end=b"c"), P(permType=P.READ, key=b"c", range_end=b"e"))
    assert _ok(adjacent, b"a", b"e") and _ok(adjacent, b"b", b"d")
    gap = _state(P(permType=P.READ, key=b"a", range_end=b"c"), P(permType=P.READ, key=b"d", range_end=b"e"))
    assert not _ok(gap, b"a", b"e") and _ok(gap, b"a", b"c")
    empty = _state(P(permType=P.READ, key=b"b", range_end=b"a"))  # kept by etcd, grants nothing
    assert not _ok(empty, b"a") and not _ok(empty, b"b")
    whole = _state(P(permType=P.READ, key=b"\x00", range_end=b"\x00"))  # `--prefix ""`: everything
    assert _ok(whole, b"\x00", b"\x00") and _ok(whole, b"any")


def test_users_root_empty_names_and_stale_revisions() -> None:
    s = _state(P(permType=P.READ, key=b"k"))
    with pytest.raises(errors.EtcdError, match="user name is empty"):
        s.check(None, b"k", b"", READ)
    with pytest.raises(errors.EtcdError, match="revision of auth store is old"):
        AuthState(True, 5, s.users, s.roles).check(AuthInfo("u", 4), b"k", b"", READ)
    with pytest.raises(errors.EtcdError, match="permission denied"):
        s.check(AuthInfo("nobody", 1), b"k", b"", READ)
    root = AuthState(True, 1, {"root": auth_pb2.User(name=b"root", roles=["root"])}, {})
    root.check(AuthInfo("root", 1), b"anything", b"\x00", WRITE)
    AuthState().check(None, b"k", b"", WRITE)  # auth disabled: nothing is checked


def test_txn_checks_every_compare_and_op_recursively() -> None:
    s = _state(P(permType=P.READWRITE, key=b"/w/", range_end=b"/w0"))
    inner = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/x"))])
    for req in (pb.TxnRequest(compare=[pb.Compare(key=b"/x")]),  # compare-only denial
                pb.TxnRequest(failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/x"))]),
                pb.TxnRequest(success=[pb.RequestOp(request_txn=inner)])):
        with pytest.raises(errors.EtcdError, match="permission denied"):
            s.check_txn(AuthInfo("u", 1), req)
    s.check_txn(AuthInfo("u", 1), pb.TxnRequest(compare=[pb.Compare(key=b"/w/a")], success=[
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"/w/", range_end=b"/w0", prev_kv=True))]))


ENTRIES: list[tuple[int, object]] = [
    (EntryKind.AUTH_USER_ADD, pb.AuthUserAddRequest(name="root", hashedPassword="$2b$04$hash")),
    (EntryKind.AUTH_ENABLE, pb.AuthEnableRequest()),  # fails: root has no root role
    (EntryKind.AUTH_ROLE_ADD, pb.AuthRoleAddRequest(name="reader")),
    (EntryKind.AUTH_ROLE_ADD, pb.AuthRoleAddRequest(name="reader")),  # fails: exists
    (EntryKind.AUTH_ROLE_GRANT_PERMISSION, pb.AuthRoleGrantPermissionRequest(
        name="reader", perm=P(permType=P.READ, key=b"b"))),
    (EntryKind.AUTH_ROLE_GRANT_PERMISSION, pb.AuthRoleGrantPermissionRequest(
        name="reader", perm=P(permType=P.READ, key=b"a"))),
    (EntryKind.AUTH_ROLE_GRANT_PERMISSION, pb.AuthRoleGrantPermissionRequest(
        name="reader", perm=P(permType=P.WRITE, key=b"a"))),  # same key: type replaced
    (EntryKind.AUTH_USER_GRANT_ROLE, pb.AuthUserGrantRoleRequest(user="root", role="root")),
    (EntryKind.AUTH_USER_GRANT_ROLE, pb.AuthUserGrantRoleRequest(user="root", role="nope")),  # fails
    (EntryKind.AUTH_ENABLE, pb.AuthEnableRequest()),
    (EntryKind.AUTH_USER_DELETE, pb.AuthUserDeleteRequest(name="root")),  # fails: invalid auth management
]


def _apply_all(db: Path) -> tuple[Applier, list[object]]:
    backend = Backend(db)
    applier = Applier(backend.writer)
    out: list[object] = []
    for index, (kind, req) in enumerate(ENTRIES, start=1):
        result = ApplyResult()
        with backend.write_txn() as conn:
            applier.apply(conn, index, encode_entry(kind, index, req.SerializeToString()), result)  # type: ignore[attr-defined]
            applier.finish(conn)
        out.append(result.responses[index])
    backend.close()
    return applier, out


def test_apply_is_deterministic_counts_revisions_and_failed_entries_change_nothing(tmp_path: Path) -> None:
    a, responses = _apply_all(tmp_path / "a.db")
    b, _ = _apply_all(tmp_path / "b.db")
    failed = [i for i, r in enumerate(responses) if isinstance(r, errors.EtcdError)]
    assert failed == [1, 3, 8, 10]
    assert [r.message for r in responses if isinstance(r, errors.EtcdError)] == [  # type: ignore[attr-defined]
        "etcdserver: root user does not have root role", "etcdserver: role name already exists",
        "etcdserver: role name not found", "etcdserver: invalid auth management"]
    state = a.auth
    assert state.enabled and state.revision == 6  # user add, role add, 3 grants, root role (enable does not count)
    assert state == b.auth
    assert [(p.key, p.permType) for p in state.roles["reader"].keyPermission] == [(b"a", P.WRITE), (b"b", P.READ)]
    with sqlite3.connect(tmp_path / "a.db") as c1, sqlite3.connect(tmp_path / "b.db") as c2:
        for table in ("auth_user", "auth_role"):
            assert c1.execute(f"SELECT * FROM {table}").fetchall() == c2.execute(f"SELECT * FROM {table}").fetchall()
    reopened = Backend(tmp_path / "a.db")
    try:
        assert AuthState.load(reopened.writer) == state
    finally:
        reopened.close()


def test_the_state_snapshot_carries_auth_and_reads_older_snapshots(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = _apply_all(tmp_path / "a.db")
    src = Backend(tmp_path / "a.db")
    dst = Backend(tmp_path / "b.db")
    try:
        data = state_snapshot.dump(src.writer)
        with dst.write_txn() as conn:
            state_snapshot.restore(conn, data)
        assert AuthState.load(dst.writer) == a.auth
        with monkeypatch.context() as m:  # what a schema-2 member sends: no auth tables
            m.setattr(state_snapshot, "TABLES", tuple(t for t in state_snapshot.TABLES if not t.startswith("auth")))
            old = state_snapshot.dump(src.writer)
        with dst.write_txn() as conn:
            state_snapshot.restore(conn, old)
        assert AuthState.load(dst.writer).users == {}
    finally:
        src.close()
        dst.close()


def test_a_schema_2_data_dir_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "db"
    Backend(db).close()
    with sqlite3.connect(db) as conn:  # what schema 2 had: no auth tables
        conn.execute("DROP TABLE auth_user")
        conn.execute("DROP TABLE auth_role")
        conn.execute("PRAGMA user_version=2")
    backend = Backend(db)
    try:
        assert backend.writer.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert AuthState.load(backend.writer) == AuthState()
    finally:
        backend.close()


def test_failed_authentications_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    from quorumkv.server.auth import MemberAuth

    member = MemberAuth.__new__(MemberAuth)
    member._failed_auth = {}
    with caplog.at_level("WARNING", logger="quorumkv.auth"):
        for _ in range(50):
            member._log_failed_auth("mallory")
        member._log_failed_auth("x" * 10_000)
    lines = [r for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(lines) == 2  # once per user name per interval, however many attempts
    assert all(len(getattr(r, "user-name")) <= 67 for r in lines)  # huge names are cut


def test_a_write_is_checked_again_when_applied(tmp_path: Path) -> None:
    """etcd's authApplierV3: a write proposed for a user carries the user and the auth revision of its token;
    when it is applied after an auth change, a stale revision is refused (``revision of auth store is old``), a
    permission revoked meanwhile too (``permission denied``), and a refused entry changes nothing."""
    from quorumkv.server.entries import wrap_authed

    backend = Backend(tmp_path / "a.db")
    applier = Applier(backend.writer)
    index = 0

    def apply(kind: int, payload: bytes) -> object:
        nonlocal index
        index += 1
        result = ApplyResult()
        with backend.write_txn() as conn:
            applier.apply(conn, index, encode_entry(kind, index, payload), result)
            applier.finish(conn)
        return result.responses[index]

    def as_bob(kind: int, req: pb.PutRequest | pb.DeleteRangeRequest | pb.TxnRequest, revision: int) -> object:
        return apply(EntryKind.AUTHED, wrap_authed("bob", revision, kind, req.SerializeToString()))

    for kind, req in [
        (EntryKind.AUTH_USER_ADD, pb.AuthUserAddRequest(name="root", hashedPassword="$2b$04$hash")),
        (EntryKind.AUTH_USER_GRANT_ROLE, pb.AuthUserGrantRoleRequest(user="root", role="root")),
        (EntryKind.AUTH_USER_ADD, pb.AuthUserAddRequest(name="bob", hashedPassword="$2b$04$hash")),
        (EntryKind.AUTH_ROLE_ADD, pb.AuthRoleAddRequest(name="w")),
        (EntryKind.AUTH_ROLE_GRANT_PERMISSION, pb.AuthRoleGrantPermissionRequest(
            name="w", perm=P(permType=P.READWRITE, key=b"a", range_end=b"b"))),
        (EntryKind.AUTH_USER_GRANT_ROLE, pb.AuthUserGrantRoleRequest(user="bob", role="w")),
        (EntryKind.AUTH_ENABLE, pb.AuthEnableRequest()),
    ]:
        assert not isinstance(apply(kind, req.SerializeToString()), errors.EtcdError)
    rev = applier.auth.revision
    put = pb.PutRequest(key=b"a1", value=b"x")
    assert isinstance(as_bob(EntryKind.PUT, put, rev), pb.PutResponse)
    outside = as_bob(EntryKind.PUT, pb.PutRequest(key=b"c", value=b"x"), rev)
    assert isinstance(outside, errors.EtcdError) and outside.message == "etcdserver: permission denied"
    txn = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"z", value=b"y"))])
    assert isinstance(as_bob(EntryKind.TXN, txn, rev), errors.EtcdError)  # an op outside the grant

    assert not isinstance(apply(EntryKind.AUTH_ROLE_REVOKE_PERMISSION, pb.AuthRoleRevokePermissionRequest(
        role="w", key=b"a", range_end=b"b").SerializeToString()), errors.EtcdError)
    revision_before = applier.revision
    stale = as_bob(EntryKind.PUT, put, rev)
    assert isinstance(stale, errors.EtcdError) and stale.message == "etcdserver: revision of auth store is old"
    denied = as_bob(EntryKind.DELETE_RANGE, pb.DeleteRangeRequest(key=b"a1"), applier.auth.revision)
    assert isinstance(denied, errors.EtcdError) and denied.message == "etcdserver: permission denied"
    assert applier.revision == revision_before  # refused entries wrote nothing
    assert applier.applied_index == index  # and were applied (skipped) all the same

    assert not isinstance(apply(EntryKind.AUTH_DISABLE, pb.AuthDisableRequest().SerializeToString()),
                          errors.EtcdError)
    assert isinstance(as_bob(EntryKind.PUT, put, rev), pb.PutResponse)  # auth off: nothing to check, as etcd
    backend.close()
