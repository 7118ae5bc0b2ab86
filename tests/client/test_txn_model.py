"""Random transactions built with the txn builder: the server's answers must match a tiny in-test model."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorumkv.client import (
    Client,
    Compare,
    DeleteResult,
    GetResult,
    PutResult,
    create_revision,
    delete,
    get,
    mod_revision,
    put,
    value,
    version,
)
from quorumkv.client._txn import Op

PREFIX = "txn-model/"
KEYS = ("a", "b", "c")
VALUES = (b"", b"x", b"y")


@dataclass(frozen=True)
class Row:
    value: bytes
    create: int
    mod: int
    version: int


def load(client: Client) -> tuple[dict[str, Row], int]:
    res = client.get_prefix(PREFIX)
    rows = {kv.key.decode()[len(PREFIX):]: Row(kv.value, kv.create_revision, kv.mod_revision, kv.version)
            for kv in res.kvs}  # fmt: skip
    return rows, res.header.revision


def holds(row: Row | None, target: str, result: str, operand: int | bytes) -> bool:
    """etcd's compare: a missing key fails every value compare and otherwise compares as all-zero."""
    if row is None:
        if target == "VALUE":
            return False
        row = Row(b"", 0, 0, 0)
    mine = {"VALUE": row.value, "VERSION": row.version, "CREATE": row.create, "MOD": row.mod}[target]
    if result == "EQUAL":
        return mine == operand
    if result == "NOT_EQUAL":
        return mine != operand
    if result == "LESS":
        return mine < operand  # type: ignore[operator]
    return mine > operand  # type: ignore[operator]


#: An int operand is either absolute (a version) or relative to the revision when the example runs (rev - d),
#: so the strategies never depend on server state (hypothesis replays examples against a changed server).
Operand = tuple[str, int] | bytes
COMPARES = st.tuples(
    st.sampled_from(KEYS), st.sampled_from(("VALUE", "VERSION", "CREATE", "MOD")),
    st.sampled_from(("EQUAL", "NOT_EQUAL", "LESS", "GREATER")),
    st.tuples(st.just("abs"), st.integers(0, 3)) | st.tuples(st.just("rel"), st.integers(-1, 4))
    | st.sampled_from(VALUES),
).filter(lambda c: (c[1] == "VALUE") == isinstance(c[3], bytes))  # fmt: skip


def operand_at(operand: Operand, rev: int) -> int | bytes:
    if isinstance(operand, bytes):
        return operand
    kind, n = operand
    return n if kind == "abs" else max(rev - n, 0)


def branch() -> st.SearchStrategy[list[tuple[str, str, bytes]]]:
    """Ops (kind, key, value); writes touch distinct keys (etcd rejects duplicate writes in one branch)."""
    op = st.tuples(st.sampled_from(("put", "get", "delete")), st.sampled_from(KEYS), st.sampled_from(VALUES))
    return st.lists(op, max_size=4).filter(
        lambda ops: len([k for kind, k, _ in ops if kind != "get"]) == len({k for kind, k, _ in ops if kind != "get"}))


def build(ops: list[tuple[str, str, bytes]]) -> list[Op]:
    out: list[Op] = []
    for kind, key, val in ops:
        full = PREFIX + key
        out.append(put(full, val) if kind == "put" else get(full) if kind == "get" else delete(full))
    return out


def make_compare(key: str, target: str, result: str, operand: int | bytes) -> Compare:
    maker = {"VALUE": value, "VERSION": version, "CREATE": create_revision, "MOD": mod_revision}[target]
    t = maker(PREFIX + key)
    if result == "EQUAL":
        return t == operand
    if result == "NOT_EQUAL":
        return t != operand
    return t < operand if result == "LESS" else t > operand


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=st.lists(COMPARES, max_size=3), then_ops=branch(), else_ops=branch())
def test_txn_matches_model(client: Client, drawn: list[tuple[str, str, str, Operand]],
                           then_ops: list[tuple[str, str, bytes]], else_ops: list[tuple[str, str, bytes]]) -> None:
    rows, rev = load(client)
    cmps = [(k, t, r, operand_at(o, rev)) for k, t, r, o in drawn]

    succeeded = all(holds(rows.get(k), t, r, o) for k, t, r, o in cmps)
    ops = then_ops if succeeded else else_ops
    writes = any(kind == "put" or (kind == "delete" and k in rows) for kind, k, _ in ops)
    new_rev = rev + 1 if writes else rev
    expected: list[object] = []
    for kind, key, val in ops:
        if kind == "put":
            old = rows.get(key)
            rows[key] = Row(val, old.create if old else new_rev, new_rev, (old.version if old else 0) + 1)
            expected.append("put")
        elif kind == "delete":
            expected.append(1 if rows.pop(key, None) is not None else 0)
        else:
            row = rows.get(key)
            expected.append(None if row is None else replace(row))

    result = client.txn().if_(*[make_compare(*c) for c in cmps]).then(*build(then_ops)).else_(
        *build(else_ops)).commit()  # fmt: skip
    assert result.succeeded == succeeded
    assert result.header.revision == new_rev
    got: list[object] = []
    for r in result.responses:
        if isinstance(r, PutResult):
            got.append("put")
        elif isinstance(r, DeleteResult):
            got.append(r.deleted)
        else:
            assert isinstance(r, GetResult)
            kv = r.kvs[0] if r.kvs else None
            got.append(None if kv is None else Row(kv.value, kv.create_revision, kv.mod_revision, kv.version))
    assert got == expected
    after, after_rev = load(client)
    assert after == rows and after_rev == new_rev
