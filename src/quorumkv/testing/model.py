"""A tiny in-memory model of etcd's v3 key-value semantics: the oracle of the property tests.

Deliberately naive. Every key keeps its whole history as a list of ``(revision, KV or None)`` (None: deleted),
reads scan that list, and nothing is optimised. Requests and responses are etcd's protobuf messages, so a
test hands the same request to the model and to quorumkv and compares the answers field by field. Response
headers carry only ``revision`` (the server adds cluster/member IDs and the raft term).

The etcd 3.4 rules written down here (apply.go / mvcc):
- a fresh store is at revision 1; a write that changes something takes the next revision, one per request
  (a whole Txn, a whole LeaseRevoke); a write that changes nothing (delete of nothing) takes none;
- put: ``create_revision`` of a new key is the write's revision, ``version`` counts puts since creation;
  delete removes the key, so a later put starts again at version 1;
- Range: ``count`` is the number of keys in the range at that revision, before limit and min/max filters;
  ``limit`` is handed to the store (as limit+1) only when ``sort_order`` is NONE and no min/max filter is
  set, so a non-KEY sort target with NONE order sorts the first limit+1 keys ascending (etcd's quirk);
  ties keep key order (etcd's sort is not stable; quorumkv promises key order);
- Txn: every compare on the chosen path (nested txns included) is evaluated on the state before the txn;
  a missing key compares as an all-zero KeyValue except that a VALUE compare on it fails; a compare with a
  range_end must hold for every key in the range; reads in a txn see the txn's earlier writes; a nested
  txn's response header is empty;
- compaction at C: reads below C fail; C itself and later stay readable;
- lease revoke deletes every key attached to the lease (live keys whose ``lease`` is its ID), in key order,
  in one revision; a lease's TTL is raised to the minimum TTL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.mvccpb import kv_pb2

MAX_LEASE_TTL = 9_000_000_000

COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
LEASE_EXISTS = "etcdserver: lease already exists"
LEASE_TTL_TOO_LARGE = "etcdserver: too large lease TTL"
KEY_NOT_FOUND = "etcdserver: key not found"

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
_R = pb.RangeRequest
_C = pb.Compare


class ModelError(Exception):
    """etcd would answer with this error; ``message`` is etcd's text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class KV:
    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int

    def to_pb(self, *, keys_only: bool = False) -> kv_pb2.KeyValue:
        return kv_pb2.KeyValue(key=self.key, create_revision=self.create_revision, mod_revision=self.mod_revision,
                               version=self.version, value=b"" if keys_only else self.value, lease=self.lease)


@dataclass(frozen=True)
class Event:
    """One change. A DELETE's ``kv`` has only ``key`` and ``mod_revision`` set (as etcd's watch sends it)."""

    revision: int
    type: int
    kv: KV
    prev_kv: KV | None


def in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    """etcd's [key, range_end): empty end is the key alone, b"\\0" is every key >= key."""
    if not range_end:
        return k == key
    if range_end == b"\x00":
        return k >= key
    return key <= k < range_end


class Model:
    def __init__(self, min_lease_ttl: int = 1) -> None:
        self.revision = 1
        self.compact_revision = -1  # etcd's compactMainRev before any compaction
        self.history: dict[bytes, list[tuple[int, KV | None]]] = {}
        self.leases: dict[int, int] = {}  # lease ID -> granted TTL
        self.events: list[Event] = []
        self.min_lease_ttl = min_lease_ttl
        self._pending: list[Event] = []  # changes of the write in progress (at revision self.revision + 1)

    # -- reads -----------------------------------------------------------------------------------------------

    def get(self, key: bytes, revision: int | None = None) -> KV | None:
        """The key as of ``revision`` (None: latest, including the write in progress)."""
        for rev, kv in reversed(self.history.get(key, [])):
            if revision is None or rev <= revision:
                return kv
        return None

    def kvs_at(self, key: bytes, range_end: bytes, revision: int) -> list[KV]:
        found = [self.get(k, revision) for k in sorted(self.history) if in_range(k, key, range_end)]
        return [kv for kv in found if kv is not None]

    def read_revision(self) -> int:
        return self.revision + 1 if self._pending else self.revision

    def keys_of_lease(self, lease_id: int) -> list[bytes]:
        return [kv.key for kv in self.kvs_at(b"\x00", b"\x00", self.read_revision()) if kv.lease == lease_id]

    def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        cur = self.read_revision()
        rev = req.revision if req.revision > 0 else cur
        if rev > cur:
            raise ModelError(FUTURE_REV)
        if rev < self.compact_revision:
            raise ModelError(COMPACTED)
        kvs = self.kvs_at(req.key, req.range_end, rev)
        count = len(kvs)
        if req.count_only:
            kvs = []
        filtered = bool(req.min_mod_revision or req.max_mod_revision or req.min_create_revision
                        or req.max_create_revision)
        if req.limit > 0 and req.sort_order == _R.NONE and not filtered:
            kvs = kvs[: req.limit + 1]
        kvs = [
            kv for kv in kvs
            if (not req.min_mod_revision or kv.mod_revision >= req.min_mod_revision)
            and (not req.max_mod_revision or kv.mod_revision <= req.max_mod_revision)
            and (not req.min_create_revision or kv.create_revision >= req.min_create_revision)
            and (not req.max_create_revision or kv.create_revision <= req.max_create_revision)
        ]
        order = req.sort_order
        if req.sort_target != _R.KEY and order == _R.NONE:
            order = _R.ASCEND
        if order != _R.NONE:
            field = {_R.KEY: "key", _R.VERSION: "version", _R.CREATE: "create_revision", _R.MOD: "mod_revision",
                     _R.VALUE: "value"}[req.sort_target]
            kvs.sort(key=lambda kv: getattr(kv, field), reverse=order == _R.DESCEND)
        resp = pb.RangeResponse(header=pb.ResponseHeader(revision=cur), count=count)
        if req.limit > 0 and len(kvs) > req.limit:
            kvs = kvs[: req.limit]
            resp.more = True
        resp.kvs.extend(kv.to_pb(keys_only=req.keys_only) for kv in kvs)
        return resp

    # -- writes ----------------------------------------------------------------------------------------------

    def _record(self, key: bytes, kv: KV | None) -> None:
        rev = self.revision + 1
        prev = self.get(key)
        self.history.setdefault(key, []).append((rev, kv))
        if kv is None:
            self._pending.append(Event(rev, DELETE, KV(key, 0, rev, 0, b"", 0), prev))
        else:
            self._pending.append(Event(rev, PUT, kv, prev))

    def _commit(self) -> None:
        if self._pending:
            self.revision += 1
            self.events.extend(self._pending)
            self._pending = []

    def _check_put(self, req: pb.PutRequest) -> None:
        if req.lease and req.lease not in self.leases:
            raise ModelError(LEASE_NOT_FOUND)
        if (req.ignore_value or req.ignore_lease) and self.get(req.key) is None:
            raise ModelError(KEY_NOT_FOUND)

    def _put(self, req: pb.PutRequest) -> pb.PutResponse:
        rev = self.revision + 1
        prev = self.get(req.key)
        kv = KV(
            key=req.key,
            create_revision=prev.create_revision if prev else rev,
            mod_revision=rev,
            version=prev.version + 1 if prev else 1,
            value=prev.value if req.ignore_value and prev else req.value,
            lease=prev.lease if req.ignore_lease and prev else req.lease,
        )
        self._record(req.key, kv)
        resp = pb.PutResponse(header=pb.ResponseHeader(revision=rev))
        if req.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(prev.to_pb())
        return resp

    def _delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        gone = self.kvs_at(req.key, req.range_end, self.read_revision())
        for kv in gone:
            self._record(kv.key, None)
        resp = pb.DeleteRangeResponse(header=pb.ResponseHeader(revision=self.read_revision()), deleted=len(gone))
        if req.prev_kv:
            resp.prev_kvs.extend(kv.to_pb() for kv in gone)
        return resp

    def put(self, req: pb.PutRequest) -> pb.PutResponse:
        self._check_put(req)
        resp = self._put(req)
        self._commit()
        return resp

    def delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        resp = self._delete_range(req)
        self._commit()
        return resp

    # -- txn -------------------------------------------------------------------------------------------------

    def compare(self, c: pb.Compare) -> bool:
        kvs = self.kvs_at(c.key, c.range_end, self.revision)
        if not kvs:
            if c.target == _C.VALUE:
                return False
            kvs = [KV(c.key, 0, 0, 0, b"", 0)]
        field, want = {
            _C.VALUE: ("value", c.value),
            _C.VERSION: ("version", c.version),
            _C.CREATE: ("create_revision", c.create_revision),
            _C.MOD: ("mod_revision", c.mod_revision),
            _C.LEASE: ("lease", c.lease),
        }[c.target]
        for kv in kvs:
            have = getattr(kv, field)
            ok = {_C.EQUAL: have == want, _C.NOT_EQUAL: have != want, _C.GREATER: have > want,
                  _C.LESS: have < want}[c.result]
            if not ok:
                return False
        return True

    def _path(self, req: pb.TxnRequest) -> list[bool]:
        """Which branch each txn on the chosen path takes, depth first (all decided before any op runs)."""
        ok = all(self.compare(c) for c in req.compare)
        path = [ok]
        for op in req.success if ok else req.failure:
            if op.HasField("request_txn"):
                path += self._path(op.request_txn)
        return path

    def _check(self, req: pb.TxnRequest, path: Iterator[bool]) -> None:
        for op in req.success if next(path) else req.failure:
            if op.HasField("request_range"):
                r = op.request_range
                if r.revision > self.revision:
                    raise ModelError(FUTURE_REV)
                if 0 < r.revision < self.compact_revision:
                    raise ModelError(COMPACTED)
            elif op.HasField("request_put"):
                self._check_put(op.request_put)
            elif op.HasField("request_txn"):
                self._check(op.request_txn, path)

    def _run(self, req: pb.TxnRequest, path: Iterator[bool], resp: pb.TxnResponse) -> None:
        resp.succeeded = next(path)
        for op in req.success if resp.succeeded else req.failure:
            out = resp.responses.add()
            if op.HasField("request_range"):
                out.response_range.CopyFrom(self.range(op.request_range))
            elif op.HasField("request_put"):
                out.response_put.CopyFrom(self._put(op.request_put))
            elif op.HasField("request_delete_range"):
                out.response_delete_range.CopyFrom(self._delete_range(op.request_delete_range))
            elif op.HasField("request_txn"):
                out.response_txn.header.SetInParent()
                self._run(op.request_txn, path, out.response_txn)

    def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        path = self._path(req)
        self._check(req, iter(path))
        resp = pb.TxnResponse()
        self._run(req, iter(path), resp)
        self._commit()
        resp.header.revision = self.revision
        return resp

    # -- compaction and leases -------------------------------------------------------------------------------

    def compact(self, req: pb.CompactionRequest) -> pb.CompactionResponse:
        if req.revision <= self.compact_revision:
            raise ModelError(COMPACTED)
        if req.revision > self.revision:
            raise ModelError(FUTURE_REV)
        self.compact_revision = req.revision
        return pb.CompactionResponse(header=pb.ResponseHeader(revision=self.revision))

    def lease_grant(self, req: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        if req.ID == 0:
            raise ModelError(LEASE_NOT_FOUND)
        if req.ID in self.leases:
            raise ModelError(LEASE_EXISTS)
        if req.TTL > MAX_LEASE_TTL:
            raise ModelError(LEASE_TTL_TOO_LARGE)
        ttl = max(req.TTL, self.min_lease_ttl)
        self.leases[req.ID] = ttl
        return pb.LeaseGrantResponse(header=pb.ResponseHeader(revision=self.revision), ID=req.ID, TTL=ttl)

    def lease_revoke(self, req: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        if req.ID not in self.leases:
            raise ModelError(LEASE_NOT_FOUND)
        for key in self.keys_of_lease(req.ID):
            self._record(key, None)
        self._commit()
        del self.leases[req.ID]
        return pb.LeaseRevokeResponse(header=pb.ResponseHeader(revision=self.revision))

    # -- what watchers should see ----------------------------------------------------------------------------

    def events_since(self, start_revision: int) -> list[Event]:
        return [ev for ev in self.events if ev.revision >= start_revision]
